"""The Gradio app driven through gradio_client (and once through headless Chromium), checked in the database."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the ui extra is not installed (pip install -e '.[ui]')")
import httpx
from gradio_client import Client
from gradio_client.exceptions import AppError
from markdown_it import MarkdownIt

from labeling_ui.app import ExportFolder, serve
from labeling_ui.errors import LabelError
from labeling_ui.logins import Backoff, LoginThrottle
from labeling_ui.schemas import ProjectConfig, parse_candidate
from labeling_ui.store import LabelStore

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Positions in a labeling endpoint's result (gradio_client leaves out layout blocks and buttons).
ITEM, PROGRESS, PROMPT, FLAGS, SKIP_REASON, MESSAGE, SCORES, ORDER = range(8)
FIRST_TEXT = 8  # then (rendered text, rank, slider, one rating per aspect) per response slot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(url: str, n_items: int = 12, k: int = 2, project: str = "demo") -> LabelStore:
    store = LabelStore(url)
    store.create_project(project, ProjectConfig(labels_per_item=k, score={"enabled": True, "minimum": 0, "maximum": 10}))
    rows = []
    for i in range(n_items):
        n = 3 if i % 4 == 3 else 2
        raw = {"id": f"q{i:02d}", "prompt": f"Question {i}?",
               "responses": [{"text": f"Answer {i}-{j}", "model": f"model-{j}"} for j in range(n)]}
        rows.append((f"c.jsonl:{i + 1}", parse_candidate(raw, f"c.jsonl:{i + 1}")))
    store.import_items(project, rows)
    for name in ("ann1", "ann2", "ann3", "ann4", "browser"):
        store.add_user(name, "annotator", f"{name}-password")
    store.add_user("boss", "admin", "boss-password")
    return store


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    url = f"sqlite:///{tmp_path_factory.mktemp('app') / 'labels.db'}"
    store = make_project(url)
    demo = serve(url, "demo", port=free_port(), block=False, quiet=True)
    yield {"url": demo.local_url, "store": store}
    demo.close()


def login(app: dict, name: str) -> Client:
    return Client(app["url"], auth=(name, f"{name}-password"), verbose=False, download_files=False)


def labels_of(store: LabelStore, name: str) -> dict[str, dict]:
    return {rec["item"]: rec for rec in store.label_records("demo") if rec["annotator"] == name}


def pairwise(client: Client, first: tuple) -> tuple:
    """Vote 'a' until the shown item has 2 responses (the test items alternate sizes)."""
    result = first
    while result[FIRST_TEXT + 3 * 2]["value"]:  # a third response is shown: rank it instead
        result = client.predict(result[ITEM], [], "null", 1, 2, 3, api_name="/rank")
    return result


# --------------------------------------------------------------------------- login


def test_login_is_required_and_checked(app: dict) -> None:
    with pytest.raises(Exception, match="credentials were not provided"):
        Client(app["url"], verbose=False).predict(api_name="/load")
    with pytest.raises(Exception, match="Could not login"):
        Client(app["url"], auth=("ann1", "wrong-password"), verbose=False)
    with pytest.raises(Exception, match="Could not login"):
        Client(app["url"], auth=("nobody", "ann1-password"), verbose=False)


# --------------------------------------------------------------------------- labeling


def test_vote_is_written_for_the_logged_in_annotator(app: dict) -> None:
    client = login(app, "ann1")
    shown = pairwise(client, client.predict(api_name="/load"))
    item = shown[ITEM]
    assert "of 12 items" in shown[PROGRESS]
    texts = [shown[FIRST_TEXT]["value"], shown[FIRST_TEXT + 3]["value"]]
    after = client.predict(item, "B is better", ["nonsense"], json.dumps([None, 7.5]), api_name="/vote")
    assert f"Saved item {item}:" in after[MESSAGE] and after[ITEM] != item
    rec = labels_of(app["store"], "ann1")[item]
    assert rec["choice"] == "b" and rec["flags"] == ["nonsense"]
    shown_b = rec["order"][1]  # B was the second shown response: rank 1, score 7.5, in stored order
    assert rec["ranks"][shown_b] == 1 and rec["scores"][shown_b] == 7.5 and rec["scores"][rec["order"][0]] is None
    assert f"<p>{rec['responses'][shown_b]['text']}</p>" in texts[1]  # rendered as Markdown
    assert "model-" not in json.dumps(shown)  # model names never reach the annotator


def test_word_diff_of_the_item_on_screen(app: dict) -> None:
    app["store"].add_user("differ", "annotator", "differ-password")
    client = login(app, "differ")
    shown = client.predict(api_name="/load")  # no vote: the other tests' items stay as they are
    diff = client.predict(shown[ITEM], True, api_name="/diff")
    a_text = app["store"].own_task("demo", "differ", shown[ITEM]).responses[0]  # "Answer i-j": only j differs
    assert "<del>" in diff["value"] and "<ins>" in diff["value"] and a_text.split("-")[0] in diff["value"]
    assert client.predict(shown[ITEM], False, api_name="/diff")["value"] == ""
    with pytest.raises(AppError, match="no label on item"):
        client.predict("q00" if shown[ITEM] != "q00" else "q01", True, api_name="/diff")  # only one's own items
    client.predict(shown[ITEM], "other", [], api_name="/skip")  # gives the lease back


def test_previous_revises_and_refresh_resumes(app: dict) -> None:
    client = login(app, "ann2")
    first = pairwise(client, client.predict(api_name="/load"))
    second = pairwise(client, client.predict(first[ITEM], "a", [], "null", api_name="/vote"))
    held = second[ITEM]
    back = client.predict(held, api_name="/previous")
    assert back[ITEM] == first[ITEM] and "Revising your label" in back[MESSAGE] and "A is better" in back[MESSAGE]
    again = client.predict(back[ITEM], "tie", [], "null", api_name="/vote")
    assert again[ITEM] == held  # after the revision, back to the held item
    rec = labels_of(app["store"], "ann2")[first[ITEM]]
    assert rec["choice"] == "tie" and rec["revision"] == 2
    assert app["store"].count_labels("demo")["rows"] == app["store"].count_labels("demo")["distinct"]
    # A draft click, then a "refresh" (a new session): same item, same click.
    client.predict(held, ["unsafe"], "null", None, None, None, api_name="/draft")
    reloaded = login(app, "ann2").predict(api_name="/load")
    assert reloaded[ITEM] == held and reloaded[FLAGS]["value"] == ["unsafe"]
    with pytest.raises(AppError, match="No earlier label"):
        fresh = login(app, "ann4")
        fresh.predict(fresh.predict(api_name="/load")[ITEM], api_name="/previous")


def test_skip_needs_a_reason_and_ranking_needs_every_rank(app: dict) -> None:
    client = login(app, "ann3")
    shown = client.predict(api_name="/load")
    with pytest.raises(AppError, match="Choose a reason to skip"):
        client.predict(shown[ITEM], None, [], api_name="/skip")
    after = client.predict(shown[ITEM], "cannot judge", ["unsafe"], api_name="/skip")
    rec = labels_of(app["store"], "ann3")[shown[ITEM]]
    assert rec["status"] == "skipped" and rec["skip_reason"] == "cannot judge" and rec["flags"] == ["unsafe"]
    result = after
    while not result[FIRST_TEXT + 6]["value"]:  # move on to a three-response item
        result = client.predict(result[ITEM], "a", [], "null", api_name="/vote")
    with pytest.raises(AppError, match="rank every response"):
        client.predict(result[ITEM], [], "null", 1, None, 2, api_name="/rank")
    client.predict(result[ITEM], [], "null", 2, 1, 2, api_name="/rank")
    rec = labels_of(app["store"], "ann3")[result[ITEM]]
    assert sorted(rec["ranks"]) == [1, 2, 2] and rec["choice"] == "ranked"


def test_annotators_cannot_read_or_write_others_labels(app: dict) -> None:
    owner = login(app, "ann1")
    owner_items = list(labels_of(app["store"], "ann1"))
    assert owner_items
    intruder = login(app, "ann4")
    with pytest.raises(AppError, match="annotators see only their own labels"):
        intruder.predict(owner_items[0], api_name="/open_item")
    with pytest.raises(AppError, match="is not assigned to 'ann4'"):
        intruder.predict(owner_items[0], "a", [], "null", api_name="/vote")
    with pytest.raises(AppError, match="admin only: 'ann4' is an annotator"):
        intruder.predict(api_name="/admin_refresh")
    with pytest.raises(AppError, match="admin only"):
        intruder.predict("preference", "drop", "none", 1, 0, "jsonl", api_name="/admin_export")
    mine = intruder.predict(api_name="/my_labels")
    assert all(row[0] not in owner_items for row in mine["data"])
    assert {row[0] for row in owner.predict(api_name="/my_labels")["data"]} == set(owner_items)


def test_admin_sees_progress_and_exports(app: dict, tmp_path: Path) -> None:
    from align.config import DataConfig
    from align.data import load_records

    admin = login(app, "boss")
    people, summary, _queue = admin.predict(api_name="/admin_refresh")
    assert {row[0] for row in people["data"]} >= {"ann1", "ann2", "ann3", "ann4", "browser"}  # labels or not
    assert "Krippendorff's alpha" in summary and "of 12" in summary
    file, note = admin.predict("ranking", "keep", "none", 1, 0, "jsonl", api_name="/admin_export")
    assert "Exported" in note
    loaded = load_records(DataConfig(path=file["path"], kind="ranking"), "ranking")  # same machine: the server's path
    assert len(loaded.train) >= 3


# --------------------------------------------------------------------------- hostile input (issue 13)

# Item ids an attacker slips into a candidates file: a phishing link, an image with a script, raw HTML, an autolink.
EVIL = "x` [Session expired - click here](http://evil.example/login) <img src=x onerror=\"document.title='pwned'\"> `y"
EVIL2 = "<b>bold</b> **b** www.evil.example <https://evil.example/> $$x$$ \\`"
THROTTLE = LoginThrottle(per_user=Backoff(3, 2.0, 2.0, 60.0), per_address=Backoff(6, 2.0, 2.0, 60.0))


@pytest.fixture(scope="module")
def evil_app(tmp_path_factory: pytest.TempPathFactory):
    """A server whose items have hostile ids, with a quick login throttle (3 free failures per user, 6 per address)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('evil') / 'labels.db'}"
    store = LabelStore(url)
    rows = [(f"e.jsonl:{i + 1}", parse_candidate({"id": key, "prompt": f"Q{i}?", "responses": [f"A{i}", f"B{i}"]},
                                                 f"e.jsonl:{i + 1}")) for i, key in enumerate([EVIL, EVIL2, "plain"])]
    store.import_items("inject", rows, ProjectConfig(labels_per_item=2), create=True)
    for name in ("ann1", "browser", "victim", "leaver", "reset"):
        store.add_user(name, "annotator", f"{name}-password")
    demo = serve(url, "inject", port=free_port(), block=False, quiet=True, throttle=THROTTLE)
    yield {"url": demo.local_url, "store": store}
    demo.close()


def rendered(markdown: str) -> tuple[str, str]:
    """(HTML, visible text) of ``markdown`` as a CommonMark renderer shows it."""
    out = MarkdownIt("commonmark").render(markdown)
    return out, html.unescape(re.sub(r"<[^>]+>", "", out))


def assert_plain(markdown: str, expected: str) -> None:
    out, text = rendered(markdown)
    assert not re.search(r"<(a|img|b|code)\b", out), out  # no link, image, raw HTML or code span came alive
    assert expected in text, (expected, text)


def test_injected_item_ids_render_as_plain_text(evil_app: dict) -> None:
    client = login(evil_app, "ann1")
    shown = client.predict(api_name="/load")
    assert shown[ITEM] == EVIL
    assert_plain(shown[PROGRESS], f"item {EVIL}")
    second = client.predict(EVIL, "a", [], "null", api_name="/vote")
    assert_plain(second[MESSAGE], f"Saved item {EVIL}: A is better.")
    assert second[ITEM] == EVIL2
    assert_plain(second[PROGRESS], f"item {EVIL2}")
    third = client.predict(EVIL2, "cannot judge", [], api_name="/skip")  # Gradio allows only the listed reasons
    assert_plain(third[MESSAGE], f"Skipped item {EVIL2} (cannot judge).")
    back = client.predict(third[ITEM], api_name="/previous")
    assert_plain(back[MESSAGE], f"Revising your label on item {EVIL2} (revision 1): you skipped it (cannot judge).")
    # Error toasts are HTML in Gradio: what the caller sent comes back escaped.
    with pytest.raises(AppError) as refused:
        client.predict('<img src=x onerror="alert(1)">', api_name="/open_item")
    assert "&lt;img src=x" in str(refused.value) and "<img" not in str(refused.value)


def post_login(url: str, name: str, password: str, source: str) -> httpx.Response:
    """A login from loopback address ``source`` (all of 127.0.0.0/8 is this machine), as a guesser would send it."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as http:
        return http.post(f"{url.rstrip('/')}/login", data={"username": name, "password": password})


def test_password_guessing_is_throttled_and_logged(evil_app: dict, caplog: pytest.LogCaptureFixture) -> None:
    url = evil_app["url"]
    codes = [post_login(url, "victim", f"guess-{i}", "127.0.0.2").status_code for i in range(30)]
    assert codes[:3] == [400, 400, 400] and codes.count(400) <= 4 and codes.count(429) >= 26
    right = post_login(url, "victim", "victim-password", "127.0.0.5")  # the right one, from anywhere, too early
    assert right.status_code == 429 and "Too many failed logins" in right.json()["detail"]
    time.sleep(float(right.headers["Retry-After"]))
    assert post_login(url, "victim", "victim-password", "127.0.0.5").status_code == 200  # not locked out for good
    # One address guessing many names is held back too; other addresses are not.
    codes = [post_login(url, f"nobody{i}", "guess", "127.0.0.3").status_code for i in range(10)]
    assert codes[:6] == [400] * 6 and codes.count(429) >= 3
    assert post_login(url, "ann1", "ann1-password", "127.0.0.3").status_code == 429
    assert post_login(url, "ann1", "ann1-password", "127.0.0.4").status_code == 200
    assert "failed login for 'victim' from 127.0.0.2" in caplog.text
    assert "login refused for 'victim' from 127.0.0.2: too many failures" in caplog.text


def test_disabled_users_and_old_passwords_are_out_on_the_next_request(evil_app: dict) -> None:
    store = evil_app["store"]
    leaver, reset = login(evil_app, "leaver"), login(evil_app, "reset")
    assert leaver.predict(api_name="/load")[ITEM] and reset.predict(api_name="/load")[ITEM]
    store.disable_user("leaver")
    store.add_user("reset", "annotator", "a brand new password", update=True)
    for client in (leaver, reset):
        with pytest.raises(httpx.HTTPStatusError, match="401 Unauthorized"):  # the cookie no longer logs in
            client.predict(api_name="/load")
    with pytest.raises(Exception, match="Could not login"):
        Client(evil_app["url"], auth=("leaver", "leaver-password"), verbose=False)
    assert Client(evil_app["url"], auth=("reset", "a brand new password"), verbose=False).predict(api_name="/load")


def test_more_than_26_responses_and_exports_leave_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from align.config import DataConfig
    from align.data import load_records

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(ExportFolder, "KEEP_SECONDS", 0.0)  # an earlier export's folder goes at the next one
    url = f"sqlite:///{tmp_path / 'wide.db'}"
    store = LabelStore(url)
    row = {"id": "wide", "prompt": "Pick the best of 30.", "responses": [f"answer {j}" for j in range(30)]}
    store.import_items("wide", [("w:1", parse_candidate(row, "w:1"))], ProjectConfig(labels_per_item=1), create=True)
    store.add_user("boss", "admin", "boss-password")
    demo = serve(url, "wide", port=free_port(), block=False, quiet=True)
    try:
        admin = Client(demo.local_url, auth=("boss", "boss-password"), verbose=False, download_files=False)
        shown = admin.predict(api_name="/load")
        names = [shown[FIRST_TEXT + 3 * i]["label"] for i in range(30)]
        assert names[:2] == ["Response A", "Response B"]
        assert names[25:] == ["Response Z", "Response AA", "Response AB", "Response AC", "Response AD"]
        admin.predict("wide", [], "null", *range(30, 0, -1), api_name="/rank")
        assert sorted(store.label_records("wide")[0]["ranks"]) == list(range(1, 31))
        for _ in range(2):
            file, _note = admin.predict("ranking", "keep", "none", 1, 0, "jsonl", api_name="/admin_export")
        [root] = scratch.glob("align-export-*")
        assert len(list(root.iterdir())) == 1  # the first export's folder is gone
        assert len(load_records(DataConfig(path=file["path"], kind="ranking"), "ranking").train) == 1
    finally:
        demo.close()
    assert not list(scratch.glob("align-export-*"))  # and the server's folder went with it


def test_export_paths_stay_in_their_folder_whatever_the_name() -> None:
    folder = ExportFolder()
    try:
        for name in ("../../etc", "/abs/path", "..", ".", "a/b", "x" * 300):
            out = folder.path(name, "preference", "jsonl")
            assert out.parent.parent == folder.root.resolve() and out.name.endswith("-preference.jsonl")
        with pytest.raises(LabelError, match="format 'disk'"):
            folder.path("demo", "preference", "disk")
    finally:
        folder.close()
    assert not folder.root.exists()


def test_a_server_nobody_can_log_in_to_says_how_to_add_a_user(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    row = ("c:1", parse_candidate({"id": 1, "prompt": "q", "responses": ["x", "y"]}, "c:1"))
    LabelStore(url).import_items("empty", [row], create=True)
    serve(url, "empty", port=free_port(), block=False, quiet=True).close()
    assert f"nobody can log in; add one with `align label add-user NAME --role admin --db {url}`" in caplog.text


# --------------------------------------------------------------------------- a killed server


def _start_server(db: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "align.cli", "label", "serve", "--project", "demo", "--db", db, "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start in 60 s")


def test_sigkill_of_the_server_loses_nothing_and_logins_survive(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = make_project(db, n_items=400, k=1)
    port = free_port()
    server = _start_server(db, port)
    client = Client(f"http://127.0.0.1:{port}/", auth=("ann1", "ann1-password"), verbose=False, download_files=False)
    acked: list[str] = []
    stop = threading.Event()

    def annotate() -> None:
        result = client.predict(api_name="/load")
        while not stop.is_set():
            item = result[ITEM]
            try:
                if result[FIRST_TEXT + 6]["value"]:
                    result = client.predict(item, [], "null", 3, 2, 1, api_name="/rank")
                else:
                    result = client.predict(item, "b", [], "null", api_name="/vote")
            except Exception:  # noqa: BLE001 - the server is gone
                return
            acked.append(item)  # the server answered: this label is acknowledged

    worker = threading.Thread(target=annotate)
    worker.start()
    deadline = time.monotonic() + 60
    while len(acked) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)  # mid-stream: the client is voting as fast as it can
    server.wait(timeout=30)
    stop.set()
    worker.join(timeout=30)
    assert len(acked) >= 10
    in_db = set(labels_of(store, "ann1"))
    assert set(acked) <= in_db and len(in_db) <= len(acked) + 1
    held = store.next_task("demo", "ann1").item  # what ann1 holds now (the item in flight, if any)

    server = _start_server(db, port)
    try:
        # The same browser session (cookie) is still logged in, and is back on the held item.
        again = client.predict(api_name="/load")
        assert again[ITEM] == held
        assert store.count_labels("demo") == {"rows": len(in_db), "distinct": len(in_db)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


# --------------------------------------------------------------------------- a real browser


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
def test_browser_login_and_vote(app: dict, evil_app: dict) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(app["url"])
            page.get_by_label("username").fill("browser")
            page.get_by_label("password").fill("browser-password")
            page.get_by_role("button", name="Login").click()
            page.locator("#progress").get_by_text("item").wait_for()
            item = _to_pairwise(page)
            page.locator("#vote-a").click()
            page.locator("#message").get_by_text(f"Saved item {item}").wait_for()
            rec = labels_of(app["store"], "browser")[item]
            assert rec["choice"] == "a" and rec["status"] == "done"  # in the database, under the login's name
            # The keyboard shortcut "2" is "B is better".
            second = _to_pairwise(page)
            page.locator("body").press("2")
            page.locator("#message").get_by_text(f"Saved item {second}").wait_for()
            assert labels_of(app["store"], "browser")[second]["choice"] == "b"
            _injected_id_stays_text(browser.new_page(), evil_app["url"])
        finally:
            browser.close()


def _injected_id_stays_text(page, url: str) -> None:
    """An item id carrying a link, an <img onerror> and raw HTML shows as its own characters, live in nothing."""
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_label("username").fill("browser")
    page.get_by_label("password").fill("browser-password")
    page.get_by_role("button", name="Login").click()
    page.locator("#progress").get_by_text(EVIL).wait_for()
    page.locator("#vote-a").click()
    page.locator("#message").get_by_text(f"Saved item {EVIL}").wait_for()
    for where in ("#progress", "#message"):
        assert page.locator(f"{where} a, {where} img, {where} b, {where} code").count() == 0
    assert page.title() != "pwned" and page.locator("a[href*='evil.example']").count() == 0


def _shown_item(page) -> str:
    text = page.locator("#progress").inner_text()
    return text.rsplit("item", 1)[1].strip().strip("`").strip()


def _to_pairwise(page) -> str:
    """Rank three-response items in the browser until a two-response item is shown; its id."""
    item = _shown_item(page)
    while page.locator("#submit-ranking").is_visible():
        for rank, letter in zip((1, 2, 3), "abc"):
            box = page.locator(f"#rank-{letter} input")
            box.click()
            box.fill(str(rank))
            box.press("Enter")
        page.locator("#submit-ranking").click()
        page.locator("#message").get_by_text(f"Saved ranking of item {item}").wait_for()
        item = _shown_item(page)
    return item


# --------------------------------------------------------------------------- readable items, keyboard ranking (issue 16)

MD_RESPONSES = [
    "**Bold claim** with a list:\n\n- one\n- two\n\n" + "A long paragraph that goes on. " * 80,
    "Use this:\n\n```python\ndef f(x):\n    return x * 2\n```\n<script>document.title='pwned'</script>",
    "[click me](javascript:document.title='pwned') <img src=x onerror=\"document.title='pwned'\"> plain end",
]


@pytest.fixture(scope="module")
def md_app(tmp_path_factory: pytest.TempPathFactory):
    """Items of three Markdown responses (one long, one with code, one hostile), scores and one aspect."""
    url = f"sqlite:///{tmp_path_factory.mktemp('md') / 'labels.db'}"
    store = LabelStore(url)
    rows = [(f"m:{i}", parse_candidate({"id": f"m{i}", "prompt": f"Explain `f` ({i})", "responses": MD_RESPONSES},
                                       f"m:{i}")) for i in range(4)]
    config = ProjectConfig(labels_per_item=1, score={"enabled": True}, aspects=["helpfulness"])
    store.import_items("md", rows, config, create=True)
    for name in ("reader", "typist"):
        store.add_user(name, "annotator", f"{name}-password")
    demo = serve(url, "md", port=free_port(), block=False, quiet=True)
    yield {"url": demo.local_url, "store": store}
    demo.close()


def test_typed_order_and_aspects_through_the_api(md_app: dict) -> None:
    client = login(md_app, "typist")
    shown = client.predict(api_name="/load")
    assert "<strong>Bold claim</strong>" in "".join(shown[FIRST_TEXT + 4 * i]["value"] for i in range(3))
    with pytest.raises(AppError, match=r"unknown: D; missing: C"):
        client.predict(shown[ITEM], [], "null", "BAD", None, None, None, api_name="/rank_order")
    after = client.predict(shown[ITEM], [], "null", "c=a b", 5, None, 2, api_name="/rank_order")
    assert f"Saved ranking of item {shown[ITEM]}: A=C > B." in after[MESSAGE]
    [rec] = [r for r in md_app["store"].label_records("md") if r["annotator"] == "typist"]
    order = rec["order"]  # shown position -> stored index
    assert [rec["ranks"][order[j]] for j in range(3)] == [1, 2, 1]
    assert [rec["aspects"]["helpfulness"][order[j]] for j in range(3)] == [5, None, 2]


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
def test_browser_renders_markdown_safely_and_ranks_by_keyboard(md_app: dict) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(md_app["url"])
            page.get_by_label("username").fill("reader")
            page.get_by_label("password").fill("reader-password")
            page.get_by_role("button", name="Login").click()
            page.locator(".response .response-body").first.wait_for()
            responses = page.locator(".response")
            # Markdown and highlighted code are shown; the script, the image and the javascript: link are text.
            assert page.locator(".response strong").get_by_text("Bold claim").count() == 1
            assert page.locator(".response pre code span.k").first.inner_text() == "def"
            assert page.locator("#prompt code").inner_text() == "f"
            assert page.locator(".response script, .response img, .response a").count() == 0
            assert "<script>document.title" in responses.all_inner_texts().__str__()
            assert page.title() != "pwned"
            # The long response starts collapsed; "e" shows it in full. Untouched sliders show no value.
            assert page.locator(".response.long.collapsed").count() == 1
            assert page.locator(".score-slider.unscored").count() == 3
            page.locator("body").press("e")
            assert page.locator(".response.long.collapsed").count() == 0
            # Keyboard alone: a score with the arrow keys, then type the order, best first, and press Enter.
            item = _shown_item(page)
            page.locator(".score-slider input[type=range]").first.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function("document.querySelectorAll('.score-slider.unscored').length === 2")
            names = [r.get_attribute("data-name") for r in responses.all()]
            assert names == ["A", "B", "C"]
            for key in "BAC":
                page.keyboard.press(key.lower())
            assert page.locator("#rank-order textarea, #rank-order input").first.input_value().upper() == "BAC"
            page.keyboard.press("Enter")
            page.locator("#message").get_by_text(f"Saved ranking of item {item}: B > A > C").wait_for()
            [rec] = [r for r in md_app["store"].label_records("md") if r["annotator"] == "reader"]
            assert [rec["ranks"][rec["order"][j]] for j in range(3)] == [2, 1, 3]
            scores = [rec["scores"][rec["order"][j]] for j in range(3)]
            assert scores[0] == pytest.approx(4.1) and scores[1:] == [None, None]  # midpoint 4 plus one step
            assert page.locator("#rank-order textarea, #rank-order input").first.input_value() == ""
            assert page.title() != "pwned"
        finally:
            browser.close()


# --------------------------------------------------------------------------- quality control, lead dashboard (issue 16)


@pytest.fixture(scope="module")
def qc_app(tmp_path_factory: pytest.TempPathFactory):
    """Two gold items (answer A) served first (gold_rate 1), four ordinary ones; K=2, no shuffling."""
    import labeling_ui.app as app_module

    url = f"sqlite:///{tmp_path_factory.mktemp('qc') / 'labels.db'}"
    store = LabelStore(url)
    rows = [(f"g:{i}", parse_candidate({"id": f"g{i}", "prompt": f"gold {i}", "responses": [f"good {i}", f"bad {i}"],
                                        "gold": "AB"}, f"g:{i}")) for i in range(2)]
    rows += [(f"o:{i}", parse_candidate({"id": f"o{i}", "prompt": f"q {i}", "responses": [f"x {i}", f"y {i}"]},
                                        f"o:{i}")) for i in range(4)]
    store.import_items("qc", rows, ProjectConfig(labels_per_item=2, shuffle=False, gold_rate=1.0), create=True)
    for name in ("careful", "sloppy", "idle"):
        store.add_user(name, "annotator", f"{name}-password")
    store.add_user("lead", "admin", "lead-password")
    original = app_module.DASHBOARD_SECONDS
    app_module.DASHBOARD_SECONDS = 1.0
    demo = serve(url, "qc", port=free_port(), block=False, quiet=True)
    app_module.DASHBOARD_SECONDS = original
    yield {"url": demo.local_url, "store": store}
    demo.close()


def _vote_all(client: Client, choice: str) -> list[str]:
    result, items = client.predict(api_name="/load"), []
    while result[ITEM]:
        items.append(result[ITEM])
        result = client.predict(result[ITEM], choice, [], "null", api_name="/vote")
    return items


def test_gold_accuracy_review_queue_and_adjudication(qc_app: dict) -> None:
    careful_items = _vote_all(login(qc_app, "careful"), "a")
    assert careful_items[:2] == ["g0", "g1"] and len(careful_items) == 6  # gold first at rate 1, then the rest
    assert _vote_all(login(qc_app, "sloppy"), "b")[:2] == ["g0", "g1"]
    lead = login(qc_app, "lead")
    people, _summary, queue = lead.predict(api_name="/admin_refresh")
    rows = {row[0]: row for row in people["data"]}
    assert set(rows) == {"careful", "sloppy", "idle"}
    assert rows["careful"][6:9] == [2, 1.0, 0.0] and rows["sloppy"][6:9] == [2, 0.0, 0.0]
    assert rows["idle"][1] == 0 and rows["idle"][7] is None
    assert [row[0] for row in queue["data"]] == ["o0", "o1", "o2", "o3"]  # every shared item split 1-1; gold is not queued
    assert all(row[2] == pytest.approx(0.5) for row in queue["data"])
    shown = lead.predict("o2", api_name="/review_item")
    assert "careful: A &gt; B" in shown and "sloppy: B &gt; A" in shown
    with pytest.raises(AppError, match="unknown: C"):
        lead.predict("o2", "CA", api_name="/adjudicate")
    assert_plain(lead.predict("o2", "BA", api_name="/adjudicate"), "Item o2 settled by lead: B > A.")
    _people, _summary, queue = lead.predict(api_name="/admin_refresh")
    assert "o2" not in [row[0] for row in queue["data"]]
    items = {row[0]: row for row in lead.predict(api_name="/admin_items")["data"]}
    # item, labels of K, agreement, most common answer (file order), its votes, state, priority (no reward model)
    assert items["o2"][1:3] == ["2/2", pytest.approx(0.5)] and items["o2"][5] == "settled"
    assert items["o1"][5] == "contested" and items["o1"][3] in ("A > B", "B > A") and items["o1"][4] == 1
    assert items["g0"][5] == "gold" and items["o1"][6] is None
    with pytest.raises(AppError, match="admin only"):
        login(qc_app, "careful").predict(api_name="/admin_items")
    with pytest.raises(AppError, match="admin only"):
        login(qc_app, "careful").predict("o1", "AB", api_name="/adjudicate")
    from labeling_ui.export import ExportOptions, build_rows

    records = qc_app["store"].label_records("qc")
    majority = {r["id"]: r for r in build_rows(records, ExportOptions(kind="preference", aggregate="majority")).rows}
    assert majority["o2"]["chosen"] == "y 2"  # the lead's answer; o0 (a 1-1 split) has no majority
    assert "o0" not in majority
    trusted = build_rows(records, ExportOptions(kind="preference", min_gold_accuracy=0.5))
    assert {r["annotator"] for r in trusted.rows} == {"careful"}
    assert trusted.stats["left_out"]["labels_of_annotators_below_gold_accuracy"] == 6


def test_leads_manage_users_from_the_app(qc_app: dict) -> None:
    lead = login(qc_app, "lead")
    assert "added" in lead.predict("add", "newbie", "annotator", "newbie-password", api_name="/manage_user")
    newbie = login(qc_app, "newbie")
    assert newbie.predict(api_name="/load")[PROGRESS]
    with pytest.raises(AppError, match="admin only: 'newbie' is an annotator"):
        newbie.predict("add", "sneaky", "admin", "sneaky-password", api_name="/manage_user")
    with pytest.raises(AppError, match="exists"):
        lead.predict("add", "newbie", "annotator", "another-password", api_name="/manage_user")
    assert "new password" in lead.predict("reset password", "newbie", "annotator", "fresh-password-1",
                                          api_name="/manage_user")
    with pytest.raises(httpx.HTTPStatusError, match="401 Unauthorized"):  # the old login ended
        newbie.predict(api_name="/load")
    assert "disabled" in lead.predict("disable", "newbie", "annotator", "", api_name="/manage_user")
    with pytest.raises(Exception, match="Could not login"):
        Client(qc_app["url"], auth=("newbie", "fresh-password-1"), verbose=False)
    with pytest.raises(AppError, match="cannot disable yourself"):
        lead.predict("disable", "lead", "admin", "", api_name="/manage_user")


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
def test_browser_dashboard_updates_without_a_click(qc_app: dict) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    store = qc_app["store"]
    store.add_user("late", "annotator", "late-password")
    fresh = parse_candidate({"id": "fresh", "prompt": "new", "responses": ["p", "q"]}, "f:1")
    store.import_items("qc", [("f:1", fresh)])  # work for "late" whatever the other tests labeled
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(qc_app["url"])
            page.get_by_label("username").fill("lead")
            page.get_by_label("password").fill("lead-password")
            page.get_by_role("button", name="Login").click()
            page.get_by_role("tab", name="Admin").click()
            # Cells after the name, as the table shows them: done, skipped, flagged, holding, ...
            cells = ("(n) => { const lines = document.querySelector('#people').innerText.split('\\n')"
                     ".map((l) => l.trim()).filter(Boolean); const at = lines.indexOf('late');"
                     " return at >= 0 ? lines.slice(at + 1, at + 1 + n) : null; }")
            page.wait_for_function(f"({cells})(4)?.join() === '0,0,0,0'")  # listed before any label
            task = store.next_task("qc", "late")
            page.wait_for_function(f"({cells})(4)?.[3] === '1'")  # holding one item, no click
            from labeling_ui.store import parse_vote

            store.submit("qc", "late", parse_vote(item=task.item, choice="a"))
            page.wait_for_function(f"({cells})(4)?.join() === '1,0,0,0'")
        finally:
            browser.close()
