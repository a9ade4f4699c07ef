"""The five record kinds, their canonical columns, and row validation.

Canonical columns are the names TRL's trainers read, so a validated dataset goes to
SFTTrainer / DPOTrainer / RewardTrainer unchanged:

- ``sft``: ``{prompt, completion}`` | ``{messages}`` | ``{text}``
- ``preference``: ``{prompt, chosen, rejected, margin}`` (margin 0.0 when absent or null)
- ``ranking``: ``{prompt, responses, ranks}`` (rank 1 is best; equal ranks are ties)
- ``rating``: ``{prompt, response, score}``
- ``prompt``: ``{prompt}``

A prompt is a non-empty string or a list of messages ``{role, content}`` with role in
system/user/assistant/tool. A completion (``completion``, ``chosen``, ``rejected``)
takes the prompt's form, as TRL requires: with a message-list prompt a plain-string
completion is wrapped as one assistant message; with a string prompt a message-list
completion is an error.

Extra columns (ids, annotators, ...) are dropped, and messages keep only role and
content: every dataset of a kind then has one schema, which TRL's collators,
``concatenate_datasets`` and exact-duplicate removal all rely on.
"""

from __future__ import annotations

import json
import math
from typing import Any

from align.config import RecordKind
from align.data.errors import DataError

RECORD_KINDS: tuple[RecordKind, ...] = ("sft", "preference", "ranking", "rating", "prompt")
ROLES = frozenset({"system", "user", "assistant", "tool"})

KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected", "margin"),
    "ranking": ("prompt", "responses", "ranks"),
    "rating": ("prompt", "response", "score"),
    "prompt": ("prompt",),
}
SFT_FORMS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
}

CANONICAL_FIELDS = frozenset(
    {"prompt", "completion", "messages", "text", "chosen", "rejected", "margin"}
    | {"responses", "ranks", "response", "score"}
)

Messages = list[dict[str, str]]
Prompt = str | Messages


# --------------------------------------------------------------------------- field checks


def describe(value: Any) -> str:
    """Short description of a bad value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items" if value else "an empty list"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)}"
    return f"a {type(value).__name__}"


def need(row: dict[str, Any], field: str, where: str) -> Any:
    """``row[field]``, or a DataError that lists the fields the row does have."""
    if field not in row:
        have = ", ".join(sorted(row)) or "nothing"
        raise DataError(where, f"missing (row has: {have})", field)
    return row[field]


def check_text(value: Any, where: str, field: str) -> str:
    """A non-empty string, or a DataError naming ``field``."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, f"expected a non-empty string, got {describe(value)}", field)
    return value


def is_messages(value: Any) -> bool:
    """True for a list whose items are all dicts (a chat, valid or not)."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def check_messages(value: Any, where: str, field: str, *, assistant_only: bool = False) -> Messages:
    """Messages reduced to role and content; a bad one is a DataError naming ``field[i].role`` or ``.content``."""
    if not is_messages(value):
        raise DataError(where, f"expected a list of messages {{role, content}}, got {describe(value)}", field)
    out: Messages = []
    for i, msg in enumerate(value):
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DataError(where, f"expected one of {sorted(ROLES)}, got {role!r}", f"{field}[{i}].role")
        if assistant_only and role != "assistant":
            raise DataError(where, f"a completion holds assistant messages only, got {role!r}", f"{field}[{i}].role")
        if not isinstance(content, str):
            raise DataError(where, f"expected a string, got {describe(content)}", f"{field}[{i}].content")
        out.append({"role": role, "content": content})
    return out


def _prompt(row: dict[str, Any], where: str) -> Prompt:
    value = need(row, "prompt", where)
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value:
        return check_messages(value, where, "prompt")
    raise DataError(where, f"expected a non-empty string or a list of messages, got {describe(value)}", "prompt")


def _completion(row: dict[str, Any], field: str, prompt: Prompt, where: str) -> Prompt:
    """A completion in the prompt's form (TRL needs both strings or both message lists)."""
    value = need(row, field, where)
    if isinstance(value, str) and value.strip():
        return value if isinstance(prompt, str) else [{"role": "assistant", "content": value}]
    if isinstance(value, list) and value:
        if isinstance(prompt, str):
            raise DataError(where, "is a list of messages but 'prompt' is a string; use one form for both", field)
        msgs = check_messages(value, where, field, assistant_only=True)
        if not any(m["content"].strip() for m in msgs):
            raise DataError(where, "all assistant messages are empty", field)
        return msgs
    raise DataError(where, f"expected a non-empty string or a list of messages, got {describe(value)}", field)


def check_finite(value: Any, where: str, field: str) -> float:
    """A finite number as float (booleans refused), or a DataError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(where, f"expected a finite number, got {describe(value)}", field)
    return float(value)


# --------------------------------------------------------------------------- per kind


def _sft(row: dict[str, Any], where: str) -> dict[str, Any]:
    if row.get("messages") is not None:
        msgs = check_messages(row["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(where, "needs at least one assistant turn to train on", "messages")
        return {"messages": msgs}
    if row.get("prompt") is not None or row.get("completion") is not None:
        prompt = _prompt(row, where)
        return {"prompt": prompt, "completion": _completion(row, "completion", prompt, where)}
    if "text" in row:
        return {"text": check_text(row["text"], where, "text")}
    have = ", ".join(sorted(row)) or "nothing"
    detail = f"missing; an sft row needs 'messages', 'prompt'+'completion' or 'text' (row has: {have})"
    raise DataError(where, detail, "messages")


def _preference(row: dict[str, Any], where: str) -> dict[str, Any]:
    prompt = _prompt(row, where)
    chosen = _completion(row, "chosen", prompt, where)
    rejected = _completion(row, "rejected", prompt, where)
    if chosen == rejected:
        raise DataError(where, "is identical to 'chosen'", "rejected")
    margin = row.get("margin")
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "margin": 0.0 if margin is None else check_finite(margin, where, "margin"),
    }


def _rank(value: Any, where: str, i: int) -> int:
    if isinstance(value, float) and value.is_integer():  # Parquet/CSV may store ints as floats
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(where, f"expected a positive integer (1 is best), got {describe(value)}", f"ranks[{i}]")
    return value


def _ranking(row: dict[str, Any], where: str) -> dict[str, Any]:
    prompt = _prompt(row, where)
    responses = need(row, "responses", where)
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(where, f"expected a list of at least 2 responses, got {describe(responses)}", "responses")
    responses = [check_text(r, where, f"responses[{i}]") for i, r in enumerate(responses)]
    ranks = need(row, "ranks", where)
    if not isinstance(ranks, list) or len(ranks) != len(responses):
        detail = f"expected a list of {len(responses)} ranks (one per response), got {describe(ranks)}"
        raise DataError(where, detail, "ranks")
    ranks = [_rank(r, where, i) for i, r in enumerate(ranks)]
    seen: dict[str, int] = {}
    for text, rank in zip(responses, ranks):
        if seen.setdefault(text, rank) != rank:
            raise DataError(where, f"the same response text has ranks {seen[text]} and {rank}", "ranks")
    return {"prompt": prompt, "responses": responses, "ranks": ranks}


def _rating(row: dict[str, Any], where: str) -> dict[str, Any]:
    prompt = _prompt(row, where)
    response = check_text(need(row, "response", where), where, "response")
    return {"prompt": prompt, "response": response, "score": check_finite(need(row, "score", where), where, "score")}


def _prompt_only(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {"prompt": _prompt(row, where)}


_VALIDATORS = {"sft": _sft, "preference": _preference, "ranking": _ranking, "rating": _rating, "prompt": _prompt_only}


def validate_row(kind: RecordKind, row: dict[str, Any], where: str) -> dict[str, Any]:
    """Check one raw row of ``kind`` and return its canonical form; raise DataError naming ``where`` and the field."""
    if kind not in _VALIDATORS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(RECORD_KINDS)}")
    if not isinstance(row, dict):
        raise DataError(where, f"expected an object (one record), got {describe(row)}")
    return _VALIDATORS[kind](row, where)


def guess_kind(row: Any) -> RecordKind | None:
    """The kind a raw row's keys suggest, for a hint when the stage's default kind does not fit."""
    if not isinstance(row, dict):
        return None
    keys = set(row)
    for kind, needed in (
        ("ranking", {"responses", "ranks"}),
        ("rating", {"response", "score"}),
        ("preference", {"chosen", "rejected"}),
        ("sft", {"messages"}),
        ("sft", {"completion"}),
        ("sft", {"text"}),
        ("prompt", {"prompt"}),
    ):
        if needed <= keys:
            return kind  # type: ignore[return-value]
    return None


# --------------------------------------------------------------------------- dataset-level form


def row_form(kind: RecordKind, row: dict[str, Any]) -> tuple[str, str]:
    """(field, form) of a canonical row: all rows of one dataset must share it (Arrow holds one type per column)."""
    if kind == "sft" and "messages" in row:
        return "messages", "in the 'messages' form"
    if kind == "sft" and "text" in row:
        return "text", "in the 'text' form"
    prompt_form = "a string" if isinstance(row["prompt"], str) else "a list of messages"
    if kind == "sft":
        return "prompt", f"in the prompt/completion form with {prompt_form} as prompt"
    return "prompt", prompt_form


class FormChecker:
    """Remembers the first row's form and rejects a later row in another form."""

    def __init__(self, kind: RecordKind) -> None:
        self.kind = kind
        self.form: tuple[str, str] | None = None
        self.first_where: str | None = None

    def check(self, row: dict[str, Any], where: str) -> None:
        form = row_form(self.kind, row)
        if self.form is None:
            self.form, self.first_where = form, where
        elif form != self.form:
            raise DataError(
                where,
                f"is {form[1]} but earlier rows (first at {self.first_where}) are {self.form[1]}; "
                "one dataset must use one form (Arrow stores one type per column)",
                form[0],
            )


def prompt_key(row: dict[str, Any]) -> str:
    """Hashable identity of a row's prompt: the prompt, the chat before its last assistant turn, or the text."""
    if "prompt" in row:
        value: Any = row["prompt"]
    elif "messages" in row:
        msgs = row["messages"]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
        value = [{"role": m["role"], "content": m["content"]} for m in msgs[:last]]
    else:
        value = row.get("text", "")
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
