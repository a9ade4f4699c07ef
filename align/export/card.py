"""The model card (README.md) of an export: where the weights came from, how they were trained, their metrics.

    python -c "from align.export.card import lineage; print(lineage('runs/dpo'))"

The lineage is read from the run directories themselves: a run dir holds ``recipe.yaml`` and
``stage_result.json``, and its recipe's ``model.name_or_path`` names the run before it (a DPO run
on ``runs/sft``), which is followed back until a path is not a run dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 10


def run_dir_of(path: str | Path) -> Path | None:
    """The run dir behind a model path: itself if it holds recipe.yaml, or its parent for an ``adapter/`` dir."""
    path = Path(path)
    candidates = [path]
    if path.name == "adapter" or (path / "adapter_config.json").is_file():
        candidates.append(path.parent)
    for candidate in candidates:
        if (candidate / "recipe.yaml").is_file() and (candidate / "stage_result.json").is_file():
            return candidate
    return None


def lineage(path: str | Path) -> list[dict[str, Any]]:
    """Runs behind ``path``, newest first: ``{dir, stage, base, method, data, metrics}`` each."""
    out: list[dict[str, Any]] = []
    seen: set[Path] = set()
    current = run_dir_of(path)
    while current is not None and current.resolve() not in seen and len(out) < MAX_DEPTH:
        seen.add(current.resolve())
        recipe = yaml.safe_load((current / "recipe.yaml").read_text()) or {}
        result = json.loads((current / "stage_result.json").read_text())
        model = recipe.get("model") or {}
        sources = recipe.get("data")
        sources = sources if isinstance(sources, list) else [sources] if isinstance(sources, dict) else []
        out.append({
            "dir": str(current),
            "stage": recipe.get("stage", "?"),
            "base": model.get("name_or_path", "?"),
            "method": model.get("method", "?"),
            "data": [s.get("path", "?") for s in sources if isinstance(s, dict)],
            "metrics": result.get("metrics", {}),
        })
        current = run_dir_of(model["name_or_path"]) if model.get("name_or_path") else None
    return out


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(name: str, source: str, adapter: str | None, runs: list[dict[str, Any]],
               files: list[tuple[str, str]], checks: list[dict[str, Any]]) -> str:
    """Markdown text of the card; ``files`` are (path, what it is), ``checks`` one row per GGUF verified."""
    lines = [f"# {name}", "", f"Exported by `align export` from `{source}`"
             + (f", with the LoRA adapter `{adapter}` merged into it." if adapter else "."), ""]
    lines += ["## Files", ""] + [f"- `{path}`: {what}" for path, what in files] + [""]
    if runs:
        lines += ["## How it was trained", "", "Oldest stage first; each recipe is in its run dir.", "",
                  "| stage | run dir | started from | method | data |", "| --- | --- | --- | --- | --- |"]
        for run in reversed(runs):
            data = ", ".join(f"`{d}`" for d in run["data"]) or "-"
            lines.append(f"| {run['stage']} | `{run['dir']}` | `{run['base']}` | {run['method']} | {data} |")
        lines.append("")
        for run in reversed(runs):
            if run["metrics"]:
                lines += [f"### {run['stage']} metrics (`{run['dir']}`)", "", "| metric | value |", "| --- | --- |"]
                lines += [f"| {k} | {_value(v)} |" for k, v in sorted(run["metrics"].items())] + [""]
    else:
        lines += ["The source is not an `align` run dir: no training record.", ""]
    if checks:
        lines += ["## GGUF check", "",
                  "Each GGUF loaded back with transformers; logits on a probe chat compared with the merged model's.", "",
                  "| file | max abs logit diff | relative to max abs logit | tolerance | top-1 agreement | same token ids |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in checks:
            lines.append(f"| `{c['file']}` | {c['max_abs_diff']:.4g} | {c['rel_diff']:.4g} | {c['tolerance']} | "
                         f"{c['top1_agreement']:.3f} | {'yes' if c['tokenizer_match'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)
