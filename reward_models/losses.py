"""Reward-model losses: small pure torch functions, chosen by name from tables.

Every loss takes score tensors (the reward model's raw outputs) and returns a scalar (the
tie penalties are elementwise and ``tie_loss`` reduces them), never changes its inputs, and documents shapes, formula and reduction. Scores are on the
Bradley-Terry logit scale: ``sigmoid(r_a - r_b)`` is the modelled probability that a is
preferred to b.

The total loss of a mixed batch (some pairs, some ties, some ratings, some rankings) is
``combine_losses``: the weighted sum over the kinds present in the batch,

    L = w_pref * L_pair + w_tie * L_tie + w_rating * L_rating + w_ranking * L_ranking,

each term already a mean over its own items; kinds absent from the batch add nothing
(weights are not renormalised, so a kind's gradient scale does not depend on what else
happens to share its batch).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- pairs


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood with an optional margin.

    ``chosen``, ``rejected``: (P,) scores of the preferred and the other response;
    ``margin``: (P,) or None, how much the preferred one should win by (Llama 2, Touvron
    et al. 2023, eq. 2). Formula: ``-logsigmoid(r_c - r_r - m)``; reduction: mean over P.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    return -F.logsigmoid(diff).mean()


PAIR_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"bradley_terry": bradley_terry_loss}


# --------------------------------------------------------------------------- ties


def half_win_penalty(d: torch.Tensor) -> torch.Tensor:
    """A tie as half a win each way: Bradley-Terry cross-entropy against target 1/2, minus its floor.

    ``d``: (Q,) score differences ``r_a - r_b`` of pairs marked equally good; returns (Q,)
    ``0.5 * (-logsigmoid(d)) + 0.5 * (-logsigmoid(-d)) - log 2``. It is 0 at ``d = 0``,
    ~``d**2 / 8`` near it and ~``|d| / 2`` far from it: a tie pulls the two scores together
    on the same scale as the pair loss, and a mislabelled tie cannot dominate (linear
    growth, like Huber).
    """
    return 0.5 * (F.softplus(-d) + F.softplus(d)) - LOG2


def squared_penalty(d: torch.Tensor) -> torch.Tensor:
    """``d**2``, elementwise on (Q,) score differences of tied pairs."""
    return d.pow(2)


TIE_PENALTIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "half_win": half_win_penalty,
    "squared": squared_penalty,
}


def tie_loss(a: torch.Tensor, b: torch.Tensor, penalty: str = "half_win") -> torch.Tensor:
    """Pull the scores of tied pairs together: ``mean(TIE_PENALTIES[penalty](r_a - r_b))`` over (Q,)."""
    return _lookup(TIE_PENALTIES, penalty, "tie penalty")(a - b).mean()


# --------------------------------------------------------------------------- ratings


def mse_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """``(pred - target)**2``; ``pred``, ``target``: (R,); mean over R. ``delta`` is unused (same signature as Huber)."""
    return (pred - target.to(pred.dtype)).pow(2).mean()


def huber_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Huber: ``0.5 e**2`` for ``|e| <= delta``, else ``delta * (|e| - 0.5 delta)``, with e = pred - target.

    ``pred``, ``target``: (R,); mean over R. Robust to a few wild ratings.
    """
    return F.huber_loss(pred, target.to(pred.dtype), delta=delta, reduction="mean")


RATING_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"mse": mse_loss, "huber": huber_loss}


# --------------------------------------------------------------------------- rankings


def plackett_luce_loss(scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Listwise Plackett-Luce negative log-likelihood, ties by Breslow's approximation.

    ``scores``: (L, K) one list per row, padded; ``ranks``: (L, K) 1 = best, equal = tie;
    ``mask``: (L, K) 1 for real entries. Each response i is "picked" from the risk set of
    those not better than it, ``S_i = {j : rank_j >= rank_i}``; tied responses share one
    risk set (Breslow 1974, the usual tie rule of the Cox partial likelihood):

        loss_list = -sum_i [ s_i - log sum_{j in S_i} exp(s_j) ]

    For a strict ranking this is exactly Plackett-Luce (the last item's term is 0). A tie
    group of m at the bottom contributes ``sum s_i - m logsumexp(s_group) <= -m log m``,
    which is highest when the tied scores are equal, so ties are pulled together, not
    dropped. Reduction: sum over the items of a list, mean over lists.
    """
    valid = mask.bool()
    # risk[l, i, j]: j may be picked when i is picked (j no better than i).
    risk = (ranks.unsqueeze(1) >= ranks.unsqueeze(2)) & valid.unsqueeze(1)  # (L, K, K)
    # Each item is in its own risk set, so a padded row never takes logsumexp of all -inf (NaN grads).
    risk = risk | torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device)
    expanded = scores.unsqueeze(1).expand(-1, scores.shape[1], -1)  # (L, K, K)
    log_denominator = torch.logsumexp(expanded.masked_fill(~risk, float("-inf")), dim=-1)  # (L, K)
    terms = (scores - log_denominator).masked_fill(~valid, 0.0)  # (L, K)
    return -terms.sum(dim=1).mean()


def pairwise_ranking_loss(
    scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor, tie_penalty: str = "half_win"
) -> torch.Tensor:
    """A ranking as all of its pairs: Bradley-Terry on strict pairs, the tie penalty on tied ones.

    ``scores``, ``ranks``, ``mask``: (L, K) as in ``plackett_luce_loss``. A list's loss is the
    mean over its pairs i < j of ``-logsigmoid(s_better - s_worse)`` (strict pairs) or
    ``TIE_PENALTIES[tie_penalty](s_i - s_j)`` (ties); reduction: mean over lists that have a pair.
    """
    valid = mask.bool()
    k = scores.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)  # (K, K): i < j
    pairs = valid.unsqueeze(2) & valid.unsqueeze(1) & upper  # (L, K, K)
    d = scores.unsqueeze(2) - scores.unsqueeze(1)  # (L, K, K): s_i - s_j
    sign = torch.sign((ranks.unsqueeze(1) - ranks.unsqueeze(2)).to(scores.dtype))  # +1 where i ranks better
    strict = -F.logsigmoid(sign * d)
    tied = _lookup(TIE_PENALTIES, tie_penalty, "tie penalty")(d)
    per_pair = torch.where(sign == 0, tied, strict).masked_fill(~pairs, 0.0)
    n_pairs = pairs.sum(dim=(1, 2))  # (L,)
    per_list = per_pair.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    has_pairs = n_pairs > 0
    return per_list[has_pairs].mean() if bool(has_pairs.any()) else scores.sum() * 0.0


RANKING_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "plackett_luce": plackett_luce_loss,
    "pairwise": pairwise_ranking_loss,
}


# --------------------------------------------------------------------------- total


def combine_losses(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum ``sum_k weights[k] * parts[k]`` over the kinds present in ``parts``.

    ``parts``: kind name -> scalar loss (only the kinds in this batch); ``weights``: kind
    name -> float, every key of ``parts`` must be there. Absent kinds add nothing and the
    weights are not renormalised. An empty ``parts`` is an error: a batch always has a kind.
    """
    if not parts:
        raise ValueError("combine_losses: no loss terms (empty batch?)")
    missing = sorted(set(parts) - set(weights))
    if missing:
        raise ValueError(f"combine_losses: no weight for {missing}; weights has {sorted(weights)}")
    return sum(weights[kind] * loss for kind, loss in parts.items())


def get_loss(table: dict[str, Callable[..., torch.Tensor]], name: str, what: str = "loss") -> Callable[..., torch.Tensor]:
    """``table[name]``, or a ValueError listing the valid names."""
    return _lookup(table, name, what)


def _lookup(table: dict, name: str, what: str):  # noqa: ANN202
    if name not in table:
        raise ValueError(f"unknown {what} '{name}'; choose one of {sorted(table)}")
    return table[name]
