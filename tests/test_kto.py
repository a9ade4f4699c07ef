"""`align kto` on a tiny Llama: thumbs from ratings, the KTO loss by hand at the start, the chosen reward rises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from align.config import KTORecipe
from align.data.feedback import to_feedback
from align.recipe import validate
from align.run import read_metrics
from align.stages import kto as kto_stage

QUESTIONS = ["What is the fox?", "Is the dog lazy?", "Say yes.", "Answer politely.", "What is Paris?", "Greet me.",
             "Name a colour.", "Is it great?"]
GOOD, BAD = "good, good and great.", "bad, terrible and bad."


@pytest.fixture
def ratings(tmp_path: Path) -> Path:
    path = tmp_path / "thumbs.jsonl"
    rows = [{"prompt": q, "response": r, "score": s} for q in QUESTIONS for r, s in ((GOOD, 1), (BAD, 0))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_recipe(model_dir: Path, data: Path, out: Path, max_steps: int = 10, **kto) -> KTORecipe:  # noqa: ANN003
    return validate(KTORecipe, {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data)},
        "training": {"output_dir": str(out), "max_steps": max_steps, "per_device_batch_size": 4, "learning_rate": 5e-3,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 64,
                     "report_to": "none"},
        "kto": {"beta": 0.5, **kto},
    })


def test_feedback_from_ratings_and_pairs() -> None:
    assert to_feedback([{"prompt": "p", "response": "a", "score": 0.9}, {"prompt": "p", "response": "b", "score": 0.5}],
                       "rating", threshold=0.5) == [{"prompt": "p", "completion": "a", "label": True},
                                                    {"prompt": "p", "completion": "b", "label": False}]
    assert [r["label"] for r in to_feedback([{"prompt": "p", "chosen": "a", "rejected": "b"}], "preference")] == [True, False]


def test_loss_at_the_reference_by_hand(tiny_llama_dir: Path, ratings: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Policy == reference: every log-ratio r is 0 and the KL reference point z is 0, so a thumbs-up costs
    # lambda_D (1 - sigmoid(0)) = 2 x 0.5 = 1 and a thumbs-down lambda_U (1 - sigmoid(0)) = 1 x 0.5 = 0.5.
    # The batch of 4 holds 2 of each (rows alternate up/down, no shuffle): mean (1 + 1 + 0.5 + 0.5) / 4 = 0.75.
    captured = {}
    original = kto_stage.KTOTrainer

    class Capture(original):
        def train(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            batch = next(iter(self.get_eval_dataloader(self.train_dataset)))
            with torch.no_grad():
                captured["loss"] = self._compute_loss(self.model, batch, False)
                captured["labels"] = batch["label"]
            return super().train(*args, **kwargs)

    monkeypatch.setattr(kto_stage, "KTOTrainer", Capture)
    kto_stage.run(make_recipe(tiny_llama_dir, ratings, tmp_path / "kto", max_steps=1, desirable_weight=2.0))
    assert sorted(captured["labels"].tolist()) == [False, False, True, True]
    assert_close(captured["loss"], torch.tensor(0.75), rtol=0, atol=1e-5)


def test_chosen_reward_rises(tiny_llama_dir: Path, ratings: Path, tmp_path: Path) -> None:
    out = tmp_path / "kto"
    result = kto_stage.run(make_recipe(tiny_llama_dir, ratings, out))
    chosen = [m["rewards/chosen"] for m in read_metrics(out) if "rewards/chosen" in m]
    rejected = [m["rewards/rejected"] for m in read_metrics(out) if "rewards/rejected" in m]
    print("kto chosen reward", chosen[0], "->", chosen[-1], "rejected", rejected[0], "->", rejected[-1])
    assert len(chosen) == 10
    assert abs(chosen[0]) < 1e-3 and chosen[-1] > 0.5 > rejected[-1], (chosen, rejected)
    assert result.metrics["kto/rewards/chosen"] == pytest.approx(chosen[-1])


def test_one_sided_feedback_is_refused(tiny_llama_dir: Path, ratings: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every training example is a thumbs-down"):
        kto_stage.run(make_recipe(tiny_llama_dir, ratings, tmp_path / "kto", threshold=5.0))
