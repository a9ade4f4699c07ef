"""Pipeline runner: wiring by name, skip-if-done, force, failure isolation (no models involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

from align import pipeline as pipeline_module
from align.config import StageRecipe, TrainingConfig
from align.pipeline import StageFailed, run_pipeline
from align.recipe import RecipeError, dump_recipe
from align.stages import STAGES, StageResult, StageSpec

CALLS: list[str] = []


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
    out = Path(recipe.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_recipe(recipe, out / "recipe.yaml")  # as every real stage does through prepare_run_dir
    (out / "value.txt").write_text(recipe.value)
    result = StageResult(out, {"eval/accuracy": 0.75, "length": len(recipe.value)})
    result.save()
    return result


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
