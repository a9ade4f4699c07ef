"""Numbers the DPO stage reports besides its loss: win rate, KL to the reference, a falling-logps check.

    python -c "from align.dpo_metrics import falling_steadily as f; print(f([-10, -11, -12.5, -13, -15], 5, 2.0))"

Torch only (``falling_steadily`` is plain Python).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def win_rate(policy_scores: torch.Tensor, reference_scores: torch.Tensor) -> float:
    """Share of prompts where the policy's response outscores the reference's; a tie counts half.

    Both ``(N,)``, one score per prompt, from the same reward model.
    """
    if policy_scores.shape != reference_scores.shape or policy_scores.numel() == 0:
        raise ValueError(f"need two equal, non-empty score vectors, got {tuple(policy_scores.shape)} and "
                         f"{tuple(reference_scores.shape)}")
    wins = (policy_scores > reference_scores).float() + 0.5 * (policy_scores == reference_scores).float()
    return wins.mean().item()


def sequence_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(pi || pi_ref) of each sequence, summed over its masked positions.

    policy_logits, reference_logits: ``(B, T, V)``, the next-token distributions at each position;
    mask: ``(B, T)``, 1 where the position's next token is part of the response.
    Returns ``(B,)``: ``sum_t mask_t * sum_v p_t(v) (log p_t(v) - log q_t(v))``. The exact per-token
    KL (over the whole vocabulary) along a response sampled from pi is an unbiased estimate of the
    sequence-level KL with lower variance than ``log p(y) - log q(y)`` (k1).
    """
    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(reference_logits.float(), dim=-1)
    per_token = (logp.exp() * (logp - logq)).sum(-1)  # (B, T)
    return (per_token * mask.to(per_token.dtype)).sum(-1)


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
