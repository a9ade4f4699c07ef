"""`align label ...` commands, called in-process through align.cli.main; refusals exit 2 with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.cli import main
from align.config import DataConfig
from align.data import load_records
from labeling_ui.store import LabelStore, parse_vote


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'labels.db'}"


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_add_user_reads_the_password_from_a_file_or_the_environment(db: str, tmp_path: Path, monkeypatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    secret = tmp_path / "pw"
    secret.write_text("a long password\n")
    assert main(["label", "add-user", "alice", "--role", "admin", "--password-file", str(secret), "--db", db]) == 0
    monkeypatch.setenv("ALIGN_LABEL_PASSWORD", "another password")
    assert main(["label", "add-user", "bob", "--db", db]) == 0
    store = LabelStore(db)
    assert store.authenticate("alice", "a long password") and store.authenticate("bob", "another password")
    assert store.user("alice").role == "admin" and store.user("bob").role == "annotator"
    assert main(["label", "add-user", "bob", "--db", db]) == 2
    assert "user 'bob' exists; pass --update" in capsys.readouterr().err
    monkeypatch.setenv("ALIGN_LABEL_PASSWORD", "short")
    assert main(["label", "add-user", "carol", "--db", db]) == 2
    assert "password too short" in capsys.readouterr().err
    assert main(["label", "add-user", "dave", "--password-file", str(tmp_path / "none"), "--db", db]) == 2
    assert "password file not found" in capsys.readouterr().err


def test_bad_input_is_refused_with_file_line_and_key(db: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = {"id": "a", "prompt": "Hi?", "responses": [{"text": "x", "model": "m"}, {"text": "y", "model": "n"}]}
    bad = write(tmp_path / "cands.jsonl", [good, {"id": "b", "prompt": "", "responses": ["x", "y"]}])
    assert main(["label", "import", str(bad), "--project", "p", "--db", db]) == 2
    assert f"{bad}:2: field 'prompt': expected a non-empty string" in capsys.readouterr().err
    ok = write(tmp_path / "ok.jsonl", [good])
    assert main(["label", "import", str(ok), "labels_per_tem=2", "--project", "p", "--db", db]) == 2
    assert "labels_per_tem: unknown key; did you mean 'labels_per_item'?" in capsys.readouterr().err
    assert main(["label", "export", "--project", "nope", "--kind", "preference", "--out", str(tmp_path / "o.jsonl"),
                 "--db", db]) == 2
    assert "no labeling project 'nope'" in capsys.readouterr().err
    assert main(["label", "status", "--project", "nope", "--db", db]) == 2


def test_generate_import_label_export_loop(db: str, tiny_llama_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": f"Question number {i}?"} for i in range(4)])
    cands = tmp_path / "cands.jsonl"
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompts", str(prompts), "--n", "2",
                 "--max-new-tokens", "8", "--out", str(cands)]) == 0
    assert main(["label", "import", str(cands), "labels_per_item=1", "score.enabled=true", "--project", "loop",
                 "--db", db]) == 0
    out = capsys.readouterr().out
    assert "project 'loop':" in out and "K=1 labels per item" in out
    store = LabelStore(db)
    assert store.project_config("loop").score.enabled
    store.add_user("ann", "annotator", "ann-password")
    n_items = store.item_counts("loop")["total"]
    assert n_items >= 1  # an item is left out only if sampling gave fewer than 2 distinct non-empty texts
    while (task := store.next_task("loop", "ann")) is not None:
        store.submit("loop", "ann", parse_vote(item=task.item, ranks=list(range(1, len(task.responses) + 1))))
    # Importing the same file again changes nothing.
    assert main(["label", "import", str(cands), "--project", "loop", "--db", db]) == 0
    assert f"0 items added, {n_items} already there" in capsys.readouterr().out
    assert main(["label", "status", "--project", "loop", "--db", db]) == 0
    assert f"{n_items} complete (K=1)" in capsys.readouterr().out
    prefs = tmp_path / "prefs.jsonl"
    assert main(["label", "export", "--project", "loop", "--kind", "preference", "--out", str(prefs), "--db", db]) == 0
    loaded = load_records(DataConfig(path=str(prefs), kind="preference"), "preference")
    assert len(loaded.train) >= n_items
    first = json.loads(prefs.read_text().splitlines()[0])
    assert first["annotator"] == "ann" and first["chosen_model"] == str(tiny_llama_dir)


def test_disable_and_remove_user_take_effect_and_keep_labels(db: str, tmp_path: Path, monkeypatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ALIGN_LABEL_PASSWORD", "alice's password")
    assert main(["label", "add-user", "alice", "--db", db]) == 0
    cands = write(tmp_path / "c.jsonl", [{"id": "q1", "prompt": "Hi?", "responses": ["x", "y"]}])
    assert main(["label", "import", str(cands), "labels_per_item=1", "--project", "p", "--db", db]) == 0
    store = LabelStore(db)
    store.submit("p", "alice", parse_vote(item=store.next_task("p", "alice").item, choice="a"))
    store.create_session("alice-cookie", "alice", hours=12)

    assert main(["label", "disable-user", "alice", "--db", db]) == 0
    assert store.session_user("alice-cookie") is None and not store.authenticate("alice", "alice's password")
    assert main(["label", "status", "--db", db]) == 0
    assert "alice (annotator, disabled)" in capsys.readouterr().out
    monkeypatch.setenv("ALIGN_LABEL_PASSWORD", "alice's new password")
    assert main(["label", "add-user", "alice", "--update", "--db", db]) == 0  # enabled again, new password
    assert store.authenticate("alice", "alice's new password")

    assert main(["label", "remove-user", "alice", "--db", db]) == 0
    assert not store.authenticate("alice", "alice's new password")
    assert [rec["annotator"] for rec in store.label_records("p")] == ["alice"]  # the label stays, attributed
    assert main(["label", "add-user", "alice", "--update", "--db", db]) == 2
    assert "user 'alice' was removed" in capsys.readouterr().err
    assert main(["label", "disable-user", "nobody", "--db", db]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err


def test_a_failed_import_changes_nothing(db: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = write(tmp_path / "first.jsonl", [{"id": "q1", "prompt": "Hi?", "responses": ["x", "y"]}])
    assert main(["label", "import", str(first), "labels_per_item=2", "--project", "p", "--db", db]) == 0
    clash = write(tmp_path / "clash.jsonl", [{"id": "q2", "prompt": "New?", "responses": ["x", "y"]},
                                             {"id": "q1", "prompt": "Changed?", "responses": ["x", "y"]}])
    assert main(["label", "import", str(clash), "labels_per_item=5", "lease_seconds=9", "--project", "p",
                 "--db", db]) == 2
    assert f"{clash}:2: field 'id': id 'q1' is already in project 'p'" in capsys.readouterr().err
    store = LabelStore(db)
    cfg = store.project_config("p")
    assert (cfg.labels_per_item, cfg.lease_seconds, store.item_counts("p")["total"]) == (2, 1800, 1)
    assert main(["label", "import", str(clash), "--project", "fresh", "--db", db]) == 0  # a new project: fine
    dupes = write(tmp_path / "dupes.jsonl", [{"id": "d", "prompt": "a", "responses": ["x", "y"]}] * 2)
    assert main(["label", "import", str(dupes), "labels_per_item=1", "--project", "other", "--db", db]) == 2
    assert store.projects() == ["fresh", "p"]  # no empty project was left behind


def test_hostile_or_broken_files_and_names_are_refused_clearly(db: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"id": "a", "prompt": "ok", "responses": ["x", "y"]}\n'
                       b'{"id": "b", "prompt": "caf\xe9", "responses": ["x", "y"]}\n')
    assert main(["label", "import", str(latin1), "--project", "p", "--db", db]) == 2
    assert f"align: error: {latin1}:2: not UTF-8 text (byte 0xE9 at column 27)" in capsys.readouterr().err
    chat = [{"role": "user", "content": "Hi?"}]
    mixed = write(tmp_path / "mixed.jsonl", [{"id": "s", "prompt": "Hi?", "responses": ["x", "y"]},
                                             {"id": "m", "prompt": chat, "responses": ["x", "y"]}])
    assert main(["label", "import", str(mixed), "--project", "p", "--db", db]) == 2
    assert (f"{mixed}:2: field 'prompt': is a list of messages but earlier rows (first at {mixed}:1) are a string"
            in capsys.readouterr().err)
    good = write(tmp_path / "good.jsonl", [{"id": "s", "prompt": "Hi?", "responses": ["x", "y"]}])
    for name in ("../../etc", "/abs/path", "..", "x" * 300):
        assert main(["label", "import", str(good), "--project", name, "--db", db]) == 2
        assert "project name" in capsys.readouterr().err
    assert LabelStore(db).projects() == []
