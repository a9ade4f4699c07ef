"""DPO training throughput and peak memory: our stage (padded, padding-free, precomputed reference) vs TRL.

    python benchmarks/bench_dpo.py                       # SmolLM2-135M, 8 pairs, 2 steps of 4 pairs
    python benchmarks/bench_dpo.py --steps 2 --threads 2 --configs trl padded padding_free
    python benchmarks/bench_dpo.py --pairs 16 --batch 8 --malloc system jemalloc tcmalloc
    python benchmarks/bench_dpo.py --configs padded --floor   # + what any run holds before activations

Every configuration runs in its own subprocess (so ``ru_maxrss`` is its own peak) on the
same model (full fine-tuning, float32), the same 8 chat pairs of uneven length (up to 256
tokens) and the same batches; ``--gradient-checkpointing`` turns it on for both sides. The
peer is TRL 1.16's DPOTrainer as a user would call it: the policy in, TRL loads the frozen
reference copy, padded batches (its ``padding_free`` is disabled in 1.16); ``trl_precompute``
is the same with TRL's own ``precompute_ref_log_probs``, the peer of our precomputed rows.
``--malloc`` runs every configuration again under jemalloc / tcmalloc (``LD_PRELOAD``; Debian
packages ``libjemalloc2``, ``libtcmalloc-minimal4``). tokens/s counts real (non-pad) tokens of
the training steps only; ``setup`` is loading, tokenizing and, for precompute, the reference pass.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkout import ROOT  # noqa: E402 - offline env and the checkout on sys.path, before align is imported

MODEL = "smollm2-135m-instruct"
CONFIGS = {  # name -> dpo options of our recipe; None: the peer, TRL's DPOTrainer (with its own precompute)
    "trl": None,
    "trl_precompute": None,
    "padded": {},
    "padding_free": {"padding_free": True},
    "padding_free_rows": {"padding_free": True, "pack_row_tokens": 512},
    "precompute": {"precompute_ref": True},
    "padding_free+precompute": {"padding_free": True, "precompute_ref": True},
}
SENTENCES = [
    "The capital of France is Paris, a city on the Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "To make tea, steep the leaves in hot water for three to five minutes.",
    "A leap year has three hundred and sixty-six days.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The mitochondria produce most of the chemical energy a cell needs.",
]


def make_pairs(n: int = 8, seed: int = 0) -> list[dict]:
    """Chat pairs whose completions run from one sentence (~15 tokens) to ~14 (~220): uneven on purpose."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": " ".join(rng.choices(SENTENCES, k=rng.randint(1, 2))) + " Explain."}]
        long, short = rng.randint(8, 14), rng.randint(1, 3)
        a, b = (long, short) if i % 2 else (short, long)
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": " ".join(rng.choices(SENTENCES, k=a))}],
                     "rejected": [{"role": "assistant", "content": " ".join(rng.choices(SENTENCES, k=b))}]})
    return rows


ALLOCATORS = {"system": None, "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
              "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}  # Debian: libjemalloc2, libtcmalloc-minimal4


def dpo_args(out: str, steps: int, batch: int, checkpointing: bool, precompute: bool = False) -> dict:
    return dict(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-6,
                lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], bf16=False,
                gradient_checkpointing=checkpointing, precompute_ref_log_probs=precompute, max_length=256, beta=0.1,
                seed=0,
                include_num_input_tokens_seen="non_padding", disable_tqdm=True, dataloader_pin_memory=False)


def build_trl(data_file: Path, out: str, steps: int, batch: int, checkpointing: bool, precompute: bool):  # noqa: ANN201
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from align.models import resolve_model_source

    source = resolve_model_source(MODEL)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(source)
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    config = DPOConfig(**dpo_args(out, steps, batch, checkpointing, precompute))
    return DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def build_ours(options: dict, data_file: Path, out: str, steps: int, batch: int, checkpointing: bool):  # noqa: ANN201
    from align.config import DPORecipe
    from align.data import load_records
    from align.models import load_policy, load_reference
    from align.recipe import validate
    from align.stages.dpo import build_trainer

    recipe = validate(DPORecipe, {
        "model": {"name_or_path": MODEL, "method": "full"},
        "data": {"path": str(data_file)},
        "training": {"output_dir": out, "max_steps": steps, "per_device_batch_size": batch, "learning_rate": 1e-6,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 256,
                     "report_to": "none", "seed": 0, "gradient_checkpointing": checkpointing},
        "dpo": {"beta": 0.1, **options},
        "eval": {"enabled": False},
    })
    data = load_records(recipe.data, default_kind="preference", want="preference")
    model, tokenizer = load_policy(recipe.model)
    reference = None if recipe.dpo.precompute_ref else load_reference(recipe.model)
    trainer, _ = build_trainer(recipe, model, reference, tokenizer, data.train, None, Path(out))
    trainer.args.dataloader_pin_memory = False
    trainer.args.disable_tqdm = True
    return trainer


def worker(name: str, data_file: Path, steps: int, batch: int, threads: int, checkpointing: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        if CONFIGS[name] is None:
            trainer = build_trl(data_file, out, steps, batch, checkpointing, precompute=name == "trl_precompute")
        else:
            trainer = build_ours(CONFIGS[name], data_file, out, steps, batch, checkpointing)
        built = time.perf_counter()
        trainer.train()
        done = time.perf_counter()
    first = trainer.state.log_history[0]
    return {
        "config": name,
        "setup_s": built - start,
        "train_s": done - built,
        "tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_s": trainer.state.num_input_tokens_seen / (done - built),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_loss": first["loss"],
        "first_logps_chosen": first.get("logps/chosen"),
    }


def floor_worker() -> dict:
    """Peak RSS of what every full fine-tuning run holds before any activation: the libraries a DPO process
    imports, the policy, its float32 gradients and AdamW's two moments (after one step)."""
    import torch
    import trl  # noqa: F401 - imported by every DPO run, ours and the peer's

    from align.config import ModelConfig
    from align.models import load_policy

    imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, _ = load_policy(ModelConfig(name_or_path=MODEL, method="full"))
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    torch.optim.AdamW(model.parameters(), lr=1e-6).step()
    return {"imports_mb": imports, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def padding_share(data_file: Path, batch: int) -> float:
    """Share of pad tokens in the padded batches of this data (chosen and rejected padded together, as TRL does)."""
    from transformers import AutoTokenizer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from align.models import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MODEL))
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    real = total = 0
    for i in range(0, len(rows), batch):
        examples = []
        for row in rows[i : i + batch]:
            prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
            full = [tokenizer.apply_chat_template(row["prompt"] + row[k], tokenize=True, return_dict=True)["input_ids"]
                    for k in ("chosen", "rejected")]
            examples.append({"prompt_ids": prompt, "chosen_ids": full[0][len(prompt):], "rejected_ids": full[1][len(prompt):]})
        padded = DataCollatorForPreference(pad_token_id=0, max_length=256)(examples)
        real += int(padded["attention_mask"].sum())
        total += padded["attention_mask"].numel()
    return 1 - real / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: stable on a shared CPU)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides (default: off on both)")
    parser.add_argument("--malloc", nargs="+", default=["system"], choices=list(ALLOCATORS),
                        help="run every config under each allocator (LD_PRELOAD); 'config@jemalloc' in the table")
    parser.add_argument("--floor", action="store_true",
                        help="also measure the memory floor: imports, the policy, its gradients and Adam states")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "floor":
        print("RESULT " + json.dumps(floor_worker()))
        return
    if args.worker:
        result = worker(args.worker, Path(args.data), args.steps, args.batch, args.threads,
                        args.gradient_checkpointing)
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "pairs.jsonl"
        data_file.write_text("".join(json.dumps(row) + "\n" for row in make_pairs(args.pairs)))
        print(f"{MODEL}, {args.pairs} pairs, {args.steps} steps x {args.batch} pairs, {args.threads} thread(s), "
              f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} on both sides; "
              f"padding in TRL's padded batches: {padding_share(data_file, args.batch):.0%} of tokens", flush=True)
        missing = [ALLOCATORS[a] for a in args.malloc if ALLOCATORS[a] and not Path(ALLOCATORS[a]).exists()]
        if missing:  # ld.so would warn and run the system allocator under the wrong name
            sys.exit(f"--malloc: {', '.join(missing)} not found; install libjemalloc2 / libtcmalloc-minimal4")
        results = {}
        for allocator in args.malloc:
            env = dict(os.environ)
            if ALLOCATORS[allocator]:
                env["LD_PRELOAD"] = ALLOCATORS[allocator]
            for config in args.configs:
                name = config if allocator == "system" else f"{config}@{allocator}"
                cmd = [sys.executable, __file__, "--worker", config, "--data", str(data_file), "--steps",
                       str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
                cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode or not lines:
                    print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                results[name] = json.loads(lines[-1].removeprefix("RESULT "))
                r = results[name]
                print(f"  {name}: {r['tokens_per_s']:.0f} tok/s, {r['peak_rss_mb']:.0f} MB", flush=True)
    print_table(results)
    if args.floor:
        proc = subprocess.run([sys.executable, __file__, "--worker", "floor"], capture_output=True, text=True, cwd=ROOT)
        floor = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
        print(f"\nmemory floor: {floor['imports_mb']:.0f} MB after the imports, {floor['peak_rss_mb']:.0f} MB with the "
              "policy, its gradients and AdamW's moments (no activations)")


def print_table(results: dict[str, dict]) -> None:
    """A markdown table; ratios against TRL as a user runs it (``trl``) and at its best (``trl_precompute``)."""
    peers = [(label, results[key]) for label, key in (("TRL", "trl"), ("TRL precompute", "trl_precompute"))
             if key in results]
    head = ["config", "setup s", "train s", "tok/s", "peak RSS MB", "step-1 loss"]
    head += [f"{what} x {label}" for label, _ in peers for what in ("tok/s", "RSS")]
    print("\n| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for name, r in results.items():
        cells = [name, f"{r['setup_s']:.1f}", f"{r['train_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                 f"{r['peak_rss_mb']:.0f}", f"{r['first_loss']:.6f}"]
        cells += [f"{r[k] / base[k]:.2f}" for _, base in peers for k in ("tokens_per_s", "peak_rss_mb")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
