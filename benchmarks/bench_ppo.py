"""PPO iteration time (generation / scoring / training), samples/s and peak RSS on SmolLM2-135M.

    python benchmarks/bench_ppo.py                          # 3 iterations, value head and separate critic
    python benchmarks/bench_ppo.py --iterations 5 --configs head --threads 2

Setting: 16 rollouts of up to 48 new tokens per iteration (the peer's setting: TRL 1.12's
PPOTrainer, ~23 s/iteration, 0.70 samples/s, 11.4 GB on this kind of machine; not installed
here), full fine-tuning in float32, 4 PPO epochs of one minibatch of 16 (micro-batch 4 x
accumulation 4), temperature 0.7. The judge is a BERT-style reward model (MiniLM-L6 encoder,
untrained head) through ``RewardScorer``, so scoring costs what a real one costs. Every
configuration runs in its own subprocess, so ``ru_maxrss`` is its own peak. The first
iteration is reported apart (warm-up); the mean is over the rest.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

MODEL = "smollm2-135m-instruct"
CONFIGS = {"head": {"model": "head"}, "separate": {"model": "separate"}}


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
        "model": {"name_or_path": MODEL, "method": "full"},
        "data": {"path": str(ROOT / "examples/data/prompts_demo.jsonl"), "kind": "prompt"},
        "reward": {"judge": str(reward_dir), "missing_eos_penalty": 1.0},
        "value": CONFIGS[name],
        "generation": {"max_new_tokens": 48, "temperature": 0.7, "batch_size": 16},
        "ppo": {"rollouts_per_iteration": 16, "epochs": 4},
        "training": {"output_dir": str(work / name), "max_steps": iterations, "per_device_batch_size": 4,
                     "gradient_accumulation_steps": 4, "learning_rate": 1e-6, "save_steps": None,
                     "report_to": "none"},
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
            ("time/iteration", "time/generation", "time/scoring", "time/experience", "time/training",
             "perf/samples_per_s", "ppo/response_length")}
    return {
        "config": name, "threads": threads, "setup_s": round(setup, 1),
        "first_iteration_s": round(rows[0]["time/iteration"], 2),
        **{k: round(v, 3) for k, v in mean.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def _minilm() -> str:
    from align.models import resolve_model_source

    return resolve_model_source("minilm-l6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: run one config, print JSON
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_config(args.one, args.iterations, args.threads, Path(args.work))), flush=True)
        return
    with tempfile.TemporaryDirectory() as work:
        for name in args.configs:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name, "--work", work, "--iterations", str(args.iterations),
                 "--threads", str(args.threads)],
                capture_output=True, text=True, check=False,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{name}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            print(json.dumps(json.loads(lines[-1].removeprefix("RESULT ")), indent=None), flush=True)


if __name__ == "__main__":
    main()
