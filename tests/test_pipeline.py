"""Pipeline runner: wiring by name, skip-if-done, force, failure isolation (no models involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

from align import pipeline as pipeline_module
from align.config import StageRecipe, TrainingConfig
from align.pipeline import StageFailed, run_pipeline
from align.recipe import RecipeError
from align.run import finish_stage, prepare_run_dir
from align.stages import STAGES, StageResult, StageSpec

CALLS: list[str] = []
KILLED: set[str] = set()  # stages killed once their run dir is prepared (not a recipe key: the recipe stays the same)


class EchoRecipe(StageRecipe):
    """A stand-in stage: writes its ``value`` to the run dir."""

    stage: str = "echo"
    value: str = "x"
    fail: bool = False
    training: TrainingConfig = Field(default_factory=TrainingConfig)


def run_echo(recipe: EchoRecipe) -> StageResult:
    CALLS.append(recipe.name or "")
    if recipe.fail:
        raise RuntimeError("boom")
    out = prepare_run_dir(recipe, recipe.training.output_dir)  # as every real stage starts
    if recipe.name in KILLED:
        raise KeyboardInterrupt("killed mid-run")
    (out / "value.txt").write_text(recipe.value)
    return finish_stage(out, recipe, {"eval/accuracy": 0.75, "length": len(recipe.value)})


@pytest.fixture(autouse=True)
def echo_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STAGES, "echo", StageSpec(f"{__name__}:EchoRecipe", f"{__name__}:run_echo", "test stage"))
    CALLS.clear()


def write_pipeline(tmp_path: Path, stages: list[dict]) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(json.dumps({"output_root": str(tmp_path / "runs"), "pipeline": stages}))
    return path


def test_outputs_are_wired_by_name(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        [
            {"stage": "echo", "name": "first", "value": "hello"},
            {"stage": "echo", "name": "second", "value": "${first.output_dir}/value.txt acc=${first.metrics.eval/accuracy}"},
        ],
    )
    results = run_pipeline(path)
    assert results["first"].output_dir == tmp_path / "runs" / "first"
    second = (tmp_path / "runs" / "second" / "value.txt").read_text()
    assert second == f"{tmp_path / 'runs' / 'first'}/value.txt acc=0.75"


def test_whole_string_reference_keeps_type(tmp_path: Path) -> None:
    context = {"a": {"metrics": {"n": 3}, "training": {"max_steps": 7}}}
    assert pipeline_module.interpolate({"x": "${a.training.max_steps}"}, context, "w") == {"x": 7}
    with pytest.raises(RecipeError, match="refers to stage 'b', not run before it"):
        pipeline_module.interpolate("${b.output_dir}", context, "w")
    with pytest.raises(RecipeError, match="stage 'a' has no key 'training.lr'"):
        pipeline_module.interpolate("${a.training.lr}", context, "w")


def test_finished_stage_is_skipped_unless_forced_or_changed(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, [{"stage": "echo", "name": "a", "value": "1"}, {"stage": "echo", "name": "b"}])
    run_pipeline(path)
    assert CALLS == ["a", "b"]
    run_pipeline(path)
    assert CALLS == ["a", "b"]  # both skipped
    run_pipeline(path, force={"b"})
    assert CALLS == ["a", "b", "b"]
    run_pipeline(path, ["a.value=two"])  # a changed recipe is not "done"
    assert CALLS == ["a", "b", "b", "a"]


def test_failed_stage_names_itself_and_keeps_earlier_outputs(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path, [{"stage": "echo", "name": "good", "value": "kept"}, {"stage": "echo", "name": "bad", "fail": True}]
    )
    with pytest.raises(StageFailed, match="stage 'bad' \\(echo\\) failed in .*bad: boom"):
        run_pipeline(path)
    assert (tmp_path / "runs" / "good" / "value.txt").read_text() == "kept"
    assert StageResult.load(tmp_path / "runs" / "bad") is None
    # Fix the recipe: the good stage is skipped, only the failed one runs again.
    CALLS.clear()
    run_pipeline(path, ["bad.fail=false"])
    assert CALLS == ["bad"]


def test_a_rerun_killed_midway_is_not_taken_for_finished(tmp_path: Path) -> None:
    """The new recipe is saved at the start: the old run's stage_result.json must not survive beside it."""
    path = write_pipeline(tmp_path, [{"stage": "echo", "name": "a", "value": "1"}])
    run_pipeline(path)
    KILLED.add("a")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(path, ["a.value=two"])
    KILLED.clear()
    CALLS.clear()
    (tmp_path / "runs" / "a" / "metrics.jsonl").write_text('{"step": 9, "train/loss": 1.0}\n')  # the killed run's
    run_pipeline(path, ["a.value=two"])
    assert CALLS == ["a"]  # run again, not skipped
    assert not (tmp_path / "runs" / "a" / "metrics.jsonl").exists()  # a fresh run's curves are its own
    assert (tmp_path / "runs" / "a" / "value.txt").read_text() == "two"


def test_bad_pipelines_fail_before_running(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="pipeline\\[1\\].stage: unknown stage 'nope'"):
        run_pipeline(write_pipeline(tmp_path, [{"stage": "echo"}, {"stage": "nope"}]))
    with pytest.raises(RecipeError, match="'a' is used twice"):
        run_pipeline(write_pipeline(tmp_path, [{"stage": "echo", "name": "a"}, {"stage": "echo", "name": "a"}]))
    with pytest.raises(RecipeError, match="must start with a stage name"):
        run_pipeline(write_pipeline(tmp_path, [{"stage": "echo", "name": "a"}]), ["training.max_steps=3"])
    with pytest.raises(RecipeError, match="--force zz: no such stage"):
        run_pipeline(write_pipeline(tmp_path, [{"stage": "echo", "name": "a"}]), force={"zz"})
    with pytest.raises(RecipeError, match=r"pipeline\[0\] \(a\): invalid recipe\n  valu: unknown key"):
        run_pipeline(write_pipeline(tmp_path, [{"stage": "echo", "name": "a", "valu": 1}]))
    assert CALLS == []
