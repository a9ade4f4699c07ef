"""The mixed-kind collator, the batch loss, and the evaluation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from reward_models.losses import bradley_terry_loss, mse_loss, plackett_luce_loss, tie_loss
from reward_models.metrics import evaluate_units, expected_calibration_error, reliability_bins, score_units
from reward_models.objective import LossSpec, RewardCollator, collate_layout, total_loss, units_from_records
from reward_models.text import PairEncoder


@pytest.fixture(scope="module")
def collator(tiny_bert_dir):
    from transformers import AutoTokenizer

    return RewardCollator(PairEncoder(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), 32))


UNITS = [
    {"kind": "preference", "prompt": "what is 2 + 2 ?", "chosen": "4", "rejected": "5", "margin": 0.5},
    {"kind": "rating", "prompt": "what is 2 + 2 ?", "response": "4 !", "score": 1.0},
    {"kind": "ranking", "prompt": "yes ?", "responses": ["yes", "no", "maybe"], "ranks": [1, 3, 2]},
    {"kind": "tie", "prompt": "hi", "a": "good", "b": "great"},
    {"kind": "ranking", "prompt": "no ?", "responses": ["no", "yes"], "ranks": [1, 2]},
]


def test_units_from_records_turns_tied_pairs_into_ties():
    rows = [{"prompt": "p", "responses": ["a", "b"], "ranks": [2, 2]},
            {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 1, 2]}]
    assert [u["kind"] for u in units_from_records("ranking", rows)] == ["tie", "ranking"]
    with pytest.raises(ValueError, match="not 'sft'"):
        units_from_records("sft", [{}])


def test_collator_layout(collator):
    batch = collator(UNITS)
    # Rows: chosen 0, rejected 1, rating 2, ranking 3-5, tie 6-7, ranking 8-9.
    assert batch["input_ids"].shape[0] == 10
    assert batch["pair_index"].tolist() == [[0, 1]] and batch["pair_margin"].tolist() == [0.5]
    assert batch["rating_index"].tolist() == [2] and batch["rating_target"].tolist() == [1.0]
    assert batch["tie_index"].tolist() == [[6, 7]]
    assert batch["rank_index"].tolist() == [[3, 4, 5], [8, 9, 0]]
    assert batch["rank_ranks"].tolist() == [[1, 3, 2], [1, 2, 0]]
    assert batch["rank_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    # Right padding: every row starts with [CLS] and its mask is a run of ones then zeros.
    mask = batch["attention_mask"]
    assert (mask.cumsum(1)[:, -1] == mask.sum(1)).all() and (mask[:, :-1] >= mask[:, 1:]).all()
    # A batch of one kind has empty (0, 2) / (0,) / (0, 0) tensors for the others.
    only = collator(UNITS[:1])
    assert only["tie_index"].shape == (0, 2) and only["rating_index"].shape == (0,) and only["rank_index"].shape == (0, 0)


def test_total_loss_is_the_weighted_sum_of_the_kinds(collator):
    batch = collator(UNITS)
    scores = torch.linspace(-1.0, 1.0, 10)
    spec = LossSpec(weights={"preference": 1.0, "tie": 0.5, "rating": 2.0, "ranking": 3.0})
    total, parts = total_loss(scores, batch, spec)
    expected = {
        "preference": bradley_terry_loss(scores[[0]], scores[[1]], torch.tensor([0.5])),
        "rating": mse_loss(scores[[2]], torch.tensor([1.0])),
        "tie": tie_loss(scores[[6]], scores[[7]]),
        "ranking": plackett_luce_loss(
            torch.stack([scores[[3, 4, 5]], torch.stack([scores[8], scores[9], scores[0]])]),
            torch.tensor([[1, 3, 2], [1, 2, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]),
        ),
    }
    for kind, value in expected.items():
        assert_close(parts[kind], value)
    assert_close(total, expected["preference"] + 0.5 * expected["tie"] + 2 * expected["rating"] + 3 * expected["ranking"])
    # use_margin=False drops the margin from the pair loss.
    _, no_margin = total_loss(scores, batch, LossSpec(use_margin=False))
    assert_close(no_margin["preference"], bradley_terry_loss(scores[[0]], scores[[1]]))


def test_loss_spec_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown ranking loss 'listnet'"):
        LossSpec(ranking_loss="listnet")


def test_reliability_bins_by_hand():
    # One pair right (d = +1), one wrong (d = -1); each in both orientations -> d [1, -1, -1, 1], y [1, 1, 0, 0].
    # Two quantile bins [-1, 0) and [0, 1]: each holds one y=1 and one y=0 -> observed 0.5;
    # predicted sigmoid(-1) = 0.26894142 and sigmoid(1) = 0.73105858; ECE = |0.5 - 0.73105858| = 0.23105858.
    bins = reliability_bins(np.array([1.0, -1.0]), n_bins=2)
    assert [(b["count"], b["mean_diff"], b["observed"]) for b in bins] == [(2, -1.0, 0.5), (2, 1.0, 0.5)]
    assert bins[0]["predicted"] == pytest.approx(0.26894142) and bins[1]["predicted"] == pytest.approx(0.73105858)
    assert expected_calibration_error(bins) == pytest.approx(0.23105858)
    assert reliability_bins(np.zeros(0)) == []


def test_evaluate_units_metrics_by_hand():
    units = [{"kind": "preference", "prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.0}] * 3 + [
        {"kind": "rating", "prompt": "q", "response": r, "score": s} for r, s in (("x", 1.0), ("y", 2.0), ("z", 3.0))
    ] + [{"kind": "ranking", "prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2, 2]}]
    scores = [np.array(s) for s in ([2.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.1], [0.3], [0.2], [3.0, 1.0, 2.0])]
    metrics, _ = evaluate_units(units, scores)
    assert metrics["accuracy"] == pytest.approx(0.5)  # d = [1, 0, -1]: right, tie (1/2), wrong
    assert metrics["rating_spearman"] == pytest.approx(0.5)  # ranks of [0.1, 0.3, 0.2] vs [1, 2, 3]: 1 - 6*2/24
    assert metrics["ranking_pair_accuracy"] == pytest.approx(1.0)  # a (3.0) beats b (1.0) and c (2.0)


def test_score_units_rows_follow_the_collator_layout():
    # The trainer's eval loss feeds score_units' scores into the collator's index tensors: same row order.
    seen: list[tuple] = []

    def fake_score(prompts, responses):
        seen.extend(zip(prompts, responses))
        return torch.arange(len(prompts), dtype=torch.float32)

    scores = score_units(fake_score, UNITS)
    prompts, responses, _ = collate_layout(UNITS)
    assert seen == list(zip(prompts, responses))
    assert [s.tolist() for s in scores] == [[0, 1], [2], [3, 4, 5], [6, 7], [8, 9]]
