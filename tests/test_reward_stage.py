"""`align reward` end to end on the tiny BERT: learnable synthetic rules, mixed kinds, LoRA, bad data."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from align.config import DataConfig, RewardRecipe
from align.data import DataError
from align.recipe import load_recipe
from align.stages.reward import load_units, run
from align.run import read_metrics
from reward_models import RewardScorer

# Words of the tiny tokenizer's vocabulary (tests/tiny_models.py CORPUS), so nothing maps to [UNK].
FILLER = (
    "the quick brown fox jumps over lazy dog alignment makes a language model helpful honest harmless "
    "what is capital of france paris answer question politely briefly thank you yes no maybe please"
).split()
PROMPTS = ["what is the capital of france ?", "answer the question politely .", "is the fox quick ?", "thank you !"]


def response(rng: random.Random, word: str | None, count: int = 1) -> str:
    words = rng.sample(FILLER, 5) + ([word] * count if word else [])
    rng.shuffle(words)
    return " ".join(words)


def preference_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Rule: a response with "good" beats one with "bad"; the rest is random filler."""
    rng = random.Random(seed)
    return [
        {"prompt": rng.choice(PROMPTS), "chosen": response(rng, "good"), "rejected": response(rng, "bad")}
        for _ in range(n)
    ]


def rating_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Rule: the score is the number of "good" words (0 to 3)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 3)
        rows.append({"prompt": rng.choice(PROMPTS), "response": response(rng, "good", k), "score": float(k)})
    return rows


def ranking_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Three responses with 2, 1 and 0 "good"; every fourth row is a tied pair (two with one "good")."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 4 == 0:
            rows.append({"prompt": rng.choice(PROMPTS), "responses": [response(rng, "good"), response(rng, "good")],
                         "ranks": [1, 1]})
        else:
            rows.append({"prompt": rng.choice(PROMPTS),
                         "responses": [response(rng, None), response(rng, "good", 2), response(rng, "good")],
                         "ranks": [3, 1, 2]})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def recipe(tiny_bert_dir: Path, out: Path, data: Any, model: dict | None = None, **training: Any) -> RewardRecipe:
    return RewardRecipe.model_validate({
        "model": {"name_or_path": str(tiny_bert_dir), "method": "full", **(model or {})},
        "data": data,
        "training": {
            "output_dir": str(out), "max_steps": 80, "per_device_batch_size": 16, "learning_rate": 1e-3,
            "lr_scheduler": "constant", "max_length": 48, "logging_steps": 10, "save_steps": None,
            "report_to": "none", **training,
        },
        "reward": {"pooling": "mean", "head_dropout": 0.0, "clip": 10.0},
    })


def test_preferences_learn_the_rule_and_normalise(tiny_bert_dir, tmp_path):
    data = {
        "path": write_jsonl(tmp_path / "train.jsonl", preference_rows(300, seed=0)),
        "eval_path": write_jsonl(tmp_path / "eval.jsonl", preference_rows(100, seed=1)),
    }
    result = run(recipe(tiny_bert_dir, tmp_path / "run", data, eval_steps=40))
    out = result.output_dir

    assert result.metrics["eval/accuracy"] > 0.9, result.metrics
    logged = read_metrics(out)
    losses = [row["train/loss"] for row in logged if "train/loss" in row]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert [row["step"] for row in logged if "eval/accuracy" in row] == [40, 80]  # every 40 steps; the last is the final
    assert (out / "reliability.png").stat().st_size > 0 and (out / "stage_result.json").is_file()
    bins = json.loads((out / "reliability.json").read_text())
    assert sum(b["count"] for b in bins) == 2 * 100  # each eval pair in both orientations

    # Normalised scores of the training responses: mean 0, std 1 (population std, as stored).
    scorer = RewardScorer.from_pretrained(out, device="cpu")
    rows = preference_rows(300, seed=0)
    texts = {(r["prompt"], t) for r in rows for t in (r["chosen"], r["rejected"])}
    scores = scorer.score([p for p, _ in texts], [t for _, t in texts]).double()
    assert abs(float(scores.mean())) < 1e-3 and abs(float(scores.std(unbiased=False)) - 1.0) < 1e-3
    assert scorer.model.reward_config.clip == 10.0 and scorer.model.reward_config.normalized


def test_ratings_reach_spearman_above_point_eight(tiny_bert_dir, tmp_path):
    data = {
        "path": write_jsonl(tmp_path / "train.jsonl", rating_rows(300, seed=0)),
        "eval_path": write_jsonl(tmp_path / "eval.jsonl", rating_rows(100, seed=1)),
        "kind": "rating",
    }
    result = run(recipe(tiny_bert_dir, tmp_path / "run", data))
    assert result.metrics["eval/rating_spearman"] > 0.8, result.metrics
    stats = json.loads((result.output_dir / "data_stats.json").read_text())
    assert stats["ratings"]["rating_mean"] == pytest.approx(sum(r["score"] for r in rating_rows(300, 0)) / 300)


def test_mixed_kinds_with_lora_train_together_and_resume(tiny_bert_dir, tmp_path):
    data = [
        {"path": write_jsonl(tmp_path / "prefs.jsonl", preference_rows(40, seed=0))},
        {"path": write_jsonl(tmp_path / "ranks.jsonl", ranking_rows(40, seed=0)), "kind": "ranking"},
        {"path": write_jsonl(tmp_path / "ratings.jsonl", rating_rows(40, seed=0)), "kind": "rating",
         "eval_fraction": 0.25},
    ]
    lora = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "key", "value"]}}
    first = recipe(tiny_bert_dir, tmp_path / "run", data, model=lora, max_steps=4, save_steps=4, logging_steps=1)
    run(first)
    resumed = first.model_copy(update={"training": first.training.model_copy(update={"max_steps": 8, "resume": True})})
    result = run(resumed)

    logged = read_metrics(result.output_dir)
    assert logged[-1]["step"] == 8 and result.metrics["train/steps"] == 8
    kinds = {key for row in logged for key in row if key.startswith("train/loss_")}
    assert kinds == {"train/loss_preference", "train/loss_ranking", "train/loss_tie", "train/loss_rating"}
    assert all(math.isfinite(row["train/loss"]) for row in logged if "train/loss" in row)
    assert {"eval/rating_spearman", "eval/loss"} <= set(result.metrics)

    # LoRA was merged into query/key/value; everything else in the encoder is bit-identical to the base.
    base = load_file(str(tiny_bert_dir / "model.safetensors"))
    trained = load_file(str(result.output_dir / "model.safetensors"))
    assert set(trained) == set(base)
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed and all(any(p in name for p in (".query.weight", ".key.weight", ".value.weight")) for name in changed)


def test_bad_rows_are_named_errors(tmp_path):
    cases = [
        ({"prompt": "hi", "chosen": "", "rejected": "no"}, "preference", "chosen"),
        ({"prompt": "hi", "response": "yes"}, "rating", "score"),
        ({"prompt": "hi", "response": "yes", "score": float("nan")}, "rating", "score"),
        ({"prompt": "hi", "responses": ["a", "b", "c"], "ranks": [1, 2]}, "ranking", "ranks"),
    ]
    for i, (bad, kind, field) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", [{"prompt": "ok", "response": "fine", "score": 1.0}
                                                         if kind == "rating" else preference_rows(1, 0)[0]
                                                         if kind == "preference" else ranking_rows(2, 0)[1], bad])
        with pytest.raises(DataError) as err:
            load_units([DataConfig(path=path, kind=kind)])
        assert err.value.field == field and f"bad{i}.jsonl:2" in str(err.value), str(err.value)


def test_recipe_schema(tiny_bert_dir, tmp_path):
    shipped = load_recipe(RewardRecipe, "recipes/reward.yaml")
    assert shipped.model.name_or_path == "minilm-l6" and shipped.data[0].path == "examples/data/preferences_demo.jsonl"
    assert len(load_recipe(RewardRecipe, "recipes/reward_mixed.yaml").data) == 3
    with pytest.raises(ValueError, match="model.method='qlora'"):
        RewardRecipe.model_validate({"data": {"path": "x"}, "model": {"method": "qlora"}})
    with pytest.raises(ValueError, match="did you mean 'pooling'"):
        RewardRecipe.model_validate({"data": {"path": "x"}, "reward": {"poolin": "cls"}})
    with pytest.raises(ValueError, match="training.eval_steps=5 needs eval data"):
        recipe(tiny_bert_dir, tmp_path / "run", {"path": "p.jsonl"}, eval_steps=5)


@pytest.mark.parametrize("method", ["feature_extraction", "partial"])
def test_frozen_encoders_keep_their_weights(tiny_bert_dir, tmp_path, method):
    """feature_extraction trains the head alone (the encoder stays bit-identical); partial, the top layer too."""
    from safetensors.torch import load_file

    data = {"path": write_jsonl(tmp_path / "train.jsonl", preference_rows(200, seed=0)),
            "eval_path": write_jsonl(tmp_path / "eval.jsonl", preference_rows(100, seed=1))}
    model = {"method": method, "partial": {"trainable_top_k": 1, "train_head": False}}
    result = run(recipe(tiny_bert_dir, tmp_path / method, data, model=model, learning_rate=1e-2))
    before, after = load_file(tiny_bert_dir / "model.safetensors"), load_file(result.output_dir / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    if method == "feature_extraction":
        assert not changed
    else:
        assert changed and all(".layer.1." in name for name in changed), changed  # the tiny BERT has layers 0 and 1
    assert result.metrics["eval/accuracy"] > 0.75, result.metrics


def test_cached_features_skip_the_encoder_and_match_it(tiny_bert_dir):
    from reward_models.model import RewardModel
    from reward_models.text import PairEncoder

    model = RewardModel.from_encoder(tiny_bert_dir, max_length=32, head_dropout=0.0)
    batch = PairEncoder(model.tokenizer, 32)(["is the fox quick ?"] * 2, ["yes the fox is quick", "no"])
    plain = model(**batch).detach()
    model.cache_features()
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    first, second = model(**batch), model(**batch)
    torch.testing.assert_close(first.detach(), plain)
    torch.testing.assert_close(second.detach(), plain)
    assert len(calls) == 1  # the second pass read the cache
    second.sum().backward()
    assert model.head.weight.grad is not None and all(p.grad is None for p in model.encoder.parameters())


def test_layer_lr_decay_lowers_the_rate_block_by_block(tiny_bert_dir, tmp_path):
    """reward.layer_lr_decay=0.5: head at the full rate, each block below at half the one above, embeddings last."""
    from transformers import TrainingArguments

    from align.stages.reward import build_model
    from reward_models.objective import LossSpec
    from reward_models.trainer import RewardTrainer

    data = {"path": write_jsonl(tmp_path / "train.jsonl", preference_rows(8, seed=0))}
    model = build_model(recipe(tiny_bert_dir, tmp_path / "run", data))
    args = TrainingArguments(output_dir=str(tmp_path / "run"), learning_rate=1e-3, weight_decay=0.1, report_to="none")
    optimizer = RewardTrainer(model=model, args=args, loss_spec=LossSpec(), layer_lr_decay=0.5).create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(rate) == sum(p.requires_grad for p in model.parameters())  # every trainable parameter, once
    encoder = model.encoder
    assert rate[id(model.head.weight)] == pytest.approx(1e-3)
    assert rate[id(encoder.encoder.layer[1].attention.self.query.weight)] == pytest.approx(5e-4)
    assert rate[id(encoder.encoder.layer[0].attention.self.query.weight)] == pytest.approx(2.5e-4)
    assert rate[id(encoder.embeddings.word_embeddings.weight)] == pytest.approx(1.25e-4)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay[id(encoder.encoder.layer[0].attention.self.query.weight)] == 0.1  # HF's weight-decay split kept
    assert decay[id(encoder.encoder.layer[0].attention.self.query.bias)] == 0.0
