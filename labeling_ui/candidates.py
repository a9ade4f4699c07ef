"""Read a candidates file (``align generate``'s output) into rows the store imports.

    {"id": "p0001", "prompt": "Name a colour.", "responses": [{"text": "Red.", "model": "m1"}, {"text": "Blue.", "model": "m2"}]}

Read through the dataset layer, so JSONL, JSON, CSV, Parquet and save_to_disk work, a file in a
public preference format (HH-RLHF, TRL pairs, UltraFeedback, SHP) gives items whose responses
annotators rank afresh, and a bad row is a DataError naming the file, line and field. Every row
is checked before anything is imported.
"""

from __future__ import annotations

from typing import Any

from align.data import DataError
from align.data.source import rows_to_label
from labeling_ui.schemas import parse_candidate


def read_candidates(path: str, format: str = "auto") -> list[tuple[str, dict[str, Any]]]:
    """``[(where, row)]`` with rows as ``schemas.parse_candidate`` gives them; the first bad row raises."""
    rows = []
    for raw in rows_to_label(path, format):
        if raw.error is not None:
            raise raw.error
        rows.append((raw.where, parse_candidate(raw.data, raw.where)))
    if not rows:
        raise DataError(path, "holds no candidate rows")
    return rows
