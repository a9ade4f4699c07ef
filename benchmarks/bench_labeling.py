"""Labeling throughput: N simulated annotators voting through gradio_client against `align label serve`.

    python benchmarks/bench_labeling.py                          # 20 annotators, 240 items, K=3, SQLite
    python benchmarks/bench_labeling.py --annotators 20 --seconds 60 --db postgresql+psycopg://...

The server runs as its own process (``python -m align.cli label serve``) on loopback; each
annotator is a thread with its own ``gradio_client.Client`` (its own login), voting on whatever
item the server hands it (pairwise, or a ranking for the three-response items) as fast as it
can, until no item is left or ``--seconds`` pass. A vote counts as acknowledged when the server
has answered it. Afterwards the database is checked: rows == distinct (item, annotator) pairs
== acknowledged votes, each annotator's acknowledged items are exactly theirs in the database,
and no item holds more than K labels. Prints labels/s (first to last acknowledgement), request
latency percentiles and the machine's load average, which matters on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

from checkout import ROOT  # noqa: E402 - the checkout on sys.path, before align is imported

ITEM, FIRST_TEXT = 0, 8  # positions in a labeling endpoint's result (see tests/test_label_app.py)


def seed(db: str, n_items: int, k: int, annotators: int) -> None:
    from labeling_ui.schemas import ProjectConfig, parse_candidate
    from labeling_ui.store import LabelStore

    store = LabelStore(db)
    store.create_project("bench", ProjectConfig(labels_per_item=k))
    rows = []
    for i in range(n_items):
        n = 3 if i % 5 == 4 else 2
        raw = {"id": f"b{i:05d}", "prompt": f"Benchmark prompt {i}: explain something briefly.",
               "responses": [{"text": f"Response {j} to prompt {i}. " * 8, "model": f"m{j}"} for j in range(n)]}
        rows.append((f"bench:{i + 1}", parse_candidate(raw, f"bench:{i + 1}")))
    store.import_items("bench", rows)
    for a in range(annotators):
        store.add_user(f"sim{a:02d}", "annotator", f"sim{a:02d}-password")
    store.close()


def start_server(db: str, port: int, concurrency: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "align.cli", "label", "serve", "--project", "bench", "--db", db, "--port", str(port),
         "--concurrency", str(concurrency)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited; run the command above by hand to see why")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def annotate(url: str, name: str, stop_at: float, acked: dict, latencies: list, errors: list) -> None:
    from gradio_client import Client

    try:
        client = Client(url, auth=(name, f"{name}-password"), verbose=False, download_files=False)
        result = client.predict(api_name="/load")
        mine: list[tuple[str, float]] = []
        while result[ITEM] and time.monotonic() < stop_at:
            item = result[ITEM]
            started = time.perf_counter()
            if result[FIRST_TEXT + 6]["value"]:  # a third response is shown: rank
                result = client.predict(item, [], "null", 2, 1, 3, api_name="/rank")
            else:
                result = client.predict(item, "a" if hash((item, name)) % 2 else "b", [], "null", api_name="/vote")
            latencies.append(time.perf_counter() - started)
            mine.append((item, time.monotonic()))
        acked[name] = mine
    except Exception as err:  # noqa: BLE001 - reported at the end
        errors.append(f"{name}: {type(err).__name__}: {err}")
        acked.setdefault(name, [])


def verify(db: str, acked: dict[str, list[tuple[str, float]]], k: int) -> dict[str, int]:
    from labeling_ui.store import LabelStore

    store = LabelStore(db)
    counts = store.count_labels("bench")
    records = store.label_records("bench")
    in_db: dict[str, set[str]] = {}
    for rec in records:
        in_db.setdefault(rec["annotator"], set()).add(rec["item"])
    n_acked = sum(len(v) for v in acked.values())
    lost = sum(len({i for i, _ in items} - in_db.get(name, set())) for name, items in acked.items())
    unacked_in_db = sum(len(in_db.get(name, set()) - {i for i, _ in items}) for name, items in acked.items())
    per_item = Counter(rec["item"] for rec in records if rec["status"] == "done")
    return {
        "acked": n_acked,
        "rows": counts["rows"],
        "distinct": counts["distinct"],
        "duplicated": counts["rows"] - counts["distinct"],
        "lost": lost,
        "in_db_not_acked": unacked_in_db,
        "items_over_k": sum(n > k for n in per_item.values()),
        "items_complete": sum(n >= k for n in per_item.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--items", type=int, default=240)
    parser.add_argument("--k", type=int, default=3, help="labels per item")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop voting after this long")
    parser.add_argument("--concurrency", type=int, default=8, help="server: requests per callback at once")
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-label-")
    db = args.db or f"sqlite:///{tmp}/labels.db"
    seed(db, args.items, args.k, args.annotators)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    load_before = os.getloadavg()
    server = start_server(db, port, args.concurrency)
    url = f"http://127.0.0.1:{port}/"
    acked: dict[str, list[tuple[str, float]]] = {}
    latencies: list[float] = []
    errors: list[str] = []
    try:
        stop_at = time.monotonic() + args.seconds
        threads = [threading.Thread(target=annotate, args=(url, f"sim{a:02d}", stop_at, acked, latencies, errors))
                   for a in range(args.annotators)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    load_after = os.getloadavg()
    times = sorted(t for items in acked.values() for _, t in items)
    checks = verify(db, acked, args.k)
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    lat = sorted(latencies)
    db_kind = db.split(":", 1)[0]
    print(f"annotators={args.annotators} items={args.items} K={args.k} db={db_kind} cpus={os.cpu_count()} "
          f"server_concurrency={args.concurrency}")
    print(f"labels acknowledged: {checks['acked']} in {span:.1f} s -> {(len(times) - 1) / span:.1f} labels/s sustained")
    if lat:
        print(f"request latency: p50 {statistics.median(lat) * 1000:.0f} ms, "
              f"p95 {lat[int(0.95 * (len(lat) - 1))] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    print(f"database: rows {checks['rows']}, distinct (item, annotator) {checks['distinct']}, "
          f"lost {checks['lost']}, duplicated {checks['duplicated']}, in db but not acknowledged "
          f"{checks['in_db_not_acked']}, items over K {checks['items_over_k']}, items complete {checks['items_complete']}")
    print(f"load average (1/5/15 min): before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    if errors:
        print(f"{len(errors)} annotator errors; first: {errors[0]}")
    ok = checks["lost"] == 0 and checks["duplicated"] == 0 and checks["items_over_k"] == 0 and not errors
    ok = ok and checks["rows"] == checks["acked"]
    print("OK: zero lost, zero duplicated" if ok else "FAILED: see the counts above")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
