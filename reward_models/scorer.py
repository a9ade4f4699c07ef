"""The one reward interface other stages use: texts in, a float tensor out.

    scorer = RewardScorer.from_pretrained("runs/reward")
    scorer.score(["What is 2+2?"], ["4"])          # tensor([1.37]), float32, CPU
    scorer(prompts, completions)                    # list[float], a TRL GRPOTrainer reward function
    RewardScorer.from_pretrained("runs/reward", precision="bfloat16")  # ~3x faster on a bf16 CPU

PPO, GRPO, evaluation and best-of-N sampling call this and never see the reward model's
tokenizer. Prompts and responses may be strings or chat message lists (see
``reward_models.text`` for how they are rendered and truncated).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from reward_models.model import RewardModel
from reward_models.text import PairEncoder, Text

# What the encoder computes in; scores are float32 either way. See benchmarks/results/reward_scorer.md for
# MiniLM-L6 on 2 AMD EPYC cores: bfloat16 about 3x float32 with fresh-pair accuracy unchanged; int8 a little
# faster still, but scores move by up to 0.7 (std units) and 5% of gold pair orders flip.
PRECISIONS = ("float32", "bfloat16", "int8")

# One CPU forward's fixed cost (module calls, allocation), in tokens of encoder work: ~5 ms, which is
# ~15 tokens of float32 or ~35 of bfloat16 MiniLM-L6 work on one core. Used to cut length buckets; on the
# benchmark's 128 pairs at batch 64, 32 scored as fast as or faster than 0 or 128, and 1.3-1.6x faster
# than plain length-sorted batches (whose padding adds 19% tokens there, the buckets' 2%).
CPU_FORWARD_COST_TOKENS = 32


def length_buckets(lengths: Sequence[int], max_batch: int, forward_cost: float) -> list[range]:
    """Split ascending ``lengths`` into consecutive batches of at most ``max_batch`` that minimise
    ``sum(len(batch) * max(batch) + forward_cost)``: padded tokens plus a fixed cost per forward.

    ``lengths`` (N,) must be sorted ascending, so a batch's padded length is its last element. Exact
    by dynamic programming over the batch end, O(N * max_batch):
    ``cost[j] = min_{j - max_batch <= i < j} cost[i] + (j - i) * lengths[j - 1] + forward_cost``.
    Lengths 4, 4, 4, 16 with max_batch 4 and forward_cost 8 give ``[range(0, 3), range(3, 4)]``
    (3 * 4 + 8 + 16 + 8 = 44 < 4 * 16 + 8 = 72).
    """
    n = len(lengths)
    cost = [0.0] + [float("inf")] * n
    start = [0] * (n + 1)  # start[j]: where the last batch of the best split of lengths[:j] begins
    for j in range(1, n + 1):
        for i in range(max(0, j - max_batch), j):
            c = cost[i] + (j - i) * lengths[j - 1] + forward_cost
            if c < cost[j]:
                cost[j], start[j] = c, i
    buckets, j = [], n
    while j > 0:
        buckets.append(range(start[j], j))
        j = start[j]
    return buckets[::-1]


def bfloat16_copy(model: RewardModel) -> RewardModel:
    """A copy of ``model`` whose encoder holds bfloat16 weights (the head and the pooled features stay float32).

    Against bfloat16 autocast over the float32 model: no per-call weight casts and no float32
    LayerNorm round trips (MiniLM-L6, batch 64, 2 cores: 197 -> 203 pairs/s). On CPU the encoder
    uses eager attention: at these lengths (~100 tokens, head dim 32) it beats the CPU SDPA kernel
    (216 vs 203 pairs/s), at the cost of holding a batch's (heads x length x length) scores.
    """
    copied = copy.deepcopy(model)
    copied.encoder.to(torch.bfloat16)
    if next(copied.encoder.parameters()).device.type == "cpu" and hasattr(copied.encoder, "set_attn_implementation"):
        copied.encoder.set_attn_implementation("eager")
    return copied


def quantize_int8(model: RewardModel) -> RewardModel:
    """A copy of ``model`` whose encoder's ``nn.Linear`` layers are dynamically quantised to int8.

    Weights int8 per output channel, activations int8 per tensor, quantised on the fly
    (``torch.ao.quantization.quantize_dynamic``; CPU only). Embeddings, LayerNorm, attention
    and the head stay float32. ``model`` itself is left as it was.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    quantized = copy.deepcopy(model)
    quantize_dynamic(quantized.encoder, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return quantized


class RewardScorer:
    """Batched scoring with a ``RewardModel`` on any device.

    Pairs are sorted by length and scored at most ``batch_size`` at a time; on CPU a batch is cut
    earlier where its padding would cost more than another forward (``length_buckets``), so a
    large ``batch_size`` pads no more than a small one. Results come back in input order. Scores
    are normalised (mean 0, std 1 on the training responses, clipped if the model says so)
    unless ``normalize=False``.

    ``precision`` is what the encoder computes in, for inference only: ``float32``; ``bfloat16``
    (a copy of the model with a bfloat16 encoder, ``bfloat16_copy``); ``int8`` (a dynamically
    quantised copy, CPU only). The copies are made here: later updates to ``model`` do not reach
    them. See ``PRECISIONS`` for what each costs in accuracy (measured on CPU; a bf16 copy also
    runs LayerNorm and the residual stream in bf16).
    """

    def __init__(
        self,
        model: RewardModel,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        precision: str = "float32",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if tokenizer is None:
            raise ValueError("RewardScorer needs a tokenizer: pass one or give the model one")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError(f"precision='int8' runs on CPU only (torch dynamic quantisation), not {self.device}; "
                             "use bfloat16 there")
        copies = {"int8": quantize_int8, "bfloat16": bfloat16_copy}
        self.model = copies[precision](model) if precision in copies else model
        self.batch_size = batch_size
        self.normalize = normalize
        self.precision = precision
        self.encoder = PairEncoder(tokenizer, model.reward_config.max_length)
        # GRPOTrainer names reward functions by __name__ in its logs.
        self.__name__ = "reward_model"

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device | None = None, batch_size: int = 32,
        normalize: bool = True, precision: str = "float32",
    ) -> "RewardScorer":
        """Load a saved reward model onto ``device`` (default: CUDA when available, else CPU)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = RewardModel.from_pretrained(directory, device=device)
        return cls(model, device=device, batch_size=batch_size, normalize=normalize, precision=precision)

    @torch.inference_mode()
    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> torch.Tensor:
        """One score per (prompt, response): float32 tensor of shape (N,), on CPU."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise TypeError("score() takes lists of prompts and responses, not single strings")
        pairs = self.encoder.encode(list(prompts), list(responses))
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].input_ids))
        out = torch.empty(len(pairs), dtype=torch.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            for bucket in self._buckets([len(pairs[i].input_ids) for i in order]):
                rows = order[bucket.start : bucket.stop]
                batch = {k: v.to(self.device) for k, v in self.encoder.pad([pairs[i] for i in rows]).items()}
                raw = self.model(**batch).float()
                scores = self.model.normalize(raw) if self.normalize else raw
                out[torch.tensor(rows)] = scores.cpu()
        finally:
            self.model.train(was_training)
        return out

    def _buckets(self, lengths: list[int]) -> list[range]:
        """Batches over the length-sorted pairs: cut by padding cost on CPU, every ``batch_size`` elsewhere."""
        if self.device.type == "cpu":
            return length_buckets(lengths, self.batch_size, CPU_FORWARD_COST_TOKENS)
        # An accelerator pays far more per launch than per padded token: full batches.
        return [range(i, min(i + self.batch_size, len(lengths))) for i in range(0, len(lengths), self.batch_size)]

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any) -> list[float]:
        """TRL ``GRPOTrainer`` reward function: ``(prompts, completions, **columns) -> list[float]``."""
        return self.score(prompts, completions).tolist()
