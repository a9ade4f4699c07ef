"""DPO math by hand: each loss variant, reward metrics, KL, win rate, the falling-logps check, packing, schema."""

from __future__ import annotations

import doctest
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

import align.stages.dpo.packing
from align.config import DPORecipe
from align.ops.dpo import LOSSES, PairLogps, dpo_loss, get_loss, reward_metrics
from align.ops.logprobs import sequence_kl
from align.ops.stats import falling_steadily, win_rate_and_se
from align.stages.dpo.packing import first_fit_decreasing, pack_preference, scored_token_mask, sequence_sums, unpack_to_padded
from align.recipe import RecipeError, validate

# Two pairs. Policy log-probs chosen [-1, -2], rejected [-3, -1]; reference chosen [-1.5, -1], rejected
# [-1.5, -1]. Log-ratios: chosen [0.5, -1], rejected [-1.5, 0], so h = [2, -1]; with beta = 0.5, x = beta*h = [1, -0.5].
PAIRS = PairLogps.of(
    chosen=[-1.0, -2.0], rejected=[-3.0, -1.0], ref_chosen=[-1.5, -1.0], ref_rejected=[-1.5, -1.0],
    chosen_tokens=[2.0, 4.0], rejected_tokens=[1.0, 2.0],
)
BETA = 0.5
# -log sigmoid(1) = log(1 + e^-1) = 0.31326169; -log sigmoid(-0.5) = log(1 + e^0.5) = 0.97407698
SIGMOID = [0.31326169, 0.97407698]


def test_sigmoid() -> None:
    assert_close(LOSSES["sigmoid"](PAIRS, BETA, 0.0), torch.tensor(SIGMOID))


def test_hinge() -> None:
    # max(0, 1 - x): 1 - 1 = 0; 1 + 0.5 = 1.5
    assert_close(LOSSES["hinge"](PAIRS, BETA, 0.0), torch.tensor([0.0, 1.5]))


def test_conservative() -> None:
    # -(1-e) log s(x) - e log s(-x) = -log s(x) + e*x (as -log s(-x) = -log s(x) + x); e = 0.1:
    # 0.31326169 + 0.1 = 0.41326169; 0.97407698 - 0.05 = 0.92407698
    assert_close(LOSSES["conservative"](PAIRS, BETA, 0.1), torch.tensor([0.41326169, 0.92407698]))


def test_robust() -> None:
    # ((1-e)(-log s(x)) - e(-log s(-x))) / (1-2e) = -log s(x) - e*x/(1-2e); e = 0.1, e/(1-2e) = 0.125:
    # 0.31326169 - 0.125 = 0.18826169; 0.97407698 + 0.0625 = 1.03657698
    assert_close(LOSSES["robust"](PAIRS, BETA, 0.1), torch.tensor([0.18826169, 1.03657698]))


def test_smoothing_zero_is_plain_dpo() -> None:
    for name in ("conservative", "robust"):
        assert_close(LOSSES[name](PAIRS, BETA, 0.0), torch.tensor(SIGMOID))


def test_ipo_uses_per_token_log_ratios() -> None:
    # h_avg = chosen_lr / chosen_tokens - rejected_lr / rejected_tokens: 0.5/2 + 1.5/1 = 1.75; -1/4 - 0/2 = -0.25.
    # 1/(2 beta) = 1, so (0.75)^2 = 0.5625 and (-1.25)^2 = 1.5625.
    assert_close(LOSSES["ipo"](PAIRS, BETA, 0.0), torch.tensor([0.5625, 1.5625]))


def test_sft_is_chosen_nll_per_token() -> None:
    # -(-1)/2 = 0.5; -(-2)/4 = 0.5
    assert_close(LOSSES["sft"](PAIRS, BETA, 0.0), torch.tensor([0.5, 0.5]))


def test_combined_dpo_plus_sft() -> None:
    # mean sigmoid (0.31326169 + 0.97407698) / 2 = 0.64366934, plus 0.2 * mean sft 0.5 = 0.74366934
    total, terms = dpo_loss(PAIRS, ["sigmoid", "sft"], BETA, weights=[1.0, 0.2])
    assert_close(total, torch.tensor(0.74366934))
    assert_close(terms["sft"], torch.tensor(0.5))


def test_unknown_loss_and_weight_mismatch() -> None:
    with pytest.raises(ValueError, match="unknown DPO loss 'kto'; expected one of sigmoid"):
        get_loss("kto")
    with pytest.raises(ValueError, match=r"\[1.0\] vs \['sigmoid', 'sft'\]"):
        dpo_loss(PAIRS, ["sigmoid", "sft"], BETA, weights=[1.0])


def test_loss_does_not_change_its_inputs_and_gives_gradients() -> None:
    chosen = torch.tensor([-1.0, -2.0], requires_grad=True)
    pairs = PairLogps(chosen, PAIRS.rejected, PAIRS.ref_chosen, PAIRS.ref_rejected, PAIRS.chosen_tokens,
                      PAIRS.rejected_tokens)
    loss, _ = dpo_loss(pairs, ["sigmoid"], BETA)
    loss.backward()
    # d/dchosen of mean(-log s(beta h)) = -beta * s(-x) / 2: -0.25 * s(-1) = -0.06723536; -0.25 * s(0.5) = -0.15561483
    assert_close(chosen.grad, torch.tensor([-0.06723536, -0.15561483]))
    assert_close(chosen.detach(), torch.tensor([-1.0, -2.0]))


def test_reward_metrics() -> None:
    m = reward_metrics(PAIRS, BETA)
    # beta * log-ratios: chosen 0.5 * [0.5, -1], rejected 0.5 * [-1.5, 0]
    assert_close(m["rewards/chosen"], torch.tensor([0.25, -0.5]))
    assert_close(m["rewards/rejected"], torch.tensor([-0.75, 0.0]))
    assert_close(m["rewards/accuracies"], torch.tensor([1.0, 0.0]))
    assert_close(m["rewards/margins"], torch.tensor([1.0, -0.5]))
    assert_close(m["logps/chosen"], torch.tensor([-1.0, -2.0]))


# --------------------------------------------------------------------------- metrics


def test_sequence_kl_by_hand() -> None:
    # Position 0: p = softmax(0, 0) = (1/2, 1/2), q = softmax(0, log 3) = (1/4, 3/4):
    # KL = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3) = 0.14384104. Position 1 is masked out.
    policy = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])
    reference = torch.tensor([[[0.0, math.log(3.0)], [0.0, 5.0]]])
    kl = sequence_kl(policy, reference, torch.tensor([[1, 0]]))
    assert_close(kl, torch.tensor([0.14384104]))
    assert_close(sequence_kl(policy, policy, torch.ones(1, 2)), torch.zeros(1))


def test_win_rate_counts_ties_half() -> None:
    # win, tie, loss, win -> (1 + 0.5 + 0 + 1) / 4
    assert win_rate_and_se(torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([0.0, 2.0, 4.0, -1.0]))[0] == 0.625
    with pytest.raises(ValueError, match="equal, non-empty"):
        win_rate_and_se(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))


def test_falling_steadily() -> None:
    # Least-squares slope of [-10, -11, -12.5, -13, -15] is -12/10 = -1.2 per log: a drop of 4.8 over 4 steps.
    assert falling_steadily([-10, -11, -12.5, -13, -15], window=5, min_drop=2.0)
    assert not falling_steadily([-10, -10.2, -9.9, -10.1, -10.0], window=5, min_drop=2.0)  # flat, noisy
    assert not falling_steadily([-10, -10.1, -10.2, -10.3, -10.4], window=5, min_drop=2.0)  # falls, but 0.4 nats
    assert not falling_steadily([-10, -20, -9, -21, -8], window=5, min_drop=2.0)  # zig-zag: 2 of 4 steps down
    assert not falling_steadily([-10, -12, -14], window=5, min_drop=2.0)  # not enough logs yet


def _feed(series: list[float], caplog: pytest.LogCaptureFixture):  # noqa: ANN202
    from align.stages.dpo.trainer import FallingChosenLogpsCallback

    callback = FallingChosenLogpsCallback(window=4, min_drop=1.0)
    with caplog.at_level(logging.WARNING, logger="align.dpo"):
        for step, value in enumerate(series, start=1):
            state = SimpleNamespace(global_step=step, is_world_process_zero=True)
            callback.on_log(None, state, None, logs={"loss": 0.5, "logps/chosen": value})
            callback.on_log(None, state, None, logs={"eval_logps/chosen": -100.0})  # eval logs are ignored
    return callback


def test_falling_chosen_logps_warning(caplog: pytest.LogCaptureFixture) -> None:
    callback = _feed([-50, -50.5, -51.5, -52.5, -53.5, -54.5, -55.5], caplog)
    assert callback.warnings == [4]  # warned when the first window was full, then quiet for one window
    assert "chosen log-prob fell steadily" in caplog.text


def test_flat_chosen_logps_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    callback = _feed([-50, -50.3, -49.8, -50.1, -50.0, -49.9, -50.2], caplog)
    assert callback.warnings == [] and "fell steadily" not in caplog.text


# --------------------------------------------------------------------------- packing


def test_packing_docstring_example() -> None:
    assert doctest.testmod(align.stages.dpo.packing).failed == 0


def test_first_fit_decreasing() -> None:
    # longest first: 5 -> bin0 (2 left), 4 -> bin1 (3 left), 3 -> bin1 (0 left), 2 -> bin0 (0 left)
    assert first_fit_decreasing([5, 3, 4, 2], capacity=7) == [[0, 3], [2, 1]]
    assert first_fit_decreasing([9, 1], capacity=4) == [[0], [1]]  # too long for a bin: a bin of its own


def test_rows_end_in_their_own_pad_block_and_unpack_to_padded() -> None:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    examples = [
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
        {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11, 12, 13]},
    ]
    args = ([e["prompt_ids"] for e in examples], [e["chosen_ids"] for e in examples],
            [e["rejected_ids"] for e in examples])
    batch = pack_preference(*args, pad_token_id=0, row_tokens=6)
    # sequence lengths 5, 3, 4, 6 (chosen 0, 1, rejected 0, 1); capacity 6, longest first: no two fit together,
    # so rows hold sequences 3 | 0 + pad | 2 + pad | 1 + pad
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] == 6
    row = batch["sequence_index"][1].tolist()
    assert row == [0, 0, 0, 0, 0, -1]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0]  # the pad run restarts at 0
    assert batch["attention_mask"].sum().item() == 5 + 3 + 4 + 6

    padded = unpack_to_padded(batch, pad_token_id=0)
    expected = DataCollatorForPreference(pad_token_id=0)(examples)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(padded[key], expected[key]), key


def test_scored_tokens_skip_sequence_starts_and_sums_follow_sequences() -> None:
    # Two sequences packed: [a b | c d e], completion = b, c (c starts a sequence: nothing predicts it), d, e.
    completion = torch.tensor([[0, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 0, 1, 2]])
    scored = scored_token_mask(completion, positions)
    assert scored.tolist() == [[True, False, True, True]]
    per_token = torch.tensor([[-1.0, 0.0, -2.0, -3.0]])  # values for tokens b, c (not scored), d, e
    sums = sequence_sums(per_token, torch.tensor([[0, 0, 1, 1, 1]]), 2)
    assert_close(sums, torch.tensor([-1.0, -5.0]))


def test_pack_truncates_like_the_padded_collator() -> None:
    batch = pack_preference([[1, 2, 3]], [[4, 5, 6]], [[7]], pad_token_id=0, max_length=4)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 1, 2, 3, 7]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 0, 0, 0, 1]]


# --------------------------------------------------------------------------- recipe


def _recipe(**dpo) -> DPORecipe:  # noqa: ANN003
    return validate(DPORecipe, {"data": {"path": "pairs.jsonl"}, "dpo": dpo}, source="dpo.yaml")


def test_recipe_defaults_and_single_loss_name() -> None:
    recipe = _recipe(loss="ipo")
    assert recipe.dpo.loss == ["ipo"] and recipe.stage == "dpo" and recipe.training.output_dir == "runs/dpo"


@pytest.mark.parametrize(
    ("dpo", "message"),
    [
        ({"loss": ["sigmoid", "sft"], "loss_weights": [1.0]}, r"loss_weights=\[1.0\] needs one weight per loss in loss=\['sigmoid', 'sft'\]"),
        ({"label_smoothing": 0.1}, r"label_smoothing=0.1 is read only by the conservative and robust losses, but loss=\['sigmoid'\]"),
        ({"pack_row_tokens": 512, "padding_free": False}, "pack_row_tokens=512 needs padding_free=true"),
        ({"loss": ["sigmoid", "sigmoid"]}, "names a loss twice"),
        ({"loss": "kto"}, "dpo.loss.0"),
        ({"label_smoothing": 0.5, "loss": "robust"}, "dpo.label_smoothing"),
        ({"bata": 0.1}, "did you mean 'beta'"),
    ],
)
def test_recipe_errors_name_key_and_values(dpo: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        _recipe(**dpo)


def test_padding_free_rejects_prompt_tuning() -> None:
    with pytest.raises(RecipeError, match="padding_free=true cannot pack with model.method=prompt_tuning"):
        validate(DPORecipe, {"data": {"path": "p.jsonl"}, "model": {"method": "prompt_tuning"},
                             "dpo": {"padding_free": True}})


def test_shipped_recipe_validates() -> None:
    from align.recipe import load_recipe

    recipe = load_recipe(DPORecipe, Path(__file__).parents[1] / "recipes" / "dpo.yaml", ["dpo.loss=[sigmoid, sft]"])
    assert recipe.dpo.loss == ["sigmoid", "sft"] and recipe.dpo.padding_free


def test_held_out_warning_when_unseen_pairs_are_not_learned() -> None:
    from align.stages.dpo import held_out_warning

    assert held_out_warning({"train/loss": 0.2}) is None  # no eval data: nothing to say
    assert held_out_warning({"eval/rewards/margins": 0.4, "eval/rewards/accuracies": 0.8}) is None
    message = held_out_warning({"eval/rewards/margins": 0.01, "eval/rewards/accuracies": 0.5})
    assert "did not generalise" in message and "margin is 0.010" in message and "ln 2" in message
