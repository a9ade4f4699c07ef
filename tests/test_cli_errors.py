"""Expected failures reach the user as ``align: error: ...`` (exit 2), naming the file, line or key: no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.cli import main
from align.data import DataError, read_rows
from align.models import ModelNotFoundError, resolve_model_source

REPO = Path(__file__).resolve().parents[1]


def test_a_gguf_name_on_a_file_that_is_not_gguf(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model at all")
    assert main(["prepare-models", str(fake)]) == 2
    assert f"align: error: {fake}: not a GGUF file (it starts with b'not '" in capsys.readouterr().err
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00\x01")  # the magic, then the header breaks off
    with pytest.raises(ModelNotFoundError, match=f"{cut}: cannot convert this GGUF file"):
        resolve_model_source(str(cut))


@pytest.mark.parametrize("steps", ["-5", "0", "-2"])
def test_max_steps_is_positive_or_minus_one(steps: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["sft", str(REPO / "recipes" / "sft.yaml"), f"training.max_steps={steps}"]) == 2
    err = capsys.readouterr().err
    assert f"training.max_steps: {steps} is not a number of steps: give a positive count, or -1" in err


@pytest.mark.parametrize(("name", "content", "where"), [
    ("rows.jsonl", b'{"a": "ok"}\n{"a": "caf\xe9"}\n', "rows.jsonl:2: not UTF-8 text (byte 0xE9 at column 11)"),
    ("rows.json", b'[{"a": "ok"},\n {"a": "caf\xe9"}]\n', "rows.json:2: not UTF-8 text (byte 0xE9 at column 12)"),
    ("rows.csv", b"a,b\nok,1\ncaf\xe9,2\n", "rows.csv:3: not UTF-8 text (byte 0xE9 at column 4)"),
])
def test_non_utf8_files_name_the_line(tmp_path: Path, name: str, content: bytes, where: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content)  # after a BOM (allowed), the bad byte is on a later line
    with pytest.raises(DataError) as err:
        list(read_rows(str(path)))
    assert str(err.value) == f"{tmp_path}/{where}; save the file as UTF-8"
