"""Run a pipeline recipe: stages in order, each one's outputs wired into the next by name.

    align run recipes/quickstart.yaml sft.training.max_steps=5

``${sft.output_dir}`` in a later stage is replaced by the ``sft`` stage's output dir; any
resolved key works (``${sft.model.name_or_path}``, ``${reward.metrics.eval/accuracy}``).
A stage whose run dir holds a ``stage_result.json`` from the same resolved recipe is
skipped; ``force`` (in the recipe or ``--force NAME``) re-runs it. A failing stage raises
``StageFailed`` naming it; earlier outputs are never touched.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from align.config import PipelineRecipe
from align.recipe import RecipeError, apply_overrides, read_yaml, validate
from align.stages import STAGES, StageResult

logger = logging.getLogger("align.pipeline")

_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\.([^}]+)\}")


class StageFailed(RuntimeError):
    """A pipeline stage raised; the message names the stage and its run dir."""


def interpolate(value: Any, context: dict[str, dict[str, Any]], where: str) -> Any:
    """Replace ``${name.dotted.key}`` using finished stages; a whole-string reference keeps its type."""
    if isinstance(value, dict):
        return {key: interpolate(item, context, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, context, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value
    whole = _REFERENCE.fullmatch(value)
    if whole:
        return _lookup(context, whole.group(1), whole.group(2), where)
    return _REFERENCE.sub(lambda m: str(_lookup(context, m.group(1), m.group(2), where)), value)


def _lookup(context: dict[str, dict[str, Any]], name: str, dotted: str, where: str) -> Any:
    if name not in context:
        known = ", ".join(context) or "none yet"
        raise RecipeError(f"{where}: '${{{name}.{dotted}}}' refers to stage '{name}', not run before it (earlier: {known})")
    node: Any = context[name]
    parts = dotted.split(".")
    for depth, key in enumerate(parts):
        # Metric names contain '/', so a key may also match the rest of the path joined.
        rest = ".".join(parts[depth:])
        if isinstance(node, dict) and rest in node:
            return node[rest]
        if not isinstance(node, dict) or key not in node:
            raise RecipeError(f"{where}: '${{{name}.{dotted}}}': stage '{name}' has no key '{'.'.join(parts[: depth + 1])}'")
        node = node[key]
    return node


def output_dir_of(recipe: BaseModel) -> Path:
    return Path(recipe.training.output_dir)  # type: ignore[attr-defined]


def _same_recipe(saved: Path, recipe: BaseModel) -> bool:
    if not saved.is_file():
        return False
    current = recipe.model_dump(mode="json")
    previous = yaml.safe_load(saved.read_text()) or {}
    current.pop("force", None)
    previous.pop("force", None)
    return current == previous


def run_pipeline(
    path: str | Path, overrides: list[str] | None = None, force: set[str] | None = None
) -> dict[str, StageResult]:
    """Run every stage of the pipeline recipe at ``path``; returns each stage's result by name.

    Overrides address a stage by name: ``sft.training.max_steps=5``.
    """
    raw = read_yaml(path)
    pipeline = validate(PipelineRecipe, raw, source=path)
    overrides = overrides or []
    force = force or set()
    names = [entry.get("name") or entry.get("stage") for entry in pipeline.pipeline]
    _check_names(path, pipeline.pipeline, names, overrides, force)

    context: dict[str, dict[str, Any]] = {}
    results: dict[str, StageResult] = {}
    for index, (entry, name) in enumerate(zip(pipeline.pipeline, names)):
        where = f"{path}: pipeline[{index}] ({name})"
        spec = STAGES[entry["stage"]]
        data = interpolate({**entry, "name": name}, context, where)
        if pipeline.output_root and "output_dir" not in data.get("training", {}):
            data.setdefault("training", {})["output_dir"] = str(Path(pipeline.output_root) / name)
        mine = [o.split(".", 1)[1] for o in overrides if o.split(".", 1)[0] == name]
        recipe = validate(spec.load_schema(), apply_overrides(data, mine), source=where)

        out = output_dir_of(recipe)
        previous = StageResult.load(out)
        if previous is not None and not (recipe.force or name in force) and _same_recipe(out / "recipe.yaml", recipe):
            logger.info("stage %s: finished output in %s, skipping (force to re-run)", name, out)
            result = previous
        else:
            logger.info("stage %s (%s): running into %s", name, entry["stage"], out)
            try:
                result = spec.load_runner()(recipe)
            except Exception as err:
                raise StageFailed(f"stage '{name}' ({entry['stage']}) failed in {out}: {err}") from err
        results[name] = result
        context[name] = {**recipe.model_dump(mode="json"), "output_dir": str(result.output_dir), "metrics": result.metrics}
    return results


def _check_names(path: str | Path, entries: list[dict[str, Any]], names: list[Any], overrides: list[str], force: set[str]) -> None:
    """Fail before running anything: unknown stage kinds, duplicate names, overrides or --force for no stage."""
    for index, entry in enumerate(entries):
        stage = entry.get("stage")
        if stage not in STAGES:
            raise RecipeError(f"{path}: pipeline[{index}].stage: unknown stage {stage!r}; known: {', '.join(STAGES)}")
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise RecipeError(f"{path}: pipeline[{index}].name: '{name}' is used twice; give each stage a unique name")
        seen.add(name)
    for text in overrides:
        if text.split(".", 1)[0] not in seen or "." not in text.split("=", 1)[0]:
            raise RecipeError(f"override '{text}' must start with a stage name ({', '.join(names)}), e.g. {names[0]}.training.max_steps=5")
    unknown = force - seen
    if unknown:
        raise RecipeError(f"--force {', '.join(sorted(unknown))}: no such stage; stages: {', '.join(names)}")
