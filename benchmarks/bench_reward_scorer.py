"""Reward scorer throughput (pairs/s) on CPU with the real MiniLM-L6 encoder, against a plain HF forward.

    python benchmarks/bench_reward_scorer.py            # batch sizes 1, 16, 64
    python benchmarks/bench_reward_scorer.py --pairs 128 --repeats 5

Baseline (the peer): what a caller would write without ``reward_models``: the HF tokenizer
on (prompt, response) pairs with ``truncation=True, padding=True``, then
``AutoModel(...)`` + masked mean pooling + the same linear head, batch by batch in input
order, under ``torch.inference_mode``. Ours: ``RewardScorer.score`` on a saved reward model
(prompt-first truncation through the Rust tokenizer backend, length-sorted batches,
normalisation). Both read the same ~100-token pairs; ratio = ours / baseline.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

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


def timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of two functions run alternately, so both see the same machine load.

    The minimum, not the median: on a shared CPU, other processes only ever add time.
    """
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, a), (fn_b, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(a), min(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--pairs", type=int, default=128, help="pairs per run (batch size 1 uses a quarter)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from align.models import resolve_model_source
    from reward_models import RewardModel, RewardScorer

    torch.manual_seed(0)
    source = resolve_model_source("minilm-l6")
    with tempfile.TemporaryDirectory() as tmp:
        RewardModel.from_encoder(source, pooling="mean", max_length=args.max_length).save_pretrained(tmp)
        scorer = RewardScorer.from_pretrained(tmp, device="cpu", normalize=False)
    model, tokenizer = scorer.model, scorer.model.tokenizer

    prompts, responses = make_pairs(args.pairs)
    lengths = [len(p.input_ids) for p in scorer.encoder.encode(prompts, responses)]
    print(f"encoder: {source}\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"{args.pairs} pairs, tokens per pair: mean {statistics.mean(lengths):.0f}, "
          f"min {min(lengths)}, max {max(lengths)}; best of {args.repeats} alternating runs\n")
    print(f"{'batch':>5} | {'ours pairs/s':>12} | {'baseline pairs/s':>16} | {'ours/baseline':>13} | {'max |diff|':>10}")
    print("-" * 70)
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        n = max(args.pairs // 4, 16) if bs == 1 else args.pairs
        p, r = prompts[:n], responses[:n]
        scorer.batch_size = bs
        ours = scorer.score(p, r)  # warm-up, and the values to compare
        base = baseline_score(model, tokenizer, p, r, bs, args.max_length)
        t_ours, t_base = timed_pair(
            lambda: scorer.score(p, r), lambda: baseline_score(model, tokenizer, p, r, bs, args.max_length), args.repeats
        )
        diff = float((ours - base).abs().max())
        print(f"{bs:>5} | {n / t_ours:>12.1f} | {n / t_base:>16.1f} | {t_base / t_ours:>13.2f} | {diff:>10.2e}")


if __name__ == "__main__":
    main()
