"""Unpaired thumbs-up/down feedback, the view KTO trains on: ``{prompt, completion, label}`` rows.

    from align.data.feedback import to_feedback
    to_feedback([{"prompt": "Hi", "response": "Hello!", "score": 1.0}], "rating", threshold=0.5)

Not a sixth record kind: a rating is a thumbs-up when its score is above ``threshold`` (a
one-click up/down label exported as 1/0 is a rating), and a preference pair gives its chosen
response a thumbs-up and its rejected one a thumbs-down.
"""

from __future__ import annotations

from typing import Any

from align.config import RecordKind


def to_feedback(rows: list[dict[str, Any]], kind: RecordKind, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Rating or preference rows -> ``{prompt, completion, label: bool}`` rows, in order."""
    if kind == "rating":
        return [{"prompt": r["prompt"], "completion": r["response"], "label": r["score"] > threshold} for r in rows]
    if kind == "preference":
        return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in rows for side in ("chosen", "rejected")]
    raise ValueError(f"feedback comes from rating or preference records, not {kind}")
