"""SimPO and ORPO in the DPO loss table: by hand on two pairs, and on a tiny Llama the chosen reward rises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from align.config import DPOOptions, DPORecipe
from align.ops.dpo import LOSSES, REFERENCE_FREE, PairLogps, dpo_loss, log_odds
from align.recipe import validate
from align.run import read_metrics
from align.stages import dpo as dpo_stage

# Policy sums chosen [-1, -2] over [2, 4] tokens, rejected [-3, -1] over [1, 2]: per-token means
# chosen [-0.5, -0.5], rejected [-3, -0.5]. The reference values must not matter.
PAIRS = PairLogps.of(
    chosen=[-1.0, -2.0], rejected=[-3.0, -1.0], ref_chosen=[-9.0, 4.0], ref_rejected=[7.0, -1.0],
    chosen_tokens=[2.0, 4.0], rejected_tokens=[1.0, 2.0],
)
BETA = 0.5


def test_simpo_by_hand() -> None:
    # beta * (mean_c - mean_r) - gamma with gamma 0.5: 0.5 * 2.5 - 0.5 = 0.75; 0.5 * 0 - 0.5 = -0.5.
    # -log sigmoid(0.75) = log(1 + e^-0.75) = 0.38687101; -log sigmoid(-0.5) = log(1 + e^0.5) = 0.97407698
    assert_close(LOSSES["simpo"](PAIRS, BETA, 0.0, gamma=0.5), torch.tensor([0.38687101, 0.97407698]))
    total, _ = dpo_loss(PAIRS, ["simpo"], BETA, simpo_gamma=0.0)
    # gamma 0: x = [1.25, 0]; (log(1 + e^-1.25) + log 2) / 2 = (0.25192908 + 0.69314718) / 2 = 0.47253813
    assert_close(total, torch.tensor(0.47253813))


def test_orpo_by_hand() -> None:
    # log odds(m) = m - log(1 - e^m): m = -0.5 -> -0.5 + 0.93275213 = 0.43275213; m = -3 -> -3 + 0.05106918 = -2.94893082
    assert_close(log_odds(torch.tensor([-0.5, -3.0])), torch.tensor([0.43275213, -2.94893082]))
    # pair 1: ratio 3.38168295, -log sigmoid = log(1 + e^-3.38168295) = 0.03342530; pair 2: ratio 0, log 2 = 0.69314718.
    # loss = chosen NLL per token 0.5 + beta * that: 0.5 + 0.01671265 = 0.51671265; 0.5 + 0.34657359 = 0.84657359
    assert_close(LOSSES["orpo"](PAIRS, BETA, 0.0), torch.tensor([0.51671265, 0.84657359]))


def test_log_odds_is_finite_at_probability_one() -> None:
    assert torch.isfinite(log_odds(torch.tensor([0.0, -1e-9]))).all()


def test_reference_free_set_and_schema() -> None:
    assert {"simpo", "orpo"} <= REFERENCE_FREE and "sigmoid" not in REFERENCE_FREE
    with pytest.raises(ValueError, match="orpo already includes the chosen NLL"):
        DPOOptions(loss=["orpo", "sft"])
    with pytest.raises(ValueError, match="simpo_gamma=1.0 is read only by the simpo loss"):
        DPOOptions(loss=["sigmoid"], simpo_gamma=1.0)


QUESTIONS = ["What is the fox?", "Is the dog lazy?", "Say yes.", "Answer politely.", "What is Paris?", "Greet me.",
             "Name a colour.", "Is it great?"]


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_chosen_reward_rises_without_a_reference(
    tiny_llama_dir: Path, tmp_path: Path, loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "chosen": "good, good and great.",
                                        "rejected": "bad, terrible and bad."}) + "\n" for q in QUESTIONS))
    loaded = []
    monkeypatch.setattr(dpo_stage, "load_reference", lambda cfg: loaded.append(cfg))
    out = tmp_path / loss
    recipe = validate(DPORecipe, {
        "model": {"name_or_path": str(tiny_llama_dir)},
        "data": {"path": str(data)},
        "training": {"output_dir": str(out), "max_steps": 8, "per_device_batch_size": 4, "learning_rate": 1e-2,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 64,
                     "report_to": "none"},
        "dpo": {"beta": 0.5, "loss": [loss]},
        "eval": {"enabled": False},
    })
    dpo_stage.run(recipe)
    assert loaded == []  # reference-free: the stage loads no reference
    margins = [m["rewards/margins"] for m in read_metrics(out) if "rewards/margins" in m]
    chosen = [m["logps/chosen"] for m in read_metrics(out) if "logps/chosen" in m]
    print(loss, "margin", round(margins[0], 2), "->", round(margins[-1], 2))
    assert len(margins) == 8
    # With no reference the implicit reward is beta x log pi(y): chosen up relative to rejected, chosen itself up.
    assert margins[-1] > margins[0] + 1.0, margins
    assert chosen[-1] > chosen[0], chosen
