"""Pool an encoder's token states into one vector per sequence (pure torch)."""

from __future__ import annotations

from typing import Callable

import torch


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's state: ``hidden[:, 0]``. hidden: (B, T, H) -> (B, H).

    Needs right padding and a classifier token first ([CLS], <s>), as ``PairEncoder`` builds.
    """
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over real tokens: ``sum_t m_t h_t / max(sum_t m_t, 1)``. (B, T, H), (B, T) -> (B, H).

    The denominator is clamped to 1 so a fully masked row gives zeros, not NaN.
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cls": cls_pool, "mean": mean_pool}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """``POOLINGS[how](hidden, attention_mask)``; an unknown name is a ValueError listing the valid ones."""
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling '{how}'; choose one of {sorted(POOLINGS)}")
    return POOLINGS[how](hidden, attention_mask)
