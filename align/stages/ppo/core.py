"""PPO-RLHF math as pure functions: masks, KL estimators, per-token rewards, GAE, losses.

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

# --------------------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask)`` over ``dim`` (all elements when None)."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask) / max(sum(mask), 1)`` over ``dim`` (all elements when None).

    The denominator is clamped to at least 1, so a fully masked row gives 0, not NaN.
    """
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


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


# --------------------------------------------------------------------------- masks from generated ids


def response_mask(response_ids: torch.Tensor, eos_token_ids: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Action mask and "finished" flags of generated responses.

    response_ids: (B, T) the generated tokens only (the prompt cut off); after EOS,
    ``generate`` fills with the pad token, which may equal EOS.
    Returns ``mask`` (B, T) float, 1 up to and including the first EOS (every token when
    there is none), and ``finished`` (B,) bool, True when the response contains an EOS.

    Example, EOS = 2, pad = 0::

        [[5, 6, 2, 0],      ->  mask [[1, 1, 1, 0],   finished [True,
         [5, 6, 7, 8]]               [1, 1, 1, 1]]             False]
    """
    eos = torch.as_tensor(eos_token_ids, device=response_ids.device).reshape(-1)
    is_eos = torch.isin(response_ids, eos)  # (B, T)
    # Tokens strictly after the first EOS have at least one EOS before them.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # (B, T)
    mask = (eos_before == 0).float()
    return mask, is_eos.any(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (B, T) -> (B,) long; 0 for an all-zero row."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.zeros_like(positions)).max(dim=1).values


# --------------------------------------------------------------------------- log-probs and entropy


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[labels]``: logits (B, T, V), labels (B, T) -> (B, T).

    Computed as ``logit[label] - logsumexp(logits)`` so no (B, T, V) log-softmax copy is
    kept. Callers pair logits ``[:, :-1]`` with ids ``[:, 1:]`` (a logit scores the next token).
    """
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical ``softmax(logits)``: (B, T, V) -> (B, T).

    ``H = logsumexp(l) - sum_v softmax(l)_v * l_v``, which is exact without taking log(p).
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    All inputs (B, T). ``ratio = exp(logprobs - old_logprobs)``;
    ``pg_losses1 = -A * ratio``, ``pg_losses2 = -A * clamp(ratio, 1 - eps, 1 + eps)``;
    loss = masked mean over tokens of ``max(pg_losses1, pg_losses2)``.
    Stats (detached scalars): ``clipfrac`` (tokens where the clipped term is the larger) and
    ``approx_kl`` = masked mean of ``(ratio - 1) - log ratio`` (k3 of old vs new).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.max(pg_losses1, pg_losses2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses2 > pg_losses1).float(), mask),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2))``.

    All inputs (B, T); ``V_clip = old_values + clamp(values - old_values, -eps_v, eps_v)``
    keeps the critic near the values it had when the rollout was scored. Stat:
    ``clipfrac`` (tokens where the clipped error is the larger).
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    v_losses1 = (values - returns) ** 2
    v_losses2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(v_losses1, v_losses2), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((v_losses2 > v_losses1).float(), mask)}
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
