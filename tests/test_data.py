"""Dataset layer: readers, record validation, errors that locate the bad row, load_records."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest

from align.config import DataConfig
from align.data import DataError, load_records, read_rows, validate_row

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"

PREFS = [
    {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "margin": 2},
]
RANKING = {"prompt": "Say hi", "responses": ["Hello!", "hi", "go away"], "ranks": [1, 2, 3]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path, kind: str, **kw) -> object:
    return load_records(DataConfig(path=str(path), **kw), kind)


# --------------------------------------------------------------------------- readers


def test_jsonl_reader_gives_canonical_rows_and_default_margin(tmp_path: Path) -> None:
    data = load(write_jsonl(tmp_path / "p.jsonl", PREFS), "preference")
    assert data.kind == "preference"
    assert data.train.column_names == ["prompt", "chosen", "rejected", "margin"]
    assert data.train.to_list() == [
        {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5.", "margin": 0.0},
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "margin": 2.0},
    ]
    assert data.eval is None
    assert data.stats["rows_read"] == 2


@pytest.mark.parametrize("wrap", [False, True])
def test_json_reader_list_and_data_key(tmp_path: Path, wrap: bool) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"data": PREFS} if wrap else PREFS))
    assert load(path, "preference").train["chosen"] == ["4.", "Paris."]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.json", PREFS)
    assert load(path, "preference").train["rejected"] == ["5.", "Lyon."]


def test_json_reader_rejects_other_shapes(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"rows": PREFS}))
    with pytest.raises(DataError, match=r"p\.json: expected a list of objects"):
        load(path, "preference")


def test_csv_reader_decodes_lists_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text('prompt,responses,ranks\nSay hi,"[""Hello!"", ""hi""]","[1, 2]"\n')
    assert load(path, "ranking").train.to_list() == [{"prompt": "Say hi", "responses": ["Hello!", "hi"], "ranks": [1, 2]}]
    path = tmp_path / "s.csv"
    path.write_text("prompt,response,score\nq,a,0.5\nq,b,-2\n")
    assert load(path, "rating").train["score"] == [0.5, -2.0]


def test_parquet_reader(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([RANKING]), path)
    assert load(path, "ranking").train.to_list() == [RANKING]


def test_save_to_disk_dataset_and_datasetdict_split(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(PREFS[:1]).save_to_disk(str(tmp_path / "ds"))
    assert load(tmp_path / "ds", "preference").train["chosen"] == ["4."]

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"prompt": "a"}]), "test": datasets.Dataset.from_list([{"prompt": "b"}])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load(tmp_path / "dd", "prompt", split="test").train["prompt"] == ["b"]
    with pytest.raises(DataError, match=r"has no split 'valid' \(splits: train, test\)"):
        load(tmp_path / "dd", "prompt", split="valid")


def test_hub_id_offline_is_a_named_error() -> None:
    with pytest.raises(DataError) as info:
        load_records(DataConfig(path="no-such-org/no-such-dataset"), "prompt")
    msg = str(info.value)
    assert "no-such-org/no-such-dataset" in msg
    assert "neither a local file nor a reachable hub dataset" in msg


def test_missing_local_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="file not found") as info:
        load(path, "prompt")
    assert str(path) in str(info.value)


def test_column_mapping_renames_and_can_swap(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "Why?", "answer": "Because.", "id": 7}])
    data = load(path, "sft", columns={"prompt": "question", "completion": "answer"})
    assert data.train.to_list() == [{"prompt": "Why?", "completion": "Because."}]  # extra 'id' dropped
    swapped = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Q", "chosen": "bad", "rejected": "good"}])
    data = load(swapped, "preference", columns={"chosen": "rejected", "rejected": "chosen"})
    assert (data.train[0]["chosen"], data.train[0]["rejected"]) == ("good", "bad")


def test_unknown_canonical_name_in_mapping_suggests(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p"}])
    with pytest.raises(DataError, match="unknown field 'promt'; did you mean 'prompt'"):
        load(path, "prompt", columns={"promt": "question"})


def test_read_rows_yields_locations(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert [(r.where, r.data) for r in read_rows(str(path))] == [
        (f"{path}:1", {"prompt": "a"}),
        (f"{path}:3", {"prompt": "b"}),
    ]


# --------------------------------------------------------------------------- record kinds


def test_validate_every_kind() -> None:
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "name": "x"}]
    assert validate_row("sft", {"messages": chat}, "w") == {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    }
    assert validate_row("sft", {"text": "plain text"}, "w") == {"text": "plain text"}
    assert validate_row("sft", {"prompt": "Q", "completion": "A", "extra": 1}, "w") == {"prompt": "Q", "completion": "A"}
    # a string completion to a chat prompt becomes one assistant message (TRL wants both conversational)
    assert validate_row("sft", {"prompt": chat[:1], "completion": "A"}, "w") == {
        "prompt": [{"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "A"}],
    }
    assert validate_row("preference", PREFS[0], "w")["margin"] == 0.0
    assert validate_row("ranking", {**RANKING, "ranks": [1.0, 2, 2]}, "w")["ranks"] == [1, 2, 2]
    assert validate_row("rating", {"prompt": "p", "response": "r", "score": 3}, "w") == {
        "prompt": "p",
        "response": "r",
        "score": 3.0,
    }
    assert validate_row("prompt", {"prompt": "p", "source_model": "m"}, "w") == {"prompt": "p"}


@pytest.mark.parametrize(
    ("kind", "row", "field", "detail"),
    [
        ("sft", {"messages": [{"role": "user", "content": "hi"}]}, "messages", "at least one assistant turn"),
        ("sft", {"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role", "got 'bot'"),
        ("sft", {"prompt": "p", "completion": [{"role": "assistant", "content": "a"}]}, "completion", "'prompt' is a string"),
        ("preference", {"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected", "identical to 'chosen'"),
        ("preference", {"prompt": "p", "chosen": None, "rejected": "a"}, "chosen", "got null"),
        ("preference", {"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "finite number"),
        ("ranking", {"prompt": "p", "responses": ["a"], "ranks": [1]}, "responses", "at least 2"),
        ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}, "ranks[0]", "positive integer"),
        ("ranking", {"prompt": "p", "responses": ["a", "a"], "ranks": [1, 2]}, "ranks", "ranks 1 and 2"),
        ("rating", {"prompt": "p", "response": "r", "score": float("inf")}, "score", "got inf"),
        ("prompt", {"prompt": ""}, "prompt", "got an empty string"),
        ("prompt", {"prompt": []}, "prompt", "got an empty list"),
    ],
)
def test_validate_row_errors_name_field(kind: str, row: dict, field: str, detail: str) -> None:
    with pytest.raises(DataError) as info:
        validate_row(kind, row, "f.jsonl:9")
    assert info.value.field == field
    assert str(info.value).startswith(f"f.jsonl:9: field '{field}': ")
    assert detail in str(info.value)


# --------------------------------------------------------------------------- bad input, located


def bad_jsonl(tmp_path: Path, rows: list, name: str = "bad.jsonl") -> Path:
    return write_jsonl(tmp_path / name, rows)


@pytest.mark.parametrize(
    ("kind", "bad_row", "field", "detail"),
    [
        ("preference", {"prompt": "p", "rejected": "r"}, "chosen", "missing (row has: prompt, rejected)"),
        ("rating", {"prompt": "p", "response": "  ", "score": 1}, "response", "expected a non-empty string"),
        ("ranking", {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2]}, "ranks", "expected a list of 3 ranks"),
    ],
)
def test_bad_row_error_names_file_line_field(tmp_path: Path, kind: str, bad_row: dict, field: str, detail: str) -> None:
    good = {"preference": PREFS[0], "rating": {"prompt": "p", "response": "r", "score": 1}, "ranking": RANKING}[kind]
    path = bad_jsonl(tmp_path, [good, good, bad_row])
    with pytest.raises(DataError) as info:
        load(path, kind)
    assert str(info.value).startswith(f"{path}:3: field '{field}': ")
    assert detail in str(info.value)


def test_nan_rating_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ratings.jsonl"
    path.write_text('{"prompt": "p", "response": "a", "score": 1}\n{"prompt": "p", "response": "b", "score": NaN}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: field 'score': expected a finite number, got nan$"):
        load(path, "rating")


def test_bad_json_line_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b",}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        load(path, "prompt")


def test_mixed_prompt_forms_name_first_offending_line(tmp_path: Path) -> None:
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": [{"role": "user", "content": "c"}]}]
    path = bad_jsonl(tmp_path, rows, "mixed.jsonl")
    with pytest.raises(DataError) as info:
        load(path, "prompt")
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: field 'prompt': is a list of messages but earlier rows (first at {path}:1) are a string")


def test_eval_file_must_take_the_train_form(tmp_path: Path) -> None:
    train = bad_jsonl(tmp_path, [{"prompt": "a"}], "train.jsonl")
    evalf = bad_jsonl(tmp_path, [{"prompt": [{"role": "user", "content": "b"}]}], "eval.jsonl")
    with pytest.raises(DataError, match=rf"^{evalf}:1: field 'prompt'"):
        load(train, "prompt", eval_path=str(evalf))


def test_unknown_mapped_column_names_both(tmp_path: Path) -> None:
    path = bad_jsonl(tmp_path, [{"question": "q"}], "cols.jsonl")
    with pytest.raises(DataError) as info:
        load(path, "prompt", columns={"prompt": "query"})
    assert str(info.value) == f"{path}:1: field 'prompt': mapped from column 'query', which is not in the data (columns: question)"


def test_csv_error_location_counts_the_header(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("prompt,response,score\nq,a,1\nq,b,nan\n")
    with pytest.raises(DataError, match=rf"^{path}:3 \(row 2\): field 'score'"):
        load(path, "rating")


def test_json_error_location_is_row_index(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": 3}]))
    with pytest.raises(DataError, match=rf"^{path}:row 1: field 'prompt': .*got a number \(3\)"):
        load(path, "prompt")


def test_on_error_skip_counts_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a"}\nnot json\n{"prompt": ""}\n{"prompt": "b"}\n{"text": "x"}\n')
    with caplog.at_level(logging.WARNING, logger="align.data"):
        data = load(path, "prompt", on_error="skip")
    assert data.train["prompt"] == ["a", "b"]
    assert (data.stats["rows_read"], data.stats["rows_skipped"]) == (5, 3)
    warning = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert f"skipped 3 of 5 rows (on_error=skip); first: {path}:2: invalid JSON" in warning


def test_all_rows_skipped_is_an_error(tmp_path: Path) -> None:
    path = bad_jsonl(tmp_path, [{"prompt": ""}], "empty.jsonl")
    with pytest.raises(DataError, match="no valid prompt records \\(all 1 rows were skipped"):
        load(path, "prompt", on_error="skip")


def test_data_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(DataError("f.jsonl:2", "bad", "prompt")))
    assert (str(err), err.field) == ("f.jsonl:2: field 'prompt': bad", "prompt")


# --------------------------------------------------------------------------- load_records pipeline


def test_dedup_then_max_samples_then_split(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}"} for i in range(10)] + [{"prompt": "q0"}, {"prompt": "q1"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = load(path, "prompt", max_samples=8, eval_fraction=0.25, seed=1)
    assert data.stats["duplicates_dropped"] == 2
    assert data.stats["rows_truncated"] == 2
    assert (len(data.train), len(data.eval)) == (6, 2)
    assert sorted(list(data.train["prompt"]) + list(data.eval["prompt"])) == [f"q{i}" for i in range(8)]
    assert load(path, "prompt", dedup=False).stats["train_rows"] == 12


def test_want_converts_ranking_file_for_dpo(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [RANKING])
    data = load_records(DataConfig(path=str(path), kind="ranking"), "preference", want="preference")
    assert data.kind == "preference"
    assert data.stats["converted"] == "ranking -> preference"
    assert data.train.to_list() == [
        {"prompt": "Say hi", "chosen": "Hello!", "rejected": "hi", "margin": 1.0},
        {"prompt": "Say hi", "chosen": "Hello!", "rejected": "go away", "margin": 2.0},
        {"prompt": "Say hi", "chosen": "hi", "rejected": "go away", "margin": 1.0},
    ]


def test_default_kind_mismatch_hints_the_kind(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [RANKING])
    with pytest.raises(DataError) as info:
        load_records(DataConfig(path=str(path)), "preference", want="preference")
    assert str(info.value) == (
        f"{path}:1: field 'chosen': missing (row has: prompt, ranks, responses) "
        "(this row looks like a ranking record: set data.kind: ranking)"
    )


def test_want_unsupported_conversion_fails_before_reading(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds rating records but sft records are needed; supported: ranking -> preference"):
        load_records(DataConfig(path=str(tmp_path / "absent.jsonl"), kind="rating"), "sft", want="sft")


def test_conversion_to_no_pairs_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]}])
    with pytest.raises(DataError, match="converting ranking to preference gave no rows \\(tie_policy='drop'\\)"):
        load_records(DataConfig(path=str(path), kind="ranking"), "preference", want="preference")
    kept = load_records(DataConfig(path=str(path), kind="ranking", tie_policy="keep"), "preference", want="preference")
    assert kept.train["margin"] == [0.0]


def test_eval_path_and_leakage_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}])
    evalf = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "b"}, {"prompt": "z"}])
    with caplog.at_level(logging.WARNING, logger="align.data"):
        data = load(train, "prompt", eval_path=str(evalf))
    assert data.eval["prompt"] == ["b", "z"]
    assert data.stats["eval_prompts_in_train"] == 1
    assert any("1 of 2 eval rows have a prompt that also appears in train (e.g. 'b')" in r.getMessage() for r in caplog.records)


def test_too_few_prompts_to_split(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "a"}])
    with pytest.raises(DataError, match=r"one\.jsonl: field 'eval_fraction': .*at least 2 distinct prompts"):
        load(path, "prompt", eval_fraction=0.5)


# --------------------------------------------------------------------------- shipped demo data


@pytest.mark.parametrize(
    ("name", "kind", "rows"),
    [
        ("sft_demo.jsonl", "sft", 65),
        ("prompts_demo.jsonl", "prompt", 48),
        ("prompts_eval.jsonl", "prompt", 16),
        ("preferences_demo.jsonl", "preference", 64),
        ("ratings_demo.jsonl", "rating", 24),
        ("rankings_demo.jsonl", "ranking", 16),
    ],
)
def test_example_files_load_with_their_kind(name: str, kind: str, rows: int) -> None:
    data = load(EXAMPLES / name, kind)
    assert data.stats == {
        "path": str(EXAMPLES / name),
        "format": "trl" if kind == "preference" else "records",  # align's preference record is TRL's explicit form
        "kind": kind,
        "rows_read": rows,
        "rows_skipped": 0,
        "duplicates_dropped": 0,
        "rows_truncated": 0,
        "train_rows": rows,
        "eval_rows": 0,
    }


def test_example_data_sizes_and_disjoint_prompts() -> None:
    assert sum(p.stat().st_size for p in EXAMPLES.iterdir()) < 100_000
    train = load(EXAMPLES / "prompts_demo.jsonl", "prompt", eval_path=str(EXAMPLES / "prompts_eval.jsonl"))
    assert train.stats["eval_prompts_in_train"] == 0
    pairs = load_records(DataConfig(path=str(EXAMPLES / "rankings_demo.jsonl"), kind="ranking"), "preference", want="preference")
    # 10 strict 3-response rankings x 3 pairs + two with a tie x 2 + two strict 4-response x 6 + two with a tie x 5
    assert len(pairs.train) == 10 * 3 + 2 * 2 + 2 * 6 + 2 * 5
