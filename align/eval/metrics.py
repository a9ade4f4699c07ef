"""Numbers ``align eval`` reports: k1 KL of sampled responses, win rate with its standard error.

    python -c "import torch; from align.eval.metrics import win_rate_and_se as w; print(w(torch.tensor([2., 1, 1]), torch.tensor([1., 1, 3])))"

Torch only.
"""

from __future__ import annotations

import math

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[b, t, targets[b, t]]``: logits ``(B, T, V)``, targets ``(B, T)`` -> ``(B, T)``, float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def sequence_log_ratio(policy_logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(pi || pi_ref) per sequence: ``sum_t mask_t (log pi(y_t) - log pi_ref(y_t))``.

    policy_logits, reference_logits: ``(B, T, V)``, position t predicting ``targets[:, t]``;
    targets: ``(B, T)`` the sampled tokens; mask: ``(B, T)``, 1 on response tokens. Returns ``(B,)``.
    Unbiased for the sequence KL when the targets were sampled from pi; a single sample can be negative.
    """
    log_ratio = token_logprobs(policy_logits, targets) - token_logprobs(reference_logits, targets)  # (B, T)
    return (log_ratio * mask.to(log_ratio.dtype)).sum(-1)


def win_outcomes(scores: torch.Tensor, baseline_scores: torch.Tensor) -> torch.Tensor:
    """Per prompt: 1 if ``scores`` beats the baseline, 0.5 on a tie, 0 otherwise; both ``(N,)`` -> ``(N,)``."""
    if scores.shape != baseline_scores.shape or scores.numel() == 0:
        raise ValueError(f"need two equal, non-empty score vectors, got {tuple(scores.shape)} and "
                         f"{tuple(baseline_scores.shape)}")
    return (scores > baseline_scores).float() + 0.5 * (scores == baseline_scores).float()


def win_rate_and_se(scores: torch.Tensor, baseline_scores: torch.Tensor) -> tuple[float, float]:
    """Win rate (ties count half) and its standard error ``std(outcomes) / sqrt(N)`` (population std; 0 for N=1).

    [2, 1, 1] vs [1, 1, 3] -> outcomes [1, 0.5, 0]: rate 0.5, se sqrt(1/6) / sqrt(3) = 0.2357.
    """
    outcomes = win_outcomes(scores, baseline_scores).double()
    n = outcomes.numel()
    se = float(outcomes.std(unbiased=False)) / math.sqrt(n) if n > 1 else 0.0
    return float(outcomes.mean()), se
