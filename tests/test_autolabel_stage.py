"""The autolabel pipeline stage: candidates in, judge-labeled preference pairs out, loadable by the data layer."""

from __future__ import annotations

import json
from pathlib import Path

from align.config import AutoLabelRecipe, DataConfig
from align.data import load_records
from align.recipe import validate
from align.run import StageResult
from align.stages.autolabel import run


def prefers_short(prompts: list[str], responses: list[str]) -> list[float]:
    """Judge used below: the shorter response wins."""
    return [-float(len(r)) for r in responses]


def test_candidates_become_preference_pairs_the_judge_agrees_with(tmp_path: Path) -> None:
    candidates = tmp_path / "candidates.jsonl"
    rows = [
        {"id": f"p{i}", "prompt": f"Question {i}?", "responses": [
            {"text": "A long and winding answer " * (i + 1), "model": "m"}, {"text": f"Short {i}.", "model": "m"}]}
        for i in range(5)
    ]
    candidates.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = validate(AutoLabelRecipe, {
        "candidates": str(candidates), "judge": {"judge": f"{__name__}:prefers_short"},
        "annotators": 3, "noise": 0.0, "training": {"output_dir": str(tmp_path / "labels")},
    })
    result = run(recipe)
    assert result.metrics["label/labels"] == 15 and result.metrics["label/pairs"] == 5
    assert StageResult.load(tmp_path / "labels").metrics == result.metrics
    pairs = load_records(DataConfig(path=str(tmp_path / "labels" / "preferences.jsonl")), "preference").train
    assert len(pairs) == 5
    assert all(row["chosen"].startswith("Short") and row["rejected"].startswith("A long") for row in pairs)
    # Re-running keeps the labels already in the store: no duplicates, same export.
    again = run(recipe)
    assert again.metrics["label/labels"] == 0 and again.metrics["label/pairs"] == 5
