"""Active vs random labeling: does ordering the queue by the reward model's margin teach it faster?

    python benchmarks/bench_active_labeling.py --out runs/bench-active-labeling --threads 2

A simulated annotator (``benchmarks/gold.py``'s judge with Gaussian noise, through
``labeling_ui.auto``: leases, shown order, the store) labels pair items of a labeling project.
Every ``--per-round`` labels a reward model is trained on all labels so far (``align reward``,
``minilm-l6`` with ``model.method=feature_extraction``: the encoder frozen, its features cached,
the head alone trains) and its accuracy measured on fresh pairs: prompts whose topics no label
mentions, pairs whose gold scores differ by at least ``--clear``. Two arms, the same first
``--per-round`` labels:

- ``random``: the project has no reward model; items were imported in a shuffled order;
- ``active``: after each round the project is linked to the new reward model
  (``labeling_ui.active.score_items``, strategy margin): the next labels go to the pairs it can
  least tell apart.

Candidates: ``runs/bench-alignment/candidates/{train,held_out}/candidates.jsonl`` when
``benchmarks/bench_alignment.py`` wrote them (SmolLM2-135M answers, 4 per training prompt),
else answers synthesised from the gold prompts with controlled flaws (off topic, cut off,
repetitive, too short or long). Writes ``results.json`` and ``results.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

from checkout import ROOT  # noqa: F401 - offline env and the checkout on sys.path, before align is imported

import torch

from align.config import RewardRecipe
from align.judges import load_judge
from align.recipe import validate
from align.run import setup_logging
from benchmarks.gold import gold, prompts
from labeling_ui.active import score_items
from labeling_ui.auto import auto_label
from labeling_ui.export import ExportOptions, export_project
from labeling_ui.schemas import ActiveSettings, ProjectConfig, parse_candidate
from labeling_ui.store import LabelStore

CANDIDATES = Path("runs/bench-alignment/candidates")
GOLD = "benchmarks.gold:gold"
logger = logging.getLogger("bench.active_labeling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-active-labeling"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=100, help="labels between two reward models")
    parser.add_argument("--noise", type=float, default=0.05, help="annotator noise on the gold scores (Gaussian)")
    parser.add_argument("--clear", type=float, default=0.1, help="gold gap of a fresh evaluation pair")
    parser.add_argument("--eval-topics", type=int, default=8, help="training topics kept out of the pool, for evaluation")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    pool, fresh, source = build_data(args.eval_topics, args.clear, args.seed)
    fresh_path = write_jsonl(args.out / "fresh_pairs.jsonl", fresh)
    logger.info("%d pair items to label (%s), %d fresh evaluation pairs", len(pool), source, len(fresh))
    curves: dict[str, list[dict[str, float]]] = {}
    started = time.monotonic()
    for arm in ("random", "active"):
        curves[arm] = run_arm(args, arm, pool, fresh_path)
    report(args, curves, len(pool), len(fresh), source, time.monotonic() - started)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --------------------------------------------------------------------------- data


def build_data(eval_topics: int, clear: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(pair items for the pool, fresh evaluation pairs, where the answers came from)."""
    if (CANDIDATES / "train/candidates.jsonl").is_file() and (CANDIDATES / "held_out/candidates.jsonl").is_file():
        answers = {**read_answers(CANDIDATES / "train/candidates.jsonl"),
                   **read_answers(CANDIDATES / "held_out/candidates.jsonl")}
        source = f"SmolLM2-135M answers from {CANDIDATES}"
    else:
        answers = {p: synthetic_answers(p, random.Random(f"{seed}\0{p}")) for p in prompts("train") + prompts("held_out")}
        source = "synthetic answers with controlled flaws (no bench-alignment candidates found)"
    train = prompts("train")
    cut = len(train) - 5 * eval_topics  # five question forms per topic
    pool = [{"id": f"{n:04d}-{i}{j}", "prompt": p, "responses": [a, b]}
            for n, p in enumerate(train[:cut]) if p in answers
            for (i, a), (j, b) in itertools.combinations(enumerate(answers[p]), 2) if a != b]
    random.Random(seed).shuffle(pool)  # the import order is the random arm's queue
    fresh = []
    for p in train[cut:] + prompts("held_out"):
        for a, b in itertools.combinations(answers.get(p, []), 2):
            sa, sb = gold([p, p], [a, b])
            if abs(sa - sb) >= clear:
                chosen, rejected = (a, b) if sa > sb else (b, a)
                fresh.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    return pool, fresh, source


def read_answers(path: Path) -> dict[str, list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["prompt"]: [r["text"] if isinstance(r, dict) else r for r in row["responses"]] for row in rows}


def synthetic_answers(prompt: str, rng: random.Random) -> list[str]:
    """Four answers to a gold prompt, each with a flaw drawn at random (or none)."""
    topic = prompt.rstrip("?.").split(" ")[-1]
    base = f"{topic.capitalize()} is something people use and study every day, and it shapes how we live and learn."
    flaws = {
        "none": lambda: base,
        "off_topic": lambda: "That is a good question, and there are many things one could say about it here.",
        "cut_off": lambda: base.rstrip(".") + " because it",
        "repetitive": lambda: f"{topic} {topic} is is very very very important important important.",
        "short": lambda: f"{topic.capitalize()}.",
        "long": lambda: " ".join([base] * 4),
    }
    return [flaws[rng.choice(list(flaws))]() for _ in range(4)]


# --------------------------------------------------------------------------- one arm


def run_arm(args: argparse.Namespace, arm: str, pool: list[dict[str, Any]], fresh: Path) -> list[dict[str, float]]:
    folder = args.out / arm
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    store = LabelStore(f"sqlite:///{folder / 'labels.db'}")
    rows = [(f"pool:{n + 1}", parse_candidate(item, f"pool:{n + 1}")) for n, item in enumerate(pool)]
    store.import_items("pool", rows, ProjectConfig(labels_per_item=1), create=True)
    judge = load_judge(GOLD)
    curve = []
    for round_ in range(1, args.rounds + 1):
        auto_label(store, "pool", judge, annotators=1, noise=args.noise, kind="gaussian", seed=args.seed,
                   prefix="sim", max_items=args.per_round)
        labels = folder / f"labels-{round_}.jsonl"
        export_project(store, "pool", labels, ExportOptions(kind="preference", ties="drop"), "jsonl")
        started = time.monotonic()
        rm_dir, accuracy = train_reward_model(args, folder / f"rm-{round_}", labels, fresh)
        point = {"labels": store.done_labels("pool"), "accuracy": accuracy,
                 "train_seconds": round(time.monotonic() - started, 1), "mean_gold_gap": mean_gap(labels)}
        if arm == "active":  # the next labels go where this model is least sure
            settings = ActiveSettings(reward_model=[str(rm_dir)], strategy="margin")
            store.create_project("pool", ProjectConfig(labels_per_item=1, active=settings), update=True)
            score_items(store, "pool")
        (rm_dir / "model.safetensors").unlink(missing_ok=True)  # 90 MB a round; metrics and head stay
        curve.append(point)
        logger.info("%s: %d labels -> accuracy %.3f on fresh pairs", arm, point["labels"], accuracy)
    store.close()
    return curve


def train_reward_model(args: argparse.Namespace, run_dir: Path, labels: Path, fresh: Path) -> tuple[Path, float]:
    from align.stages.reward import run

    torch.manual_seed(args.seed)  # the same head initialisation in both arms and every round
    result = run(validate(RewardRecipe, {
        "model": {"name_or_path": "minilm-l6", "method": "feature_extraction"},
        "data": [{"path": str(labels), "eval_path": str(fresh)}],
        "training": {"output_dir": str(run_dir), "num_epochs": args.epochs, "per_device_batch_size": 32,
                     "learning_rate": args.lr, "warmup_ratio": 0.05, "max_length": 128, "logging_steps": 50,
                     "save_steps": None, "report_to": "none", "seed": args.seed},
        "reward": {"pooling": "mean", "clip": 5.0, "head_dropout": 0.0}}))
    return run_dir, float(result.metrics["eval/accuracy"])


def mean_gap(labels: Path) -> float:
    """Mean gold gap of the labeled pairs: how clear-cut the pairs each arm asked for were."""
    rows = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    gaps = [abs(a - b) for row in rows for a, b in [gold([row["prompt"]] * 2, [row["chosen"], row["rejected"]])]]
    return round(sum(gaps) / max(len(gaps), 1), 4)


def report(args: argparse.Namespace, curves: dict[str, list[dict[str, float]]], n_pool: int, n_fresh: int,
           source: str, seconds: float) -> None:
    (args.out / "results.json").write_text(json.dumps({"curves": curves, "pool": n_pool, "fresh_pairs": n_fresh,
                                                       "source": source, "noise": args.noise,
                                                       "seconds": round(seconds)}, indent=2) + "\n")
    lines = ["# Active vs random labeling", "",
             f"{n_pool} pair items ({source}); simulated annotator: gold judge + Gaussian noise {args.noise}; "
             f"reward model minilm-l6 feature_extraction retrained every {args.per_round} labels; accuracy on "
             f"{n_fresh} fresh pairs (unseen topics, gold gap >= {args.clear}); {seconds / 60:.1f} min.", "",
             "| labels | " + " | ".join(str(int(p["labels"])) for p in curves["random"]) + " |",
             "| --- |" + " --- |" * len(curves["random"])]
    for arm, points in curves.items():
        lines.append(f"| {arm} | " + " | ".join(f"{p['accuracy']:.3f}" for p in points) + " |")
    for arm, points in curves.items():
        lines.append(f"| {arm}: mean gold gap of labeled pairs | " + " | ".join(f"{p['mean_gold_gap']:.3f}" for p in points) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    logger.info("wrote %s\n%s", args.out / "results.md", "\n".join(lines))


if __name__ == "__main__":
    main()
