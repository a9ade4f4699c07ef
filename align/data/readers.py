"""Read raw rows, each tagged with its location, from every supported source.

Sources: JSONL, JSON (a list of objects or ``{"data": [...]}``), CSV (cells holding
lists, such as ``ranks`` or message lists, are JSON), Parquet, raw text (a ``.txt`` file or a
directory of them, one ``{"text": ...}`` document per file, for continued pretraining), a
``datasets.save_to_disk`` directory, or a hub dataset: an id (online, or offline from
the local hub cache) or a local copy of its repository, both read by
``datasets.load_dataset``. The ``columns`` mapping (field name -> source column) is
applied here, so validation and format parsers only ever see the names they know.

File-level problems (missing file, unreadable document, unknown hub id) raise
DataError at once; a problem confined to one row (a bad JSONL line, a missing
mapped column) comes back as ``RawRow.error`` so the caller can skip it.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from align.data.errors import DataError
from align.data.formats import MAPPABLE_FIELDS
from align.data.records import describe, is_messages

FORMATS = ("jsonl", "json", "csv", "parquet", "disk", "hub", "txt")
SUFFIX_FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
    ".txt": "txt",
}
DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


class RawRow(NamedTuple):
    """One source row: its location, and either its data (canonical names) or the error that spoiled it."""

    where: str
    data: dict[str, Any] | None
    error: DataError | None = None


def detect_format(path: str) -> str:
    """Guess the file type: save_to_disk directory by its marker files, files by extension, else a hub dataset.

    A directory without save_to_disk markers is raw text when its only data files are ``.txt``,
    else a local copy of a hub dataset's repository.
    """
    p = Path(path)
    if p.is_dir():
        if any((p / marker).exists() for marker in DISK_MARKERS):
            return "disk"
        suffixes = {f.suffix.lower() for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIX_FORMATS}
        return "txt" if suffixes == {".txt"} else "hub"
    suffix = p.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    if p.exists():
        hint = f"set the file type (data.file_type) to one of {', '.join(FORMATS)}"
        raise DataError(path, f"cannot guess the format from the extension {suffix or '(none)'!r}; {hint}")
    return "hub"


def read_rows(
    path: str, format: str = "auto", *, split: str = "train", columns: dict[str, str] | None = None
) -> Iterator[RawRow]:
    """Rows of ``path`` with their locations, columns renamed to canonical names."""
    columns = dict(columns or {})
    _check_mapping(path, columns)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(path, f"unknown file type {fmt!r}; expected one of auto, {', '.join(FORMATS)}")
    if fmt != "hub" and not Path(path).exists():
        raise DataError(path, "file not found")
    if fmt == "jsonl":
        rows = _read_jsonl(path)
    elif fmt == "json":
        rows = _read_json(path)
    elif fmt == "csv":
        rows = _read_csv(path)
    elif fmt == "parquet":
        rows = _read_parquet(path)
    elif fmt == "txt":
        rows = _read_txt(path)
    elif fmt == "disk":
        rows = _read_disk(path, split)
    else:
        rows = _read_hub(path, split)
    return _mapped(rows, columns, decode_csv=fmt == "csv")


def _check_mapping(path: str, columns: dict[str, str]) -> None:
    for canon in columns:
        if canon not in MAPPABLE_FIELDS:
            close = difflib.get_close_matches(canon, sorted(MAPPABLE_FIELDS), n=1)
            known = ", ".join(sorted(MAPPABLE_FIELDS))
            hint = f"; did you mean '{close[0]}'?" if close else f"; known fields: {known}"
            raise DataError(path, f"columns maps unknown field '{canon}'{hint}")


def map_columns(row: dict[str, Any], columns: dict[str, str], where: str) -> dict[str, Any]:
    """Rename source columns to canonical names (``columns``: canonical -> source); swaps are safe."""
    for canon, source in columns.items():
        if source not in row:
            have = ", ".join(sorted(map(str, row))) or "nothing"
            raise DataError(where, f"mapped from column '{source}', which is not in the data (columns: {have})", canon)
    sources = set(columns.values())
    out = {k: v for k, v in row.items() if k not in sources}
    out.update({canon: row[source] for canon, source in columns.items()})
    return out


def _mapped(rows: Iterable[RawRow], columns: dict[str, str], decode_csv: bool) -> Iterator[RawRow]:
    for row in rows:
        if row.error is not None:
            yield row
            continue
        try:
            if not isinstance(row.data, dict):
                raise DataError(row.where, f"expected an object (one record), got {describe(row.data)}")
            data = map_columns(row.data, columns, row.where)
        except DataError as err:
            yield RawRow(row.where, None, err)
            continue
        yield RawRow(row.where, _decode_csv(data) if decode_csv else data)


# --------------------------------------------------------------------------- text formats


def _not_utf8(path: str) -> DataError:
    """A DataError at the line and byte column of the first byte in ``path`` that is not UTF-8."""
    raw = Path(path).read_bytes()
    try:
        raw.decode("utf-8")  # a BOM is valid UTF-8: the error's offset is the file's
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line, column = raw.count(b"\n", 0, e.start) + 1, e.start - line_start + 1
        return DataError(f"{path}:{line}", f"not UTF-8 text (byte 0x{raw[e.start]:02X} at column {column}); "
                                           "save the file as UTF-8")
    return DataError(path, "not UTF-8 text; save the file as UTF-8")


def _read_jsonl(path: str) -> Iterator[RawRow]:
    with open(path, encoding="utf-8-sig") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    yield RawRow(where, json.loads(line))
                except json.JSONDecodeError as e:
                    yield RawRow(where, None, DataError(where, f"invalid JSON ({e.msg} at column {e.colno})"))
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _read_txt(path: str) -> Iterator[RawRow]:
    """One ``{"text": ...}`` row per ``.txt`` file: ``path`` itself, or every one under it, in sorted order."""
    files = sorted(f for f in Path(path).rglob("*.txt") if f.is_file()) if Path(path).is_dir() else [Path(path)]
    for file in files:
        try:
            yield RawRow(str(file), {"text": file.read_text(encoding="utf-8-sig")})
        except UnicodeDecodeError:
            yield RawRow(str(file), None, _not_utf8(str(file)))


def _read_json(path: str) -> Iterator[RawRow]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved under a .json name
            return _read_jsonl(path)
        raise DataError(f"{path}:{e.lineno}", f"invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataError(path, f'expected a list of objects or {{"data": [...]}}, got {describe(doc)}')
    return (RawRow(f"{path}:row {i}", obj) for i, obj in enumerate(doc))


def _read_csv(path: str) -> Iterator[RawRow]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            for n, rec in enumerate(reader, 1):
                # line_num is the record's last line; step back over newlines inside quoted cells
                inner = sum(v.count("\n") for v in rec.values() if isinstance(v, str))
                where = f"{path}:{reader.line_num - inner} (row {n})"
                if None in rec:
                    err = DataError(where, f"has more cells than the header's {len(reader.fieldnames or [])} columns")
                    yield RawRow(where, None, err)
                else:
                    yield RawRow(where, dict(rec))
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


_CSV_LIST_FIELDS = {"messages", "responses", "ranks", "completions"}
_CSV_CHAT_FIELDS = {"prompt", "completion", "chosen", "rejected"}
_CSV_NUMBER_FIELDS = {"score", "margin", "score_chosen", "score_rejected", "score_A", "score_B", "labels"}


def _decode_csv(row: dict[str, Any]) -> dict[str, Any]:
    """CSV cells are strings: parse JSON lists, message lists and numbers for the fields that hold them."""
    out = dict(row)
    for key, value in row.items():
        if not isinstance(value, str):
            continue
        if key in _CSV_NUMBER_FIELDS:
            if not value.strip():
                out[key] = None
            else:
                try:
                    out[key] = float(value)
                except ValueError:
                    pass  # left a string: validation names it
        elif key in _CSV_LIST_FIELDS or (key in _CSV_CHAT_FIELDS and value.lstrip().startswith("[")):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                continue
            if key in _CSV_LIST_FIELDS or is_messages(parsed):
                out[key] = parsed
    return out


# --------------------------------------------------------------------------- Arrow formats


def _read_parquet(path: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise DataError(path, f"cannot read as Parquet: {e}") from None
    return (RawRow(f"{path}:row {i}", obj) for i, obj in enumerate(records))


def _read_disk(path: str, split: str) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as e:
        raise DataError(path, f"cannot load as a datasets.save_to_disk directory: {e}") from None
    prefix = path
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(path, f"has no split '{split}' (splits: {', '.join(loaded)})", "split")
        loaded, prefix = loaded[split], f"{path}[{split}]"
    return (RawRow(f"{prefix}:row {i}", obj) for i, obj in enumerate(loaded))


def _read_hub(path: str, split: str) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_dataset(path, split=split)
    except Exception as e:
        raise DataError(
            path,
            f"is neither a local file nor a reachable hub dataset "
            f"(tried datasets.load_dataset({path!r}, split={split!r}): {type(e).__name__}: {e})",
        ) from None
    return (RawRow(f"{path}[{split}]:row {i}", obj) for i, obj in enumerate(loaded))
