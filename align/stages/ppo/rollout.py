"""Rollouts: which prompts an iteration uses, and sampling responses for them.

Prompts are tokenized left-padded (so every response starts at the same column), then
generated in batches with the KV cache, temperature / top-p / top-k sampling and at most
``max_new_tokens`` tokens, stopping at EOS. Responses come back right-padded with the pad
token; ``core.response_mask`` says which of their tokens count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


@dataclass
class Generated:
    """Token ids of one rollout batch.

    query_ids, query_mask: (B, P) left-padded prompts and their attention mask.
    response_ids: (B, T) sampled tokens, right-padded with ``pad_token_id`` after EOS.
    """

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor


@torch.no_grad()
def generate_responses(
    model: nn.Module,
    tokenizer,  # noqa: ANN001 - any HF tokenizer
    prompt_texts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    batch_size: int,
    eos_token_ids: list[int],
    device: torch.device,
) -> Generated:
    """Sample one response per prompt text (already chat-rendered) with ``model.generate``.

    The prompts are padded on the left together (B, P); each batch of ``batch_size`` is
    generated separately and the responses are right-padded to the longest (B, T).
    """
    pad_id = tokenizer.pad_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        # The chat template already wrote any BOS; the tokenizer must not add another.
        enc = tokenizer(prompt_texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    query_ids, query_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    was_training = model.training
    model.eval()
    responses = []
    try:
        for start in range(0, len(prompt_texts), batch_size):
            ids, mask = query_ids[start : start + batch_size], query_mask[start : start + batch_size]
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                eos_token_id=eos_token_ids,
                pad_token_id=pad_id,
                use_cache=True,
            )
            responses.append(out[:, ids.shape[1] :])  # (b, t): the prompt cut off
    finally:
        model.train(was_training)
    width = max(r.shape[1] for r in responses)
    response_ids = torch.cat(
        [torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad_id) for r in responses]
    )  # (B, T)
    return Generated(query_ids=query_ids, query_mask=query_mask, response_ids=response_ids)
