"""Reward scorer throughput (pairs/s) on CPU with the real MiniLM-L6 encoder, per precision, against a plain HF forward.

    python benchmarks/bench_reward_scorer.py --threads 2 --out benchmarks/results/reward_scorer.md
    python benchmarks/bench_reward_scorer.py --batch-sizes 1,16,64 --precisions float32 --pairs 128 --repeats 5

Baseline (the peer): what a caller would write without ``reward_models``: the HF tokenizer
on (prompt, response) pairs with ``truncation=True, padding=True``, then
``AutoModel(...)`` + masked mean pooling + the same linear head in float32, batch by batch
in input order, under ``torch.inference_mode``. Ours: ``RewardScorer.score`` on a saved
reward model at each ``precision`` (prompt-first truncation through the Rust tokenizer
backend, length-sorted batches cut into length buckets, normalisation off). All read the
same ~100-token pairs, timed round-robin in one run; ratio = ours / baseline.

Accuracy: when the trained reward model of ``bench_alignment.py`` exists (``--rm``), each
precision scores its fresh held-out gold pairs (``--fresh-pairs``: pairwise accuracy, the
number the alignment benchmark reports) and every gold-labelled pair (``--gold-pairs``: the
first 1000 were its training labels); per precision: accuracy, how many pairs keep the
float32 order, and the largest and mean |score - float32 score| (normalised scores, std 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import checkout  # noqa: E402, F401 - offline env and the checkout on sys.path, before align is imported

import torch  # noqa: E402

SENTENCES = [
    "The capital of France is Paris, a city on the Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "To make tea, steep the leaves in hot water for three to five minutes.",
    "A leap year has three hundred and sixty-six days.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Please answer briefly and politely, and explain your reasoning.",
    "The mitochondria produce most of the chemical energy a cell needs.",
    "Rust and Python are both popular programming languages.",
]
ALIGNMENT_RUN = checkout.ROOT / "runs" / "bench-alignment"


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """~100 tokens a pair: prompts of 2-4 sentences, responses of 3-6 (MiniLM wordpieces ~14 a sentence)."""
    rng = random.Random(seed)
    prompts = [" ".join(rng.choices(SENTENCES, k=rng.randint(2, 4))) for _ in range(n)]
    responses = [" ".join(rng.choices(SENTENCES, k=rng.randint(3, 6))) for _ in range(n)]
    return prompts, responses


def baseline_score(model, tokenizer, prompts, responses, batch_size: int, max_length: int) -> torch.Tensor:
    from reward_models.pooling import mean_pool

    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[i : i + batch_size], responses[i : i + batch_size], truncation=True,
                              max_length=max_length, padding=True, return_tensors="pt")
            hidden = model.encoder(**batch).last_hidden_state
            out.append(model.head(mean_pool(hidden, batch["attention_mask"])).squeeze(-1))
    return torch.cat(out)


def score_at(scorer, batch_size: int, prompts: list[str], responses: list[str]) -> torch.Tensor:
    scorer.batch_size = batch_size
    return scorer.score(prompts, responses)


def timed_round_robin(fns: dict, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of each function, run in turn, so all see the same machine load.

    The minimum, not the median: on a shared CPU, other processes only ever add time.
    """
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def padded_tokens(batches: list[list[int]]) -> int:
    """Tokens a forward computes for these batches of pair lengths: each padded to its longest."""
    return sum(len(b) * max(b) for b in batches if b)


def padding_line(lengths: list[int], batch_size: int) -> str:
    """Why a large batch is slower per pair: extra tokens from padding, in input order, sorted, and bucketed."""
    from reward_models.scorer import CPU_FORWARD_COST_TOKENS, length_buckets

    real = sum(lengths)
    chunks = lambda xs: [xs[i : i + batch_size] for i in range(0, len(xs), batch_size)]  # noqa: E731
    ordered = sorted(lengths)
    buckets = [[ordered[i] for i in b] for b in length_buckets(ordered, batch_size, CPU_FORWARD_COST_TOKENS)]
    return (f"batch {batch_size}: padding adds {padded_tokens(chunks(lengths)) / real - 1:.1%} tokens in input order "
            f"(baseline), {padded_tokens(chunks(ordered)) / real - 1:.1%} length-sorted, "
            f"{padded_tokens(buckets) / real - 1:.1%} in length buckets ({len(buckets)} forwards, ours)")


def read_pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accuracy_rows(rm: Path, fresh: Path, gold: Path, precisions: list[str], batch_size: int) -> list[str]:
    """Markdown rows: per precision, accuracy on fresh and gold pairs, order kept vs float32, |diff| vs float32."""
    from reward_models import RewardModel, RewardScorer

    model = RewardModel.from_pretrained(rm, device="cpu")
    sets = {name: read_pairs(path) for name, path in (("fresh", fresh), ("gold", gold)) if path.is_file()}
    scores: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for precision in ["float32"] + [p for p in precisions if p != "float32"]:
        scorer = RewardScorer(model, batch_size=batch_size, precision=precision)
        scores[precision] = {}
        for name, rows in sets.items():
            prompts = [r["prompt"] for r in rows]
            s = scorer.score(prompts * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
            scores[precision][name] = s[: len(rows)], s[len(rows) :]  # (chosen, rejected)
    lines = [f"| precision | {' | '.join(f'accuracy, {n} ({len(r)} pairs)' for n, r in sets.items())} "
             f"| pairs in float32's order | max abs diff | mean abs diff |",
             "| --- " * (len(sets) + 4) + "|"]
    ref = scores["float32"]
    for precision in precisions:
        accs = [float((c > r).float().mean()) for c, r in scores[precision].values()]
        same = sum(int(((c > r) == (ref[n][0] > ref[n][1])).sum()) for n, (c, r) in scores[precision].items())
        total = sum(len(rows) for rows in sets.values())
        diffs = torch.cat([torch.cat(scores[precision][n]) - torch.cat(ref[n]) for n in sets]).abs()
        lines.append(f"| {precision} | {' | '.join(f'{a:.3f}' for a in accs)} | {same}/{total} ({same / total:.1%}) "
                     f"| {float(diffs.max()):.2e} | {float(diffs.mean()):.2e} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--precisions", default="float32,bfloat16,int8")
    parser.add_argument("--pairs", type=int, default=128, help="pairs per run (batch size 1 uses a quarter)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rm", type=Path, default=ALIGNMENT_RUN / "rm" / "full-1000",
                        help="a trained reward model for the accuracy table (skipped when missing)")
    parser.add_argument("--fresh-pairs", type=Path, default=ALIGNMENT_RUN / "data" / "fresh_pairs.jsonl")
    parser.add_argument("--gold-pairs", type=Path, default=ALIGNMENT_RUN / "data" / "gold_pairs.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="also write the report (Markdown) here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")

    from align.models import resolve_model_source
    from reward_models import RewardModel, RewardScorer

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    source = resolve_model_source("minilm-l6")
    with tempfile.TemporaryDirectory() as tmp:
        RewardModel.from_encoder(source, pooling="mean", max_length=args.max_length).save_pretrained(tmp)
        model = RewardModel.from_pretrained(tmp, device="cpu")
    scorers = {p: RewardScorer(model, device="cpu", normalize=False, precision=p) for p in precisions}
    tokenizer = model.tokenizer

    prompts, responses = make_pairs(args.pairs)
    lengths = [len(p.input_ids) for p in scorers[precisions[0]].encoder.encode(prompts, responses)]
    report = [
        "# Reward scorer throughput and accuracy per precision",
        "",
        f"`python benchmarks/bench_reward_scorer.py --threads {torch.get_num_threads()}`: encoder MiniLM-L6 "
        f"(`{Path(source).parent.name}`), torch {torch.__version__}, {_cpu_name()}, "
        f"{torch.get_num_threads()} torch threads, load average {load_before:.2f} at the start; "
        f"{args.pairs} pairs, tokens per pair mean {statistics.mean(lengths):.0f}, min {min(lengths)}, "
        f"max {max(lengths)}; best of {args.repeats} round-robin runs of every cell. pairs/s = (prompt, response) pairs "
        "scored per second; x baseline = ours / the plain HF float32 forward timed in the same rounds.",
        "",
        "| batch | baseline pairs/s | " + " | ".join(f"{p} pairs/s | x baseline" for p in precisions) + " |",
        "| --- " * (2 + 2 * len(precisions)) + "|",
    ]
    print("\n".join(report), flush=True)
    printed = len(report)
    # Every (batch size, scorer) in one round-robin, so rows compare as fairly as columns on a shared machine.
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    work = {}
    for bs in batch_sizes:
        n = max(args.pairs // 4, 16) if bs == 1 else args.pairs
        work[bs] = prompts[:n], responses[:n]
    fns: dict[tuple[int, str], Callable[[], torch.Tensor]] = {}
    for bs, (p, r) in work.items():
        fns[bs, "baseline"] = lambda bs=bs, p=p, r=r: baseline_score(model, tokenizer, p, r, bs, args.max_length)
        for precision, scorer in scorers.items():
            fns[bs, precision] = lambda bs=bs, p=p, r=r, scorer=scorer: score_at(scorer, bs, p, r)
    warm = {key: fn() for key, fn in fns.items()}  # warm-up, and the values to compare
    t = timed_round_robin(fns, args.repeats)
    notes = []
    for bs, (p, _) in work.items():
        n = len(p)
        cells = " | ".join(f"{n / t[bs, q]:.1f} | {t[bs, 'baseline'] / t[bs, q]:.2f}" for q in precisions)
        report.append(f"| {bs} | {n / t[bs, 'baseline']:.1f} | {cells} |")
        diff = float((warm.get((bs, "float32"), warm[bs, "baseline"]) - warm[bs, "baseline"]).abs().max())
        notes.append(f"{padding_line(lengths[:n], bs)}; float32 max |diff| to the baseline {diff:.1e}")
    report += ["", *notes]

    if args.rm.is_dir():
        report += ["", f"## Accuracy cost: `{_shown(args.rm)}`", "",
                   f"Fresh pairs: `{_shown(args.fresh_pairs)}` {_digest(args.fresh_pairs)} (held out, answers to "
                   f"unseen prompts); gold pairs: `{_shown(args.gold_pairs)}` {_digest(args.gold_pairs)} (the first "
                   "1000 were the model's training labels). Scores normalised (std 1 on the training responses); "
                   "diffs over both sets.", ""]
        report += accuracy_rows(args.rm, args.fresh_pairs, args.gold_pairs, precisions, batch_size=64)
    else:
        report += ["", f"(no trained reward model at {args.rm}: accuracy table skipped; "
                   "`benchmarks/bench_alignment.py` trains one)"]
    report += ["", f"Load average {os.getloadavg()[0]:.2f} at the end."]
    print("\n".join(report[printed:]))
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


def _shown(path: Path) -> str:
    """``path`` relative to the checkout when inside it, so the saved report holds no home directories."""
    path = path.resolve()
    return str(path.relative_to(checkout.ROOT)) if path.is_relative_to(checkout.ROOT) else str(path)


def _digest(path: Path) -> str:
    """``(sha256 0123abcd4567)`` of a file, to tell which version of a regenerated data file was read."""
    return f"(sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]})" if path.is_file() else "(missing)"


def _cpu_name() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return f"{len(names)}x {names[0]}" if names else platform.processor() or "CPU"


if __name__ == "__main__":
    main()
