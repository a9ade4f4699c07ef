"""Conversions between record kinds: pure functions over canonical rows.

Supported: ranking -> preference, rating -> preference, preference -> sft, any kind
-> prompt, and a kind to itself. A DPO or reward stage can then read a ranking or
rating file directly, and an SFT stage can learn from the chosen answers. Scored
responses (one prompt, N responses with a score each, as UltraFeedback and SHP ship
them) become rating, ranking or preference rows.

Pairs and margins. Every pair of responses to one prompt where one is better gives
a preference row ``(chosen=better, rejected=worse)``, in the order the responses
are listed. The margin is how much better, in the source's own units:

- ranking: ``margin = rank(rejected) - rank(chosen)`` (ranks 1 and 3 give 2.0);
- rating and scored responses: ``margin = score(chosen) - score(rejected)``.

Ties (equal rank or score) are dropped (``tie_policy="drop"``) or kept with margin
0.0 (``"keep"``; chosen is then the one listed first). Pairs of identical text are
never emitted. With a message-list prompt, chosen/rejected become one assistant
message each, the form TRL expects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from align.config import RecordKind
from align.data.records import KIND_COLUMNS, RECORD_KINDS, Prompt, prompt_key

if TYPE_CHECKING:
    import datasets

TiePolicy = Literal["drop", "keep"]
Rows = list[dict[str, Any]]


def _as_completion(prompt: Prompt, text: str) -> Any:
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def _check_tie_policy(tie_policy: str) -> None:
    if tie_policy not in ("drop", "keep"):
        raise ValueError(f"tie_policy must be 'drop' or 'keep', got {tie_policy!r}")


def _pairs(prompt: Prompt, responses: Sequence[str], goodness: Sequence[float], tie_policy: TiePolicy) -> Rows:
    """All pairs i < j as preference rows; margin = goodness(chosen) - goodness(rejected) >= 0."""
    out: Rows = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if responses[i] == responses[j]:
                continue
            if goodness[i] == goodness[j] and tie_policy == "drop":
                continue
            better, worse = (j, i) if goodness[j] > goodness[i] else (i, j)
            out.append(
                {
                    "prompt": prompt,
                    "chosen": _as_completion(prompt, responses[better]),
                    "rejected": _as_completion(prompt, responses[worse]),
                    "margin": float(goodness[better] - goodness[worse]),
                }
            )
    return out


def ranking_to_preference(rows: Sequence[dict[str, Any]], tie_policy: TiePolicy = "drop") -> Rows:
    """Every ordered pair of each ranking; margin = rank difference (rank 1 is best)."""
    _check_tie_policy(tie_policy)
    out: Rows = []
    for row in rows:
        out.extend(_pairs(row["prompt"], row["responses"], [-r for r in row["ranks"]], tie_policy))
    return out


def rating_to_preference(rows: Sequence[dict[str, Any]], tie_policy: TiePolicy = "drop") -> Rows:
    """Group ratings by exact prompt, pair higher with lower scores; margin = score difference.

    A response rated more than once for one prompt (several annotators) counts once,
    with its mean score, so its ratings never pair against each other.
    """
    _check_tie_policy(tie_policy)
    groups: dict[str, tuple[Prompt, dict[str, list[float]]]] = {}
    for row in rows:
        _, scores = groups.setdefault(prompt_key(row), (row["prompt"], {}))
        scores.setdefault(row["response"], []).append(float(row["score"]))
    out: Rows = []
    for prompt, scores in groups.values():
        responses = list(scores)
        means = [sum(scores[r]) / len(scores[r]) for r in responses]
        out.extend(_pairs(prompt, responses, means, tie_policy))
    return out


def dense_ranks(scores: Sequence[float]) -> list[int]:
    """Rank 1 for the highest score, equal scores share a rank: [4.5, 3, 4.5, 2] -> [1, 2, 1, 3]."""
    order = sorted(set(scores), reverse=True)
    return [order.index(s) + 1 for s in scores]


def scored_to_kind(
    prompt: Prompt, responses: Sequence[str], scores: Sequence[float], kind: RecordKind, tie_policy: TiePolicy = "drop"
) -> Rows:
    """Responses to one prompt, each with a score (higher is better), as rating, ranking or preference rows.

    rating: one row per response; ranking: one row, ranks from ``dense_ranks``;
    preference: every pair, margin = score difference (ties per ``tie_policy``).
    """
    if kind == "rating":
        return [{"prompt": prompt, "response": r, "score": float(s)} for r, s in zip(responses, scores)]
    if kind == "ranking":
        return [{"prompt": prompt, "responses": list(responses), "ranks": dense_ranks(scores)}]
    if kind == "preference":
        _check_tie_policy(tie_policy)
        return _pairs(prompt, responses, scores, tie_policy)
    raise ValueError(f"scored responses give rating, ranking or preference rows, not {kind}")


def preference_to_sft(rows: Sequence[dict[str, Any]]) -> Rows:
    """prompt + chosen -> an sft prompt/completion row (rejected and margin are dropped)."""
    return [{"prompt": row["prompt"], "completion": row["chosen"]} for row in rows]


def _row_prompt(row: dict[str, Any]) -> Prompt:
    if "prompt" in row:
        return row["prompt"]
    if "messages" in row:
        msgs = row["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        if last == 0:
            raise ValueError(f"sft chat starts with an assistant turn, so it has no prompt: {json.dumps(msgs)[:200]}")
        return [{"role": m["role"], "content": m["content"]} for m in msgs[:last]]
    raise ValueError("sft rows in the 'text' form have no prompt to keep; use prompt/completion or messages")


def chat_to_prompt_completion(rows: Sequence[dict[str, Any]]) -> Rows:
    """sft chats -> conversational prompt/completion: the turns before the last answer, and that answer.

    Completion-only loss then trains on the final assistant turn with any chat template;
    earlier assistant turns become context. Rows already in another form pass through.
    """
    out: Rows = []
    for row in rows:
        if "messages" not in row:
            out.append(row)
            continue
        prompt = _row_prompt(row)
        out.append({"prompt": prompt, "completion": [row["messages"][len(prompt)]]})
    return out


def to_prompt(rows: Sequence[dict[str, Any]]) -> Rows:
    """Keep each distinct prompt once, in order of first appearance (sft chats: the turns before the last answer)."""
    seen: set[str] = set()
    out: Rows = []
    for row in rows:
        prompt = _row_prompt(row)
        key = prompt_key({"prompt": prompt})
        if key not in seen:
            seen.add(key)
            out.append({"prompt": prompt})
    return out


_CONVERTERS = {
    ("ranking", "preference"): ranking_to_preference,
    ("rating", "preference"): rating_to_preference,
    ("preference", "sft"): lambda rows, tie_policy: preference_to_sft(rows),
}


def supported_conversions() -> list[str]:
    """Human-readable list, e.g. for error messages."""
    return [f"{a} -> {b}" for a, b in _CONVERTERS] + ["any kind -> prompt", "a kind -> itself"]


def can_convert(from_kind: RecordKind, to_kind: RecordKind) -> bool:
    return from_kind == to_kind or to_kind == "prompt" or (from_kind, to_kind) in _CONVERTERS


def to_kind(
    data: Sequence[dict[str, Any]] | datasets.Dataset,
    from_kind: RecordKind,
    to_kind: RecordKind,
    tie_policy: TiePolicy = "drop",
) -> Rows | datasets.Dataset:
    """Convert canonical rows (list or Dataset; the same type comes back) from one kind to another."""
    for kind in (from_kind, to_kind):
        if kind not in RECORD_KINDS:
            raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(RECORD_KINDS)}")
    if not can_convert(from_kind, to_kind):
        raise ValueError(
            f"cannot convert {from_kind} records to {to_kind}; supported: {', '.join(supported_conversions())}"
        )
    if from_kind == to_kind:
        return data
    is_dataset = hasattr(data, "column_names") and hasattr(data, "to_list")
    rows = data.to_list() if is_dataset else list(data)
    out = to_prompt(rows) if to_kind == "prompt" else _CONVERTERS[(from_kind, to_kind)](rows, tie_policy)
    return rows_to_dataset(out, to_kind) if is_dataset else out


def rows_to_dataset(rows: Sequence[dict[str, Any]], kind: RecordKind) -> datasets.Dataset:
    """A Dataset from canonical rows; an empty one still has the kind's columns."""
    import datasets

    if rows:
        return datasets.Dataset.from_list(list(rows))
    columns = KIND_COLUMNS.get(kind, ("prompt", "completion"))
    return datasets.Dataset.from_dict({c: [] for c in columns})
