"""Public preference formats: each fixture loads into the records of its hand-converted twin, names what was
recognised in the log, refuses a malformed row with its location, and trains `align dpo` and `align reward`.

The fixtures under tests/fixtures/formats/ are the project's own few-row examples of each form; every
``*.expected.jsonl`` beside them was converted by hand (margins: score differences, or log upvote ratios for SHP).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from align.config import DataConfig, DPORecipe, RewardRecipe
from align.data import DataError, load_records
from align.data.convert import dense_ranks, scored_to_kind
from align.data.dialogue import parse_hh, split_text, split_turns

FIXTURES = Path(__file__).parent / "fixtures" / "formats"

# fixture -> (its hand-converted twin, the log line after "<path>: ")
FORMS = {
    "hh_rlhf": ("hh_rlhf", "HH-RLHF dialogues: 3 rows, prompt = shared prefix -> 3 preference records"),
    "trl_standard_explicit": (
        "trl_standard", "TRL standard pairs: 3 rows, prompt = prompt column -> 3 preference records"
    ),
    "trl_standard_implicit": (
        "trl_standard", "TRL standard pairs: 3 rows, prompt = shared prefix (implicit) -> 3 preference records"
    ),
    "trl_conversational_explicit": (
        "trl_conversational", "TRL conversational pairs: 3 rows, prompt = prompt column -> 3 preference records"
    ),
    "trl_conversational_implicit": (
        "trl_conversational",
        "TRL conversational pairs: 3 rows, prompt = shared prefix (implicit) -> 3 preference records",
    ),
    "ultrafeedback_binarized": (
        "ultrafeedback_binarized",
        "TRL conversational pairs with scores (UltraFeedback-binarized): 3 rows, prompt = prompt column, its turns "
        "repeated in chosen/rejected removed, margin = score_chosen - score_rejected -> 3 preference records; "
        "unused columns: messages, prompt_id",
    ),
    "ultrafeedback": (
        "ultrafeedback",
        "UltraFeedback completions with ratings: 2 rows, prompt = instruction, score = mean of aspect ratings "
        "-> 4 preference records; unused columns: models, source",
    ),
    "shp": (
        "shp",
        "SHP comment pairs: 2 rows, prompt = history, score = ln(upvotes), margin = ln(score ratio) "
        "-> 2 preference records; unused columns: c_root_id_A, c_root_id_B, domain, post_id, score_ratio, upvote_ratio",
    ),
}


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.jsonl"


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path: Path | str, kind: str = "preference", **data) -> list[dict]:  # noqa: ANN003
    return load_records(DataConfig(path=str(path), **data), kind).train.to_list()


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert [{**row, "margin": None} for row in got] == [{**row, "margin": None} for row in want]
    assert [row["margin"] for row in got] == pytest.approx([row["margin"] for row in want])


# --------------------------------------------------------------------------- the splitting and scoring rules


def test_hh_transcript_turns_keep_paragraphs() -> None:
    text = "\n\nHuman: Two primes?\n\nAssistant: Two and three.\n\nBoth are prime.\n\nHuman: Thanks"
    assert parse_hh(text, "f:1", "chosen") == [
        {"role": "user", "content": "Two primes?"},
        {"role": "assistant", "content": "Two and three.\n\nBoth are prime."},
        {"role": "user", "content": "Thanks"},
    ]


def test_implicit_string_prompt_is_cut_at_a_word() -> None:
    # shared characters "The sky is bl": cutting there would split "blue"/"black"; the last shared space is kept
    # with the answers, as in TRL's standard form (" blue.").
    assert split_text("The sky is blue.", "The sky is black.", "f:1") == ("The sky is", " blue.", " black.")


def test_shared_turns_are_the_prompt_only_if_answers_follow() -> None:
    user, other = {"role": "user", "content": "a"}, {"role": "user", "content": "b"}
    answer, worse = {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}
    assert split_turns([user, answer], [user, worse], "f:1") == ([user], [answer], [worse])
    with pytest.raises(DataError, match=r"^f:1: field 'chosen\[1\].role': turn 1 is a user turn"):
        split_turns([user, other, answer], [user, answer], "f:1")


def test_scores_give_dense_ranks_ratings_and_pairs() -> None:
    assert dense_ranks([4.5, 3.0, 4.5, 2.0]) == [1, 2, 1, 3]
    pairs = scored_to_kind("p", ["a", "b", "c"], [2.0, 5.0, 2.0], "preference", "drop")
    assert [(r["chosen"], r["rejected"], r["margin"]) for r in pairs] == [("b", "a", 3.0), ("b", "c", 3.0)]
    kept = scored_to_kind("p", ["a", "b", "c"], [2.0, 5.0, 2.0], "preference", "keep")
    assert ("a", "c", 0.0) in [(r["chosen"], r["rejected"], r["margin"]) for r in kept]
    assert scored_to_kind("p", ["a", "b"], [1.0, 3.0], "rating") == [
        {"prompt": "p", "response": "a", "score": 1.0}, {"prompt": "p", "response": "b", "score": 3.0}]


# --------------------------------------------------------------------------- each form = its hand-converted twin


@pytest.mark.parametrize("name", list(FORMS))
def test_form_loads_as_its_hand_converted_twin_and_logs_what_it_is(name: str, caplog: pytest.LogCaptureFixture) -> None:
    twin, line = FORMS[name]
    with caplog.at_level(logging.INFO, logger="align.data"):
        got = load(fixture(name))
    assert f"{fixture(name)}: {line}" in caplog.messages
    assert_same_records(got, load(FIXTURES / f"{twin}.expected.jsonl", format="records"))


def test_forced_format_is_named_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="align.data"):
        load(fixture("hh_rlhf"), format="hh-rlhf")
    assert any("HH-RLHF dialogues (data.format): 3 rows" in m for m in caplog.messages)


def test_scored_rows_become_what_the_recipe_asks_for() -> None:
    """UltraFeedback (mean of numeric aspects; N/A left out), SHP (ln upvotes), scored TRL pairs."""
    uf = fixture("ultrafeedback")
    assert [row["ranks"] for row in load(uf, kind="ranking")] == [[1, 3, 2], [2, 1]]
    ratings = load(uf, kind="rating")
    assert [r["score"] for r in ratings] == pytest.approx([5.0, 1.5, 11 / 3, 2.0, 4.75])
    helpful = load(uf, kind="rating", aspect="helpfulness")
    assert [r["score"] for r in helpful] == [5.0, 1.0, 4.0, 2.0, 5.0]
    assert [r["score"] for r in load(uf, kind="rating", aspect="overall_score")] == [5.0] * 5

    shp = load(fixture("shp"), kind="rating")
    assert [r["score"] for r in shp] == pytest.approx([math.log(40), math.log(10), math.log(3), math.log(27)])
    assert load(fixture("ultrafeedback_binarized"), kind="ranking")[2]["ranks"] == [1, 1]  # 7.5 vs 7.5: a tie


def test_pairs_of_a_form_feed_every_stage_kind() -> None:
    """HH-RLHF holds pairs only: an SFT stage learns the chosen answers, PPO reads the distinct prompts."""
    sft = load_records(DataConfig(path=str(fixture("hh_rlhf"))), "sft", want="sft")
    assert sft.stats["converted"] == "preference -> sft"
    assert sft.train[0]["completion"] == [{"role": "assistant", "content": "Paris is the capital of France."}]
    prompts = load_records(DataConfig(path=str(fixture("shp"))), "prompt", want="prompt").train["prompt"]
    assert prompts == ["How long should I rest a steak?", "Why does bread go stale?"]


def test_all_pairs_tied_is_a_named_error(tmp_path: Path) -> None:
    row = rows_of(fixture("shp"))[0] | {"score_B": 40, "labels": 0}
    with pytest.raises(DataError, match=r"no valid preference records \(its 1 rows gave no pairs: all tied"):
        load(write_jsonl(tmp_path / "tied.jsonl", [row]))


# --------------------------------------------------------------------------- detection and located errors


def test_a_malformed_first_row_does_not_hide_the_format(tmp_path: Path) -> None:
    rows = rows_of(fixture("hh_rlhf"))
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": rows[0]["chosen"]}, *rows])
    with pytest.raises(DataError) as info:
        load(path)
    assert str(info.value) == f"{path}:1: field 'rejected': missing (row has: chosen)"
    assert len(load(path, on_error="skip")) == 3


@pytest.mark.parametrize(
    ("row", "almost"),
    [
        ({"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "score_A": 2}, "SHP comment pairs (format 'shp'), "
         "which also needs 'score_B'"),
        ({"completions": [{"response": "a"}]}, "UltraFeedback completions with ratings (format 'ultrafeedback'), "
         "which also needs 'instruction' or 'prompt'"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: hello"}, "HH-RLHF dialogues (format 'hh-rlhf'), which also needs "
         "'rejected'"),
    ],
)
def test_a_row_no_format_fits_names_the_one_it_almost_is(tmp_path: Path, row: dict, almost: str) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [row])
    with pytest.raises(DataError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}:1: field ") and str(info.value).endswith(f" (almost {almost})")


def replace_row(rows: list[dict], i: int, **changes) -> list[dict]:  # noqa: ANN003
    return [*rows[:i], rows[i] | changes, *rows[i + 1 :]]


USER, ASSISTANT = {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}
BAD_ROWS = [  # (fixture, changes to its second row, field, detail)
    ("hh_rlhf", {"rejected": "\n\nHuman: Something else?\n\nAssistant: No."}, "rejected", "shares no leading turn"),
    ("hh_rlhf", {"rejected": "I think it is Lyon."}, "rejected", "expected an HH-RLHF transcript"),
    ("trl_standard_implicit", {"rejected": "Nothing in common."}, "rejected", "shares no leading words"),
    ("trl_standard_explicit", {"chosen": None}, "chosen", "expected a non-empty string or a list of messages"),
    ("trl_conversational_implicit", {"chosen": [USER, ASSISTANT]}, "rejected", "shares no leading turn"),
    ("trl_conversational_explicit", {"chosen": [USER, ASSISTANT]}, "chosen[0].role",
     "turn 0 is a user turn that does not repeat 'prompt'"),
    ("ultrafeedback_binarized", {"score_chosen": 1.0}, "score_chosen", "is 1, below score_rejected (2)"),
    ("ultrafeedback", {"completions": [{"response": "x", "annotations": {"helpfulness": {"Rating": "five"}}}] * 2},
     "completions[0].annotations.helpfulness.Rating", "expected a number or 'N/A', got 'five'"),
    ("shp", {"labels": 1}, "labels", "says A is preferred, but score_A=3 and score_B=27"),
    ("shp", {"score_B": 0}, "score_B", "expected a positive upvote count"),
]


@pytest.mark.parametrize(("name", "changes", "field", "detail"), BAD_ROWS)
def test_a_malformed_row_in_each_form_is_located(tmp_path: Path, name: str, changes: dict, field: str,
                                                 detail: str) -> None:
    path = write_jsonl(tmp_path / f"{name}.jsonl", replace_row(rows_of(fixture(name)), 1, **changes))
    with pytest.raises(DataError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}:2: field '{field}': "), str(info.value)
    assert detail in str(info.value)


def test_an_unknown_aspect_lists_the_aspects(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r":1: field 'completions\[0\].annotations': has no aspect 'helpful' \(aspects: "
                                        r"helpfulness, honesty, instruction_following, truthfulness\)"):
        load(fixture("ultrafeedback"), kind="rating", aspect="helpful")


def test_columns_can_rename_to_what_a_format_reads(tmp_path: Path) -> None:
    renamed = [{"post": r["history"], "a": r["human_ref_A"], "b": r["human_ref_B"], "up_a": r["score_A"],
                "up_b": r["score_B"]} for r in rows_of(fixture("shp"))]
    columns = {"history": "post", "human_ref_A": "a", "human_ref_B": "b", "score_A": "up_a", "score_B": "up_b"}
    got = load(write_jsonl(tmp_path / "comments.jsonl", renamed), columns=columns)
    assert_same_records(got, load(FIXTURES / "shp.expected.jsonl", format="records"))


def test_format_key_names_file_types_apart() -> None:
    with pytest.raises(ValidationError, match="'csv' is a file type: set data.file_type: csv"):
        DataConfig(path="x.txt", format="csv")
    assert DataConfig(path="x.txt", file_type="jsonl", format="hh-rlhf").format == "hh-rlhf"


# --------------------------------------------------------------------------- the same road for every source


def test_csv_cells_hold_scores_and_completions(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "shp.csv"
    rows = rows_of(fixture("shp"))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert_same_records(load(path), load(FIXTURES / "shp.expected.jsonl", format="records"))


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty local hub cache: what `datasets.load_dataset` reads offline."""
    import datasets

    cache = tmp_path / "hub_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def cache_as_hub_dataset(cache: Path, repo_id: str, data: Path, tmp_path: Path) -> None:
    """Put ``data`` in the hub cache as if ``load_dataset(repo_id)`` had downloaded it (offline: no download)."""
    from datasets.packaged_modules.json.json import Json

    builder = Json(cache_dir=str(tmp_path / "build"), dataset_name=repo_id.split("/")[1], hash="0" * 40,
                   data_files={"train": str(data)})
    builder.download_and_prepare()
    namespace, name = repo_id.split("/")
    shutil.copytree(builder.cache_dir, cache / f"{namespace}___{name}" / "default" / "0.0.0" / ("0" * 40))


@pytest.mark.parametrize("source", ["save_to_disk", "hub cache", "repository copy"])
def test_every_source_takes_the_same_road(tmp_path: Path, hub_cache: Path, source: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    import datasets

    data = fixture("ultrafeedback_binarized")
    if source == "save_to_disk":
        path = str(tmp_path / "disk")
        datasets.Dataset.from_list(rows_of(data)).save_to_disk(path)
    elif source == "hub cache":
        path = "align-tests/ufb_tiny"
        cache_as_hub_dataset(hub_cache, path, data, tmp_path)
    else:
        path = str(tmp_path / "repo")
        (tmp_path / "repo" / "data").mkdir(parents=True)
        shutil.copy(data, tmp_path / "repo" / "data" / "train.jsonl")
    with caplog.at_level(logging.INFO, logger="align.data"):
        got = load(path)
    assert_same_records(got, load(FIXTURES / "ultrafeedback_binarized.expected.jsonl", format="records"))
    assert any(m.startswith(f"{path}: TRL conversational pairs with scores") for m in caplog.messages)

    bad = replace_row(rows_of(data), 2, score_rejected=9.5)
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'bad'}:row 2: field 'score_chosen'"):
        load(tmp_path / "bad")


def test_label_import_takes_each_form_as_items_to_rank() -> None:
    from labeling_ui.candidates import read_candidates

    hh = read_candidates(str(fixture("hh_rlhf")))
    assert [r["text"] for r in hh[0][1]["responses"]] == ["Paris is the capital of France.", "I think it is Lyon."]
    assert hh[1][1]["prompt"][-1] == {"role": "user", "content": "Yes, a small packet."}
    assert [len(item["responses"]) for _, item in read_candidates(str(fixture("ultrafeedback")))] == [3, 2]
    again = read_candidates(str(fixture("hh_rlhf")))
    assert [item["key"] for _, item in hh] == [item["key"] for _, item in again]  # ids from content


# --------------------------------------------------------------------------- align dpo and align reward on each form


@pytest.mark.parametrize("name", list(FORMS))
def test_dpo_trains_on_each_form(tiny_llama_dir: Path, tmp_path: Path, name: str) -> None:
    from align.stages import dpo

    recipe = DPORecipe.model_validate({
        "model": {"name_or_path": str(tiny_llama_dir)},
        "data": {"path": str(fixture(name))},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_batch_size": 2,
                     "max_length": 64, "save_steps": None, "report_to": "none"},
        "eval": {"enabled": False},
    })
    result = dpo.run(recipe)
    assert result.metrics["train/steps"] == 2 and math.isfinite(result.metrics["train/loss"]), result.metrics


def test_reward_trains_on_every_form_at_once(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """One reward run with every form as a source (the reward stage takes a list): one model load for all eight."""
    from align.stages import reward

    sources = [{"path": str(fixture(name))} for name in FORMS]
    sources.append({"path": str(fixture("ultrafeedback")), "kind": "ranking", "aspect": "helpfulness"})
    recipe = RewardRecipe.model_validate({
        "model": {"name_or_path": str(tiny_bert_dir), "method": "full"},
        "data": sources,
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_batch_size": 8,
                     "max_length": 48, "save_steps": None, "report_to": "none"},
    })
    result = reward.run(recipe)
    stats = json.loads((result.output_dir / "data_stats.json").read_text())["sources"]
    assert [s["format"] for s in stats] == ["hh-rlhf", *["trl"] * 5, "ultrafeedback", "shp", "ultrafeedback"]
    assert result.metrics["train/steps"] == 2 and math.isfinite(result.metrics["train/loss"]), result.metrics
