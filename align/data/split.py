"""Duplicate removal, the train/eval split and the train/eval leakage check.

The split holds out whole prompts, not rows: pairs from one ranking, or several
ratings of one prompt, all land on the same side, so eval never scores a prompt the
model was trained on. Each function takes a list of canonical rows or a
``datasets.Dataset`` and gives back the same type.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from typing import Any, TypeVar

from align.data.records import prompt_key

logger = logging.getLogger("align.data")

Data = TypeVar("Data")


def _is_dataset(data: Any) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "select")


def _rows(data: Any) -> list[dict[str, Any]]:
    return data.to_list() if _is_dataset(data) else list(data)


def _take(data: Any, indices: Sequence[int]) -> Any:
    return data.select(indices) if _is_dataset(data) else [data[i] for i in indices]


def dedup(data: Data) -> tuple[Data, int]:
    """Drop exact duplicate rows (all fields equal), keeping the first; returns (rows, number dropped)."""
    seen: set[str] = set()
    keep: list[int] = []
    for i, row in enumerate(_rows(data)):
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return _take(data, keep), _count(data) - len(keep)


def _count(data: Any) -> int:
    return data.num_rows if _is_dataset(data) else len(data)


def split_train_eval(data: Data, eval_fraction: float, seed: int) -> tuple[Data, Data | None]:
    """Hold out round(eval_fraction x distinct prompts) prompts (at least 1, leaving 1) with all their rows.

    The same seed and data give the same split; rows keep their original order on each side.
    """
    if eval_fraction <= 0:
        return data, None
    if eval_fraction >= 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    keys = [prompt_key(row) for row in _rows(data)]
    groups = list(dict.fromkeys(keys))
    if len(groups) < 2:
        raise ValueError(f"eval_fraction={eval_fraction} needs at least 2 distinct prompts to split, got {len(groups)}")
    n_eval = min(len(groups) - 1, max(1, round(len(groups) * eval_fraction)))
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    held_out = {groups[i] for i in order[:n_eval]}
    train_idx = [i for i, k in enumerate(keys) if k not in held_out]
    eval_idx = [i for i, k in enumerate(keys) if k in held_out]
    return _take(data, train_idx), _take(data, eval_idx)


def check_leakage(train: Any, eval: Any) -> int:
    """Count eval rows whose prompt also appears in train, and warn: their eval metrics are optimistic."""
    train_keys = {prompt_key(row) for row in _rows(train)}
    eval_keys = [prompt_key(row) for row in _rows(eval)]
    leaked = [k for k in eval_keys if k in train_keys]
    if leaked:
        example = leaked[0] if len(leaked[0]) <= 80 else leaked[0][:77] + "..."
        logger.warning(
            "%d of %d eval rows have a prompt that also appears in train (e.g. %r); eval metrics will be optimistic",
            len(leaked),
            len(eval_keys),
            example,
        )
    return len(leaked)
