"""Active labeling: queues ordered by a reward model's uncertainty (margin or ensemble), on SQLite and PostgreSQL.

The judges here are ``module:function`` specs that read a score written in each response
(``score=0.25``), so every item's margin is known by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from labeling_ui.active import Refresher, ensemble_priority, item_priority, margin_priority, score_items
from labeling_ui.commands import main as label_main
from labeling_ui.schemas import ActiveSettings, ProjectConfig, parse_candidate
from labeling_ui.store import LabelStore, parse_vote
from test_label_store import db_url, postgres_server  # noqa: F401 - fixtures

SIGN = {"value": 1.0}  # what `flippable` multiplies by: a reward model that changes between scorings


def written(prompts: list[str], responses: list[str]) -> list[float]:
    """The number after 'score=' in each response."""
    return [float(r.split("score=")[1].split()[0]) for r in responses]


def squared(prompts: list[str], responses: list[str]) -> list[float]:
    """A second ensemble member: the written score squared (members agree on positive scores' order)."""
    return [v * v for v in written(prompts, responses)]


def flippable(prompts: list[str], responses: list[str]) -> list[float]:
    return [SIGN["value"] * v * (1 + 0.1 * i) for i, v in enumerate(written(prompts, responses))]


# item -> scores of its responses; margins (smallest adjacent gap): i0 0.9, i1 0.05, i2 0.4, i3 0.2 (3 responses)
ITEMS = {"i0": [0.0, 0.9], "i1": [0.5, 0.55], "i2": [1.0, 0.6], "i3": [0.0, 0.2, 0.9]}
BY_MARGIN = ["i1", "i3", "i2", "i0"]


def seed(url: str, active: dict | None = None, k: int = 1, items: dict = ITEMS, **config) -> LabelStore:
    store = LabelStore(url)
    cfg = ProjectConfig(labels_per_item=k, active=active, **config)
    rows = []
    for n, (key, scores) in enumerate(items.items()):
        raw = {"id": key, "prompt": f"question {key}?", "responses": [f"answer {j} score={v}" for j, v in enumerate(scores)]}
        if key == "g":
            raw["gold"] = "BA"
        rows.append((f"c.jsonl:{n + 1}", parse_candidate(raw, f"c.jsonl:{n + 1}")))
    store.import_items("proj", rows, cfg, create=True)
    for name in ("a", "b", "c"):
        store.add_user(name, "annotator", f"pw-{name}-secret")
    return store


def label_one(store: LabelStore, user: str) -> str | None:
    """Take ``user``'s next item and vote on it; its id (None when none is left)."""
    task = store.next_task("proj", user)
    if task is None:
        return None
    vote = {"choice": "a"} if len(task.responses) == 2 else {"ranks": list(range(1, len(task.responses) + 1))}
    store.submit("proj", user, parse_vote(item=task.item, **vote))
    return task.item


def queue(store: LabelStore, user: str) -> list[str]:
    """Items in the order ``user`` is served them, labeling each."""
    served = []
    while (item := label_one(store, user)) is not None:
        served.append(item)
    return served


# --------------------------------------------------------------------------- priorities by hand


def test_priorities_by_hand() -> None:
    assert margin_priority([0.0, 1.0, 0.3]) == pytest.approx(-0.3)  # sorted 0, 0.3, 1: gaps 0.3 and 0.7
    assert margin_priority([2.0, 1.5]) == pytest.approx(-0.5)
    assert margin_priority([0.7], center=0.5) == pytest.approx(-0.2)  # one response: distance from the center
    # two members, two responses: differences 1.0 and -1.0 -> population std 1.0
    assert ensemble_priority([[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(1.0)
    # three responses, members agree on (0, 1) but differ by 2 on (0, 2): std of [0, 2] = 1
    assert ensemble_priority([[0.0, 1.0, 2.0], [0.0, 1.0, 0.0]]) == pytest.approx(1.0)
    assert ensemble_priority([[0.3], [0.5]]) == pytest.approx(0.1)
    # margin over several members uses their mean score: [0.5, 0.5] vs [0.0, 1.0] -> gap 0.5
    assert item_priority([[1.0, 0.0], [0.0, 1.0]], "margin") == pytest.approx(0.0)
    assert item_priority([[0.0, 1.0], [1.0, 2.0]], "margin") == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="ensemble needs 2 or more"):
        ActiveSettings(reward_model="x:y", strategy="ensemble")
    assert ActiveSettings(reward_model="x:y").reward_model == ["x:y"]  # one spec or a list


# --------------------------------------------------------------------------- the queue


def test_queue_serves_the_least_certain_first_and_keeps_k(db_url: str) -> None:
    store = seed(db_url, active={"reward_model": "test_label_active:written"}, k=2)
    assert score_items(store, "proj") == 4
    prio = store.priorities("proj")
    assert prio["i1"] == pytest.approx(-0.05) and prio["i3"] == pytest.approx(-0.2)
    assert store.next_task("proj", "a").item == "i1"
    assert store.next_task("proj", "b").item == "i1"  # K=2: the second annotator gets the same top item
    assert store.next_task("proj", "c").item == "i3"  # two leases out on i1: the next most uncertain
    assert queue(store, "a") == BY_MARGIN
    assert queue(store, "b") == ["i1", "i2", "i0"]  # i3 is full: a's label and c's lease
    assert queue(store, "c") == ["i3"]  # every other item already has K=2
    assert store.count_labels("proj") == {"rows": 8, "distinct": 8}


def test_refresh_with_a_newer_model_reorders(db_url: str) -> None:
    store = seed(db_url, active={"reward_model": "test_label_active:written"})
    score_items(store, "proj")
    assert store.next_task("proj", "a").item == "i1"
    # A "newer model": an ensemble of two members, which disagree most on i2.
    newer = ActiveSettings(reward_model=["test_label_active:written", "test_label_active:squared"], strategy="ensemble")
    store.create_project("proj", ProjectConfig(labels_per_item=1, active=newer), update=True)
    score_items(store, "proj")
    # differences (written, squared): i0 (-0.9, -0.81) std .045; i1 (-0.05, -0.0525) ~0; i2 (0.4, 0.64) std .12;
    # i3 worst pair (0, 1): (-0.2, -0.04) std .08 -> i2 first, then i3
    assert store.priorities("proj")["i2"] == pytest.approx(0.12)
    assert store.priorities("proj")["i3"] == pytest.approx(0.08)
    assert store.priority_state("proj")["strategy"] == "ensemble"
    assert store.next_task("proj", "a").item == "i1"  # a's lease is held: resumed, never swapped under them
    assert store.next_task("proj", "b").item == "i2"


def test_no_reward_model_keeps_file_order_even_with_old_priorities(db_url: str) -> None:
    store = seed(db_url, active=None, k=2)
    assert queue(store, "a") == list(ITEMS)
    # priorities left by an earlier link are ignored once the project has no reward model
    store.set_priorities("proj", {"i3": 5.0, "i2": 4.0}, {"labels": 0})
    assert queue(store, "b") == list(ITEMS)


def test_unscored_items_come_after_scored_ones_and_gold_still_mixes_in(db_url: str) -> None:
    items = {**ITEMS, "g": [0.5, 0.5001]}
    store = seed(db_url, active={"reward_model": "test_label_active:written"}, items=items, gold_rate=1.0)
    store.set_priorities("proj", {"i2": 1.0}, {"labels": 0})  # only i2 scored so far
    # the gold item first (gold_rate 1), then i2 (scored), then the unscored ones in file order
    assert queue(store, "a") == ["g", "i2", "i0", "i1", "i3"]


def test_import_scores_new_items_and_refresher_rescores_after_n_labels(tmp_path: Path, monkeypatch) -> None:
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    cands = tmp_path / "c.jsonl"
    import json

    cands.write_text("".join(json.dumps({"id": k, "prompt": f"q {k}?", "responses": [f"r{j} score={v}" for j, v in
                                                                                    enumerate(s)]}) + "\n"
                             for k, s in ITEMS.items()))
    args = argparse.Namespace(label_command="import", db=db, candidates=str(cands), project="proj", config=None,
                              format="auto", overrides=["labels_per_item=1"], reward_model=["test_label_active:flippable"],
                              strategy=None, refresh_every=2)
    assert label_main(args) == 0
    store = LabelStore(db)
    cfg = store.project_config("proj")
    assert cfg.active.reward_model == ["test_label_active:flippable"] and cfg.active.refresh_every == 2
    assert all(v is not None for v in store.priorities("proj").values())
    before = store.priorities("proj")
    store.add_user("a", "annotator", "pw-a-secret")
    refresher = Refresher(store, "proj", cfg.active)
    SIGN["value"] = -3.0  # the judge changes: a callable is always re-scored when due
    try:
        label_one(store, "a")
        assert refresher.after_label() is None  # 1 new label < refresh_every
        label_one(store, "a")
        thread = refresher.after_label()
        assert thread is not None
        thread.join(30)
    finally:
        SIGN["value"] = 1.0
    after = store.priorities("proj")
    assert after["i0"] != pytest.approx(before["i0"]) and store.priority_state("proj")["labels"] == 2
    assert refresher.after_label() is None  # no new labels since


def test_reward_model_directories_and_an_ensemble(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    from reward_models.model import RewardModel

    dirs = []
    for seed_ in (0, 1):
        torch.manual_seed(seed_)
        dirs.append(str(RewardModel.from_encoder(tiny_bert_dir, max_length=64).save_pretrained(tmp_path / f"rm{seed_}")))
    store = seed(f"sqlite:///{tmp_path / 'labels.db'}", active={"reward_model": dirs, "strategy": "ensemble"})
    assert score_items(store, "proj") == 4
    prio = store.priorities("proj")
    assert all(v is not None and v >= 0 for v in prio.values())
    assert store.next_task("proj", "a").item == max(prio, key=prio.get)
    refresher = Refresher(store, "proj", store.project_config("proj").active)
    assert not refresher.due()  # refresh_every 0: the server never re-scores by itself
    state = store.priority_state("proj")
    assert state["fingerprint"] is not None and state["reward_model"] == dirs


def test_a_database_from_before_priorities_is_upgraded(db_url: str) -> None:
    store = seed(db_url, active=None)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE items DROP COLUMN priority")
        conn.exec_driver_sql("ALTER TABLE projects DROP COLUMN priority_state")
    store.close()
    reopened = LabelStore(db_url)
    assert set(reopened.priorities("proj").values()) == {None} and reopened.priority_state("proj") is None
    assert reopened.next_task("proj", "a").item == "i0"


def test_prioritize_command_links_and_rescores(tmp_path: Path, capsys) -> None:
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    seed(db, active=None)
    args = argparse.Namespace(label_command="prioritize", db=db, project="proj", reward_model=None, strategy=None,
                              refresh_every=None)
    assert label_main(args) == 2 and "linked to no reward model" in capsys.readouterr().err
    args.reward_model = ["test_label_active:written"]
    assert label_main(args) == 0
    store = LabelStore(db)
    assert queue(store, "a") == BY_MARGIN
    assert "4 items scored" in capsys.readouterr().out
    assert sys.modules.get("test_label_active") is not None  # the judges were imported by module name
