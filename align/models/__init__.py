"""Load policy, reference and tokenizer for every stage, from a hub id, local directory, GGUF file or alias.

    python -c "from align.config import ModelConfig; from align.models import load_policy; print(load_policy(ModelConfig())[0])"

``sources``: where weights come from (``resolve_model_source``, GGUF conversion and adapter merging,
cached under ``$ALIGN_CACHE``); ``loading``: tokenizer, policy with its fine-tuning method, reference;
``freezing``: partial fine-tuning and gradual unfreezing (read its docstring before building an
optimizer for a partial model). What every loaded causal LM runs: ``packed_attention`` (attention per
sequence in packed rows) and ``lean_activations`` (MLPs and norms that save less for backward);
``logprob_head``: DPO's per-token log-probs of completion tokens only.

Names are imported on first use: ``import align.models`` stays cheap (importing
``transformers.TrainerCallback`` pulls in peft and bitsandbytes, seconds on a small CPU).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "GradualUnfreezeCallback": "freezing",
    "find_layer_list": "freezing",
    "parameter_groups": "freezing",
    "partial_callbacks": "freezing",
    "set_partial_trainable": "freezing",
    "top_k_at": "freezing",
    "unfreezable_parameters": "freezing",
    "ADAPTER_METHODS": "loading",
    "METHODS": "loading",
    "count_parameters": "loading",
    "ensure_pad_token": "loading",
    "freeze": "loading",
    "load_policy": "loading",
    "load_reference": "loading",
    "load_tokenizer": "loading",
    "merge_adapter": "loading",
    "torch_dtype": "loading",
    "ALIASES": "sources",
    "ModelNotFoundError": "sources",
    "cache_root": "sources",
    "resolve_model_source": "sources",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from align.models.freezing import (  # noqa: F401
        GradualUnfreezeCallback,
        find_layer_list,
        parameter_groups,
        partial_callbacks,
        set_partial_trainable,
        top_k_at,
        unfreezable_parameters,
    )
    from align.models.loading import (  # noqa: F401
        ADAPTER_METHODS,
        METHODS,
        count_parameters,
        ensure_pad_token,
        freeze,
        load_policy,
        load_reference,
        load_tokenizer,
        merge_adapter,
        torch_dtype,
    )
    from align.models.sources import (  # noqa: F401
        ALIASES,
        ModelNotFoundError,
        cache_root,
        resolve_model_source,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'align.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"align.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
