"""`align augment`: word edits by hand, provenance per row, the written file loads unchanged, eval prompts are
refused with the row named, and paraphrase / back-translation run on the tiny Llama."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_reward_stage import preference_rows, recipe, write_jsonl

from align.augment.edits import synonym_swap, word_dropout, word_swap
from align.config import AugmentRecipe, DataConfig
from align.data import DataError, load_records
from align.stages import STAGES
from align.stages import reward as reward_stage
from align.stages.augment import run

PAIRS = [
    ("Give a quick answer.", "Paris is the capital.", "I do not know."),
    ("Explain the method briefly.", "It is a simple method with three steps.", "No."),
    ("What is a good tip for a job interview?", "Prepare a short example of your work.", "Just go."),
    ("Is it hard to start running?", "It is easy to begin with short runs.", "Running is bad."),
    ("Name a big city.", "Tokyo is a big city.", "A small village."),
    ("Help me choose a car.", "Pick a small car if you park in town.", "Buy any car."),
]


def preferences(path: Path) -> str:
    return write_jsonl(path, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def make(data: dict[str, Any], methods: list[dict[str, Any]], out: Path, **extra: Any) -> AugmentRecipe:
    return AugmentRecipe.model_validate({"data": data, "methods": methods, "training": {"output_dir": str(out)}, **extra})


# --------------------------------------------------------------------------- edits by hand


def test_word_edits_by_hand() -> None:
    rng = random.Random(0)
    assert word_swap("a b c d e", 1.0, rng) == "b a d c e"  # pairs (a b), (c d) swap; e has no partner
    assert word_swap("a b\nc d", 1.0, rng) == "b a\nd c"  # line by line: no word crosses a line break
    assert word_dropout("one two three\n\nfour", 1.0, rng).count(" ") == 0  # every word drawn: one kept per line
    assert word_dropout("keep every word", 1e-9, rng) == "keep every word"
    assert synonym_swap("A Quick answer, please.", 1.0, rng, {"quick": ["fast"], "answer": ["reply"]}) == \
        "A Fast reply, please."  # capital kept, punctuation stays on its word, unknown words untouched


def test_edits_are_seeded() -> None:
    text = "the quick brown fox jumps over the lazy dog"
    assert word_dropout(text, 0.5, random.Random("s")) == word_dropout(text, 0.5, random.Random("s"))


# --------------------------------------------------------------------------- the stage


def test_provenance_is_kept_and_the_file_loads_unchanged(tmp_path: Path) -> None:
    data = {"path": preferences(tmp_path / "prefs.jsonl"), "kind": "preference", "eval_fraction": 0.34, "seed": 1}
    methods = [{"kind": "synonym", "probability": 1.0, "copies": 2}, {"kind": "word_swap", "probability": 0.5}]
    result = run(make(data, methods, tmp_path / "out"))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    evaluation = read_jsonl(tmp_path / "out" / "eval.jsonl")
    originals = {row["source_id"]: row for row in rows if row["augmentation"] == "original"}

    assert len(originals) == 4 and len(evaluation) == 2  # 2 of 6 prompts held out, written as they are
    assert {row["augmentation"] for row in rows} == {"original", "synonym", "word_swap"}
    for row in rows:
        source = originals[row["source_id"]]  # every augmented row points at a train row
        assert row["augmentation"] == "original" or row != source
    made = result.metrics["augment/synonym"] + result.metrics["augment/word_swap"]
    skipped = sum(v for k, v in result.metrics.items() if k.startswith("augment/skipped_"))
    assert made + skipped == 4 * 3 and result.metrics["augment/rows_written"] == len(rows) == 4 + made
    # What a training stage sees: canonical records, provenance dropped, the eval file alongside.
    loaded = load_records(DataConfig(path=str(tmp_path / "out" / "train.jsonl"), kind="preference",
                                     eval_path=str(tmp_path / "out" / "eval.jsonl")), "preference")
    assert loaded.train.column_names == ["prompt", "chosen", "rejected", "margin"]
    assert loaded.stats["eval_prompts_in_train"] == 0


def test_an_augmented_eval_prompt_is_refused_with_the_row_named(tmp_path: Path) -> None:
    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(json.dumps({"quick": ["fast"]}))
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "Give a fast answer.", "chosen": "Yes.", "rejected": "No."}])
    data = {"path": preferences(tmp_path / "prefs.jsonl"), "kind": "preference", "eval_path": eval_path}
    recipe = make(data, [{"kind": "synonym", "probability": 1.0, "synonyms": str(synonyms)}], tmp_path / "out")
    with pytest.raises(DataError) as err:
        run(recipe)
    # Line 7: six originals, then the first synonym row, made from "Give a quick answer.".
    assert err.value.where == f"{tmp_path / 'out' / 'train.jsonl'}:7" and err.value.field == "prompt"
    assert "'Give a fast answer.'" in str(err.value) and "synonym rewrite of source row" in str(err.value)
    assert not (tmp_path / "out" / "train.jsonl").exists()  # nothing leaky is written


def test_synonym_augmentation_makes_the_reward_model_robust_to_synonyms(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Toy rule ("good" beats "bad"), eval pairs with every table word replaced ("good" -> "great"/"fine", "bad" ->
    "poor"): the reward model trained on the plain pairs ranks 0.45 of them right, on synonym-augmented pairs 1.0
    (measured; same steps and batch size)."""
    def augment(path: str, out: Path, method: dict[str, Any], keep_original: bool) -> str:
        run(make({"path": path, "kind": "preference"}, [method], out, keep_original=keep_original))
        return str(out / "train.jsonl")

    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(300, seed=0))
    held_out = write_jsonl(tmp_path / "eval.jsonl", preference_rows(100, seed=1))
    swapped = augment(held_out, tmp_path / "eval_syn", {"kind": "synonym", "probability": 1.0,
                                                         "fields": ["chosen", "rejected"]}, keep_original=False)
    augmented = augment(train, tmp_path / "train_syn", {"kind": "synonym", "probability": 0.5}, keep_original=True)
    accuracy = {name: reward_stage.run(recipe(tiny_bert_dir, tmp_path / name, {"path": path, "eval_path": swapped}))
                .metrics["eval/accuracy"] for name, path in (("plain", train), ("augmented", augmented))}
    print(accuracy)
    assert accuracy["augmented"] > 0.9 and accuracy["augmented"] > accuracy["plain"] + 0.3


def test_chats_rewrite_user_turns_only(tmp_path: Path) -> None:
    chats = [{"messages": [{"role": "system", "content": "Be quick."}, {"role": "user", "content": "Give a quick tip."},
                           {"role": "assistant", "content": "A quick tip: start small."}]}]
    recipe = make({"path": write_jsonl(tmp_path / "sft.jsonl", chats)}, [{"kind": "synonym", "probability": 1.0}],
                  tmp_path / "out", keep_original=False)
    run(recipe)
    (row,) = read_jsonl(tmp_path / "out" / "train.jsonl")
    system, user, assistant = row["messages"]
    assert system["content"] == "Be quick." and assistant["content"] == "A quick tip: start small."
    assert "quick" not in user["content"] and user["content"].endswith(".")  # every word with a synonym replaced


@pytest.mark.parametrize("kind", ["paraphrase", "back_translation"])
def test_model_rewrites_run_on_the_tiny_llama(tiny_llama_dir: Path, tmp_path: Path, kind: str) -> None:
    data = {"path": preferences(tmp_path / "prefs.jsonl"), "kind": "preference"}
    method = {"kind": kind, "model": {"name_or_path": str(tiny_llama_dir)}, "fields": ["prompt"], "copies": 2,
              "generation": {"max_new_tokens": 8, "temperature": 1.0, "batch_size": 4}}
    result = run(make(data, [method], tmp_path / "out", keep_original=False))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    skipped = sum(v for k, v in result.metrics.items() if k.startswith("augment/skipped_"))
    assert len(rows) + skipped == 2 * len(PAIRS) and rows  # every row rewritten or counted as skipped
    sources = {p for p, _, _ in PAIRS}
    assert all(row["augmentation"] == kind and row["prompt"] not in sources for row in rows)
    assert {(row["chosen"], row["rejected"]) for row in rows} <= {(c, r) for _, c, r in PAIRS}  # responses kept


def test_recipe_errors_name_the_key(tmp_path: Path) -> None:
    assert "augment" in STAGES
    with pytest.raises(ValueError, match=r"methods\[0\].fields: \['chosen'\] are not fields of sft records"):
        make({"path": "x"}, [{"kind": "word_swap", "fields": ["chosen"]}], tmp_path)
    with pytest.raises(ValueError, match="kind 'paraphrase' needs model"):
        make({"path": "x"}, [{"kind": "paraphrase"}], tmp_path)
    with pytest.raises(ValueError, match="probability applies to kind"):
        make({"path": "x"}, [{"kind": "paraphrase", "model": {}, "probability": 0.2}], tmp_path)
    text = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a document"}])
    with pytest.raises(DataError, match="docs.jsonl: field 'text': holds raw documents"):
        run(make({"path": text}, [{"kind": "word_swap"}], tmp_path / "out"))
