"""Quality control from labels: gold accuracy and agreement per annotator, and the review queue of contested items.

Pure functions over ``LabelStore.label_records`` rows (stored response order). A label's answer
is its ranks (1 best, ties equal), ``"both_bad"``, or ``"up"``/``"down"`` (thumbs). Two answers
are compared pair by pair: for every pair of responses, do both put the same one first (or both
call it a tie)? The share of such pairs is their agreement (0 or 1 for two responses; a both-bad
vote agrees only with another both-bad vote).

- gold accuracy: an annotator's mean agreement with the known answer, over the gold items they labeled;
- agreement: an annotator's mean agreement with each other annotator on the items both labeled;
- item table: per item its labels, agreement, most common answer and state (the lead's dashboard);
- review queue: items with at least two done labels whose agreement (``agreement.labels_agreement``)
  is below a threshold, most contested first, until a lead adjudicates them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

from labeling_ui.agreement import labels_agreement
from labeling_ui.schemas import response_name

Answer = Sequence[int] | str


def answer(record: Mapping[str, Any]) -> Answer:
    """What a done label says: thumbs up/down, "both_bad", or its ranks in stored order."""
    if record["choice"] in ("up", "down", "both_bad") or record["ranks"] is None:
        return record["choice"] or "both_bad"
    return record["ranks"]


def answers_agree(a: Answer, b: Answer) -> float:
    """Share of response pairs two answers order alike (1.0 or 0.0 when either is a word, not ranks)."""
    if isinstance(a, str) or isinstance(b, str):
        return float(a == b)
    pairs = list(combinations(range(len(a)), 2))
    same = sum((a[i] > a[j]) - (a[i] < a[j]) == (b[i] > b[j]) - (b[i] < b[j]) for i, j in pairs)
    return same / len(pairs) if pairs else 1.0


def _done(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [rec for rec in records if rec["status"] == "done"]


def gold_accuracy(records: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, float]]:
    """annotator -> (gold items labeled, mean agreement with the gold answers); only annotators with gold labels."""
    scores: dict[str, list[float]] = defaultdict(list)
    for rec in _done(records):
        if rec.get("gold_item"):
            scores[rec["annotator"]].append(answers_agree(answer(rec), rec["gold"]))
    return {name: (len(values), sum(values) / len(values)) for name, values in scores.items()}


def annotator_agreement(records: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, float]]:
    """annotator -> (labels shared with someone, mean agreement with the other annotators on them)."""
    by_item: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for rec in _done(records):
        by_item[rec["item"]].append(rec)
    scores: dict[str, list[float]] = defaultdict(list)
    for labels in by_item.values():
        for a, b in combinations(labels, 2):
            agree = answers_agree(answer(a), answer(b))
            scores[a["annotator"]].append(agree)
            scores[b["annotator"]].append(agree)
    return {name: (len(values), sum(values) / len(values)) for name, values in scores.items()}


def review_queue(records: Iterable[Mapping[str, Any]], below: float) -> list[dict[str, Any]]:
    """Items with 2+ done labels, agreement under ``below``, not gold and not adjudicated: most contested first."""
    by_item: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for rec in _done(records):
        if rec.get("gold") is None:
            by_item[rec["item"]].append(rec)
    queue = []
    for item, labels in by_item.items():
        if len(labels) < 2:
            continue
        share = labels_agreement(labels)
        if share < below:
            queue.append({"item": item, "labels": len(labels), "agreement": share})
    return sorted(queue, key=lambda row: (row["agreement"], -row["labels"], row["item"]))


def item_agreement_table(records: Iterable[Mapping[str, Any]], k: int, below: float) -> list[dict[str, Any]]:
    """One row per item with done labels: labels, agreement (None under 2 labels), the most common answer, state.

    ``state``: ``settled`` (a lead adjudicated it), ``gold``, ``contested`` (2+ labels, agreement
    under ``below``), ``complete`` (K labels) or ``in progress``. Least agreement first.
    """
    by_item: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for rec in _done(records):
        by_item[rec["item"]].append(rec)
    rows = []
    for item, labels in by_item.items():
        share = labels_agreement(labels) if len(labels) >= 2 else None
        answers = Counter(_answer_key(answer(rec)) for rec in labels)
        top, votes = answers.most_common(1)[0]
        first = labels[0]
        if first.get("adjudicated_by"):
            state = "settled"
        elif first.get("gold") is not None:
            state = "gold"
        elif share is not None and share < below:
            state = "contested"
        else:
            state = "complete" if len(labels) >= k else "in progress"
        rows.append({"item": item, "labels": len(labels), "agreement": share, "answer": top, "votes": votes,
                     "state": state})
    return sorted(rows, key=lambda r: (r["agreement"] if r["agreement"] is not None else 2.0, r["item"]))


def _answer_key(found: Answer) -> str:
    """An answer as text: ``B > A=C`` for ranks, else the word."""
    if isinstance(found, str):
        return found
    names = [response_name(i) for i in range(len(found))]
    return " > ".join("=".join(n for n, r in zip(names, found) if r == rank) for rank in sorted(set(found)))
