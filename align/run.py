"""What every stage shares around its work: the run directory, logging, metrics.jsonl, the wrap-up.

    python -c "from align.run import StageResult; print(StageResult.load('runs/quickstart/sft'))"

A run directory holds the resolved recipe (``recipe.yaml``), ``metrics.jsonl``, checkpoints,
the stage's outputs, a model card (``README.md``) for trained models and ``stage_result.json``,
written last. A stage begins with ``prepare_run_dir`` and ends with ``finish_stage``.

Imports nothing heavy, so the CLI, the pipeline runner and every stage can use it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from align.recipe import dump_recipe

logger = logging.getLogger("align")

RESULT_FILE = "stage_result.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class StageResult:
    """What a finished stage hands on: its output dir and final metrics.

    Saved as ``stage_result.json``, written last: its presence means the stage finished,
    which is how a pipeline knows it may skip the stage on a re-run.
    """

    output_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        payload = {"output_dir": str(self.output_dir), "metrics": self.metrics}
        (Path(self.output_dir) / RESULT_FILE).write_text(json.dumps(payload, indent=2, default=float))

    @classmethod
    def load(cls, output_dir: str | Path) -> "StageResult | None":
        path = Path(output_dir) / RESULT_FILE
        if not path.is_file():
            return None
        payload = json.loads(path.read_text())
        return cls(output_dir=Path(payload["output_dir"]), metrics=payload.get("metrics", {}))


def is_main_process() -> bool:
    """Rank 0 under the deepspeed/accelerate launchers, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Rank 0 logs at ``level``; other ranks only warnings, so a 2-GPU run prints one log."""
    logging.basicConfig(
        level=level if is_main_process() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def prepare_run_dir(recipe: BaseModel, output_dir: str | Path) -> Path:
    """Create the run directory, save the resolved recipe and mark the stage unfinished; log it once.

    A previous run's ``stage_result.json`` is removed first: if this run dies, the directory must
    not look finished (with the new recipe beside the old result, a pipeline would skip it). A run
    that does not resume starts a fresh ``metrics.jsonl``, so its curves are its own.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        (out / RESULT_FILE).unlink(missing_ok=True)
        if not getattr(getattr(recipe, "training", None), "resume", False):
            (out / METRICS_FILE).unlink(missing_ok=True)
        dump_recipe(recipe, out / "recipe.yaml")
        logger.info("run dir %s; resolved recipe saved to recipe.yaml", out)
    return out


def finish_stage(out: Path, recipe: BaseModel, metrics: dict[str, Any], *, card_title: str | None = None) -> StageResult:
    """The last step of every stage: the model card (for trained models) and ``stage_result.json``, on rank 0."""
    result = StageResult(output_dir=out, metrics=metrics)
    if is_main_process():
        if card_title is not None:
            write_model_card(out, recipe, metrics, title=card_title)
        result.save()
    return result


# --------------------------------------------------------------------------- metrics.jsonl


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    """One line of ``metrics.jsonl``: ``{"step": N, ...}``."""
    with (Path(out) / METRICS_FILE).open("a") as fh:
        fh.write(json.dumps(record, default=float) + "\n")


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """Rows of ``<out>/metrics.jsonl`` (or of that file itself); lines that are not JSON objects are skipped."""
    path = Path(out)
    path = path / METRICS_FILE if path.is_dir() else path
    if not path.is_file():
        return []
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        logger.warning("%s: skipped %d lines that are not JSON objects", path, bad)
    return rows


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Keep the rows of a JSONL log whose ``key`` is at most ``last``.

    On resume from checkpoint ``last``, what the interrupted run logged after it is dropped, so
    the resumed run's rows follow without a step appearing twice (curves do not fold back).
    """
    if not path.is_file():
        return
    keep = [row for row in read_metrics(path) if row.get(key, 0) <= last]
    path.write_text("".join(json.dumps(row, default=float) + "\n" for row in keep))


# --------------------------------------------------------------------------- model card


def write_model_card(output_dir: Path, recipe: BaseModel, metrics: dict[str, Any], title: str) -> None:
    """A short README.md: what was trained, on what, and the final metrics."""
    data = recipe.model_dump(mode="json")
    lines = [
        f"# {title}",
        "",
        f"Trained with `align {data.get('stage', '')}`. The full recipe is in `recipe.yaml`.",
        "",
        f"- base model: `{data.get('model', {}).get('name_or_path', '?')}`",
        f"- method: `{data.get('model', {}).get('method', '?')}`",
        "- data: " + ", ".join(f"`{source.get('path', '?')}`" for source in _as_list(data.get("data"))),
        "",
        "## Final metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
              for key, value in sorted(metrics.items())]
    (output_dir / "README.md").write_text("\n".join(lines) + "\n")


def _as_list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    return [item for item in value or [] if isinstance(item, dict)]
