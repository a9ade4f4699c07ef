"""Masked statistics and comparison numbers: masked means and whitening, explained variance, win rate.

    python -c "import torch; from align.ops.stats import win_rate_and_se as w; print(w(torch.tensor([2., 1, 1]), torch.tensor([1., 1, 3])))"

Torch only (``falling_steadily`` is plain Python). ``mask`` is ``(B, T)``, 1 on counted elements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask)`` over ``dim`` (all elements when None)."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask) / max(sum(mask), 1)`` over ``dim`` (all elements when None).

    The denominator is clamped to at least 1, so a fully masked row gives 0, not NaN.
    """
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """``sum(x * mask) / num_tokens``; ``num_tokens`` defaults to ``sum(mask)``, clamped to at least 1.

    Passing the token count of a whole minibatch makes the mean of its micro-batches add up to the
    minibatch's token mean, so gradient accumulation does not change the update (8 x 1 == 1 x 8).
    """
    denominator = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=x.dtype, device=x.device)
    return masked_sum(x, mask) / denominator.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked elements of ``x`` (a scalar).

    ``unbiased`` applies Bessel's correction ``n / (n - 1)`` when ``n = sum(mask) >= 2``;
    with fewer than 2 elements the plain (biased) value is returned: 0 for one element,
    0 for none.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n >= 2:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked elements; masked-out positions are 0.

    With ``shift_mean=False`` the mean is added back (only the scale changes), the form used
    for rewards so that their sign survives.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[returns - values] / Var[returns]`` over masked tokens (a scalar).

    1 is a perfect critic, 0 one that predicts the mean, negative worse than that. NaN when
    the returns have zero variance (the ratio is undefined), as in cleanrl's ``ppo.py``.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    if var_returns == 0:
        return torch.tensor(float("nan"))
    return 1 - masked_var(returns - values, mask, unbiased=False) / var_returns


def win_outcomes(scores: torch.Tensor, baseline_scores: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """Per prompt: 1 if ``scores`` beats the baseline, 0.5 on a tie, 0 otherwise; both ``(N,)`` -> ``(N,)``.

    ``same`` (N bools): responses identical to the baseline's, a tie whatever their scores say: a
    reward model scoring one text in two differently padded batches can differ in the last bits.
    """
    if scores.shape != baseline_scores.shape or scores.numel() == 0:
        raise ValueError(f"need two equal, non-empty score vectors, got {tuple(scores.shape)} and "
                         f"{tuple(baseline_scores.shape)}")
    outcomes = (scores > baseline_scores).float() + 0.5 * (scores == baseline_scores).float()
    return outcomes if same is None else torch.where(same.to(outcomes.device), 0.5, outcomes)


def win_rate_and_se(scores: torch.Tensor, baseline_scores: torch.Tensor,
                    same: torch.Tensor | None = None) -> tuple[float, float]:
    """Win rate (ties count half) and its standard error ``std(outcomes) / sqrt(N)`` (population std; 0 for N=1).

    [2, 1, 1] vs [1, 1, 3] -> outcomes [1, 0.5, 0]: rate 0.5, se sqrt(1/6) / sqrt(3) = 0.2357.
    ``same``: see ``win_outcomes``.
    """
    outcomes = win_outcomes(scores, baseline_scores, same).double()
    n = outcomes.numel()
    se = float(outcomes.std(unbiased=False)) / math.sqrt(n) if n > 1 else 0.0
    return float(outcomes.mean()), se


def falling_steadily(values: Sequence[float], window: int, min_drop: float, min_share: float = 0.75) -> bool:
    """Whether the last ``window`` values fall steadily: at least ``min_share`` of the steps go down and the
    least-squares line through them drops by at least ``min_drop`` over the window.

    Used on the logged mean chosen log-prob: when it falls while the margin grows, DPO is pushing
    both responses down (https://arxiv.org/abs/2404.04626). Fewer than ``window`` values (or
    ``window < 3``) -> False.
    """
    if window < 3 or len(values) < window:
        return False
    ys = [float(v) for v in values[-window:]]
    downs = sum(b < a for a, b in zip(ys, ys[1:]))
    xs = range(window)
    x_mean, y_mean = (window - 1) / 2, sum(ys) / window
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum((x - x_mean) ** 2 for x in xs)
    return downs >= min_share * (window - 1) and -slope * (window - 1) >= min_drop
