"""The shared dataset layer: every stage and the labeling UI read records through here.

``load_records(cfg.data, "sft")`` reads a recipe's data section into validated,
canonical ``datasets.Dataset`` objects that TRL trainers take as they are; ``want``
converts between record kinds (a DPO stage asks for "preference" and accepts a
ranking or rating file). Importing this package is cheap: ``datasets`` is imported
only when data is actually read or built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from align.config import DataConfig, RecordKind
from align.data.chat import prompt_text, response_text
from align.data.convert import (
    can_convert,
    chat_to_prompt_completion,
    preference_to_sft,
    ranking_to_preference,
    rating_to_preference,
    rows_to_dataset,
    supported_conversions,
    to_kind,
    to_prompt,
)
from align.data.errors import DataError
from align.data.formats import FORMATS, near_miss
from align.data.readers import RawRow, detect_format, read_rows
from align.data.records import KIND_COLUMNS, RECORD_KINDS, FormChecker, guess_kind, prompt_key, validate_row
from align.data.source import Source, open_source
from align.data.split import check_leakage, dedup, split_train_eval

if TYPE_CHECKING:
    import datasets

__all__ = [
    "KIND_COLUMNS",
    "RECORD_KINDS",
    "FORMATS",
    "DataError",
    "LoadedData",
    "RawRow",
    "can_convert",
    "chat_to_prompt_completion",
    "check_leakage",
    "dedup",
    "detect_format",
    "load_records",
    "preference_to_sft",
    "prompt_key",
    "ranking_to_preference",
    "rating_to_preference",
    "read_rows",
    "prompt_text",
    "response_text",
    "rows_to_dataset",
    "split_train_eval",
    "to_kind",
    "to_prompt",
    "validate_row",
]

logger = logging.getLogger("align.data")


@dataclass
class LoadedData:
    """Validated train (and eval) data of one kind, with counts of what happened on the way."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    kind: RecordKind
    stats: dict[str, Any] = field(default_factory=dict)


def _hint(row: Any, kind: RecordKind, cfg: DataConfig, source: Source) -> str | None:
    """What a row that is no valid record probably is: another record kind, or a known format it almost matches."""
    if source.format.name != "records":
        return None  # a dedicated format's parser names the field itself
    almost = near_miss(row) if cfg.format == "auto" else None
    guess = guess_kind(row) if cfg.kind is None else None
    if almost is None and guess is not None and guess != kind:
        return f"this row looks like a {guess} record: set data.kind: {guess}"
    return almost


def _read_valid(
    source: Source, cfg: DataConfig, kind: RecordKind, checker: FormChecker
) -> tuple[list[dict[str, Any]], int, int]:
    """Canonical rows of one source, with (rows read, rows skipped); on_error decides what a bad row does."""
    rows: list[dict[str, Any]] = []
    errors: list[DataError] = []
    n_read = 0
    for raw in source.rows:
        n_read += 1
        try:
            if raw.error is not None:
                raise raw.error
            parsed = [validate_row(kind, row, raw.where) for row in source.parse(raw.data, raw.where, kind)]
            for row in parsed:
                checker.check(row, raw.where)
        except DataError as err:
            if cfg.on_error == "raise":
                hint = _hint(raw.data, kind, cfg, source)
                if hint is not None:
                    raise DataError(err.where, f"{err.detail} ({hint})", err.field) from None
                raise
            errors.append(err)
            continue
        rows.extend(parsed)
    path = source.path
    if errors:
        logger.warning("%s: skipped %d of %d rows (on_error=skip); first: %s", path, len(errors), n_read, errors[0])
    if not rows:
        if errors:
            why = f"all {n_read} rows were skipped; first error: {errors[0]}"
        elif n_read:
            why = f"its {n_read} rows gave no pairs: all tied (tie_policy={cfg.tie_policy!r})"
        else:
            why = "it holds no rows"
        raise DataError(path, f"no valid {kind} records ({why})")
    logger.info("%s", source.describe(n_read - len(errors), len(rows), kind))
    return rows, n_read, len(errors)


def _check_convertible(path: str, kind: RecordKind, target: RecordKind) -> None:
    if not can_convert(kind, target):
        raise DataError(
            path,
            f"holds {kind} records but {target} records are needed; supported: {', '.join(supported_conversions())}",
            "kind",
        )


def load_records(cfg: DataConfig, default_kind: RecordKind, *, want: RecordKind | None = None) -> LoadedData:
    """Read, validate, dedup, truncate, split and (if ``want`` differs) convert a recipe's data section.

    Order: read ``cfg.path`` as ``cfg.kind or default_kind``; validate every row
    (``on_error``); drop exact duplicates (``dedup``); keep the first
    ``max_samples``; take eval from ``eval_path`` (same format, split and columns)
    or hold out ``eval_fraction`` of the prompts with ``seed``; warn on eval prompts
    seen in train; convert both sides to ``want``.
    """
    kind: RecordKind = cfg.kind or default_kind
    target: RecordKind = want or kind
    _check_convertible(cfg.path, kind, target)  # before reading: a wrong recipe fails fast
    source = open_source(cfg.path, cfg)
    kind = source.kind_for(kind)  # HH-RLHF holds pairs only: an SFT stage reads pairs and converts
    _check_convertible(cfg.path, kind, target)
    checker = FormChecker(kind)  # shared, so eval rows must take the train rows' form
    train, n_read, n_skipped = _read_valid(source, cfg, kind, checker)
    stats: dict[str, Any] = {"path": cfg.path, "format": source.format.name, "kind": kind, "rows_read": n_read}
    stats["rows_skipped"] = n_skipped
    stats["duplicates_dropped"] = 0
    if cfg.dedup:
        train, stats["duplicates_dropped"] = dedup(train)
    stats["rows_truncated"] = max(0, len(train) - cfg.max_samples) if cfg.max_samples else 0
    if cfg.max_samples:
        train = train[: cfg.max_samples]

    eval_rows: list[dict[str, Any]] | None = None
    if cfg.eval_path:
        eval_source = open_source(cfg.eval_path, cfg)
        if eval_source.kind_for(kind) != kind:
            detail = f"holds {eval_source.kind_for(kind)} records but the train data holds {kind} records"
            raise DataError(cfg.eval_path, detail, "eval_path")
        eval_rows, stats["eval_rows_read"], stats["eval_rows_skipped"] = _read_valid(eval_source, cfg, kind, checker)
        if cfg.dedup:
            eval_rows, stats["eval_duplicates_dropped"] = dedup(eval_rows)
    elif cfg.eval_fraction > 0:
        try:
            train, eval_rows = split_train_eval(train, cfg.eval_fraction, cfg.seed)
        except ValueError as err:
            raise DataError(cfg.path, str(err), "eval_fraction") from None
    if eval_rows is not None:
        stats["eval_prompts_in_train"] = check_leakage(train, eval_rows)

    if target != kind:
        stats["converted"] = f"{kind} -> {target}"
        stats["rows_before_conversion"] = len(train)
        train = to_kind(train, kind, target, cfg.tie_policy)
        if not train:
            raise DataError(cfg.path, f"converting {kind} to {target} gave no rows (tie_policy={cfg.tie_policy!r})")
        if eval_rows is not None:
            eval_rows = to_kind(eval_rows, kind, target, cfg.tie_policy) or None
            if eval_rows is None:
                logger.warning("%s: eval data gave no %s rows after conversion; running without eval", cfg.path, target)
    stats["train_rows"] = len(train)
    stats["eval_rows"] = len(eval_rows) if eval_rows is not None else 0
    logger.info("loaded %s: %s", cfg.path, stats)
    return LoadedData(
        train=rows_to_dataset(train, target),
        eval=rows_to_dataset(eval_rows, target) if eval_rows is not None else None,
        kind=target,
        stats=stats,
    )
