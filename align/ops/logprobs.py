"""Log-probabilities, entropy and KL of causal-LM outputs: PPO, DPO's end-of-run check and eval share them.

    python -c "import torch; from align.ops.logprobs import token_logprobs; print(token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[1, 3]])))"

Torch only. Logits ``(B, T, V)`` hold at position t the distribution of token t + 1: callers pair
logits ``[:, :-1]`` with ids ``[:, 1:]``. Every result is float32, whatever the logits' dtype.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[labels]``: logits (B, T, V), labels (B, T) -> (B, T), float32.

    Computed as ``logit[label] - logsumexp(logits)``, so no (B, T, V) log-softmax copy is kept.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical ``softmax(logits)``: (B, T, V) -> (B, T).

    ``H = logsumexp(l) - sum_v softmax(l)_v * l_v``, which is exact without taking log(p).
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def sequence_log_ratio(policy_logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(pi || pi_ref) per sequence: ``sum_t mask_t (log pi(y_t) - log pi_ref(y_t))``.

    policy_logits, reference_logits: ``(B, T, V)``, position t predicting ``targets[:, t]``;
    targets: ``(B, T)`` the sampled tokens; mask: ``(B, T)``, 1 on response tokens. Returns ``(B,)``.
    Unbiased for the sequence KL when the targets were sampled from pi; a single sample can be negative.
    """
    log_ratio = token_logprobs(policy_logits, targets) - token_logprobs(reference_logits, targets)  # (B, T)
    return (log_ratio * mask.to(log_ratio.dtype)).sum(-1)


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
