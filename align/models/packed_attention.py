"""Attention for packed (padding-free) rows that costs each sequence its own length squared.

    python -c "from align.models.packed_attention import use_packed_attention; help(use_packed_attention)"

A packed row lays several sequences end to end. Under transformers' ``sdpa`` attention the
sequences are kept apart by a block-diagonal mask over the whole row, and CPU attention kernels
then work on every (query, key) pair of the row: a row of 8 sequences of ~150 tokens costs
~8x the attention of the sequences alone (measured: 88 ms vs 20 ms forward + backward per layer
on 2 cores). Flash-attention's varlen kernels avoid that on a GPU, given the sequence boundaries
``cu_seq_lens_q`` that padding-free collators pass (TRL's SFT collator, ours for DPO).

``packed_sdpa`` reads the same ``cu_seq_lens_q`` and runs causal SDPA on each sequence alone, on
any device. Without it (padded batches, generation with a KV cache) it is transformers' ``sdpa``
unchanged, so a model can keep it for a whole run. ``use_packed_attention(model)`` switches a
model from ``sdpa`` to it; models on eager or flash attention are left alone.

Two costs remain. transformers still builds the row's (T, T) boolean mask once per forward (it
cannot see the boundaries when it does; ``packed_sdpa`` then ignores the mask): milliseconds at
DPO's rows of 1-3k tokens, 67 MB and ~0.2 s at 8k. And reading the boundaries is a device-to-host
copy per layer, free on CPU; on a GPU, flash-attention's varlen kernels are the better choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

NAME = "sdpa_packed"


def packed_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface signature: query ``(B, H, T, D)``, key/value ``(B, H_kv, T, D)``.

    With ``cu_seq_lens_q`` (boundaries in the flattened ``B * T`` tokens) and no KV cache, returns
    ``(B, T, H, D)`` where each sequence attended causally to itself only; otherwise ``sdpa``'s result.
    Anything plain causal attention per sequence would ignore also falls back to ``sdpa`` (whose mask
    or error says what to do): a sliding window shorter than the longest sequence, a layer that is not
    causal, a softcap or a position bias.
    """
    bounds = kwargs.get("cu_seq_lens_q")
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))  # Mistral passes it per call
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (bounds is None or query.shape[2] != key.shape[2] or not causal
            or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
            or (window is not None and int(kwargs.get("max_length_q") or query.shape[2]) > window)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, length, dim = query.shape
    flat = [t.transpose(0, 1).reshape(1, t.shape[1], batch * length, dim) for t in (query, key, value)]  # (1, H, B*T, D)
    starts = bounds.tolist()
    pieces = [
        F.scaled_dot_product_attention(
            flat[0][:, :, start:end], flat[1][:, :, start:end], flat[2][:, :, start:end],
            dropout_p=dropout if module.training else 0.0, is_causal=True, scale=scaling,
            enable_gqa=heads != key.shape[1],
        )
        for start, end in zip(starts[:-1], starts[1:]) if end > start
    ]
    out = torch.cat(pieces, dim=2)  # (1, H, B*T, D)
    return out.reshape(heads, batch, length, dim).permute(1, 2, 0, 3).contiguous(), None


def register() -> None:
    """Make ``attn_implementation="sdpa_packed"`` known to transformers (idempotent)."""
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(NAME, packed_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)


def use_packed_attention(model: nn.Module) -> bool:
    """Switch ``model`` (a transformers model, maybe inside a PEFT wrapper) from ``sdpa`` to ``packed_sdpa``.

    Returns whether it switched. The saved ``config.json`` is unaffected (the attention
    implementation is not serialised), so exported models load anywhere.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)
    return True
