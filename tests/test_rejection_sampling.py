"""``align rejection_sampling``: best-of-N answers become SFT data that ``align sft`` reads as it is."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from align.config import RejectionSamplingRecipe, SFTRecipe
from align.data import load_records
from align.judges import load_judge, score
from align.recipe import validate
from align.stages.rejection_sampling import best_rows, run


def test_best_rows_keep_each_prompts_best_with_its_provenance() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.2, 0.3], [1.0, 0.0, 0.0]])
    texts = ["a0", "a1", "a2", "b0", "b1", "b2", "", "c1", "c2"]
    rows = best_rows(["A", "B", "C"], texts, scores, min_gain=None)
    # C's best answer is empty: no row. Means: A (0.1 + 0.9 + 0.5) / 3 = 0.5, B 0.7 / 3 = 0.2333.
    assert [(r["prompt"], r["completion"], r["score"], r["mean_score"]) for r in rows] == [
        ("A", "a1", 0.9, 0.5), ("B", "b2", 0.3, 0.2333)]
    assert [r["prompt"] for r in best_rows(["A", "B", "C"], texts, scores, min_gain=0.1)] == ["A"]  # B gains 0.067


def test_kept_answers_outscore_the_average_and_load_as_sft(tiny_llama_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say yes.", "Greet me.", "Name a colour."]))
    recipe = validate(RejectionSamplingRecipe, {
        "model": {"name_or_path": str(tiny_llama_dir)}, "data": {"path": str(prompts)},
        "reward": {"judge": "test_ppo_judges:count_e"},
        "generation": {"n": 6, "max_new_tokens": 12, "batch_size": 2, "seed": 3},
        "training": {"output_dir": str(tmp_path / "rs")}})
    result = run(recipe)
    assert result.metrics["kept"] >= 2
    assert result.metrics["rejection/best_score"] > result.metrics["rejection/mean_score"]
    rows = [json.loads(line) for line in Path(result.metrics["sft_data"]).read_text().splitlines()]
    judged = score(load_judge("test_ppo_judges:count_e"), [r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert judged.raw.tolist() == [r["score"] for r in rows]  # the kept answer is the one that scored so
    sft = load_records(validate(SFTRecipe, {"data": {"path": result.metrics["sft_data"]}}).data, "sft")
    assert len(sft.train) == len(rows) and set(sft.train.column_names) >= {"prompt", "completion"}
