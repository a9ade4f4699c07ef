"""Where a record's texts sit, what an augmented row carries besides them, and the eval-prompt check.

An augmented row is a canonical record plus two provenance fields, ``source_id`` (the source row's
content hash, the same for all rows made from it) and ``augmentation`` (the method's kind, or
``original``). The dataset layer drops fields it does not know when a stage reads the file, so
provenance never reaches a trainer.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from align.data import DataError, prompt_key

PROVENANCE = ("source_id", "augmentation")
# In chats: a prompt's text is its user turns (system turns are instructions, left as written);
# completions are assistant turns.
FIELD_ROLES = {"prompt": "user", "completion": "assistant", "chosen": "assistant", "rejected": "assistant"}

Slot = tuple[dict[str, Any], str]  # (the object holding a text, its key)


def text_slots(row: dict[str, Any], field: str) -> list[Slot]:
    """Where ``field``'s texts are in ``row``: a string field, or the matching turns of a message list.

    An sft chat row (``messages``) has no ``prompt`` or ``completion`` field: its user turns are
    the prompt's texts and its assistant turns the completion's.
    """
    holder = row.get(field, row.get("messages"))
    if isinstance(holder, str):
        return [(row, field)]
    return [(message, "content") for message in holder or [] if message["role"] == FIELD_ROLES[field]]


def replace_texts(row: dict[str, Any], fields: Iterable[str], new_text: dict[str, str]) -> dict[str, Any]:
    """A copy of ``row`` whose texts in ``fields`` are mapped through ``new_text`` (texts not in it are kept)."""
    out = copy.deepcopy(row)
    for field in fields:
        for holder, key in text_slots(out, field):
            holder[key] = new_text.get(holder[key], holder[key])
    return out


def source_id(row: dict[str, Any]) -> str:
    """The row's content hash (16 hex digits): stable across runs, whatever the row's position."""
    return hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def with_provenance(row: dict[str, Any], source: str, augmentation: str) -> dict[str, Any]:
    return {**row, "source_id": source, "augmentation": augmentation}


def refuse_eval_prompts(rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], where: str) -> None:
    """Raise a DataError naming the first augmented row whose prompt is an eval prompt (split.py's prompt keys).

    ``where`` says what the rows become (the output file); rows are numbered from 1 as its lines.
    Original rows are checked by the dataset layer when it splits (a warning), not here.
    """
    eval_keys = {prompt_key(row) for row in eval_rows}
    for line, row in enumerate(rows, start=1):
        if row["augmentation"] != "original" and prompt_key(_record(row)) in eval_keys:
            shown = prompt_key(_record(row))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise DataError(
                f"{where}:{line}",
                f"is an eval prompt ({shown!r}): the {row['augmentation']} rewrite of source row {row['source_id']} "
                "would put an eval prompt into training data; drop that source row or change the eval split",
                "prompt",
            )


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in PROVENANCE}
