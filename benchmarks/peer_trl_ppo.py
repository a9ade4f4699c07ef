"""The peer of bench_ppo.py: TRL 1.12.0's PPOTrainer on the same model, prompts and batch; prints one RESULT line.

    DIR/bin/python benchmarks/peer_trl_ppo.py --model MODEL_DIR --prompts examples/data/prompts_demo.jsonl

Runs in its own venv (TRL 1.12.0 is the last TRL with PPO; bench_ppo.py's docstring says how to
make it), so this file imports nothing from ``align``. bench_ppo.py starts it with the resolved
SmolLM2 directory; run alone it needs the same arguments.

Setting, matched to bench_ppo.py: 16 rollouts per iteration (per-device batch 4 x accumulation 4,
one minibatch), up to 48 new tokens stopping at EOS, temperature 0.7, 4 PPO epochs, float32,
missing-EOS penalty 1.0, learning rate 1e-6. TRL's PPO scores with a sequence-classification
model that shares the policy's tokenizer, so the reward model and the value model are both
``AutoModelForSequenceClassification`` built from the SmolLM2 directory with ``num_labels=1``
(untrained heads); the reference is a second copy of the policy. As in TRL's own PPO example the
tokenizer pads on the left with a new ``[PAD]`` token: SmolLM2's pad token is ``<|im_end|>``,
which also ends every chat turn, and TRL derives attention masks from ``ids != pad``.

Timing: TRL logs only a running ``eps`` (episodes/s since the start), so a ``TrainerCallback``
takes a timestamp at ``on_train_begin`` and at every ``on_step_end`` (one PPO iteration: rollout,
scoring, 4 epochs, scheduler step); iteration i is the gap between two stamps. The first is
reported apart (warm-up), the mean is over the rest, as in bench_ppo.py. ``batch_generation`` is
wrapped to record the response width and the real length (tokens up to and including the first
EOS), which bench_ppo.py reports as ``ppo/response_length``. Peak RSS is this process's
``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

ROLLOUTS, MICRO, ACCUMULATION = 16, 4, 4


def load_prompts(path: str, tokenizer) -> list[list[int]]:
    """Each prompt as one user message through the chat template, tokenized without extra special tokens."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    ids = []
    for row in rows:
        messages = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def record_lengths(ppo_module, eos_id: int, lengths: list[tuple[int, float]]) -> None:
    """Wrap the trainer's ``batch_generation`` to append (response width, mean real length) per rollout."""
    import torch

    inner = ppo_module.batch_generation

    def wrapped(model, queries, *args, **kwargs):
        query_responses, logits = inner(model, queries, *args, **kwargs)
        response = query_responses[:, queries.shape[1]:]  # (B, T)
        is_eos = response == eos_id
        before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS seen before t
        lengths.append((response.shape[1], (before == 0).float().sum(1).mean().item()))
        return query_responses, logits

    ppo_module.batch_generation = wrapped


def run(model_dir: str, prompts: str, iterations: int, threads: int, work: str, bf16: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    torch.set_num_threads(threads)
    stamps: list[float] = []

    class IterationTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # never embedded: TRL masks pad ids to 0
    dataset = Dataset.from_dict({"input_ids": load_prompts(prompts, tokenizer)})
    torch.manual_seed(0)
    load = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    reward = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, **load)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, **load)
    config = PPOConfig(
        output_dir=work, total_episodes=iterations * ROLLOUTS, per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUMULATION, num_mini_batches=1, num_ppo_epochs=4,
        local_rollout_forward_batch_size=ROLLOUTS, response_length=48, temperature=0.7, stop_token="eos",
        missing_eos_penalty=1.0, learning_rate=1e-6, bf16=bf16, fp16=False, gradient_checkpointing=False,
        num_sample_generations=0, save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        use_cpu=True, seed=0,
    )
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward,
        value_model=value, train_dataset=dataset, eval_dataset=dataset, callbacks=[IterationTimer()],
    )
    lengths: list[tuple[int, float]] = []
    record_lengths(ppo_module, tokenizer.eos_token_id, lengths)
    setup = time.perf_counter() - start
    trainer.train()

    times = [b - a for a, b in itertools.pairwise(stamps)]
    rest = times[1:] or times
    rest_len = lengths[1:] or lengths
    mean = sum(rest) / len(rest)
    return {
        "config": "trl-1.12" + ("+bf16" if bf16 else ""), "threads": threads, "setup_s": round(setup, 1), "first_iteration_s": round(times[0], 2),
        "time/iteration": round(mean, 3), "perf/samples_per_s": round(ROLLOUTS / mean, 3),
        "ppo/response_length": round(sum(n for _, n in rest_len) / len(rest_len), 3),
        "response_width": [w for w, _ in lengths],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the SmolLM2-135M-Instruct HF directory")
    parser.add_argument("--prompts", required=True, help="JSONL with a 'prompt' field")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", help="output directory (default: a temporary one)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (accelerate's mixed precision), as ours")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.model, args.prompts, args.iterations, args.threads, args.work or tmp, args.bf16)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
