"""The one error type of the dataset layer.

A bad row must be fixable without a debugger, so every message names where it is
and which field is wrong::

    data/train.jsonl:17: field 'chosen': expected a non-empty string or a list of messages, got null

Locations (``where``) are written by the readers:

- JSONL: ``path:LINE``, the 1-based line in the file;
- CSV: ``path:LINE (row N)``, LINE the 1-based file line (the header is line 1),
  N the 1-based data row;
- JSON, Parquet, save_to_disk and hub datasets: ``path:row I``, with I the 0-based
  row index, as in ``dataset[I]``.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data file or one of its rows is unusable; ``where`` and ``field`` locate it."""

    def __init__(self, where: str, detail: str, field: str | None = None) -> None:
        self.where = where
        self.detail = detail
        self.field = field
        prefix = f"{where}: field '{field}'" if field is not None else where
        super().__init__(f"{prefix}: {detail}")

    def __reduce__(self):  # keep picklable (datasets.map with num_proc pickles exceptions)
        return (type(self), (self.where, self.detail, self.field))
