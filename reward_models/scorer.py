"""The one reward interface other stages use: texts in, a float tensor out.

    scorer = RewardScorer.from_pretrained("runs/reward")
    scorer.score(["What is 2+2?"], ["4"])          # tensor([1.37]), float32, CPU
    scorer(prompts, completions)                    # list[float], a TRL GRPOTrainer reward function

PPO, GRPO, evaluation and best-of-N sampling call this and never see the reward model's
tokenizer. Prompts and responses may be strings or chat message lists (see
``reward_models.text`` for how they are rendered and truncated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from reward_models.model import RewardModel
from reward_models.text import PairEncoder, Text


class RewardScorer:
    """Batched scoring with a ``RewardModel`` on any device.

    Pairs are sorted by length and scored ``batch_size`` at a time, so each batch pads
    little; results come back in input order. Scores are normalised (mean 0, std 1 on the
    training responses, clipped if the model says so) unless ``normalize=False``.
    """

    def __init__(
        self,
        model: RewardModel,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        normalize: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if tokenizer is None:
            raise ValueError("RewardScorer needs a tokenizer: pass one or give the model one")
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size = batch_size
        self.normalize = normalize
        self.encoder = PairEncoder(tokenizer, model.reward_config.max_length)
        # GRPOTrainer names reward functions by __name__ in its logs.
        self.__name__ = "reward_model"

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device | None = None, batch_size: int = 32, normalize: bool = True
    ) -> "RewardScorer":
        """Load a saved reward model onto ``device`` (default: CUDA when available, else CPU)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = RewardModel.from_pretrained(directory, device=device)
        return cls(model, device=device, batch_size=batch_size, normalize=normalize)

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
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = {k: v.to(self.device) for k, v in self.encoder.pad([pairs[i] for i in rows]).items()}
                raw = self.model(**batch).float()
                scores = self.model.normalize(raw) if self.normalize else raw
                out[torch.tensor(rows)] = scores.cpu()
        finally:
            self.model.train(was_training)
        return out

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any) -> list[float]:
        """TRL ``GRPOTrainer`` reward function: ``(prompts, completions, **columns) -> list[float]``."""
        return self.score(prompts, completions).tolist()
