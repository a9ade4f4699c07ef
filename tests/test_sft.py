"""SFT stage on a tiny Llama: the loss goes down for every method; frozen weights stay put; resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from align.config import SFTRecipe
from align.recipe import validate
from align.run import StageResult
from align.stages import sft as sft_stage
from align.run import read_metrics

QA = [
    ("What colour is the sky?", "The sky is blue."),
    ("Say yes.", "yes"),
    ("Say no.", "no"),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("Greet me.", "Hello! Thank you."),
    ("Name a fox trait.", "The fox is quick and brown."),
    ("Is the dog lazy?", "Yes, the dog is lazy."),
    ("What is the capital of France?", "Paris is the capital of France."),
]


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    path = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def make_recipe(model_dir: Path, data: Path, out: Path, method: str, **training) -> SFTRecipe:
    return validate(
        SFTRecipe,
        {
            "model": {"name_or_path": str(model_dir), "method": method, "partial": {"trainable_top_k": 1},
                      "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "prompt_tuning": {"num_virtual_tokens": 4}},
            "data": {"path": str(data)},
            "training": {
                "output_dir": str(out), "max_steps": 12, "per_device_batch_size": 4, "learning_rate": 1e-2,
                "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 64,
                "report_to": "none", **training,
            },
        },
    )


def losses(out: Path) -> list[float]:
    return [m["train/loss"] for m in read_metrics(out) if "train/loss" in m]


# Adapters start at zero / random soft prompts and need a larger step to move in 12 steps.
@pytest.mark.parametrize(
    ("method", "lr"), [("full", 1e-2), ("lora", 5e-2), ("qlora", 5e-2), ("prompt_tuning", 3e-1), ("partial", 1e-2)]
)
def test_loss_goes_down_and_output_loads(
    tiny_llama_dir: Path, sft_file: Path, tmp_path: Path, method: str, lr: float
) -> None:
    out = tmp_path / method
    result = sft_stage.run(make_recipe(tiny_llama_dir, sft_file, out, method, learning_rate=lr))
    curve = losses(out)
    assert len(curve) == 12
    print(method, curve)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.5, curve
    assert StageResult.load(out).metrics["train/steps"] == 12 == result.metrics["train/steps"]
    assert (out / "recipe.yaml").is_file() and (out / "README.md").is_file() and (out / "tokenizer.json").is_file()
    if method in ("lora", "qlora"):
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
    if method == "prompt_tuning":
        assert (out / "adapter_config.json").is_file()
    else:  # a full model at the run root, merged for LoRA
        model = AutoModelForCausalLM.from_pretrained(out)
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_partial_keeps_lower_layers_bit_identical(tiny_llama_dir: Path, sft_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial"
    sft_stage.run(make_recipe(tiny_llama_dir, sft_file, out, "partial"))
    before, after = load_file(tiny_llama_dir / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "nothing trained"
    assert all(name.startswith(("model.layers.3.", "model.norm", "lm_head")) for name in changed), changed
    assert not any(name.startswith("model.layers.0.") for name in changed)


class _Interrupt(TrainerCallback):
    """Crash once step 4 is logged (after checkpoint-3), as a run killed between checkpoints would."""

    def on_log(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == 4:
            raise KeyboardInterrupt("simulated crash")


def test_resume_continues_from_last_checkpoint(
    tiny_llama_dir: Path, sft_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "resume"
    recipe = make_recipe(tiny_llama_dir, sft_file, out, "full", max_steps=6, save_steps=3)
    original = sft_stage.trainer_callbacks
    monkeypatch.setattr(sft_stage, "trainer_callbacks", lambda *a: original(*a) + [_Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        sft_stage.run(recipe)
    assert (out / "checkpoint-3").is_dir() and StageResult.load(out) is None
    monkeypatch.setattr(sft_stage, "trainer_callbacks", original)
    assert [m["step"] for m in read_metrics(out) if "train/loss" in m] == [1, 2, 3, 4]  # step 4 logged, then the crash
    result = sft_stage.run(recipe.model_copy(update={"training": recipe.training.model_copy(update={"resume": True})}))
    resumed = [(m["step"], m["train/loss"]) for m in read_metrics(out) if "train/loss" in m]
    assert [step for step, _ in resumed] == [1, 2, 3, 4, 5, 6]  # step 4 of the crashed run dropped, no step twice
    assert result.metrics["train/steps"] == 6
    sft_stage.run(make_recipe(tiny_llama_dir, sft_file, tmp_path / "straight", "full", max_steps=6, save_steps=3))
    straight = [m["train/loss"] for m in read_metrics(tmp_path / "straight") if "train/loss" in m]
    assert [loss for _, loss in resumed] == pytest.approx(straight, rel=1e-4)  # the same run, interrupted or not
