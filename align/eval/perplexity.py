"""Perplexity of a causal LM on held-out documents, for ``align pretrain``'s before/after report.

    from align.eval.perplexity import perplexity
    perplexity(model, tokenizer, ["Some held-out text."], max_length=512)

Each document is scored alone (no packing, so no neighbour can help or hurt it), tokenized as
TRL's SFTTrainer tokenizes ``text`` rows (special tokens, then EOS appended) and cut to
``max_length`` tokens. The result is token-weighted over all documents: ``exp(sum NLL / tokens)``,
every token but each document's first scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from align.ops.logprobs import token_logprobs


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 8) -> float:
    """``exp`` of the mean next-token NLL over every scored token of ``texts``."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token or ""
    docs = [tokenizer(t if t.endswith(eos) else t + eos)["input_ids"][:max_length] for t in texts]
    docs = [d for d in docs if len(d) > 1]
    if not docs:
        raise ValueError("perplexity: no document has two tokens or more")
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0
    try:
        for start in range(0, len(docs), batch_size):
            batch = docs[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([d + [pad_id] * (width - len(d)) for d in batch], device=device)  # (B, T)
            mask = torch.tensor([[1] * len(d) + [0] * (width - len(d)) for d in batch], device=device)  # (B, T)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logps = token_logprobs(logits[:, :-1], ids[:, 1:])  # (B, T-1): token t+1 given tokens <= t
            scored = mask[:, 1:].float()
            nll -= float((logps * scored).sum())
            tokens += int(scored.sum())
    finally:
        model.train(was_training)
    return math.exp(nll / tokens)
