"""`align dpo` on a tiny Llama: a toy preference ("good" over "bad") is learned, LoRA leaves the base
bit-identical, rankings train as pairs, and the end-of-run eval writes its samples and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.config import DPORecipe
from align.recipe import validate
from align.run import StageResult
from align.stages import dpo as dpo_stage
from align.run import read_metrics

QUESTIONS = [
    "What is the fox?", "Is the dog lazy?", "Say yes.", "Answer politely.", "What is Paris?", "Greet me.",
    "Name a colour.", "Is it great?", "What is 2 + 3?", "Thank you!", "Is the sky blue?", "Say no.",
]
GOOD, OK, BAD = "good, good and great.", "maybe, yes.", "bad, terrible and bad."


@pytest.fixture
def preference_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "chosen": GOOD, "rejected": BAD}) + "\n" for q in QUESTIONS))
    return path


@pytest.fixture
def ranking_file(tmp_path: Path) -> Path:
    """Chat prompts, three ranked responses each: 3 pairs per prompt once expanded."""
    path = tmp_path / "rankings.jsonl"
    rows = [{"prompt": [{"role": "user", "content": q}], "responses": [BAD, GOOD, OK], "ranks": [3, 1, 2]}
            for q in QUESTIONS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def reward_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reward_models import RewardModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("reward")
    RewardModel.from_encoder(tiny_bert_dir, pooling="mean", max_length=64).save_pretrained(out)
    return out


def make_recipe(model_dir: Path, data: Path, out: Path, method: str = "full", *, kind: str | None = None,
                eval_: dict | None = None, **dpo) -> DPORecipe:  # noqa: ANN003
    return validate(DPORecipe, {
        "model": {"name_or_path": str(model_dir), "method": method, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "data": {"path": str(data), "kind": kind, "eval_fraction": 0.25},
        "training": {"output_dir": str(out), "max_steps": 12, "per_device_batch_size": 4, "learning_rate": 1e-2,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 64,
                     "report_to": "none"},
        "dpo": {"beta": 0.1, **dpo},
        "eval": {"num_prompts": 3, "max_new_tokens": 6, **(eval_ or {})},
    })


def curve(out: Path, key: str) -> list[float]:
    return [m[key] for m in read_metrics(out) if key in m]


def assert_learned(out: Path) -> None:
    accuracy, margin = curve(out, "rewards/accuracies"), curve(out, "rewards/margins")
    assert len(accuracy) == 12 and len(margin) == 12
    # Step 1: policy == reference, so every implicit reward is ~0 (a padding-free or precomputed reference differs
    # by float rounding, ~1e-6 nats, which the thresholded accuracy would turn into any value: not asserted).
    assert abs(margin[0]) < 1e-3, margin
    assert sum(accuracy[-3:]) / 3 >= 0.9, accuracy
    assert sum(margin[-3:]) / 3 > 0.5 and margin[-1] > margin[1], margin
    for key in ("train/loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert all(torch.isfinite(torch.tensor(curve(out, key)))), key


def test_full_dpo_learns_toy_preference_and_evaluates(tiny_llama_dir: Path, preference_file: Path, tmp_path: Path,
                                                      reward_dir: Path) -> None:
    out = tmp_path / "full"
    result = dpo_stage.run(make_recipe(tiny_llama_dir, preference_file, out, eval_={"reward_model": str(reward_dir)}))
    assert_learned(out)
    metrics = StageResult.load(out).metrics
    assert metrics["train/steps"] == 12 == result.metrics["train/steps"]
    assert metrics["eval/rewards/accuracies"] == 1.0  # held-out pairs, same toy preference
    assert metrics["eval/kl_to_reference"] > 0 and 0.0 <= metrics["eval/win_rate"] <= 1.0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"prompt", "policy", "reference", "kl", "reward_policy", "reward_reference"} <= rows[0].keys()
    assert (out / "samples.md").read_text().count("\n|") == 2 + 3  # header, rule, one line per prompt
    for name in ("recipe.yaml", "README.md", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name


def test_lora_padding_free_on_rankings_keeps_base_bit_identical(
    tiny_llama_dir: Path, ranking_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lora"
    built = []
    original = dpo_stage.build_trainer
    monkeypatch.setattr(dpo_stage, "build_trainer", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    recipe = make_recipe(tiny_llama_dir, ranking_file, out, "lora", kind="ranking", padding_free=True,
                         loss=["sigmoid", "sft"], loss_weights=[1.0, 0.1])
    result = dpo_stage.run(recipe)
    assert_learned(out)
    assert curve(out, "loss/sft") and curve(out, "loss/sigmoid")  # each term of a combined loss is logged
    assert result.metrics["eval/kl_to_reference"] > 0 and "eval/win_rate" not in result.metrics  # no reward model

    trainer, _ = built[0]
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]  # no reference copy at all
    base = load_file(tiny_llama_dir / "model.safetensors")
    trained = {name.replace("base_model.model.", "").replace(".base_layer", ""): p.detach()
               for name, p in trainer.model.named_parameters() if "lora_" not in name}
    assert base.keys() == trained.keys()
    assert all(torch.equal(base[name], trained[name]) for name in base)  # bit-identical
    merged = load_file(out / "model.safetensors")
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "adapter" / "ref").exists()


def test_precompute_ref_trains_without_a_reference_in_memory(
    tiny_llama_dir: Path, preference_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = []
    original = dpo_stage.load_reference
    monkeypatch.setattr(dpo_stage, "load_reference", lambda cfg: loaded.append(cfg) or original(cfg))
    out = tmp_path / "pre"
    result = dpo_stage.run(make_recipe(tiny_llama_dir, preference_file, out, precompute_ref=True, padding_free=True))
    assert_learned(out)
    assert len(loaded) == 1  # only for the end-of-run eval, after training
    assert result.metrics["eval/kl_to_reference"] > 0
