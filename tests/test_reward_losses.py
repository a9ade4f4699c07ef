"""Reward losses and pooling on tensors small enough to work by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from reward_models.losses import (
    bradley_terry_loss,
    combine_losses,
    half_win_penalty,
    huber_loss,
    mse_loss,
    pairwise_ranking_loss,
    plackett_luce_loss,
    tie_loss,
)
from reward_models.pooling import cls_pool, mean_pool, pool


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_bradley_terry_by_hand():
    # -logsigmoid(x) = log(1 + exp(-x)): x=1 -> 0.31326169, x=0 -> log 2 = 0.69314718; mean 0.50320443.
    assert_close(bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0)), torch.tensor(0.50320443, dtype=torch.float64))
    # With margins [0.5, -1]: x = [0.5, 1.0] -> log(1 + e^-0.5) = 0.47407698, 0.31326169; mean 0.39366933.
    assert_close(
        bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0), margin=t(0.5, -1.0)),
        torch.tensor(0.39366933, dtype=torch.float64),
    )


def test_bradley_terry_does_not_change_inputs():
    chosen, rejected, margin = t(1.0, 2.0), t(0.5, 0.5), t(0.1, 0.2)
    before = [x.clone() for x in (chosen, rejected, margin)]
    bradley_terry_loss(chosen, rejected, margin)
    for x, y in zip((chosen, rejected, margin), before):
        assert torch.equal(x, y)


def test_tie_losses_by_hand():
    # d = a - b = [0, -2]. half_win(d) = |d|/2 + softplus(-|d|) - log 2 (symmetric in d):
    # d=0 -> 0; |d|=2 -> 1 + log(1 + e^-2) - log 2 = 1 + 0.12692801 - 0.69314718 = 0.43378083; mean 0.21689042.
    assert_close(tie_loss(t(1.0, 0.0), t(1.0, 2.0)), torch.tensor(0.21689042, dtype=torch.float64))
    # squared: d^2 = [0, 4], mean 2.
    assert_close(tie_loss(t(1.0, 0.0), t(1.0, 2.0), "squared"), torch.tensor(2.0, dtype=torch.float64))
    # Near 0 the half-win penalty is ~ d^2 / 8; far away ~ |d| / 2 - log 2.
    assert_close(half_win_penalty(t(1e-3)), t(1e-6 / 8), rtol=1e-3, atol=0)
    assert_close(half_win_penalty(t(40.0)), t(20.0 - math.log(2)))


def test_rating_losses_by_hand():
    pred, target = t(1.0, 2.0), t(0.0, 4.0)
    # errors [1, -2]: MSE (1 + 4) / 2 = 2.5; Huber(delta=1): 0.5 * 1^2 = 0.5 and 1 * (2 - 0.5) = 1.5, mean 1.0.
    assert_close(mse_loss(pred, target), torch.tensor(2.5, dtype=torch.float64))
    assert_close(huber_loss(pred, target, delta=1.0), torch.tensor(1.0, dtype=torch.float64))


def test_plackett_luce_by_hand():
    # Strict [2, 1, 0] ranked 1, 2, 3:
    #   -(2 - log(e^2 + e + 1)) - (1 - log(e + 1)) = 0.40760596 + 0.31326169 = 0.72086765.
    strict = plackett_luce_loss(t(2.0, 1.0, 0.0)[None], torch.tensor([[1, 2, 3]]), torch.ones(1, 3))
    assert_close(strict, torch.tensor(0.72086765, dtype=torch.float64))
    # Ranks [1, 2, 2] (a tie at the bottom, Breslow): item 1 as before (0.40760596); items 2 and 3
    # share the risk set {2, 3}: -(1 - log(e + 1)) - (0 - log(e + 1)) = 0.31326169 + 1.31326169; total 2.03412934.
    tied = plackett_luce_loss(t(2.0, 1.0, 0.0)[None], torch.tensor([[1, 2, 2]]), torch.ones(1, 3))
    assert_close(tied, torch.tensor(2.03412934, dtype=torch.float64))


def test_plackett_luce_padding_and_mean_over_lists():
    # List 2 is [0.5, -0.5, pad] ranked [2, 1]: the better item (-0.5) is picked from both:
    # -(-0.5 - log(e^0.5 + e^-0.5)) = 0.5 + 0.81326169 = 1.31326169; the worse one alone gives 0.
    # Mean of 0.72086765 (list 1 above) and 1.31326169 = 1.01706467.
    scores = t(2.0, 1.0, 0.0, 0.5, -0.5, 123.0).reshape(2, 3).requires_grad_()
    ranks = torch.tensor([[1, 2, 3], [2, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss = plackett_luce_loss(scores, ranks, mask)
    assert_close(loss, torch.tensor(1.01706467, dtype=torch.float64))
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[1, 2] == 0  # the pad gets no gradient


def test_plackett_luce_of_two_is_bradley_terry():
    scores = t(0.3, -1.2, 2.0, 0.5).reshape(2, 2)
    ranks = torch.tensor([[1, 2], [2, 1]])
    expected = bradley_terry_loss(t(0.3, 0.5), t(-1.2, 2.0))
    assert_close(plackett_luce_loss(scores, ranks, torch.ones(2, 2)), expected)


def plackett_luce_reference(scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loop the vectorised loss replaces: per list, per item, logsumexp over its Breslow risk set."""
    losses = []
    for s, r, m in zip(scores, ranks, mask):
        s, r = s[m.bool()], r[m.bool()]
        total = s.new_zeros(())
        for i in range(len(s)):
            risk = torch.stack([s[j] for j in range(len(s)) if r[j] >= r[i]])
            total = total - (s[i] - torch.logsumexp(risk, dim=0))
        losses.append(total)
    return torch.stack(losses).mean()


def test_plackett_luce_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    ranks = torch.randint(1, 4, (6, 5), generator=gen)  # plenty of ties
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[2, 3:] = 0
    mask[4, 2:] = 0
    assert_close(plackett_luce_loss(scores, ranks, mask), plackett_luce_reference(scores, ranks, mask))


def test_pairwise_ranking_by_hand():
    # [2, 1, 0] ranked [1, 2, 2]: pairs (0,1) -logsigmoid(1) = 0.31326169, (0,2) -logsigmoid(2) = 0.12692801,
    # (1,2) tie with d=1: 1/2 + log(1 + e^-1) - log 2 = 0.12011451; mean 0.18676807.
    loss = pairwise_ranking_loss(t(2.0, 1.0, 0.0)[None], torch.tensor([[1, 2, 2]]), torch.ones(1, 3))
    assert_close(loss, torch.tensor(0.18676807, dtype=torch.float64))


def test_combine_losses_weighted_sum_of_present_kinds():
    parts = {"preference": torch.tensor(1.0), "rating": torch.tensor(2.0)}
    weights = {"preference": 0.5, "rating": 2.0, "tie": 9.0, "ranking": 1.0}
    assert_close(combine_losses(parts, weights), torch.tensor(4.5))  # 0.5 * 1 + 2 * 2; tie absent adds nothing
    with pytest.raises(ValueError, match="no weight for"):
        combine_losses({"bogus": torch.tensor(1.0)}, weights)
    with pytest.raises(ValueError, match="no loss terms"):
        combine_losses({}, weights)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"unknown tie penalty 'nope'.*half_win"):
        tie_loss(t(1.0), t(0.0), "nope")
    with pytest.raises(ValueError, match=r"unknown pooling 'max'.*cls"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")


def test_pooling_by_hand():
    hidden = t(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0).reshape(2, 2, 2)  # (B=2, T=2, H=2)
    mask = torch.tensor([[1, 1], [1, 0]])
    assert_close(cls_pool(hidden, mask), t(1.0, 2.0, 5.0, 6.0).reshape(2, 2))
    # row 1: mean of [1,2],[3,4] = [2,3]; row 2: only [5,6] counts.
    assert_close(mean_pool(hidden, mask), t(2.0, 3.0, 5.0, 6.0).reshape(2, 2))
    # A fully masked row gives zeros, not NaN (denominator clamped to 1).
    assert_close(mean_pool(hidden, torch.zeros(2, 2)), torch.zeros(2, 2, dtype=torch.float64))
