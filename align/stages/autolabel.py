"""Label a candidates file without humans, inside a pipeline: import, judge, export.

    align autolabel recipe.yaml        # usually a step of `align run recipes/quickstart.yaml`

The candidates go into a labeling project (the same SQLAlchemy store the Gradio app uses,
SQLite in the run directory unless ``db`` is given), simulated annotators ``judge-0..N-1``
label it through the store exactly as people would, and the labels are exported with the
same code as ``align label export``: the stage's ``preferences.jsonl`` feeds `align reward`
and `align dpo`. Human labels in the same project export through the same path.
"""

from __future__ import annotations

import json
import logging

from align.config import AutoLabelRecipe
from align.judges import judge_for
from align.run import StageResult, finish_stage, prepare_run_dir
from labeling_ui.auto import auto_label
from labeling_ui.candidates import read_candidates
from labeling_ui.export import ExportOptions, export_project
from labeling_ui.schemas import ProjectConfig
from labeling_ui.store import LabelStore

logger = logging.getLogger("align.label")


def run(recipe: AutoLabelRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    store = LabelStore(recipe.db or f"sqlite:///{(out / 'labels.db').resolve()}")
    store.create_project(recipe.project, ProjectConfig(labels_per_item=recipe.annotators), update=True)
    imported = store.import_items(recipe.project, read_candidates(recipe.candidates, "auto"))
    logger.info("project %s: %d items added, %d already there", recipe.project, imported.added, imported.unchanged)

    judge = judge_for(recipe.judge)
    report = auto_label(store, recipe.project, judge, annotators=recipe.annotators, noise=recipe.noise,
                        kind=recipe.noise_kind, seed=recipe.training.seed)
    options = ExportOptions(kind="preference", ties=recipe.export.ties, aggregate=recipe.export.aggregate,
                            min_agreement=recipe.export.min_agreement)
    exported = export_project(store, recipe.project, out / "preferences.jsonl", options)

    metrics = {"label/items": imported.added + imported.unchanged, "label/labels": sum(report.labels.values()),
               "label/pairs": exported["rows"], "preferences": str(out / "preferences.jsonl")}
    (out / "export_stats.json").write_text(json.dumps(exported, indent=2, default=str) + "\n")
    return finish_stage(out, recipe, metrics)
