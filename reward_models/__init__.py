"""BERT-based continuous reward model: model, losses, scorer.

    from reward_models import RewardScorer
    RewardScorer.from_pretrained("runs/reward").score(prompts, responses)  # (N,) float32

Submodules import lazily, so ``reward_models.losses`` costs only torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RewardModel": "reward_models.model",
    "RewardConfig": "reward_models.model",
    "RewardScorer": "reward_models.scorer",
    "PairEncoder": "reward_models.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reward_models' has no attribute {name!r}")
