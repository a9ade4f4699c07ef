"""PPO iteration time (generation / scoring / old log-probs / reference / training), samples/s and peak RSS on SmolLM2-135M, against TRL.

    python benchmarks/bench_ppo.py --peer-python /tmp/trl112-venv/bin/python   # 3 iterations: head, separate, TRL
    python benchmarks/bench_ppo.py --iterations 5 --configs head --threads 2    # ours only
    python benchmarks/bench_ppo.py --configs separate separate+frozen_embeddings  # a lever's effect

Setting: 16 rollouts of up to 48 new tokens per iteration, full fine-tuning in float32, 4 PPO
epochs of one minibatch of 16 (micro-batch 4 x accumulation 4), temperature 0.7. The judge is a
BERT-style reward model (MiniLM-L6 encoder, untrained head) through ``RewardScorer``, so scoring
costs what a real one costs. Every configuration runs in its own subprocess, so ``ru_maxrss`` is
its own peak, with ``--threads`` torch threads (default: the core count). The first iteration is
reported apart (warm-up); the mean is over the rest. ``+frozen_embeddings`` trains all 30 blocks
but not the tied embedding / LM-head matrix (``model.method: partial``), which saves its dense
49k x 576 gradient and Adam update. ``separate+bf16`` runs with ``training.bf16`` (autocast;
float32 weights and optimizer); ``--peer-bf16`` runs the peer with TRL's ``bf16=True`` to match it.

The peer, measured in the same run, is TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer`` (the last
TRL with PPO) in ``peer_trl_ppo.py``, which says how its setting matches this one. TRL 1.12 does
not install beside this project's TRL, so it lives in its own venv, outside the repository:

    python3 -m venv /tmp/trl112-venv
    /tmp/trl112-venv/bin/pip install torch==2.13.0       # first, or pip pulls a CUDA build
    /tmp/trl112-venv/bin/pip install trl==1.12.0         # brings transformers, accelerate, datasets

Without ``--peer-python`` the peer is skipped with a note. The table gives each of ours as a ratio
to the peer: time (< 1 is faster), samples/s (> 1 is faster) and peak RSS (< 1 is smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkout import ROOT  # noqa: E402 - offline env and the checkout on sys.path, before align is imported

MODEL = "smollm2-135m-instruct"
PROMPTS = ROOT / "examples/data/prompts_demo.jsonl"
FROZEN_EMBEDDINGS = {"method": "partial", "partial": {"trainable_top_k": 30, "train_head": False}}  # all 30 blocks
CONFIGS = {  # name -> (value model, model overrides, training overrides)
    "head": ("head", {}, {}),
    "separate": ("separate", {}, {}),
    "head+frozen_embeddings": ("head", FROZEN_EMBEDDINGS, {}),
    "separate+frozen_embeddings": ("separate", FROZEN_EMBEDDINGS, {}),
    "separate+bf16": ("separate", {}, {"bf16": True}),  # autocast; float32 weights and optimizer
}


def one_config(name: str, iterations: int, threads: int, work: Path) -> dict:
    import torch

    from align.config import PPORecipe
    from align.recipe import validate
    from align.stages.ppo.trainer import PPOTrainer

    torch.set_num_threads(threads)
    reward_dir = work / "reward_model"
    if not reward_dir.exists():
        from reward_models import RewardModel

        torch.manual_seed(0)
        RewardModel.from_encoder(_minilm(), max_length=256).save_pretrained(reward_dir)
    recipe = validate(PPORecipe, {
        "model": {"name_or_path": MODEL, "method": "full", **CONFIGS[name][1]},
        "data": {"path": str(PROMPTS), "kind": "prompt"},
        "reward": {"judge": str(reward_dir), "missing_eos_penalty": 1.0},
        "value": {"model": CONFIGS[name][0]},
        "generation": {"max_new_tokens": 48, "temperature": 0.7, "batch_size": 16},
        "ppo": {"rollouts_per_iteration": 16, "epochs": 4},
        "training": {"output_dir": str(work / name), "max_steps": iterations, "per_device_batch_size": 4,
                     "gradient_accumulation_steps": 4, "learning_rate": 1e-6, "save_steps": None,
                     "report_to": "none", **CONFIGS[name][2]},
    })
    start = time.perf_counter()
    trainer = PPOTrainer(recipe)
    setup = time.perf_counter() - start
    rows = []
    while trainer.iteration < iterations:
        rows.append(trainer.step())
        trainer.iteration += 1
    rest = rows[1:] or rows
    mean = {k: sum(r[k] for r in rest) / len(rest) for k in
            ("time/iteration", "time/generation", "time/scoring", "time/experience", "time/reference",
             "time/training", "perf/samples_per_s", "ppo/response_length")}
    return {
        "config": name, "threads": threads, "setup_s": round(setup, 1),
        "first_iteration_s": round(rows[0]["time/iteration"], 2),
        **{k: round(v, 3) for k, v in mean.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def _minilm() -> str:
    return _resolve("minilm-l6")


def _resolve(alias: str) -> str:
    from align.models import resolve_model_source

    return resolve_model_source(alias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--configs", nargs="+", default=["head", "separate"], choices=list(CONFIGS))
    parser.add_argument("--peer-python", help="python of a venv with trl==1.12.0 (see above); omitted: no peer")
    parser.add_argument("--peer-bf16", action="store_true", help="the peer in bf16 autocast, against our +bf16 row")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: run one config, print JSON
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_config(args.one, args.iterations, args.threads, Path(args.work))), flush=True)
        return
    common = ["--iterations", str(args.iterations), "--threads", str(args.threads)]
    results = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.configs:
            results.append(_child(name, [sys.executable, __file__, "--one", name, "--work", work, *common]))
        if args.peer_python:
            peer_cmd = [args.peer_python, str(Path(__file__).with_name("peer_trl_ppo.py")), "--model",
                        _resolve(MODEL), "--prompts", str(PROMPTS), "--work", str(Path(work) / "trl"), *common,
                        *(["--bf16"] if args.peer_bf16 else [])]
            peer = _child("trl-1.12", peer_cmd)
        else:
            peer = None
            print("peer skipped: pass --peer-python DIR/bin/python, a venv with trl==1.12.0 (this file's docstring "
                  "says how to make it)", file=sys.stderr)
    _print_table([r for r in results if r], peer)
    _print_split([r for r in results if r])


def _child(name: str, cmd: list[str]) -> dict | None:
    """Run one measurement in its own process; its last ``RESULT {json}`` line, or None if it failed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{name}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print(json.dumps(result), flush=True)
    return result


def _print_table(ours: list[dict], peer: dict | None) -> None:
    """One row per run; ratios are ours / peer (blank without a peer)."""
    head = ("run", "s/iter", "samples/s", "resp len", "RSS GB", "time ratio", "samples/s ratio", "RSS ratio")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in ours + ([peer] if peer else []):
        cells = [row["config"], f"{row['time/iteration']:.2f}", f"{row['perf/samples_per_s']:.3f}",
                 f"{row['ppo/response_length']:.1f}", f"{row['peak_rss_gb']:.2f}"]
        if peer and row is not peer:
            cells += [f"{row['time/iteration'] / peer['time/iteration']:.2f}",
                      f"{row['perf/samples_per_s'] / peer['perf/samples_per_s']:.2f}",
                      f"{row['peak_rss_gb'] / peer['peak_rss_gb']:.2f}"]
        else:
            cells += [""] * 3
        print("| " + " | ".join(cells) + " |")


def _print_split(ours: list[dict]) -> None:
    """Where an iteration of ours goes: seconds and share of the iteration per phase."""
    phases = {"generation": ["time/generation"], "scoring": ["time/scoring"],
              "old log-probs and values": ["time/experience", "-time/reference"], "reference": ["time/reference"],
              "training": ["time/training"]}
    print("\n| run | " + " | ".join(phases) + " |\n|---|" + "---|" * len(phases))
    for row in ours:
        cells = []
        for keys in phases.values():
            seconds = sum(-row[k[1:]] if k.startswith("-") else row[k] for k in keys)
            cells.append(f"{seconds:.2f} s ({seconds / row['time/iteration']:.0%})")
        print(f"| {row['config']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
