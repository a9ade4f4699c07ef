"""Labels per minute of one simulated annotator driving the labeling app in headless Chromium, keyboard only.

    python benchmarks/bench_label_browser.py --seconds 60

Items are Markdown responses with code (two responses, every third item three). The annotator
presses ``1`` (A is better) on pairs and types the order ``BAC`` + Enter on rankings, then waits
for the "Saved" message: the time is the app's (render, round trip, store), not reading time.
Needs Chromium at /usr/bin/chromium and the playwright package.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time

from checkout import ROOT  # noqa: F401 - the checkout on sys.path, before labeling_ui is imported

BODY = ("Here is a **careful** answer with a list:\n\n- first point about item {i}\n- second point\n\n"
        "```python\ndef f(x):\n    return x * {j}\n```\n\nAnd a closing paragraph that explains more. " * 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(db: str, n_items: int) -> None:
    from labeling_ui.schemas import ProjectConfig, parse_candidate
    from labeling_ui.store import LabelStore

    rows = []
    for i in range(n_items):
        raw = {"id": f"q{i:03d}", "prompt": f"Question {i}: explain `f`.",
               "responses": [BODY.format(i=i, j=j) for j in range(3 if i % 3 == 2 else 2)]}
        rows.append((f"c:{i}", parse_candidate(raw, f"c:{i}")))
    store = LabelStore(db)
    store.import_items("bench", rows, ProjectConfig(labels_per_item=1), create=True)
    store.add_user("sim", "annotator", "sim-password-1")


def annotate(url: str, seconds: float) -> tuple[int, int, float]:
    """(labels, of which rankings, seconds) for one annotator voting by keyboard for ``seconds``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        page.get_by_label("username").fill("sim")
        page.get_by_label("password").fill("sim-password-1")
        page.get_by_role("button", name="Login").click()
        page.locator("#progress").get_by_text("item").wait_for()
        start, labels, ranked = time.monotonic(), 0, 0
        while time.monotonic() - start < seconds:
            item = page.locator("#progress").inner_text().rsplit("item", 1)[1].strip()
            if page.locator("#rank-order").is_visible():
                page.keyboard.type("bac")
                page.keyboard.press("Enter")
                ranked += 1
            else:
                page.keyboard.press("1")
            page.locator("#message").get_by_text(f"item {item}").wait_for()
            labels += 1
        elapsed = time.monotonic() - start
        browser.close()
    return labels, ranked, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    from labeling_ui.app import serve

    db = f"sqlite:///{tempfile.mkdtemp(prefix='bench-label-')}/labels.db"
    seed(db, args.items)
    demo = serve(db, "bench", port=free_port(), block=False, quiet=True)
    try:
        labels, ranked, elapsed = annotate(demo.local_url, args.seconds)
    finally:
        demo.close()
    print(f"{labels} labels ({ranked} rankings) in {elapsed:.1f} s: {60 * labels / elapsed:.1f} labels/min")


if __name__ == "__main__":
    main()
