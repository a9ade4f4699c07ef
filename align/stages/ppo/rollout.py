"""Rollouts: which prompts an iteration uses, and the seed its responses are sampled with.

Sampling itself is ``align.sampling.sample``, as in ``align generate`` and ``align eval``.
"""

from __future__ import annotations

import torch


def prompt_indices(n_prompts: int, iteration: int, rank: int, world_size: int, batch_size: int, seed: int) -> list[int]:
    """Dataset rows for one process in one iteration: a seeded shuffle, walked without replacement.

    The prompt stream is ``perm(0) + perm(1) + ...``, where ``perm(e)`` is a permutation of
    ``range(n_prompts)`` seeded by ``seed + e``. Iteration ``i`` on rank ``r`` takes the
    ``batch_size`` positions starting at ``(i * world_size + r) * batch_size``. Stateless, so a
    resumed run draws exactly the prompts the uninterrupted run would have, and ranks never
    overlap within a pass.
    """
    start = (iteration * world_size + rank) * batch_size
    out: list[int] = []
    perms: dict[int, list[int]] = {}
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n_prompts)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append(perms[epoch][offset])
    return out


def rollout_seed(iteration: int, rank: int, world_size: int, batch_size: int, seed: int) -> int:
    """The sampling seed of one process's rollout: ``seed`` plus its offset in the prompt stream.

    ``sample`` seeds batch ``start`` with ``seed + start``, so every rollout batch of the run gets
    its own seed, a resumed run samples what the uninterrupted one would have, and a PPO rollout
    draws the same tokens as ``align eval`` given that seed, the same prompts and batch size.
    """
    return seed + (iteration * world_size + rank) * batch_size
