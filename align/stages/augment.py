"""Augment sft or preference data: word edits and model rewrites, every row with its provenance.

    align augment recipes/augment.yaml

Writes ``train.jsonl``: the train rows (``keep_original``) and each method's copies of them, each
row a canonical record plus ``source_id`` and ``augmentation`` (``align.augment.rows``). Other
stages read it unchanged: the dataset layer drops those two fields when it loads the file, and
exact duplicates with them. The eval split (``data.eval_path`` or ``data.eval_fraction``) is
written as it is to ``eval.jsonl``: give it to the next stage as ``data.eval_path``, and do not
split the augmented file again, which would put rewrites of one source row on both sides.

A rewrite equal to its source, an empty one, or one that is no valid record (chosen equal to
rejected) is skipped and counted (``augment/skipped_<why>``). An augmented row whose prompt is an
eval prompt is an error naming its line: augmentation must never carry eval into training.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from align.augment.edits import SYNONYMS, load_synonyms, synonym_swap, word_dropout, word_swap
from align.augment.rewrite import ModelRewriter
from align.augment.rows import refuse_eval_prompts, replace_texts, source_id, text_slots, with_provenance
from align.config import AugmentMethod, AugmentRecipe
from align.data import DataError, load_records, validate_row
from align.models import load_policy
from align.run import StageResult, finish_stage, prepare_run_dir

logger = logging.getLogger("align.augment")

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"

Rewrite = Callable[[list[str], int], list[str]]  # (distinct texts, copy index) -> one rewrite per text


def run(recipe: AugmentRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    kind = recipe.record_kind
    data = load_records(recipe.data, kind)
    train = data.train.to_list()
    evaluation = data.eval.to_list() if data.eval is not None else []
    if "text" in train[0]:
        raise DataError(recipe.data.path, "holds raw documents; augment rewrites prompt/completion rows, chats and "
                        "preference pairs", "text")
    ids = [source_id(row) for row in train]
    rows = [with_provenance(row, i, "original") for row, i in zip(train, ids)] if recipe.keep_original else []
    metrics: dict[str, Any] = {"augment/original": len(rows)}
    for index, method in enumerate(recipe.methods):
        made, skipped = augment(train, ids, method, kind, _rewriter(method, index, recipe.training.seed))
        rows += made
        metrics[f"augment/{method.kind}"] = metrics.get(f"augment/{method.kind}", 0) + len(made)
        for why, count in skipped.items():
            metrics[f"augment/skipped_{why}"] = metrics.get(f"augment/skipped_{why}", 0) + count
        logger.info("methods[%d] %s: %d rows from %d x %d copies; skipped %s",
                    index, method.kind, len(made), len(train), method.copies, dict(skipped) or "none")
    refuse_eval_prompts(rows, evaluation, str(out / TRAIN_FILE))
    _write_jsonl(out / TRAIN_FILE, rows)
    if evaluation:
        _write_jsonl(out / EVAL_FILE, evaluation)
    metrics.update({"augment/rows_written": len(rows), "augment/eval_rows": len(evaluation)})
    return finish_stage(out, recipe, metrics)


def augment(
    rows: list[dict[str, Any]], ids: list[str], method: AugmentMethod, kind: str, rewrite: Rewrite
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """``method.copies`` rewrites of every row with provenance, and the count of skipped ones by reason.

    Within a copy each distinct text is rewritten once, so rows sharing a prompt (a ranking's
    pairs) share its rewrite too.
    """
    fields = method.fields_for(kind)
    made: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    texts = list(dict.fromkeys(holder[key] for row in rows for field in fields for holder, key in text_slots(row, field)))
    for copy in range(method.copies):
        new_text = dict(zip(texts, rewrite(texts, copy)))
        for row, source in zip(rows, ids):
            new = replace_texts(row, fields, new_text)
            why = _unusable(new, row, kind, fields)
            if why:
                skipped[why] += 1
            else:
                made.append(with_provenance(new, source, method.kind))
    return made, skipped


def _unusable(new: dict[str, Any], source: dict[str, Any], kind: str, fields: tuple[str, ...]) -> str | None:
    if new == source:
        return "unchanged"
    if any(not holder[key].strip() for field in fields for holder, key in text_slots(new, field)):
        return "empty"
    try:
        validate_row(kind, new, "augmented row")  # type: ignore[arg-type]
    except DataError:
        return "invalid"
    return None


def _rewriter(method: AugmentMethod, index: int, seed: int) -> Rewrite:
    """Word edits seeded per (seed, method, copy, text), so a text's edit does not depend on row order."""
    if method.kind in ("paraphrase", "back_translation"):
        model, tokenizer = load_policy(method.model, trainable=False)  # type: ignore[arg-type] - validated
        return ModelRewriter(model, tokenizer, method, seed)
    table = load_synonyms(method.synonyms) if method.synonyms else SYNONYMS
    edit = {"word_dropout": word_dropout, "word_swap": word_swap,
            "synonym": partial(synonym_swap, table=table)}[method.kind]
    return lambda texts, copy: [
        edit(text, method.probability, random.Random(f"{seed}:{index}:{copy}:{text}")) for text in texts
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
