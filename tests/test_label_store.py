"""The labeling store on SQLite and (when its binaries are installed) a private PostgreSQL 15 cluster.

Assignment rules, concurrent writers (threads and processes), a writer killed with SIGKILL
mid-stream, passwords and refusals.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from align.data import DataError
from labeling_ui.candidates import read_candidates
from labeling_ui.errors import LabelError, NotAllowed, UnknownProject
from labeling_ui.passwords import hash_password, verify_password
from labeling_ui.schemas import ProjectConfig, parse_candidate
from labeling_ui.store import LabelStore, parse_vote, shown_order

PG_BIN = Path(os.environ.get("ALIGN_PG_BIN", "/usr/lib/postgresql/15/bin"))
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL cluster on a Unix socket only (no TCP), torn down after the session.

    As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root), in a
    temporary directory handed over to it. fsync is off: the tests kill clients, never the server.
    """
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not initdb.exists() or not pg_ctl.exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (apt-get install postgresql-15, or set ALIGN_PG_BIN)")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]')")
    root = Path(tempfile.mkdtemp(prefix="align-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    run_as: dict = {}
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        for path in (root, sock):
            os.chown(path, pg_user.pw_uid, pg_user.pw_gid)
        run_as = {"user": pg_user.pw_uid, "group": pg_user.pw_gid, "extra_groups": []}
    port = 5432  # names the socket file only: listen_addresses='' opens no TCP port
    try:
        subprocess.run([str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd=root, **run_as)
        options = f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off -c max_connections=100"
        subprocess.run([str(pg_ctl), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options,
                        "start"], check=True, capture_output=True, cwd=root, **run_as)
    except subprocess.CalledProcessError as err:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {err.stderr.decode(errors='replace')}\n{log}")
    try:
        yield {"host": str(sock), "port": port}
    finally:
        subprocess.run([str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True,
                       cwd=root, **run_as)
        shutil.rmtree(root, ignore_errors=True)


_db_counter = iter(range(10_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    server = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"labels_{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(host=server["host"], port=server["port"], user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@/{name}?host={server['host']}&port={server['port']}"


def seed(url: str, n_items: int = 12, k: int = 2, users: tuple[str, ...] = ("ann1", "ann2", "ann3"),
         sizes: tuple[int, ...] = (2,), project: str = "proj") -> LabelStore:
    store = LabelStore(url)
    store.create_project(project, ProjectConfig(labels_per_item=k, score={"enabled": True, "minimum": 0, "maximum": 10}))
    rows = []
    for i in range(n_items):
        n = sizes[i % len(sizes)]
        raw = {"id": f"item{i:03d}", "prompt": f"question {i}?",
               "responses": [{"text": f"answer {i}.{j}", "model": f"m{j}"} for j in range(n)]}
        rows.append((f"cands.jsonl:{i + 1}", parse_candidate(raw, f"cands.jsonl:{i + 1}")))
    store.import_items(project, rows)
    for name in users:
        store.add_user(name, "annotator", f"pw-{name}-secret")
    return store


def label_everything(store: LabelStore, user: str, project: str = "proj") -> list[str]:
    """Take and vote on items until none is left for ``user``; the acknowledged item ids."""
    acked = []
    while (task := store.next_task(project, user)) is not None:
        vote = {"choice": "a"} if len(task.responses) == 2 else {"ranks": list(range(1, len(task.responses) + 1))}
        saved = store.submit(project, user, parse_vote(item=task.item, **vote))
        acked.append(saved["item"])
    return acked


# --------------------------------------------------------------------------- assignment


def test_k_distinct_annotators_per_item_and_never_twice(db_url: str) -> None:
    store = seed(db_url, n_items=5, k=2, users=("a", "b", "c"))
    got = {name: label_everything(store, name) for name in ("a", "b", "c")}
    per_item = Counter(item for items in got.values() for item in items)
    assert set(per_item.values()) == {2} and len(per_item) == 5  # every item exactly K=2
    for items in got.values():
        assert len(items) == len(set(items))  # never the same item twice to one annotator
    assert got["c"] == []  # a and b took everything first, in turn: nothing left for a third
    assert store.count_labels("proj") == {"rows": 10, "distinct": 10}


def test_lease_caps_concurrent_holders_at_k_and_expires(db_url: str) -> None:
    store = seed(db_url, n_items=1, k=2, users=("a", "b", "c"))
    first, second = store.next_task("proj", "a"), store.next_task("proj", "b")
    assert first.item == second.item == "item000"
    assert store.next_task("proj", "c") is None  # two leases out, K=2: not handed to a third
    assert store.next_task("proj", "a").item == "item000"  # asking again resumes the same lease
    store.create_project("proj", ProjectConfig(labels_per_item=2, lease_seconds=1), update=True)
    store.next_task("proj", "a")  # refreshes a's lease with the new 1 s expiry
    store.next_task("proj", "b")
    time.sleep(1.2)
    assert store.next_task("proj", "c").item == "item000"  # expired leases free the item
    # a's late vote on the expired lease is still kept (work is never thrown away)
    store.submit("proj", "a", parse_vote(item="item000", choice="b"))
    assert store.count_labels("proj")["rows"] == 1


def test_skip_keeps_item_from_annotator_but_not_from_others(db_url: str) -> None:
    store = seed(db_url, n_items=1, k=1, users=("a", "b"))
    task = store.next_task("proj", "a")
    store.submit("proj", "a", parse_vote(item=task.item, skip_reason="cannot judge", flags=["unsafe"]))
    assert store.next_task("proj", "a") is None
    assert store.next_task("proj", "b").item == task.item  # a skip does not count towards K


def test_order_is_random_per_annotator_stable_and_stored(db_url: str) -> None:
    store = seed(db_url, n_items=4, k=2, users=("a", "b"), sizes=(6,))
    orders = {tuple(shown_order("proj", "item000", name, 6)) for name in ("a", "b", "c", "d", "e")}
    assert len(orders) > 1  # differs between annotators
    task = store.next_task("proj", "a")
    assert task.order == shown_order("proj", task.item, "a", 6)
    # Ranks are given in shown order and stored per original response.
    shown_ranks = [1, 2, 3, 4, 5, 6]
    store.submit("proj", "a", parse_vote(item=task.item, ranks=shown_ranks, scores=[9, 8, 7, 6, 5, 4]))
    record = store.label_records("proj")[0]
    assert record["order"] == task.order
    for position, index in enumerate(task.order):
        assert record["ranks"][index] == shown_ranks[position]
        assert task.responses[position] == record["responses"][index]["text"]
    again = store.previous_task("proj", "a", None)
    assert again.responses == task.responses and again.label["ranks"] == shown_ranks  # same order on revision


def test_previous_revises_own_label_in_place(db_url: str) -> None:
    store = seed(db_url, n_items=3, k=1, users=("a",))
    done = []
    for choice in ("a", "tie"):
        task = store.next_task("proj", "a")
        store.submit("proj", "a", parse_vote(item=task.item, choice=choice))
        done.append(task.item)
    held = store.next_task("proj", "a").item
    last = store.previous_task("proj", "a", held)
    assert last.item == done[1] and last.label["choice"] == "tie"
    before = store.previous_task("proj", "a", last.item)
    assert before.item == done[0]
    assert store.previous_task("proj", "a", before.item) is None
    store.submit("proj", "a", parse_vote(item=done[0], choice="both_bad"))
    assert store.count_labels("proj") == {"rows": 2, "distinct": 2}
    rec = {r["item"]: r for r in store.label_records("proj")}[done[0]]
    assert rec["choice"] == "both_bad" and rec["ranks"] is None and rec["revision"] == 2
    assert store.next_task("proj", "a").item == held  # the held item is still there after revising


def test_draft_clicks_survive_and_are_own(db_url: str) -> None:
    store = seed(db_url, n_items=1, k=2, users=("a", "b"), sizes=(3,))
    task = store.next_task("proj", "a")
    assert store.save_draft("proj", "a", task.item, {"flags": ["nonsense"], "ranks": [2, None, 1], "scores": [None, 3, None]})
    restarted = LabelStore(store.url)  # a new process / server restart
    again = restarted.next_task("proj", "a")
    assert again.item == task.item and again.draft["ranks"] == [2, None, 1] and again.draft["flags"] == ["nonsense"]
    assert not restarted.save_draft("proj", "b", task.item, {"flags": []})  # b holds no lease: nothing written


# --------------------------------------------------------------------------- refusals


def test_refusals_are_clear(db_url: str, tmp_path: Path) -> None:
    store = seed(db_url, n_items=2, k=1, users=("a", "b"), sizes=(2, 3))
    with pytest.raises(UnknownProject, match="no labeling project 'nope'.*projects: proj"):
        store.next_task("nope", "a")
    task = store.next_task("proj", "a")
    with pytest.raises(NotAllowed, match=f"item '{task.item}' is not assigned to 'b'"):
        store.submit("proj", "b", parse_vote(item=task.item, choice="a"))
    with pytest.raises(NotAllowed, match="annotators see only their own labels"):
        store.own_task("proj", "b", task.item)
    with pytest.raises(LabelError, match="no item 'zzz' in project 'proj'"):
        store.submit("proj", "a", parse_vote(item="zzz", choice="a"))
    with pytest.raises(LabelError, match="unknown flag"):
        store.submit("proj", "a", parse_vote(item=task.item, choice="a", flags=["boring"]))
    with pytest.raises(LabelError, match="scores must lie in"):
        store.submit("proj", "a", parse_vote(item=task.item, choice="a", scores=[11, 1]))
    with pytest.raises(LabelError, match="exactly one of choice, ranks or skip_reason"):
        parse_vote(item=task.item, choice="a", ranks=[1, 2])
    with pytest.raises(LabelError, match="choice: Input should be 'a', 'b', 'tie', 'both_bad', 'up' or 'down'"):
        parse_vote(item=task.item, choice="A better")
    assert store.my_labels("proj", "b") == []


def test_passwords_are_salted_scrypt_and_checked(db_url: str) -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$16384$8$1$")  # per-user salt
    assert verify_password("correct horse", first) and not verify_password("wrong horse", first)
    assert not verify_password("x", "garbage")
    store = seed(db_url, users=("a",))
    assert store.authenticate("a", "pw-a-secret")
    assert not store.authenticate("a", "pw-a-wrong") and not store.authenticate("ghost", "pw-a-secret")
    with pytest.raises(LabelError, match="password too short"):
        store.add_user("c", "annotator", "short")
    with pytest.raises(LabelError, match="user 'a' exists"):
        store.add_user("a", "admin", "long enough pw")
    with pytest.raises(LabelError, match="role 'boss'"):
        store.add_user("d", "boss", "long enough pw")


def test_malformed_candidates_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "cands.jsonl"
    good = {"id": "x1", "prompt": "hi", "responses": [{"text": "a", "model": "m"}, "b"]}
    path.write_text(json.dumps(good) + "\n" + '{"id": "x2", "prompt": "hi", "responses": [{"model": "m"}]}\n')
    with pytest.raises(DataError, match=r"cands.jsonl:2: field 'responses\[0\].text': expected a string, got null"):
        read_candidates(str(path))
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"cands.jsonl:2: invalid JSON"):
        read_candidates(str(path))
    path.write_text(json.dumps({"prompt": "hi", "responses": ["a", "b"]}) + "\n")
    with pytest.raises(DataError, match=r"cands.jsonl:1: field 'id': missing"):
        read_candidates(str(path))


def test_import_is_atomic_idempotent_and_refuses_changed_items(tmp_path: Path) -> None:
    store = LabelStore(f"sqlite:///{tmp_path / 'l.db'}")
    store.create_project("p")
    rows = [
        ("c:1", parse_candidate({"id": 1, "prompt": "q", "responses": ["same", "same", "other"]}, "c:1")),
        ("c:2", parse_candidate({"id": 2, "prompt": "q2", "responses": ["", "only one"]}, "c:2")),
    ]
    report = store.import_items("p", rows)
    assert (report.added, report.merged_responses, report.empty_responses) == (1, 1, 1)
    assert "c:2: id '2'" in report.skipped[0]
    assert store.import_items("p", rows[:1]).unchanged == 1
    changed = [("d:1", parse_candidate({"id": 1, "prompt": "q", "responses": ["new", "text"]}, "d:1"))]
    with pytest.raises(DataError, match="d:1: field 'id': id '1' is already in project 'p' .from c:1."):
        store.import_items("p", changed)
    new_then_bad = [("e:1", parse_candidate({"id": 9, "prompt": "q9", "responses": ["x", "y"]}, "e:1")), *changed]
    with pytest.raises(DataError):
        store.import_items("p", new_then_bad)
    assert store.item_counts("p")["total"] == 1  # the failed import added nothing


# --------------------------------------------------------------------------- concurrency and crashes


def test_threads_lose_and_duplicate_nothing(db_url: str) -> None:
    users = tuple(f"t{i}" for i in range(6))
    store = seed(db_url, n_items=30, k=3, users=users, sizes=(2, 3))
    acked: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            acked[name] = label_everything(store, name)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(name,)) for name in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    _check_exactly_k(store, acked, k=3, n_items=30)


WRITER = textwrap.dedent("""
    import sys
    from labeling_ui.store import LabelStore, parse_vote
    url, user, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = LabelStore(url)
    while (task := store.next_task("proj", user)) is not None:
        print("LEASE", task.item, flush=True)
        vote = {"choice": "b"} if len(task.responses) == 2 else {"ranks": list(range(len(task.responses), 0, -1))}
        store.submit("proj", user, parse_vote(item=task.item, **vote))
        print("ACK", task.item, flush=True)
        if delay:
            import time; time.sleep(delay)
    print("DONE", flush=True)
""")


def _writer(url: str, user: str, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, url, user, str(delay)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_processes_lose_and_duplicate_nothing(db_url: str) -> None:
    users = ("p1", "p2", "p3", "p4")
    store = seed(db_url, n_items=24, k=3, users=users, sizes=(2, 4))
    procs = {name: _writer(db_url, name) for name in users}
    acked = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        acked[name] = [line.split()[1] for line in out.splitlines() if line.startswith("ACK")]
    _check_exactly_k(store, acked, k=3, n_items=24)


def _check_exactly_k(store: LabelStore, acked: dict[str, list[str]], k: int, n_items: int) -> None:
    assert store.count_labels("proj") == {"rows": n_items * k, "distinct": n_items * k}  # nothing duplicated
    in_db: dict[str, set[str]] = {}
    for rec in store.label_records("proj"):
        in_db.setdefault(rec["annotator"], set()).add(rec["item"])
        assert rec["revision"] == 1
    for name, items in acked.items():
        assert len(items) == len(set(items))
        assert set(items) == in_db.get(name, set())  # every acknowledged label is there, and nothing else
    assert Counter(item for items in acked.values() for item in items) == Counter(
        {f"item{i:03d}": k for i in range(n_items)})
    assert store.item_counts("proj")["complete"] == n_items


def test_sigkill_mid_stream_loses_nothing_acknowledged(db_url: str) -> None:
    seed(db_url, n_items=200, k=1, users=("w",))
    proc = _writer(db_url, "w", delay=0.0)
    acked: list[str] = []
    leased: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        kind, _, item = line.strip().partition(" ")
        (acked if kind == "ACK" else leased).append(item)
        if len(acked) >= 25:
            break
    proc.send_signal(signal.SIGKILL)  # mid-stream: it is leasing and writing as fast as it can
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after = LabelStore(db_url)
    in_db = {rec["item"] for rec in after.label_records("proj")}
    assert set(acked) <= in_db  # every acknowledged label survived
    assert len(in_db) <= len(acked) + 2  # at most the ones in flight besides
    assert after.count_labels("proj")["rows"] == len(in_db)
    if after.is_sqlite:
        with after.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    # The annotator continues where they were: the item leased when killed, unless it was saved already.
    resumed = after.next_task("proj", "w")
    last_leased = leased[-1]
    assert resumed.item == last_leased or last_leased in in_db


# --------------------------------------------------------------------------- hostile input (issue 13)


BAD_PROJECT_NAMES = ["../../etc", "a/b", "/abs/path", ".", "..", "x" * 300, "", "a\x00b", "a b", "-lead", "p" * 65]


def test_project_names_are_slugs_and_odd_lookups_never_reach_the_database(db_url: str) -> None:
    store = LabelStore(db_url)
    for name in BAD_PROJECT_NAMES:
        with pytest.raises(LabelError, match="project name .*: use 1-64 letters"):
            store.create_project(name)
        with pytest.raises(LabelError, match="project name"):
            row = ("c:1", parse_candidate({"id": 1, "prompt": "q", "responses": ["x", "y"]}, "c:1"))
            store.import_items(name, [row], create=True)
    assert store.projects() == []
    store.create_project("demo-1.v2_x")
    # Names PostgreSQL could not even compare (NUL, over the column's 128) are unknown projects on both backends.
    for name in ("p" * 200, "a\x00b", "\ud800"):
        with pytest.raises(UnknownProject, match="projects: demo-1.v2_x"):
            store.next_task(name, "a")
    # A project an older version created under a name that is no slug keeps working.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO projects (name, config, created_at) VALUES ('old name', '{}', 0)")
    row = ("c:1", parse_candidate({"id": 1, "prompt": "q", "responses": ["x", "y"]}, "c:1"))
    assert store.import_items("old name", [row], create=True).added == 1


def test_ids_and_texts_are_checked_alike_on_both_databases(db_url: str) -> None:
    store = seed(db_url, n_items=1, k=1, users=("a",))

    def candidate(**change) -> tuple[str, dict]:
        raw = {"id": "ok", "prompt": "q", "responses": ["x", "y"], **change}
        return "c.jsonl:7", parse_candidate(raw, "c.jsonl:7")

    refused = {
        "i" * 256: r"c.jsonl:7: field 'id': 256 characters, at most 255 allowed",
        "a\x00b": r"c.jsonl:7: field 'id': contains the character U\+0000 at position 1",
        "two\nlines": r"field 'id': contains the character U\+000A",
    }
    for key, message in refused.items():
        with pytest.raises(DataError, match=message):
            candidate(id=key)
    with pytest.raises(DataError, match=r"field 'meta.score': nan is not a finite number"):
        candidate(score=float("nan"))
    with pytest.raises(DataError, match=r"field 'responses\[1\].text': not valid text: contains the character U\+D800"):
        candidate(responses=["x", "bad \ud800"])
    # Votes and lookups with such strings are clear refusals, never a database error.
    with pytest.raises(LabelError, match="item: 256 characters"):
        parse_vote(item="i" * 256, choice="a")
    with pytest.raises(LabelError, match=r"skip_reason: contains the character U\+0000"):
        parse_vote(item="item000", skip_reason="x\x00")
    with pytest.raises(NotAllowed, match="unknown user"):
        store.next_task("proj", "a\x00")
    with pytest.raises(LabelError, match="no item"):
        store.own_task("proj", "a", "k" * 300)
    assert not store.authenticate("a\x00", "pw-a-secret") and not store.authenticate("a" * 300, "pw-a-secret")
    # A draft from the browser keeps known flags, in-range ranks and finite scores only (NaN breaks PostgreSQL JSON).
    task = store.next_task("proj", "a")
    assert store.save_draft("proj", "a", task.item, {"flags": ["unsafe", "x\x00"], "ranks": [2, 99, 1],
                                                     "scores": [float("nan"), float("inf"), 3.5]})
    assert store.next_task("proj", "a").draft == {"flags": ["unsafe"], "ranks": [2, None], "scores": [None, None]}
    longest = "i" * 255
    assert store.import_items("proj", [candidate(id=longest)]).added == 1
    assert label_everything(store, "a") == ["item000", longest]


def test_import_with_config_is_all_or_nothing(db_url: str) -> None:
    store = seed(db_url, n_items=2, k=2, users=("a",))
    good = ("n:1", parse_candidate({"id": "new", "prompt": "q", "responses": ["x", "y"]}, "n:1"))
    changed = ("n:2", parse_candidate({"id": "item000", "prompt": "other", "responses": ["x", "y"]}, "n:2"))
    with pytest.raises(DataError, match="n:2: field 'id': id 'item000' is already in project 'proj'"):
        store.import_items("proj", [good, changed], ProjectConfig(labels_per_item=5, lease_seconds=7), create=True)
    cfg = store.project_config("proj")
    assert (cfg.labels_per_item, cfg.lease_seconds) == (2, 1800)  # the settings did not change
    assert store.item_counts("proj")["total"] == 2
    with pytest.raises(DataError):
        store.import_items("fresh", [good, good], ProjectConfig(labels_per_item=1), create=True)  # id twice
    one = ("s:1", parse_candidate({"id": "s", "prompt": "q", "responses": ["same", "same"]}, "s:1"))
    with pytest.raises(LabelError, match="project 'fresh': no item in the file can be labeled"):
        store.import_items("fresh", [one], create=True)
    assert store.projects() == ["proj"]  # no empty project left behind
    report = store.import_items("fresh", [good], ProjectConfig(labels_per_item=1), create=True)
    assert report.added == 1 and store.project_config("fresh").labels_per_item == 1


def test_one_prompt_form_per_project(db_url: str) -> None:
    store = seed(db_url, n_items=1, k=1, users=("a",))  # string prompts, from cands.jsonl:1
    chat = [{"role": "user", "content": "Hi?"}]
    rows = [(f"m:{i}", parse_candidate({"id": f"m{i}", "prompt": chat, "responses": ["x", "y"]}, f"m:{i}"))
            for i in (1, 2)]
    with pytest.raises(DataError, match=r"m:1: field 'prompt': is a list of messages but earlier rows "
                                        r"\(first at cands.jsonl:1\) are a string"):
        store.import_items("proj", rows)
    mixed = [rows[0], ("m:3", parse_candidate({"id": "m3", "prompt": "plain", "responses": ["x", "y"]}, "m:3"))]
    with pytest.raises(DataError, match=r"m:3: field 'prompt': is a string but earlier rows \(first at m:1\)"):
        store.import_items("chat", mixed, create=True)
    assert store.import_items("chat", rows, create=True).added == 2


def test_password_change_disable_and_remove_end_logins(db_url: str) -> None:
    store = seed(db_url, n_items=2, k=1, users=("a", "b"))
    store.create_session("token-a", "a", hours=12)
    assert store.session_user("token-a") == "a"
    store.add_user("a", "annotator", "a new password", update=True)
    assert store.session_user("token-a") is None  # the old login ended with the old password
    assert store.authenticate("a", "a new password") and not store.authenticate("a", "pw-a-secret")

    held = store.next_task("proj", "b").item
    store.submit("proj", "b", parse_vote(item=held, choice="a"))
    leased = store.next_task("proj", "b").item
    store.create_session("token-b", "b", hours=12)
    store.disable_user("b")
    assert store.session_user("token-b") is None and not store.authenticate("b", "pw-b-secret")
    with pytest.raises(NotAllowed, match="user 'b' is disabled"):
        store.user("b")
    with pytest.raises(NotAllowed, match="user 'b' is disabled"):
        store.next_task("proj", "b")
    assert store.next_task("proj", "a").item == leased  # b's lease went back to the pool (K=1)
    store.add_user("b", "annotator", "b is back again", update=True)  # enables b
    assert store.authenticate("b", "b is back again") and store.user("b").status is None

    store.remove_user("b")
    assert not store.authenticate("b", "b is back again")
    assert {(u.name, u.status) for u in store.users()} == {("a", None), ("b", "removed")}
    assert [rec["annotator"] for rec in store.label_records("proj")] == ["b"]  # the label stays, attributed
    with pytest.raises(LabelError, match="user 'b' was removed"):
        store.add_user("b", "annotator", "someone else now", update=True)
    with pytest.raises(NotAllowed, match="unknown user 'ghost'"):
        store.disable_user("ghost")


def test_a_database_from_before_user_status_is_upgraded(db_url: str) -> None:
    store = seed(db_url, n_items=1, k=1, users=("a",))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE users DROP COLUMN status")
    store.close()
    reopened = LabelStore(db_url)
    assert reopened.authenticate("a", "pw-a-secret")
    reopened.disable_user("a")
    assert not reopened.authenticate("a", "pw-a-secret")


def test_sqlite_file_is_readable_by_its_owner_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "labels.db"
    store = seed(f"sqlite:///{path}", n_items=1, users=("a",))
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert modes == {"labels.db": "0o600", "labels.db-wal": "0o600", "labels.db-shm": "0o600"}
    store.close()
    path.chmod(0o644)
    LabelStore(f"sqlite:///{path}")
    assert f"{path} is readable by other users (mode 644)" in caplog.text
