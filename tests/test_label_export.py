"""Export: labels -> preference / ranking / rating rows that the dataset layer (and `align reward`) load unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from align.config import DataConfig
from align.data import load_records
from labeling_ui.errors import LabelError
from labeling_ui.export import ExportOptions, build_rows, export_project, write_rows
from labeling_ui.schemas import ProjectConfig, parse_candidate
from labeling_ui.store import LabelStore, parse_vote

# Shown order = stored order (shuffle off), so the votes below read in stored order.
VOTES = {
    "p1": [("u1", {"choice": "a", "scores": [8, 2]}), ("u2", {"choice": "a", "scores": [7, 3]}),
           ("u3", {"choice": "b", "scores": [3, 6]})],
    "p2": [("u1", {"choice": "tie"}), ("u2", {"choice": "tie"}), ("u3", {"choice": "both_bad"})],
    "p3": [("u1", {"ranks": [1, 2, 3]}), ("u2", {"ranks": [1, 3, 2]}), ("u3", {"ranks": [1, 2, 3]})],
    "p4": [("u1", {"choice": "a"}), ("u2", {"choice": "b"})],
}
RESPONSES = {"p1": ["good", "bad"], "p2": ["meh", "also meh"], "p3": ["best", "middle", "worst"], "p4": ["left", "right"]}


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    store.create_project("exp", ProjectConfig(labels_per_item=3, shuffle=False, score={"enabled": True, "minimum": 0,
                                                                                       "maximum": 10}))
    rows = [(f"c:{i}", parse_candidate({"id": key, "prompt": f"prompt {key}",
                                        "responses": [{"text": t, "model": f"m{j}"} for j, t in enumerate(texts)]}, f"c:{i}"))
            for i, (key, texts) in enumerate(RESPONSES.items())]
    store.import_items("exp", rows)
    for name in ("u1", "u2", "u3"):
        store.add_user(name, "annotator", f"{name}-password")
    for name in ("u1", "u2", "u3"):
        while (task := store.next_task("exp", name)) is not None:
            vote = dict(VOTES[task.item]).get(name)
            if vote is None:
                store.submit("exp", name, parse_vote(item=task.item, skip_reason="other"))
            else:
                store.submit("exp", name, parse_vote(item=task.item, **vote))
    return store


def rows(store: LabelStore, **options) -> list[dict]:
    return build_rows(store.label_records("exp"), ExportOptions(**options)).rows


def test_preference_pairs_per_label_and_by_majority(store: LabelStore) -> None:
    per_label = rows(store, kind="preference")
    # p1: 3 pairs (one per label); p2: ties dropped, both-bad has no order; p3: 3 labels x 3 pairs; p4: 2.
    assert len(per_label) == 3 + 0 + 9 + 2
    p1 = [r for r in per_label if r["id"] == "p1"]
    assert sorted((r["chosen"], r["rejected"], r["annotator"]) for r in p1) == [
        ("bad", "good", "u3"), ("good", "bad", "u1"), ("good", "bad", "u2")]
    assert all(r["margin"] == 1.0 and r["agreement"] == pytest.approx(2 / 3, abs=1e-4) for r in p1)
    assert {(r["chosen_model"], r["rejected_model"]) for r in p1 if r["annotator"] == "u1"} == {("m0", "m1")}
    assert len(rows(store, kind="preference", ties="keep")) == 14 + 2  # p2's two ties, margin 0
    majority = rows(store, kind="preference", aggregate="majority")
    # p1: good > bad; p2: majority tie (dropped); p3: mean ranks 1, 7/3, 8/3 -> 3 pairs; p4: 1-1, no majority.
    assert sorted((r["id"], r["chosen"], r["rejected"]) for r in majority) == [
        ("p1", "good", "bad"), ("p3", "best", "middle"), ("p3", "best", "worst"), ("p3", "middle", "worst")]
    assert majority[0]["annotators"] == ["u1", "u2", "u3"]
    kept = rows(store, kind="preference", aggregate="majority", ties="keep")
    assert [(r["chosen"], r["margin"]) for r in kept if r["id"] == "p2"] == [("meh", 0.0)]


def test_filters_by_agreement_and_label_count(store: LabelStore) -> None:
    # Item agreement: p1 2/3, p2 2/3 (tie, tie, both bad), p3 8/9, p4 1/2: only p3 passes 0.7.
    assert {r["id"] for r in rows(store, kind="preference", min_agreement=0.7)} == {"p3"}
    assert {r["id"] for r in rows(store, kind="ranking", min_labels=3)} == {"p1", "p3"}
    result = build_rows(store.label_records("exp"), ExportOptions(kind="ranking", min_labels=3, min_agreement=0.7))
    assert result.stats["left_out"] == {"items_below_min_labels": 1, "items_below_min_agreement": 2}


def test_rankings_and_ratings(store: LabelStore) -> None:
    ranking = rows(store, kind="ranking")
    # One ranking per label; p2's all-tied rankings dropped (ties=drop) and its both-bad vote has no ranks.
    assert sorted(r["id"] for r in ranking) == ["p1"] * 3 + ["p3"] * 3 + ["p4"] * 2
    assert len(rows(store, kind="ranking", ties="keep")) == 10
    (p3,) = [r for r in rows(store, kind="ranking", aggregate="majority") if r["id"] == "p3"]
    assert p3["responses"] == ["best", "middle", "worst"] and p3["ranks"] == [1, 2, 3]
    assert p3["agreement"] == pytest.approx(8 / 9, abs=1e-4)
    ratings = rows(store, kind="rating")
    assert sorted((r["response"], r["score"], r["annotator"]) for r in ratings) == [
        ("bad", 2.0, "u1"), ("bad", 3.0, "u2"), ("bad", 6.0, "u3"), ("good", 3.0, "u3"), ("good", 7.0, "u2"),
        ("good", 8.0, "u1")]
    means = {r["response"]: r["score"] for r in rows(store, kind="rating", aggregate="majority")}
    assert means == {"good": pytest.approx(6.0), "bad": pytest.approx(11 / 3)}


@pytest.mark.parametrize(("kind", "name"), [("preference", "p.jsonl"), ("ranking", "r_disk"), ("rating", "s.parquet")])
def test_exports_load_through_the_dataset_layer_unchanged(store: LabelStore, tmp_path: Path, kind: str, name: str) -> None:
    out = tmp_path / name
    stats = export_project(store, "exp", out, ExportOptions(kind=kind))  # type: ignore[arg-type]
    # dedup off: two annotators who agree give identical canonical rows, and each is a vote.
    loaded = load_records(DataConfig(path=str(out), kind=kind, dedup=False), kind)  # type: ignore[arg-type]
    expected = build_rows(store.label_records("exp"), ExportOptions(kind=kind)).rows  # type: ignore[arg-type]
    assert stats["rows"] == len(expected)
    canonical = {"preference": ("prompt", "chosen", "rejected", "margin"), "ranking": ("prompt", "responses", "ranks"),
                 "rating": ("prompt", "response", "score")}[kind]
    assert set(loaded.train.column_names) == set(canonical)  # annotator ids etc. dropped on load
    assert loaded.train.to_list() == [{c: row[c] for c in canonical} for row in expected]
    # With the default dedup=true, agreeing votes collapse into one row (aggregate=majority avoids the question).
    deduped = load_records(DataConfig(path=str(out), kind=kind), kind)  # type: ignore[arg-type]
    assert deduped.stats["duplicates_dropped"] == len(expected) - len(deduped.train)
    assert deduped.stats["duplicates_dropped"] > 0 or kind == "rating"  # the ratings here all differ


def test_chat_prompts_export_as_assistant_messages(tmp_path: Path) -> None:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    record = {"item": "c1", "prompt": prompt, "status": "done", "choice": "b", "ranks": [2, 1], "scores": None,
              "annotator": "u", "flags": [], "responses": [{"text": "Hello.", "model": "m"}, {"text": "Hi!", "model": "n"}]}
    result = build_rows([record], ExportOptions(kind="preference"))
    out = write_rows(result.rows, "preference", tmp_path / "chat.jsonl")
    row = load_records(DataConfig(path=str(out)), "preference").train[0]
    assert row["prompt"] == prompt
    assert row["chosen"] == [{"role": "assistant", "content": "Hi!"}]
    assert row["rejected"] == [{"role": "assistant", "content": "Hello."}]


def test_nothing_to_export_is_a_clear_error(store: LabelStore, tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="no preference rows to export .* loosen --min-labels"):
        export_project(store, "exp", tmp_path / "x.jsonl", ExportOptions(kind="preference", min_labels=9))
    with pytest.raises(LabelError, match="cannot tell the format from '.txt'"):
        export_project(store, "exp", tmp_path / "x.txt", ExportOptions(kind="preference"))
    with pytest.raises(LabelError, match="min_agreement=1.5"):
        ExportOptions(kind="preference", min_agreement=1.5)
    assert not (tmp_path / "x.jsonl").exists()


def test_exports_train_align_reward(store: LabelStore, tiny_bert_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("reward_models.trainer", reason="the reward stage is not in this tree yet")
    from align.config import RewardRecipe
    from align.stages.reward import run

    sources = []
    for kind in ("preference", "ranking", "rating"):
        out = tmp_path / f"{kind}.jsonl"
        export_project(store, "exp", out, ExportOptions(kind=kind, ties="keep"))  # type: ignore[arg-type]
        sources.append({"path": str(out), "kind": kind})
    recipe = RewardRecipe.model_validate({
        "model": {"name_or_path": str(tiny_bert_dir), "method": "full"},
        "data": sources,
        "training": {"output_dir": str(tmp_path / "rm"), "max_steps": 3, "per_device_batch_size": 4,
                     "learning_rate": 1e-3, "max_length": 32, "logging_steps": 1, "save_steps": None, "report_to": "none"},
        "reward": {"normalize_max_samples": 50},
    })
    result = run(recipe)
    losses = [json.loads(line)["train/loss"] for line in (Path(result.output_dir) / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in json.loads(line)]
    assert losses and all(math.isfinite(x) for x in losses)


def test_thumbs_task_splits_rows_and_exports_ratings_kto_reads(tmp_path: Path) -> None:
    store = LabelStore(f"sqlite:///{tmp_path / 'thumbs.db'}")
    rows_in = [("c:1", parse_candidate({"id": "t1", "prompt": "hi", "responses": ["hello", "go away"]}, "c:1")),
               ("c:2", parse_candidate({"id": "t2", "prompt": "2+2?", "responses": ["4"]}, "c:2"))]
    report = store.import_items("kto", rows_in, ProjectConfig(task="thumbs", labels_per_item=2), create=True)
    assert report.added == 3 and not report.skipped
    for name in ("u1", "u2"):
        store.add_user(name, "annotator", f"{name}-password")
    votes = {"t1#1": ("up", "up"), "t1#2": ("down", "up"), "t2": ("up", "down")}
    for i, name in enumerate(("u1", "u2")):
        while (task := store.next_task("kto", name)) is not None:
            assert len(task.responses) == 1
            with pytest.raises(LabelError, match="thumbs task: vote up or down"):
                store.submit("kto", name, parse_vote(item=task.item, choice="a"))
            store.submit("kto", name, parse_vote(item=task.item, choice=votes[task.item][i]))
    records = store.label_records("kto")
    assert {(r["item"], r["annotator"]): r["choice"] for r in records}[("t1#2", "u1")] == "down"
    per_label = build_rows(records, ExportOptions(kind="rating")).rows
    assert sorted((r["id"], r["response"], r["score"]) for r in per_label if r["annotator"] == "u1") == [
        ("t1#1", "hello", 1.0), ("t1#2", "go away", 0.0), ("t2", "4", 1.0)]
    majority = {r["id"]: r for r in build_rows(records, ExportOptions(kind="rating", aggregate="majority")).rows}
    assert majority["t1#1"]["score"] == pytest.approx(1.0) and majority["t1#2"]["score"] == pytest.approx(0.5)
    assert majority["t1#1"]["agreement"] == pytest.approx(1.0) and majority["t2"]["agreement"] == pytest.approx(0.5)
    result = build_rows(records, ExportOptions(kind="preference"))
    assert not result.rows and result.stats["left_out"] == {"thumbs_labels": 6}
    out = tmp_path / "thumbs.jsonl"
    export_project(store, "kto", out, ExportOptions(kind="rating"))
    loaded = load_records(DataConfig(path=str(out), kind="rating", dedup=False), "rating").train
    assert sorted(r["score"] for r in loaded) == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # align kto: above 0.5 is a thumbs-up


def test_aspect_ratings_are_stored_per_response_and_export_as_ratings(tmp_path: Path) -> None:
    store = LabelStore(f"sqlite:///{tmp_path / 'aspects.db'}")
    config = ProjectConfig(labels_per_item=1, aspects=["helpfulness", "honesty"], aspect_scale=5)
    row = ("c:1", parse_candidate({"id": "a1", "prompt": "q", "responses": ["first", "second"]}, "c:1"))
    store.import_items("asp", [row], config, create=True)
    store.add_user("u1", "annotator", "u1-password")
    task = store.next_task("asp", "u1")
    with pytest.raises(LabelError, match="unknown aspect 'style'"):
        store.submit("asp", "u1", parse_vote(item="a1", choice="a", aspects={"style": [1, 2]}))
    with pytest.raises(LabelError, match=r"aspect 'honesty': one rating in 1..5"):
        store.submit("asp", "u1", parse_vote(item="a1", choice="a", aspects={"honesty": [6, 1]}))
    # One value per slot, as the app sends them: the third slot is empty; helpfulness of B was not given.
    store.submit("asp", "u1", parse_vote(item="a1", choice="a",
                                         aspects={"helpfulness": [5, None, None], "honesty": [4, 2, None]}))
    [rec] = store.label_records("asp")
    first_shown = task.order[0]
    assert rec["aspects"]["honesty"][first_shown] == 4 and rec["aspects"]["honesty"][1 - first_shown] == 2
    assert rec["aspects"]["helpfulness"][1 - first_shown] is None
    assert store.own_task("asp", "u1", "a1").label["aspects"]["honesty"] == [4, 2]  # back in shown order
    honesty = build_rows(store.label_records("asp"), ExportOptions(kind="rating", aspect="honesty")).rows
    assert sorted((r["response"], r["score"]) for r in honesty) == sorted(
        [(task.responses[0], 4.0), (task.responses[1], 2.0)])
    with pytest.raises(LabelError, match="aspect ratings export as kind rating"):
        ExportOptions(kind="preference", aspect="honesty")


def test_gold_items_come_at_the_configured_rate_and_bad_answers_are_refused(tmp_path: Path) -> None:
    from align.data import DataError

    store = LabelStore(f"sqlite:///{tmp_path / 'gold.db'}")
    rows = [(f"c:{i}", parse_candidate({"id": f"o{i}", "prompt": f"q{i}", "responses": ["x", "y"]}, f"c:{i}"))
            for i in range(60)]
    rows += [(f"g:{i}", parse_candidate({"id": f"g{i}", "prompt": f"g{i}", "responses": ["x", "y"], "gold": [2, 1]},
                                        f"g:{i}")) for i in range(30)]
    store.import_items("gold", rows, ProjectConfig(labels_per_item=1, gold_rate=0.25), create=True)
    store.add_user("u1", "annotator", "u1-password")
    served = []
    while (task := store.next_task("gold", "u1")) is not None:
        served.append(task.item)
        store.submit("gold", "u1", parse_vote(item=task.item, choice="a"))
    n_gold = sum(item.startswith("g") for item in served)
    assert len(served) - n_gold == 60  # every ordinary item; the queue ends with them
    assert 0.12 <= n_gold / len(served) <= 0.38  # 0.25 expected; seeded draws, so the same on every run
    bad = ("b:1", parse_candidate({"id": "b", "prompt": "q", "responses": ["x", "y"], "gold": "AC"}, "b:1"))
    with pytest.raises(DataError, match=r"b:1: field 'gold': order 'AC' \(unknown: C; missing: B\)"):
        store.import_items("gold", [bad])
