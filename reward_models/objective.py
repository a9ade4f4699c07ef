"""Training units, the mixed-kind collator, and the loss of one batch.

A *unit* is one thing the loss sees, a plain dict:

- ``{"kind": "preference", "prompt", "chosen", "rejected", "margin"}``
- ``{"kind": "tie", "prompt", "a", "b"}``: two responses judged equally good (from a
  ranking of two with equal ranks: the dataset layer's form of a tied pair)
- ``{"kind": "rating", "prompt", "response", "score"}`` (score already standardised if asked)
- ``{"kind": "ranking", "prompt", "responses", "ranks"}`` (1 = best, equal = tie)

A batch may hold any mix; all its texts go through the encoder in one forward pass and
index tensors say which scores belong to which term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from reward_models.losses import (
    PAIR_LOSSES,
    RANKING_LOSSES,
    RATING_LOSSES,
    TIE_PENALTIES,
    combine_losses,
    get_loss,
    pairwise_ranking_loss,
    tie_loss,
)
from reward_models.text import PairEncoder

UNIT_KINDS = ("preference", "tie", "rating", "ranking")


def units_from_records(kind: str, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical dataset rows of ``kind`` (preference / ranking / rating) -> units.

    A two-response ranking with equal ranks becomes a ``tie`` unit; every other ranking
    stays a list (its ties are handled by the ranking loss).
    """
    units: list[dict[str, Any]] = []
    for row in rows:
        if kind == "preference":
            units.append({"kind": "preference", "prompt": row["prompt"], "chosen": row["chosen"],
                          "rejected": row["rejected"], "margin": float(row.get("margin") or 0.0)})
        elif kind == "ranking":
            responses, ranks = list(row["responses"]), [int(r) for r in row["ranks"]]
            if len(responses) == 2 and ranks[0] == ranks[1]:
                units.append({"kind": "tie", "prompt": row["prompt"], "a": responses[0], "b": responses[1]})
            else:
                units.append({"kind": "ranking", "prompt": row["prompt"], "responses": responses, "ranks": ranks})
        elif kind == "rating":
            units.append({"kind": "rating", "prompt": row["prompt"], "response": row["response"],
                          "score": float(row["score"])})
        else:
            raise ValueError(f"the reward model trains on preference, ranking or rating records, not '{kind}'")
    return units


class RewardCollator:
    """Units -> one padded batch of (prompt, response) rows plus index tensors per loss term.

    Two units, a preference ``("2+2?", chosen "4", rejected "5", margin 0.5)`` and a rating
    ``("2+2?", "four", score 1.0)``, give three rows and::

        input_ids      (3, T)  rows: [CLS] 2+2? [SEP] 4 [SEP] | ... 5 ... | ... four ... (right-padded)
        attention_mask (3, T)
        pair_index     [[0, 1]]         (P, 2) rows of chosen, rejected
        pair_margin    [0.5]            (P,)
        tie_index      zeros (0, 2)     (Q, 2)
        rating_index   [2]              (R,)
        rating_target  [1.0]            (R,)
        rank_index     zeros (0, 0)     (L, K) rows of each list's responses, padded with 0
        rank_ranks     zeros (0, 0)     (L, K) ranks, padded with 0
        rank_mask      zeros (0, 0)     (L, K) 1 for real entries
    """

    def __init__(self, encoder: PairEncoder) -> None:
        self.encoder = encoder

    def __call__(self, units: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts, responses, layout = collate_layout(units)
        return {**self.encoder(prompts, responses), **layout}


def collate_layout(units: Sequence[dict[str, Any]]) -> tuple[list[Any], list[Any], dict[str, torch.Tensor]]:
    """(prompts, responses, index tensors) of a batch of units, without tokenizing.

    Row order is unit order, and within a unit: chosen, rejected | a, b | response |
    responses in list order, the same order as ``metrics.score_units``; so scores from
    there can go straight into ``batch_losses`` with this layout.
    """
    prompts: list[Any] = []
    responses: list[Any] = []

    def add(prompt: Any, response: Any) -> int:
        prompts.append(prompt)
        responses.append(response)
        return len(prompts) - 1

    pairs, margins, ties, ratings, targets, lists, list_ranks = [], [], [], [], [], [], []
    for unit in units:
        kind = unit["kind"]
        if kind == "preference":
            pairs.append([add(unit["prompt"], unit["chosen"]), add(unit["prompt"], unit["rejected"])])
            margins.append(unit["margin"])
        elif kind == "tie":
            ties.append([add(unit["prompt"], unit["a"]), add(unit["prompt"], unit["b"])])
        elif kind == "rating":
            ratings.append(add(unit["prompt"], unit["response"]))
            targets.append(unit["score"])
        elif kind == "ranking":
            lists.append([add(unit["prompt"], r) for r in unit["responses"]])
            list_ranks.append(unit["ranks"])
        else:
            raise ValueError(f"unknown unit kind '{kind}'; expected one of {UNIT_KINDS}")

    k = max((len(rows) for rows in lists), default=0)
    rank_index = torch.zeros((len(lists), k), dtype=torch.long)
    rank_ranks = torch.zeros((len(lists), k), dtype=torch.long)
    rank_mask = torch.zeros((len(lists), k), dtype=torch.long)
    for i, (rows, ranks) in enumerate(zip(lists, list_ranks)):
        rank_index[i, : len(rows)] = torch.tensor(rows)
        rank_ranks[i, : len(rows)] = torch.tensor(ranks)
        rank_mask[i, : len(rows)] = 1
    layout = {
        "pair_index": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
        "pair_margin": torch.tensor(margins, dtype=torch.float32),
        "tie_index": torch.tensor(ties, dtype=torch.long).reshape(-1, 2),
        "rating_index": torch.tensor(ratings, dtype=torch.long),
        "rating_target": torch.tensor(targets, dtype=torch.float32),
        "rank_index": rank_index,
        "rank_ranks": rank_ranks,
        "rank_mask": rank_mask,
    }
    return prompts, responses, layout


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class LossSpec:
    """Which loss each kind uses, and the weights of the total (see ``losses.combine_losses``)."""

    pair_loss: str = "bradley_terry"
    use_margin: bool = True
    tie_penalty: str = "half_win"
    rating_loss: str = "mse"
    huber_delta: float = 1.0
    ranking_loss: str = "plackett_luce"
    weights: dict[str, float] = field(
        default_factory=lambda: {"preference": 1.0, "tie": 1.0, "rating": 1.0, "ranking": 1.0}
    )

    def __post_init__(self) -> None:  # unknown names fail at build time, not mid-training
        get_loss(PAIR_LOSSES, self.pair_loss, "pair loss")
        get_loss(TIE_PENALTIES, self.tie_penalty, "tie penalty")
        get_loss(RATING_LOSSES, self.rating_loss, "rating loss")
        get_loss(RANKING_LOSSES, self.ranking_loss, "ranking loss")


def batch_losses(scores: torch.Tensor, batch: dict[str, torch.Tensor], spec: LossSpec) -> dict[str, torch.Tensor]:
    """Per-kind losses of a collated batch; ``scores``: (N,) raw scores of its rows. Only present kinds appear."""
    parts: dict[str, torch.Tensor] = {}
    pair_index = batch["pair_index"]
    if pair_index.numel():
        margin = batch["pair_margin"] if spec.use_margin else None
        parts["preference"] = PAIR_LOSSES[spec.pair_loss](scores[pair_index[:, 0]], scores[pair_index[:, 1]], margin)
    tie_index = batch["tie_index"]
    if tie_index.numel():
        parts["tie"] = tie_loss(scores[tie_index[:, 0]], scores[tie_index[:, 1]], spec.tie_penalty)
    rating_index = batch["rating_index"]
    if rating_index.numel():
        parts["rating"] = RATING_LOSSES[spec.rating_loss](
            scores[rating_index], batch["rating_target"], delta=spec.huber_delta
        )
    rank_index = batch["rank_index"]
    if rank_index.numel():
        list_scores = scores[rank_index]  # (L, K)
        if spec.ranking_loss == "pairwise":
            parts["ranking"] = pairwise_ranking_loss(list_scores, batch["rank_ranks"], batch["rank_mask"], spec.tie_penalty)
        else:
            parts["ranking"] = RANKING_LOSSES[spec.ranking_loss](list_scores, batch["rank_ranks"], batch["rank_mask"])
    return parts


def total_loss(scores: torch.Tensor, batch: dict[str, torch.Tensor], spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted sum of the batch's loss terms, the terms themselves)."""
    parts = batch_losses(scores, batch, spec)
    return combine_losses(parts, spec.weights), parts
