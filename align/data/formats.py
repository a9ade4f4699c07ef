"""Public preference-data formats: recognised from the first rows, read as they ship.

    align dpo recipes/dpo.yaml data.path=Anthropic/hh-rlhf          # logs "HH-RLHF dialogues: ..."
    align reward recipes/reward.yaml data.path=uf.jsonl data.kind=ranking data.aspect=helpfulness

Researchers hold preference data in the forms public datasets ship, not in align's
canonical columns. Each form below is read as it is; the log names what it
recognised and how it found the prompt, and ``data.format`` forces one:

- ``records``: align's own records (recognised for every kind but preference: align's
  preference record is TRL's explicit form, which ``trl`` reads);
- ``hh-rlhf``: chosen/rejected as whole "Human: ... Assistant: ..." transcripts;
- ``trl``: TRL's preference forms: explicit or implicit prompt, standard (strings) or
  conversational (messages), the prompt's turns repeated in chosen/rejected or not,
  optional ``score_chosen``/``score_rejected`` (UltraFeedback-binarized);
- ``ultrafeedback``: ``instruction`` and ``completions`` rated per aspect;
- ``shp``: ``history``, ``human_ref_A``/``human_ref_B`` and their upvotes ``score_A``/``score_B``.

A format holds preference records, or, when it has scores, whichever of rating,
ranking or preference the recipe's ``data.kind`` asks for. The ``columns`` mapping
is applied before parsing, so it can rename a source column to one a format reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from align.config import DataConfig, RecordKind
from align.data.chat import response_text
from align.data.convert import scored_to_kind
from align.data.dialogue import is_hh_text, parse_hh, split_text, split_turns, strip_repeated_prompt
from align.data.errors import DataError
from align.data.records import (
    CANONICAL_FIELDS,
    RECORD_KINDS,
    check_finite,
    check_messages,
    check_text,
    describe,
    guess_kind,
    is_messages,
    need,
)

Row = dict[str, Any]
Rows = list[Row]
SCORED_KINDS: tuple[RecordKind, ...] = ("preference", "ranking", "rating")


@dataclass(frozen=True)
class Format:
    """One data format: the columns it needs, how to spot it, what the log calls it, how a row becomes records.

    ``needs`` lists required columns, each as alternatives (``("history", "prompt")``);
    ``looks`` spots the format's own trait, so a row that has it but lacks a needed
    column gets a hint naming the format.
    """

    name: str
    title: Callable[[Row], str]
    needs: tuple[tuple[str, ...], ...]
    optional: frozenset[str]
    looks: Callable[[Row], bool]
    kinds: Callable[[Row], tuple[RecordKind, ...]]
    summary: Callable[[Row, DataConfig], str]
    parse: Callable[[Row, str, RecordKind, DataConfig], Rows]

    def missing(self, row: Row) -> list[str]:
        """Needed columns the row lacks (null counts as absent), as they read in a message."""
        absent = [alts for alts in self.needs if all(row.get(name) is None for name in alts)]
        return [" or ".join(f"'{name}'" for name in alts) for alts in absent]

    def fits(self, row: Row) -> bool:
        """The row shows the format's trait and has every column it needs."""
        return self.looks(row) and not self.missing(row)

    def columns(self) -> frozenset[str]:
        """Every column this format reads; the log names the others as unused."""
        return frozenset(name for alts in self.needs for name in alts) | self.optional


# --------------------------------------------------------------------------- shared field helpers


def _either(row: Row, names: tuple[str, ...], where: str) -> tuple[Any, str]:
    """The first of ``names`` the row has (non-null), with its name."""
    for name in names:
        if row.get(name) is not None:
            return row[name], name
    have = ", ".join(sorted(row)) or "nothing"
    raise DataError(where, f"missing; expected {' or '.join(repr(n) for n in names)} (row has: {have})", names[0])


def _text_prompt(row: Row, names: tuple[str, ...], where: str) -> str:
    value, name = _either(row, names, where)
    return check_text(value, where, name)


# --------------------------------------------------------------------------- align's own records


def _records(row: Row, where: str, kind: RecordKind, cfg: DataConfig) -> Rows:
    return [row]  # validate_row checks it as the recipe's kind


RECORDS = Format(
    name="records",
    title=lambda row: "align records",
    needs=(),
    optional=CANONICAL_FIELDS,
    looks=lambda row: False,  # the fallback, never detected by trait
    kinds=lambda row: RECORD_KINDS,
    summary=lambda row, cfg: "",
    parse=_records,
)


# --------------------------------------------------------------------------- HH-RLHF


def _hh(row: Row, where: str, kind: RecordKind, cfg: DataConfig) -> Rows:
    chosen = parse_hh(need(row, "chosen", where), where, "chosen")
    rejected = parse_hh(need(row, "rejected", where), where, "rejected")
    prompt, chosen, rejected = split_turns(chosen, rejected, where)
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


HH_RLHF = Format(
    name="hh-rlhf",
    title=lambda row: "HH-RLHF dialogues",
    needs=(("chosen",), ("rejected",)),
    optional=frozenset(),
    looks=lambda row: row.get("prompt") is None and (is_hh_text(row.get("chosen")) or is_hh_text(row.get("rejected"))),
    kinds=lambda row: ("preference",),
    summary=lambda row, cfg: "prompt = shared prefix",
    parse=_hh,
)


# --------------------------------------------------------------------------- TRL preference forms


def _has_scores(row: Row) -> bool:
    return row.get("score_chosen") is not None or row.get("score_rejected") is not None


def _repeats_prompt(row: Row) -> bool:
    """Conversational completions that start with a non-assistant turn (they repeat the prompt's turns)."""
    chosen = row.get("chosen")
    return is_messages(chosen) and chosen[0].get("role") != "assistant"


def _chat_prompt(prompt: Any, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": check_text(prompt, where, "prompt")}]
    return check_messages(prompt, where, "prompt")


def trl_pair(row: Row, where: str) -> Row:
    """A TRL preference row (any of its forms) -> ``{prompt, chosen, rejected}`` with the prompt held once."""
    chosen, rejected, prompt = need(row, "chosen", where), need(row, "rejected", where), row.get("prompt")
    if is_messages(chosen) or is_messages(rejected):
        chosen, rejected = check_messages(chosen, where, "chosen"), check_messages(rejected, where, "rejected")
        if prompt is None:
            prompt, chosen, rejected = split_turns(chosen, rejected, where)
        else:
            prompt = _chat_prompt(prompt, where)
            chosen = strip_repeated_prompt(prompt, chosen, where, "chosen")
            rejected = strip_repeated_prompt(prompt, rejected, where, "rejected")
    elif prompt is None:
        chosen, rejected = check_text(chosen, where, "chosen"), check_text(rejected, where, "rejected")
        prompt, chosen, rejected = split_text(chosen, rejected, where)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _pair_scores(row: Row, where: str) -> list[float]:
    return [check_finite(need(row, name, where), where, name) for name in ("score_chosen", "score_rejected")]


def _trl(row: Row, where: str, kind: RecordKind, cfg: DataConfig) -> Rows:
    pair = trl_pair(row, where)
    if kind == "preference" and not _has_scores(row):
        return [{**pair, "margin": row.get("margin")}]
    chosen, rejected = _pair_scores(row, where)
    if kind == "preference":
        if chosen < rejected:
            detail = f"is {chosen:g}, below score_rejected ({rejected:g}): the scores disagree with the choice"
            raise DataError(where, detail, "score_chosen")
        return [{**pair, "margin": chosen - rejected}]
    texts = [response_text(pair["chosen"]), response_text(pair["rejected"])]
    return scored_to_kind(pair["prompt"], texts, [chosen, rejected], kind, cfg.tie_policy)


def _trl_title(row: Row) -> str:
    form = "conversational" if is_messages(row.get("chosen")) else "standard"
    scored = " with scores (UltraFeedback-binarized)" if _has_scores(row) else ""
    return f"TRL {form} pairs{scored}"


def _trl_summary(row: Row, cfg: DataConfig) -> str:
    if row.get("prompt") is None:
        prompt = "prompt = shared prefix (implicit)"
    elif _repeats_prompt(row):
        prompt = "prompt = prompt column, its turns repeated in chosen/rejected removed"
    else:
        prompt = "prompt = prompt column"
    return prompt + (", margin = score_chosen - score_rejected" if _has_scores(row) else "")


TRL = Format(
    name="trl",
    title=_trl_title,
    needs=(("chosen",), ("rejected",)),
    optional=frozenset({"prompt", "margin", "score_chosen", "score_rejected"}),
    looks=lambda row: "chosen" in row or "rejected" in row,
    kinds=lambda row: SCORED_KINDS if _has_scores(row) else ("preference",),
    summary=_trl_summary,
    parse=_trl,
)


# --------------------------------------------------------------------------- UltraFeedback (raw, rated per aspect)


def _aspect_rating(value: Any, where: str, field: str) -> float | None:
    """One aspect's ``Rating`` ("4", 4 or "N/A" -> None); the hub's Parquet copy wraps each aspect in a 1-item list."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    rating = value.get("Rating") if isinstance(value, dict) else None
    if rating == "N/A":
        return None
    if isinstance(rating, str):
        try:
            rating = float(rating)
        except ValueError:
            raise DataError(where, f"expected a number or 'N/A', got {rating!r}", f"{field}.Rating") from None
    return check_finite(rating, where, f"{field}.Rating")


def _uf_score(completion: Row, aspect: str, where: str, field: str) -> float:
    """A completion's score: the mean of its aspect ratings (N/A left out), one aspect, or a numeric field."""
    if aspect in completion:
        return check_finite(completion[aspect], where, f"{field}.{aspect}")
    annotations = completion.get("annotations")
    if not isinstance(annotations, dict) or not annotations:
        raise DataError(where, f"expected aspect ratings, got {describe(annotations)}", f"{field}.annotations")
    if aspect == "mean":
        ratings = [_aspect_rating(v, where, f"{field}.annotations.{k}") for k, v in annotations.items()]
        numbers = [r for r in ratings if r is not None]
        if not numbers:
            raise DataError(where, "every aspect is rated 'N/A'", f"{field}.annotations")
        return sum(numbers) / len(numbers)
    if aspect not in annotations:
        detail = f"has no aspect '{aspect}' (aspects: {', '.join(sorted(annotations))}); see data.aspect"
        raise DataError(where, detail, f"{field}.annotations")
    rating = _aspect_rating(annotations[aspect], where, f"{field}.annotations.{aspect}")
    if rating is None:
        raise DataError(where, "is 'N/A'", f"{field}.annotations.{aspect}.Rating")
    return rating


def _ultrafeedback(row: Row, where: str, kind: RecordKind, cfg: DataConfig) -> Rows:
    prompt = _text_prompt(row, ("instruction", "prompt"), where)
    completions = need(row, "completions", where)
    least = 1 if kind == "rating" else 2
    if not isinstance(completions, list) or len(completions) < least:
        detail = f"expected a list of at least {least} completions, got {describe(completions)}"
        raise DataError(where, detail, "completions")
    responses, scores = [], []
    for i, completion in enumerate(completions):
        field = f"completions[{i}]"
        if not isinstance(completion, dict):
            raise DataError(where, f"expected an object {{response, annotations}}, got {describe(completion)}", field)
        responses.append(check_text(completion.get("response"), where, f"{field}.response"))
        scores.append(_uf_score(completion, cfg.aspect, where, field))
    return scored_to_kind(prompt, responses, scores, kind, cfg.tie_policy)


def _uf_summary(row: Row, cfg: DataConfig) -> str:
    score = "mean of aspect ratings" if cfg.aspect == "mean" else f"{cfg.aspect} rating"
    return f"prompt = {'instruction' if row.get('instruction') is not None else 'prompt'}, score = {score}"


ULTRAFEEDBACK = Format(
    name="ultrafeedback",
    title=lambda row: "UltraFeedback completions with ratings",
    needs=(("instruction", "prompt"), ("completions",)),
    optional=frozenset(),
    looks=lambda row: "completions" in row,
    kinds=lambda row: SCORED_KINDS,
    summary=_uf_summary,
    parse=_ultrafeedback,
)


# --------------------------------------------------------------------------- SHP (Reddit comments and their upvotes)


def _upvotes(row: Row, name: str, where: str) -> float:
    value = check_finite(need(row, name, where), where, name)
    if value <= 0:
        raise DataError(where, f"expected a positive upvote count (scores are log upvotes), got {value:g}", name)
    return value


def _shp(row: Row, where: str, kind: RecordKind, cfg: DataConfig) -> Rows:
    prompt = _text_prompt(row, ("history", "prompt"), where)
    responses = [check_text(need(row, name, where), where, name) for name in ("human_ref_A", "human_ref_B")]
    upvotes = [_upvotes(row, name, where) for name in ("score_A", "score_B")]
    label = row.get("labels")
    if label is not None and label != int(upvotes[0] > upvotes[1]):
        preferred = "A" if label == 1 else "B"
        detail = f"says {preferred} is preferred, but score_A={upvotes[0]:g} and score_B={upvotes[1]:g}"
        raise DataError(where, detail, "labels")
    return scored_to_kind(prompt, responses, [math.log(u) for u in upvotes], kind, cfg.tie_policy)


SHP = Format(
    name="shp",
    title=lambda row: "SHP comment pairs",
    needs=(("history", "prompt"), ("human_ref_A",), ("human_ref_B",), ("score_A",), ("score_B",)),
    optional=frozenset({"labels"}),
    looks=lambda row: any(name in row for name in ("score_A", "score_B", "human_ref_A", "human_ref_B")),
    kinds=lambda row: SCORED_KINDS,
    summary=lambda row, cfg: (
        f"prompt = {'history' if row.get('history') is not None else 'prompt'}, score = ln(upvotes), "
        "margin = ln(score ratio)"
    ),
    parse=_shp,
)


# --------------------------------------------------------------------------- detection

DETECTED = (ULTRAFEEDBACK, SHP, HH_RLHF, TRL)  # most specific trait first
FORMATS = {fmt.name: fmt for fmt in (RECORDS, *DETECTED)}
MAPPABLE_FIELDS = frozenset().union(*(fmt.columns() for fmt in FORMATS.values()))  # what ``columns`` may map to


def detect(rows: list[Row]) -> tuple[Format, Row | None]:
    """The format of the first row that shows one (a dedicated format, else a canonical record), and that row.

    A row that almost fits a dedicated format decides nothing: one malformed first row must not hide the format.
    """
    for row in rows:
        fmt = next((f for f in DETECTED if f.fits(row)), None)
        if fmt is not None:
            return fmt, row
        if near_miss(row) is None and guess_kind(row) is not None:
            return RECORDS, row
    return RECORDS, rows[0] if rows else None


def near_miss(row: Any) -> str | None:
    """For a row no format fits: the known format it almost is, and what it lacks."""
    if not isinstance(row, dict):
        return None
    for fmt in DETECTED:
        missing = fmt.missing(row)
        if fmt.looks(row) and missing:
            return f"almost {fmt.title(row)} (format '{fmt.name}'), which also needs {', '.join(missing)}"
    return None
