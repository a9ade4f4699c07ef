"""PPO-RLHF math as pure functions: KL estimators, per-token rewards, GAE, clipped losses, adaptive KL.

Torch only, no ``self``, no globals, inputs never changed in place. Shapes: ``B`` sequences,
``T`` response tokens. ``mask`` is the action mask, ``(B, T)``, 1 for response tokens that
are trained (up to and including the first EOS), 0 for tokens after EOS and padding.

References: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"
(per-token KL penalty, adaptive KL coefficient); Schulman et al. 2016, "High-Dimensional
Continuous Control Using Generalized Advantage Estimation" (GAE); Schulman et al. 2017,
"Proximal Policy Optimization Algorithms" (clipped surrogate); http://joschu.net/blog/kl-approx.html
(KL estimators k1, k2, k3).
"""

from __future__ import annotations

from typing import Callable

import torch

from align.ops.stats import token_mean

# --------------------------------------------------------------------------- rewards and advantages


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (B, T) -> (B,) long; 0 for an all-zero row."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.zeros_like(positions)).max(dim=1).values


# --------------------------------------------------------------------------- KL to the reference


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y) - log pi_ref(y): unbiased, high variance, negative on some tokens."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi(y) - log pi_ref(y))^2 / 2: biased, low variance, never negative."""
    return (logprobs - ref_logprobs) ** 2 / 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_ref(y) / pi(y): unbiased, low variance, never negative."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi: (B, T) -> (B, T).

    ``estimator`` is one of ``KL_ESTIMATORS`` (k1, k2, k3); anything else is a ValueError.
    No clamp: a large value means the policy has drifted, and the caller should see it.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)


# --------------------------------------------------------------------------- rewards and advantages


def per_token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Ziegler et al. 2019: ``R_t = -beta * KL_t``, plus the sequence score on its last real token.

    score: (B,) one scalar per response (after penalties); kl: (B, T) per-token KL estimate;
    mask: (B, T) action mask. Returns (B, T), zero where ``mask`` is 0. The score lands on the
    last masked-in token, i.e. the EOS token when the response finished.
    """
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)  # (B,)
    bonus = torch.zeros_like(rewards).scatter(1, last.unsqueeze(1), score.to(rewards.dtype).unsqueeze(1))
    return rewards + bonus * mask


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a response, vectorised.

    rewards, values, mask: (B, T); ``mask`` must be a prefix mask (ones then zeros), as
    ``response_mask`` gives. Past the last real token rewards and values count as 0, so the
    episode ends there:

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}      (lastgaelam recursion, unrolled)
        R_t     = A_t + V_t                                        (the value target)

    Returns ``(advantages, returns)``, both (B, T) and zero where ``mask`` is 0. The sum is
    one matmul with the (T, T) upper-triangular matrix ``(gamma * lam)^(s - t)``; the test
    keeps the reverse loop as the reference.
    """
    rewards, values = rewards * mask, values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, T)
    delta = rewards + gamma * next_values - values  # (B, T)
    steps = torch.arange(values.shape[1], device=values.device, dtype=values.dtype)
    lag = steps.unsqueeze(0) - steps.unsqueeze(1)  # (T, T): lag[t, s] = s - t
    discount = torch.where(lag >= 0, torch.pow(torch.as_tensor(gamma * lam, dtype=values.dtype), lag.clamp(min=0)), 0)
    advantages = (delta @ discount.T) * mask  # (B, T): A[b, t] = sum_s delta[b, s] * discount[t, s]
    return advantages, (advantages + values) * mask


# --------------------------------------------------------------------------- losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    num_tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    All inputs (B, T). ``ratio = exp(logprobs - old_logprobs)``;
    ``pg_losses1 = -A * ratio``, ``pg_losses2 = -A * clamp(ratio, 1 - eps, 1 + eps)``;
    loss = ``sum_t mask_t * max(pg_losses1, pg_losses2) / num_tokens`` (``stats.token_mean``):
    a token mean over this batch by default, over the whole minibatch when ``num_tokens`` is its
    token count and this batch is one of its micro-batches.
    Stats (detached scalars, token means like the loss): ``clipfrac`` (tokens where the clipped
    term is the larger) and ``approx_kl`` = ``(ratio - 1) - log ratio`` (k3 of old vs new).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = token_mean(torch.max(pg_losses1, pg_losses2), mask, num_tokens)
    with torch.no_grad():
        stats = {
            "clipfrac": token_mean((pg_losses2 > pg_losses1).float(), mask, num_tokens),
            "approx_kl": token_mean((ratio - 1) - log_ratio, mask, num_tokens),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
    num_tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * token_mean(max((V - R)^2, (V_clip - R)^2))`` (``num_tokens`` as in ``policy_loss``).

    All inputs (B, T); ``V_clip = old_values + clamp(values - old_values, -eps_v, eps_v)``
    keeps the critic near the values it had when the rollout was scored. Stat:
    ``clipfrac`` (tokens where the clipped error is the larger).
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    v_losses1 = (values - returns) ** 2
    v_losses2 = (v_clipped - returns) ** 2
    loss = 0.5 * token_mean(torch.max(v_losses1, v_losses2), mask, num_tokens)
    with torch.no_grad():
        stats = {"clipfrac": token_mean((v_losses2 > v_losses1).float(), mask, num_tokens)}
    return loss, stats


# --------------------------------------------------------------------------- KL coefficient


def adaptive_kl_coef(kl_coef: float, current_kl: float, target_kl: float, n_steps: int, horizon: int) -> float:
    """Ziegler et al. 2019, section 2.2: a proportional controller toward ``target_kl``.

    ``e = clip(current_kl / target_kl - 1, -0.2, 0.2)``;
    ``beta <- beta * (1 + e * n_steps / horizon)``, with ``n_steps`` the samples in the
    rollout just used. The clip bounds the change per update to 20% of ``n_steps / horizon``.
    """
    proportional_error = min(max(current_kl / target_kl - 1, -0.2), 0.2)
    return kl_coef * (1 + proportional_error * n_steps / horizon)
