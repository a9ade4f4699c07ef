"""Does the loop align? A controlled run against a gold judge the reward model never sees.

    python benchmarks/bench_alignment.py --out runs/bench-alignment --threads 2
    python benchmarks/bench_alignment.py --out runs/bench-alignment --steps eval,report   # redo the end only

Start model: SmolLM2-135M-Instruct. ``benchmarks/gold.py`` stands in for human raters:

1. ``candidates``: the start model answers 240 training prompts 4 times, and 160 held-out prompts
   (on topics training never mentions) ``--held-out-n`` times (4);
2. ``labels``: every pair of a prompt's answers the gold judge orders becomes a preference label;
   the same labels with a tie option (``+ties``: an annotator calls a pair whose gold scores differ
   by less than ``--tie-band`` a tie, as "about the same" in HH-RLHF or a Chatbot Arena tie);
   held-out pairs whose gold scores differ by at least ``--clear`` are the *fresh pairs*;
3. ``rm``: reward models on the first 100 / 250 / 500 / 1000 labels, per encoder method (and
   epochs, learning rate, labels with ties, a seed ensemble), and their accuracy on the fresh pairs
   (the learning curve; at ``--rm-seed-labels`` the mean of ``--rm-seeds`` seeds); the 1000-label
   one judges PPO, GRPO and best-of-N;
4. ``dpo``, ``ppo``, ``grpo``: policies at the flags' settings. Every trained run under ``--out``
   is a point of the frontier, so runs with other flags add points;
5. ``eval``: ``align eval`` on the held-out prompts with the gold judge: each policy's gold win rate
   against the start model and its KL to it, best-of-N (picked by the reward model) as the
   no-training baseline;
6. ``report``: ``results.md`` (tables), ``frontier.png`` (gold win rate vs KL) and
   ``reward_model_curve.png`` (accuracy vs labels).

Every step writes under ``--out`` and is skipped when its output is there (``--steps`` forces
some). Sizes are flags; the defaults train the README's headline points (DPO on best-vs-worst pairs, PPO at
KL coefficients 0.2 and 0.05) in about two hours on 2 CPU cores. The first run's points came from
``--dpo-betas 0.1,0.3 --dpo-steps 30 --dpo-pairs all --ppo-kl 0.02,0.1 --ppo-iterations 8 --ppo-lr 1e-5
--ppo-minibatch 16 --value-lr 1e-4 --value-warmup 1``; ``--dpo-lr 5e-4 --dpo-steps 100 --dpo-pairs all`` gives
the all-pairs DPO point, ``--grpo grpo`` the GRPO point and ``--grpo rloo --grpo-lr 2e-4 --grpo-steps 40``
the RLOO point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
from pathlib import Path
from typing import Any, Iterator

from checkout import ROOT  # noqa: F401 - offline env and the checkout on sys.path, before align is imported

import torch

from align.config import DPORecipe, EvalRecipe, GenerateRecipe, GRPORecipe, PPORecipe, RewardRecipe
from align.recipe import validate
from align.run import StageResult, read_metrics, setup_logging
from benchmarks.gold import gold, prompts

START = "smollm2-135m-instruct"
GOLD = "benchmarks.gold:gold"
TRAINED = ("dpo-", "ppo-", "grpo-")  # run-directory prefixes of trained policies
STEPS = ("candidates", "labels", "rm", "dpo", "ppo", "grpo", "eval", "report")
logger = logging.getLogger("bench.alignment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-alignment"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", default="", help="comma-separated steps to redo even if done: " + ",".join(STEPS))
    parser.add_argument("--labels", default="100,250,500,1000", help="reward-model learning-curve sizes")
    parser.add_argument("--rm-methods", default="full,feature_extraction,full@6:500,full@4/1e-4:500,full@4/1e-4+ties",
                        help="encoder methods (also partial, lora), each optionally @epochs, /learning rate, +ties "
                        "(labels with ties) and :labels: full@6:500, full@4/1e-4+ties")
    parser.add_argument("--rm-seeds", type=int, default=3, help="seeds averaged at --rm-seed-labels")
    parser.add_argument("--rm-seed-labels", type=int, default=500)
    parser.add_argument("--tie-band", type=float, default=0.05,
                        help="+ties labels: a pair whose gold scores differ by less than this is a tie")
    parser.add_argument("--rm-ensemble", type=int, default=3, help="members (seeds) of an ensemble of 'full' models")
    parser.add_argument("--rm-ensemble-labels", default="500", help="label counts at which to train the ensemble")
    parser.add_argument("--rm-ensemble-epochs", type=int, default=6)
    parser.add_argument("--held-out-n", type=int, default=4, help="answers per held-out prompt (fresh pairs)")
    parser.add_argument("--clear", type=float, default=0.2, help="gold gap of a 'clearly different' fresh pair")
    parser.add_argument("--dpo-betas", default="0.1")
    parser.add_argument("--dpo-steps", type=int, default=60)
    parser.add_argument("--dpo-lr", type=float, default=2e-4, help="LoRA learning rate")
    parser.add_argument("--dpo-pairs", choices=("all", "best_worst"), default="best_worst",
                        help="every ordered pair of a prompt's answers, or only its best vs its worst")
    parser.add_argument("--ppo-kl", default="0.2,0.05")
    parser.add_argument("--ppo-iterations", type=int, default=30)
    parser.add_argument("--ppo-lr", type=float, default=2e-5)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--ppo-minibatch", type=int, default=8, help="rollouts per optimizer step (16 a PPO iteration)")
    parser.add_argument("--ppo-bf16", action="store_true", help="PPO with training.bf16 (bf16 autocast): run name ends -bf16")
    parser.add_argument("--value-lr", type=float, default=1e-3)
    parser.add_argument("--value-warmup", type=int, default=2, help="iterations that train the value head alone")
    parser.add_argument("--grpo", default="", help="comma-separated grpo and/or rloo: LoRA policies on the reward model")
    parser.add_argument("--grpo-steps", type=int, default=30, help="steps of 4 prompts x 4 responses")
    parser.add_argument("--grpo-lr", type=float, default=1e-4)
    parser.add_argument("--best-of", default="4")
    parser.add_argument("--eval-prompts", type=int, default=160)
    parser.add_argument("--eval-only", default="", help="comma-separated run names to evaluate (default: all trained)")
    parser.add_argument("--stop-after", choices=STEPS, help="end the run after this step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging()
    out, redo = args.out, set(filter(None, args.steps.split(",")))
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "held_out"):
        write_jsonl(out / "data" / f"{split}_prompts.jsonl", [{"prompt": p} for p in prompts(split)])

    def due(step: str, marker: Path) -> bool:
        return step in redo or not marker.exists()

    fresh = candidates(out, args.held_out_n, "candidates" in redo)
    if fresh or due("labels", out / "data/gold_labels_ties.jsonl"):
        labels(out, args.clear, args.tie_band)
    sizes = [int(k) for k in args.labels.split(",")]
    curve: dict[str, dict[int, list[float]]] = {}  # spec -> labels -> accuracy per seed
    for spec in args.rm_methods.split(","):
        spec, _, only = spec.partition(":")
        method, epochs, lr, ties = rm_spec(spec)
        curve[spec] = {}
        for k in [int(only)] if only else sizes:
            seeds = range(42, 42 + (args.rm_seeds if k == args.rm_seed_labels else 1))
            curve[spec][k] = [rm_accuracy(out, [reward_model(out, method, k, "rm" in redo, epochs=epochs, lr=lr,
                                                             ties=ties, seed=seed)]) for seed in seeds]
    if args.rm_ensemble > 1:
        epochs = args.rm_ensemble_epochs
        curve[f"full@{epochs}, ensemble of {args.rm_ensemble}"] = {
            k: [rm_accuracy(out, [reward_model(out, "full", k, "rm" in redo, epochs=epochs, seed=42 + i)
                                  for i in range(args.rm_ensemble)])]
            for k in map(int, args.rm_ensemble_labels.split(","))}
    rm_dir = str(out / "rm" / f"full-{max(sizes)}")  # judges PPO, GRPO and best-of-N
    logger.info("reward models' accuracy on fresh pairs: %s", curve)
    if args.stop_after in ("candidates", "labels", "rm"):
        return
    for beta in [float(b) for b in filter(None, args.dpo_betas.split(","))]:
        dpo(out, beta, args.dpo_steps, args.dpo_lr, args.dpo_pairs, "dpo" in redo)
    for kl in [float(k) for k in filter(None, args.ppo_kl.split(","))]:
        ppo(out, kl, args, rm_dir, "ppo" in redo)
    for algorithm in filter(None, args.grpo.split(",")):
        grpo(out, algorithm, args, rm_dir, "grpo" in redo)
    if args.stop_after in ("dpo", "ppo", "grpo"):
        return
    # Every policy trained under --out so far is a point of the frontier, whatever flags trained it.
    policies: list[dict[str, Any]] = [{"name": d.name, "model": {"name_or_path": str(d)}} for d in sorted(out.iterdir())
                                      if d.name.startswith(TRAINED) and StageResult.load(d) is not None
                                      and (not args.eval_only or d.name in args.eval_only.split(","))]
    for n in [int(n) for n in filter(None, args.best_of.split(","))]:
        policies.append({"name": f"best-of-{n}", "model": {"name_or_path": START}, "best_of": n,
                         "selector": {"judge": rm_dir}})
    if due("eval", out / "eval/stage_result.json"):
        evaluate(out, policies, args.eval_prompts)
    report(out, curve, policies, rm_dir)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the rows, leaving an identical file untouched (its mtime keys the rm_accuracy cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- data


def candidates(out: Path, held_out_n: int, force: bool) -> bool:
    """The start model's answers: 4 per training prompt, ``held_out_n`` per held-out prompt; True if any were made."""
    from align.stages.generate import run

    made = False
    for split, n in (("train", 4), ("held_out", held_out_n)):
        answers = out / "candidates" / split / "candidates.jsonl"
        if not force and answers.exists() and len(read_jsonl(answers)[0]["responses"]) == n:
            continue
        made = True
        run(validate(GenerateRecipe, {
            "models": [{"name_or_path": START}], "data": {"path": str(out / "data" / f"{split}_prompts.jsonl")},
            "generation": {"n": n, "max_new_tokens": 48, "temperature": 1.0, "batch_size": 16, "seed": 0},
            "training": {"output_dir": str(out / "candidates" / split)}}))
    return made


def gold_scored(rows: list[dict[str, Any]]) -> Iterator[tuple[str, list[str], list[float]]]:
    """Each candidates row as (prompt, its answers, their gold scores)."""
    for row in rows:
        texts = [r["text"] for r in row["responses"]]
        yield row["prompt"], texts, gold([row["prompt"]] * len(texts), texts)


def gold_pairs(rows: list[dict[str, Any]], min_gap: float) -> list[dict[str, Any]]:
    """Every pair of a prompt's responses whose gold scores differ by more than ``min_gap``: chosen = higher."""
    pairs = []
    for prompt, texts, scores in gold_scored(rows):
        for i, j in itertools.combinations(range(len(texts)), 2):
            if abs(scores[i] - scores[j]) > min_gap and texts[i] != texts[j]:
                hi, lo = (i, j) if scores[i] > scores[j] else (j, i)
                pairs.append({"prompt": prompt, "chosen": texts[hi], "rejected": texts[lo],
                              "gold_gap": round(scores[hi] - scores[lo], 4)})
    return pairs


def labels(out: Path, clear: float, tie_band: float) -> None:
    candidates = read_jsonl(out / "candidates/train/candidates.jsonl")
    train = gold_pairs(candidates, 1e-6)
    random.Random(0).shuffle(train)  # the first k labels of the learning curve are a random sample
    write_jsonl(out / "data/gold_pairs.jsonl", train)
    # The same labels, in the same order, from annotators who may answer "tie": two-response rankings.
    write_jsonl(out / "data/gold_labels_ties.jsonl", [
        {"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]],
         "ranks": [1, 1] if p["gold_gap"] < tie_band else [1, 2]} for p in train])
    write_jsonl(out / "data/gold_best_worst.jsonl", best_vs_worst(candidates))
    fresh = gold_pairs(read_jsonl(out / "candidates/held_out/candidates.jsonl"), clear)
    write_jsonl(out / "data/fresh_pairs.jsonl", fresh)
    logger.info("%d training labels, %d fresh pairs", len(train), len(fresh))


def best_vs_worst(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pair per prompt: its best and worst answer by gold, as a 4-way ranking is binarised (UltraFeedback)."""
    pairs = []
    for prompt, texts, scores in gold_scored(rows):
        hi, lo = max(range(len(texts)), key=scores.__getitem__), min(range(len(texts)), key=scores.__getitem__)
        if scores[hi] > scores[lo]:
            pairs.append({"prompt": prompt, "chosen": texts[hi], "rejected": texts[lo]})
    return pairs


# --------------------------------------------------------------------------- training


RM_LEARNING_RATES = {"full": 5e-5, "partial": 1e-4, "feature_extraction": 2e-3}


def rm_spec(spec: str) -> tuple[str, int, float | None, bool]:
    """``full@4/1e-4+ties`` -> ("full", 4, 1e-4, True): method, epochs (default 3), learning rate (default: the
    method's), whether the labels may be ties."""
    spec, ties, _ = spec.partition("+ties")
    spec, _, lr = spec.partition("/")
    method, _, epochs = spec.partition("@")
    return method, int(epochs or 3), float(lr) if lr else None, bool(ties)


def reward_model(out: Path, method: str, size: int, force: bool, *, epochs: int = 3, seed: int = 42,
                 lr: float | None = None, ties: bool = False) -> Path:
    """A MiniLM reward model on the first ``size`` gold labels (its run dir; trained unless there)."""
    from align.stages.reward import run

    run_dir = out / "rm" / (f"{method}-{size}" + (f"-e{epochs}" if epochs != 3 else "") + (f"-lr{lr:g}" if lr else "")
                            + ("-ties" if ties else "") + (f"-seed{seed}" if seed != 42 else ""))
    data = ({"path": str(out / "data/gold_labels_ties.jsonl"), "kind": "ranking"} if ties
            else {"path": str(out / "data/gold_pairs.jsonl")})
    if StageResult.load(run_dir) is None or force:
        run(validate(RewardRecipe, {
            "model": {"name_or_path": "minilm-l6", "method": method, "partial": {"trainable_top_k": 2}},
            "data": [{**data, "max_samples": size, "eval_fraction": 0.0}],
            "training": {"output_dir": str(run_dir), "num_epochs": epochs, "per_device_batch_size": 16, "seed": seed,
                         "learning_rate": lr or RM_LEARNING_RATES[method], "warmup_ratio": 0.1, "max_length": 256,
                         "logging_steps": 10, "save_steps": None, "report_to": "none"},
            "reward": {"pooling": "mean", "clip": 5.0}}))
    return run_dir


def rm_accuracy(out: Path, members: list[Path], pairs_file: str = "data/fresh_pairs.jsonl") -> float:
    """Share of the fresh pairs the reward model (an ensemble if several) orders as gold does; ties count half."""
    from align.config import JudgeSettings
    from align.judges import judge_for, score
    from align.ops.stats import win_rate_and_se

    cache_file, key = out / "rm_accuracy.json", f"{'+'.join(m.name for m in members)}|{pairs_file}"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    stamp = (out / pairs_file).stat().st_mtime_ns
    if cache.get(key, {}).get("pairs_mtime_ns") == stamp:
        return cache[key]["accuracy"]
    pairs = read_jsonl(out / pairs_file)
    judge = judge_for(JudgeSettings(judge=[str(m) for m in members] if len(members) > 1 else str(members[0])))
    prompts = [p["prompt"] for p in pairs]
    chosen = score(judge, prompts, [p["chosen"] for p in pairs]).raw
    rejected = score(judge, prompts, [p["rejected"] for p in pairs]).raw
    accuracy = win_rate_and_se(chosen, rejected)[0]
    cache[key] = {"accuracy": accuracy, "pairs_mtime_ns": stamp}
    cache_file.write_text(json.dumps(cache, indent=1))
    return accuracy


def dpo(out: Path, beta: float, steps: int, lr: float, pairs: str, force: bool) -> None:
    from align.stages.dpo import run

    run_dir = out / (f"dpo-beta{beta}-lr{lr:g}-s{steps}" + ("-bw" if pairs == "best_worst" else ""))
    if StageResult.load(run_dir) is None or force:
        run(validate(DPORecipe, {
            "model": {"name_or_path": START, "method": "lora"},
            "data": {"path": str(out / "data" / ("gold_best_worst.jsonl" if pairs == "best_worst" else "gold_pairs.jsonl")),
                     "eval_fraction": 0.05},
            "training": {"output_dir": str(run_dir), "max_steps": steps, "per_device_batch_size": 4,
                         "learning_rate": lr, "warmup_ratio": 0.1, "max_length": 192, "logging_steps": 5,
                         "save_steps": None, "report_to": "none"},
            "dpo": {"beta": beta, "padding_free": True, "pack_row_tokens": 512},
            "eval": {"enabled": False}}))


def ppo(out: Path, kl: float, args: argparse.Namespace, rm_dir: str, force: bool) -> None:
    from align.stages.ppo import run

    name = (f"ppo-kl{kl}-lr{args.ppo_lr:g}-vlr{args.value_lr:g}-e{args.ppo_epochs}-mb{args.ppo_minibatch}"
            f"-i{args.ppo_iterations}" + ("-bf16" if args.ppo_bf16 else ""))
    run_dir = out / name
    micro = min(8, args.ppo_minibatch)
    if StageResult.load(run_dir) is None or force:
        run(validate(PPORecipe, {
            "model": {"name_or_path": START, "method": "full"},
            "data": {"path": str(out / "data/train_prompts.jsonl")},
            "reward": {"judge": rm_dir},
            "value": {"learning_rate": args.value_lr, "warmup_iterations": args.value_warmup},
            "generation": {"max_new_tokens": 48, "temperature": 1.0, "batch_size": 16},
            "ppo": {"rollouts_per_iteration": 16, "epochs": args.ppo_epochs, "kl_coef": kl, "normalize_scores": True},
            "training": {"output_dir": str(run_dir), "max_steps": args.ppo_iterations, "per_device_batch_size": micro,
                         "gradient_accumulation_steps": args.ppo_minibatch // micro, "learning_rate": args.ppo_lr,
                         "bf16": args.ppo_bf16, "save_steps": None, "report_to": "none"}}))


def grpo(out: Path, algorithm: str, args: argparse.Namespace, rm_dir: str, force: bool) -> None:
    from align.stages.grpo import run

    run_dir = out / f"grpo-{algorithm}-lr{args.grpo_lr:g}-s{args.grpo_steps}"
    if StageResult.load(run_dir) is None or force:
        run(validate(GRPORecipe, {
            "model": {"name_or_path": START, "method": "lora"},
            "data": {"path": str(out / "data/train_prompts.jsonl")},
            "reward": {"judge": rm_dir},
            "generation": {"max_new_tokens": 48, "temperature": 1.0},
            "grpo": {"algorithm": algorithm, "num_generations": 4, "beta": 0.04},
            "training": {"output_dir": str(run_dir), "max_steps": args.grpo_steps, "per_device_batch_size": 16,
                         "learning_rate": args.grpo_lr, "lr_scheduler": "constant", "logging_steps": 5,
                         "save_steps": None, "report_to": "none"}}))


# --------------------------------------------------------------------------- evaluation


def evaluate(out: Path, policies: list[dict[str, Any]], num_prompts: int) -> None:
    from align.stages.eval import run

    run(validate(EvalRecipe, {
        "policies": policies, "reference": {"name_or_path": START}, "reward": {"judge": GOLD},
        "data": {"path": str(out / "data/held_out_prompts.jsonl")},
        "generation": {"num_prompts": num_prompts, "max_new_tokens": 48, "temperature": 1.0, "batch_size": 16},
        "report": {"num_samples": 4}, "training": {"output_dir": str(out / "eval"), "seed": 0}}))


def method_of(label: str) -> str:
    """A frontier curve's name: ``dpo``, ``ppo``, ``grpo-rloo``, ``best-of-N``."""
    if label.startswith("best-of"):
        return "best-of-N"
    parts = label.split("-")
    return "-".join(parts[:2]) if parts[0] == "grpo" else parts[0]


def report(out: Path, curve: dict[str, dict[int, list[float]]], policies: list[dict[str, Any]], rm_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = StageResult.load(out / "eval").metrics
    sizes = sorted({k for by_size in curve.values() for k in by_size})
    lines = ["# Controlled alignment benchmark", "",
             f"Start model `{START}`; gold judge `{GOLD}`; held-out prompts on unseen topics; "
             f"{metrics['eval/num_prompts']} comparisons per policy; reward model for PPO and best-of-N: `{rm_dir}`.", "",
             "| policy | gold win rate vs start | gold reward | KL to start (nats) | response tokens | ended with EOS |",
             "| --- | --- | --- | --- | --- | --- |"]
    # Every evaluation adds its policies to frontier_points.json (same prompts, seed and start model), so
    # policies evaluated by earlier runs stay on the frontier.
    saved = json.loads((out / "frontier_points.json").read_text()) if (out / "frontier_points.json").exists() else {}
    for label in ["baseline"] + [p["name"] for p in policies]:
        m = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith(f"eval/{label}/")}
        saved[label] = {k: m[k] for k in ("win_rate", "win_rate_se", "reward", "kl_full_vocab", "response_tokens",
                                          "finished_frac") if k in m}
    (out / "frontier_points.json").write_text(json.dumps(saved, indent=1))
    points: dict[str, list[tuple[float, float, str]]] = {}
    for label, m in sorted(saved.items(), key=lambda item: (item[0] != "baseline", item[0])):
        rate = f"{m['win_rate']:.3f} ± {m['win_rate_se']:.3f}" if "win_rate" in m else "-"
        lines.append(f"| {'start' if label == 'baseline' else label} | {rate} | {m['reward']:.3f} | "
                     f"{m['kl_full_vocab']:.3f} | {m['response_tokens']:.1f} | {m['finished_frac']:.0%} |")
        if "win_rate" in m:
            points.setdefault(method_of(label), []).append((m["kl_full_vocab"], m["win_rate"], label))
    lines += ["", "## Reward model: accuracy against gold on fresh, clearly different pairs", "",
              f"{len(read_jsonl(out / 'data/fresh_pairs.jsonl'))} pairs of the start model's answers to held-out prompts "
              f"whose gold scores differ by more than the --clear gap.", "",
              "| reward model | " + " | ".join(f"{k} labels" for k in sizes) + " |", "| --- |" + " --- |" * len(sizes)]
    for method, by_size in curve.items():
        lines.append(f"| {method} | " + " | ".join(accuracy_cell(by_size[k]) if k in by_size else "-" for k in sizes)
                     + " |")
    for name in (label for label in saved if label.startswith("ppo") and (out / label).is_dir()):
        rows = read_metrics(out / name)
        if rows:
            lines.append(f"\n{name}: explained variance of the critic {rows[0].get('ppo/explained_var', float('nan')):.2f} "
                         f"-> {rows[-1].get('ppo/explained_var', float('nan')):.2f}, finished "
                         f"{rows[0]['reward/finished_frac']:.2f} -> {rows[-1]['reward/finished_frac']:.2f}")
    (out / "results.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(8, 5))
    for method, pts in points.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        for kl, rate, label in pts:
            ax.annotate(label, (kl, rate), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="KL to the start model (nats)", ylabel="gold win rate vs start", title="gold reward vs KL frontier")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, by_size in curve.items():
        ax.plot(list(by_size), [sum(v) / len(v) for v in by_size.values()], "o-", label=method)
    ax.set(xlabel="gold labels", ylabel="accuracy on fresh pairs", title="reward model learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_model_curve.png", dpi=120)
    logger.info("wrote %s, frontier.png, reward_model_curve.png\n%s", out / "results.md", "\n".join(lines))


def accuracy_cell(seeds: list[float]) -> str:
    """One seed's accuracy, or the seeds' mean with their range."""
    mean = sum(seeds) / len(seeds)
    return f"{mean:.3f}" if len(seeds) == 1 else f"{mean:.3f} ({min(seeds):.3f}-{max(seeds):.3f}, {len(seeds)} seeds)"


if __name__ == "__main__":
    main()
