"""PPO math on tensors small enough to check by hand: masks, KL estimators, rewards, GAE, losses, beta.

Expected numbers are typed in with the arithmetic that gives them; ``assert_close`` compares.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from align import sampling
from align.ops import logprobs, stats
from align.ops import ppo as ppo_ops
from align.stages.ppo.distributed import fill_deepspeed_config
from align.stages.ppo.rollout import prompt_indices

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- masked statistics


def test_masked_mean_counts_only_masked_in_and_never_divides_by_zero() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert_close(stats.masked_mean(x, mask), torch.tensor(1.5))  # (1 + 2) / 2
    # row 0: (1 + 2) / 2; row 1: fully masked -> 0 / max(0, 1) = 0, not NaN
    assert_close(stats.masked_mean(x, mask, dim=1), torch.tensor([1.5, 0.0]))


def test_masked_var_and_whiten() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 2; squared deviations 1, 0, 1 -> biased 2/3, unbiased 2/2 = 1; the 100 is padding
    assert_close(stats.masked_var(x, mask, unbiased=False), torch.tensor(2 / 3))
    assert_close(stats.masked_var(x, mask), torch.tensor(1.0))
    assert_close(stats.masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False keeps the mean 2: (x - 2) / 1 + 2
    assert_close(stats.masked_whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    # one element: no Bessel correction possible, variance 0
    assert_close(stats.masked_var(x, torch.tensor([[1.0, 0.0, 0.0, 0.0]])), torch.tensor(0.0))


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert_close(stats.explained_variance(returns, returns, mask), torch.tensor(1.0))  # perfect critic
    # values 0: Var[R - 0] / Var[R] = 1 -> 0
    assert_close(stats.explained_variance(torch.zeros_like(returns), returns, mask), torch.tensor(0.0))
    # values 2 everywhere: Var[R - 2] = Var[R] -> 0 as well (a constant offset explains nothing)
    assert_close(stats.explained_variance(torch.full_like(returns, 2.0), returns, mask), torch.tensor(0.0))
    assert math.isnan(stats.explained_variance(returns, torch.ones_like(returns), mask).item())


# --------------------------------------------------------------------------- masks from generated ids


def test_response_mask_stops_after_first_eos() -> None:
    eos, pad = 2, 0
    ids = torch.tensor([
        [5, 6, eos, pad, pad],  # ends early, padded
        [5, 6, 7, 8, 9],  # never finishes
        [eos, pad, pad, pad, pad],  # EOS first: only the EOS token counts
        [5, eos, 7, eos, 8],  # tokens after the first EOS never count, even another EOS
    ])
    mask, finished = sampling.response_mask(ids, eos)
    assert_close(mask, torch.tensor([
        [1.0, 1.0, 1.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0, 0.0],
    ]))
    assert finished.tolist() == [True, False, True, True]


def test_response_mask_when_pad_is_eos_and_with_several_eos_ids() -> None:
    # SmolLM2-style pad == eos == 2: the trailing 2s are padding, only the first counts
    mask, finished = sampling.response_mask(torch.tensor([[4, 2, 2, 2]]), 2)
    assert_close(mask, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert finished.tolist() == [True]
    mask, finished = sampling.response_mask(torch.tensor([[4, 9, 1, 1], [4, 4, 4, 4]]), [2, 9])
    assert_close(mask, torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    assert finished.tolist() == [True, False]


def test_last_token_index() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert ppo_ops.last_token_index(mask).tolist() == [2, 0, 3, 0]


# --------------------------------------------------------------------------- log-probs and entropy


def test_logprobs_from_logits() -> None:
    # logits (0, ln 3) -> p = (1/4, 3/4); token 1 -> ln 0.75, token 0 -> ln 0.25
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    assert_close(logprobs.token_logprobs(logits, torch.tensor([[1, 0]])),
                 torch.tensor([[math.log(0.75), math.log(0.25)]]))
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    before = logits.clone()
    assert_close(logprobs.token_logprobs(logits, labels), expected)
    assert torch.equal(logits, before)  # input untouched


def test_entropy_from_logits() -> None:
    # uniform over 4 -> ln 4; p = (1/2, 1/4, 1/4) -> 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(0.5), math.log(0.25), math.log(0.25), -1e9]]])
    assert_close(logprobs.entropy_from_logits(logits), torch.tensor([[math.log(4.0), 1.5 * LN2]]))


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_by_name() -> None:
    # pi(y) = 1/2, pi_ref(y) = 1/4: log pi - log pi_ref = ln 2; r = pi_ref / pi = 1/2
    logprobs, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert_close(ppo_ops.kl_estimate(logprobs, ref, "k1"), torch.tensor([[LN2]]))  # 0.6931
    assert_close(ppo_ops.kl_estimate(logprobs, ref, "k2"), torch.tensor([[LN2**2 / 2]]))  # 0.2402
    assert_close(ppo_ops.kl_estimate(logprobs, ref, "k3"), torch.tensor([[0.5 - 1 + LN2]]))  # (r - 1) - ln r = 0.1931
    # policy below the reference: k1 goes negative, k2 and k3 do not
    assert ppo_ops.kl_estimate(ref, logprobs, "k1").item() < 0
    assert ppo_ops.kl_estimate(ref, logprobs, "k2").item() > 0 and ppo_ops.kl_estimate(ref, logprobs, "k3").item() > 0
    # identical distributions: all zero
    for name in ppo_ops.KL_ESTIMATORS:
        assert_close(ppo_ops.kl_estimate(logprobs, logprobs, name), torch.zeros(1, 1))


def test_unknown_kl_estimator_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'.*k1, k2, k3"):
        ppo_ops.kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# --------------------------------------------------------------------------- rewards and GAE


def test_per_token_rewards_put_the_score_on_the_last_real_token() -> None:
    score = torch.tensor([1.0, 2.0, 3.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards = ppo_ops.per_token_rewards(score, kl, mask, kl_coef=0.5)
    assert_close(rewards, torch.tensor([
        [-0.05, -0.10, -0.15 + 1.0],  # -0.5 * kl, score on token 2 (no EOS: the last generated)
        [-0.20, -0.25 + 2.0, 0.0],  # EOS at token 1 gets the score; token 2 is padding
        [-0.35 + 3.0, 0.0, 0.0],
    ]))


def gae_reference_loop(rewards, values, mask, gamma, lam):  # noqa: ANN001, ANN201
    """The reverse recursion of Schulman et al. 2016, as cleanrl writes it, one row at a time."""
    rewards, values = rewards * mask, values * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    for b in range(B):
        lastgaelam = 0.0
        for t in reversed(range(T)):
            next_value = values[b, t + 1] if t + 1 < T else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            lastgaelam = delta + gamma * lam * lastgaelam
            advantages[b, t] = lastgaelam
    return advantages * mask, (advantages + values) * mask


def test_gae_by_hand_with_an_early_end() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 7.0, 7.0]])  # row 1's 7s sit after EOS: ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    advantages, returns = ppo_ops.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: delta = (0 + .5 - .5, 0 + .5 - .5, 1 + 0 - .5) = (0, 0, .5)
    #        A_2 = .5, A_1 = 0 + .5 * .5 = .25, A_0 = 0 + .5 * .25 = .125; R = A + V
    # row 1: delta_0 = 2 + 1 * 0 - 1 = 1 (the episode ends at EOS) -> A_0 = 1, R_0 = 2
    assert_close(advantages, torch.tensor([[0.125, 0.25, 0.5], [1.0, 0.0, 0.0]]))
    assert_close(returns, torch.tensor([[0.625, 0.75, 1.0], [2.0, 0.0, 0.0]]))


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 0.9), (0.9, 0.0), (1.0, 1.0)])
def test_vectorised_gae_matches_the_reverse_loop_on_a_padded_batch(gamma: float, lam: float) -> None:
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    lengths = torch.tensor([7, 3, 1, 5])  # full, early EOS, EOS first, early EOS
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).float()
    expected = gae_reference_loop(rewards, values, mask, gamma, lam)
    for got, want in zip(ppo_ops.gae_advantages(rewards, values, mask, gamma, lam), expected):
        assert_close(got, want)


# --------------------------------------------------------------------------- losses


def test_policy_loss_clips_both_ways() -> None:
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.0, 3.0]]))  # ratios 1.5, 0.5, 1.0, 3.0 (the last is padding)
    advantages = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = ppo_ops.policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # token 0: max(-1 * 1.5, -1 * 1.2) = -1.2 (clipped); token 1: max(1 * 0.5, 1 * 0.8) = 0.8 (clipped)
    # token 2: max(-2 * 1, -2 * 1) = -2 (not clipped); mean = (-1.2 + 0.8 - 2) / 3 = -0.8
    assert_close(loss, torch.tensor(-0.8))
    assert_close(stats["clipfrac"], torch.tensor(2 / 3))
    # approx_kl: (r - 1) - ln r = (0.5 - ln 1.5) + (-0.5 + ln 2) + 0, over 3 tokens
    assert_close(stats["approx_kl"], torch.tensor((0.5 - math.log(1.5) - 0.5 + LN2) / 3))


def test_policy_loss_gradient_is_zero_where_clipped() -> None:
    logprobs = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _ = ppo_ops.policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), 0.2)
    loss.backward()
    # token 0 is clipped (ratio 1.5 > 1.2 with A > 0): no gradient; token 1: d(-A r / 2)/d logp = -r / 2 = -0.5
    assert_close(logprobs.grad, torch.tensor([[0.0, -0.5]]))


def test_value_loss_by_hand() -> None:
    values, old = torch.tensor([[1.5, 0.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    returns, mask = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = ppo_ops.value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 0: (1.5 - 2)^2 = .25, clipped V = 1.2 -> (1.2 - 2)^2 = .64 -> .64
    # token 1: (0 - 1)^2 = 1, clipped V = .8 -> (.8 - 1)^2 = .04 -> 1;  0.5 * (.64 + 1) / 2 = .41
    assert_close(loss, torch.tensor(0.41))
    assert_close(stats["clipfrac"], torch.tensor(0.5))


# --------------------------------------------------------------------------- KL coefficient


def test_adaptive_kl_coefficient() -> None:
    # KL 12 vs target 6: error clip(1, -.2, .2) = .2; beta * (1 + .2 * 100 / 1000) = .1 * 1.02
    assert ppo_ops.adaptive_kl_coef(0.1, 12.0, 6.0, n_steps=100, horizon=1000) == pytest.approx(0.102)
    # KL 5.4 vs 6: error -.1 -> .1 * (1 - .01)
    assert ppo_ops.adaptive_kl_coef(0.1, 5.4, 6.0, n_steps=100, horizon=1000) == pytest.approx(0.099)
    # on target: unchanged
    assert ppo_ops.adaptive_kl_coef(0.1, 6.0, 6.0, n_steps=100, horizon=1000) == pytest.approx(0.1)


# --------------------------------------------------------------------------- prompts, DeepSpeed config


def test_prompt_indices_walk_shuffled_passes_without_overlap() -> None:
    n, world, batch = 10, 2, 3
    stream = [i for it in range(5) for rank in range(world) for i in prompt_indices(n, it, rank, world, batch, seed=7)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))  # whole passes
    assert stream[:10] != list(range(10))  # shuffled
    # stateless: iteration 3 of rank 1 is the same whether or not iterations 0-2 ran in this process
    assert prompt_indices(n, 3, 1, world, batch, seed=7) == stream[(3 * world + 1) * batch : (3 * world + 2) * batch]


def test_fill_deepspeed_config_replaces_every_auto() -> None:
    config = {
        "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto"},
        "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "gradient_clipping": "auto",
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    }
    filled = fill_deepspeed_config(config, micro_batch_size=4, gradient_accumulation_steps=2, world_size=3,
                                   max_grad_norm=0.5, bf16=True, hidden_size=10)
    assert filled["train_batch_size"] == 24  # 4 x 2 x 3
    assert filled["train_micro_batch_size_per_gpu"] == 4 and filled["gradient_accumulation_steps"] == 2
    assert filled["gradient_clipping"] == 0.5
    assert filled["bf16"] == {"enabled": True} and filled["fp16"] == {"enabled": False}
    assert filled["zero_optimization"]["reduce_bucket_size"] == 100  # hidden^2
    assert filled["zero_optimization"]["stage3_prefetch_bucket_size"] == 90
    assert filled["zero_optimization"]["stage3_param_persistence_threshold"] == 100
    assert config["train_batch_size"] == "auto"  # the input is not changed
    with pytest.raises(ValueError, match="optimizer.params.lr"):
        fill_deepspeed_config({**config, "optimizer": {"params": {"lr": "auto"}}}, micro_batch_size=1,
                              gradient_accumulation_steps=1, world_size=1, max_grad_norm=1.0, bf16=False)
