"""A data path opened for reading: its raw rows and the format they are in.

The one road from a recipe's ``data.path`` to rows: a file of any type, a
``save_to_disk`` directory, a hub dataset id (``datasets.load_dataset``: online,
or from the local hub cache offline) all give raw rows, and the format is then
recognised from the first of them, whatever the source was.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

from align.config import DataConfig, RecordKind
from align.data.chat import response_text
from align.data.errors import DataError
from align.data.formats import FORMATS, Format, Row, Rows, detect
from align.data.readers import RawRow, read_rows
from align.data.records import validate_row

DETECT_ROWS = 20  # rows looked at to recognise a format: a few malformed first rows do not hide it


@dataclass
class Source:
    """One data path opened for reading: its rows and the format they were recognised (or forced) to be in."""

    path: str
    format: Format
    first: Row | None
    rows: Iterator[RawRow]
    cfg: DataConfig

    def kind_for(self, kind: RecordKind) -> RecordKind:
        """``kind`` when this format holds it, else the format's own kind (converted to ``kind`` later)."""
        kinds = self.format.kinds(self.first or {})
        return kind if kind in kinds else kinds[0]

    def parse(self, row: Row, where: str, kind: RecordKind) -> Rows:
        """One source row -> raw rows of ``kind`` (none, one, or several: a scored row gives several pairs)."""
        return self.format.parse(row, where, kind, self.cfg)

    def describe(self, n_rows: int, n_records: int, kind: RecordKind) -> str:
        """The log line: what was recognised, how the prompt was found, what came out, which columns went unused."""
        row = self.first or {}
        forced = "" if self.cfg.format == "auto" else " (data.format)"
        summary = self.format.summary(row, self.cfg)
        line = f"{self.path}: {self.format.title(row)}{forced}: {n_rows} rows{', ' + summary if summary else ''}"
        line += f" -> {n_records} {kind} records"
        unused = sorted(set(row) - self.format.columns())
        return line + (f"; unused columns: {', '.join(unused)}" if unused else "")


def open_source(path: str, cfg: DataConfig) -> Source:
    """Open ``path`` and recognise its format from the first rows (or take ``cfg.format``)."""
    rows = read_rows(path, cfg.file_type, split=cfg.split, columns=cfg.columns)
    head = list(itertools.islice(rows, DETECT_ROWS))
    data = [raw.data for raw in head if raw.data is not None]
    fmt, first = detect(data) if cfg.format == "auto" else (FORMATS[cfg.format], data[0] if data else None)
    return Source(path, fmt, first, itertools.chain(head, rows), cfg)


def rows_to_label(path: str, file_type: str = "auto") -> Iterator[RawRow]:
    """Rows for ``align label import``: a candidates file as it is; a public preference format as
    ``{id, prompt, responses}`` items, so annotators rank its responses afresh.

    ``id`` hashes the prompt and responses, so importing the same file twice adds nothing.
    """
    # model_construct: an unknown file type is read_rows' DataError, not a recipe ValidationError
    source = open_source(path, DataConfig.model_construct(path=path, file_type=file_type))
    if source.format.name == "records":
        yield from source.rows
        return
    kind: RecordKind = "ranking" if "ranking" in source.format.kinds(source.first or {}) else "preference"
    for raw in source.rows:
        try:
            if raw.error is not None:
                raise raw.error
            row = validate_row(kind, source.parse(raw.data, raw.where, kind)[0], raw.where)
        except DataError as err:
            yield RawRow(raw.where, None, err)
            continue
        yield RawRow(raw.where, _label_item(row))


def _label_item(row: Row) -> Row:
    """A ranking or preference row -> a candidates item with a content-derived id."""
    responses = row["responses"] if "responses" in row else [response_text(row[k]) for k in ("chosen", "rejected")]
    digest = hashlib.sha1(json.dumps([row["prompt"], responses], sort_keys=True).encode()).hexdigest()
    return {"id": digest[:16], "prompt": row["prompt"], "responses": responses}
