"""Load the tokenizer, the policy (with its fine-tuning method applied) and the reference model.

    python -c "from align.config import ModelConfig; from align.models import load_policy; load_policy(ModelConfig(method='lora'))"

Methods, chosen by ``ModelConfig.method`` from ``METHODS``:

- ``full``: every parameter trains;
- ``lora``: a PEFT LoRA adapter (``peft.get_peft_model``); only ``lora_A``/``lora_B`` (and
  ``lora.modules_to_save``) train;
- ``qlora``: the base loaded in 4-bit NF4 with double quantization (bitsandbytes), prepared with
  ``peft.prepare_model_for_kbit_training``, then LoRA;
- ``prompt_tuning``: a PEFT soft prompt of ``num_virtual_tokens`` vectors, initialised from
  ``init_text``'s embeddings when given, else randomly;
- ``partial``: only the top ``trainable_top_k`` blocks (+ final norm and head, + embeddings), see
  ``align.models.freezing``.

QLoRA on CPU (bitsandbytes 0.50): 4-bit loading and training work, with compute dtype float32. On a
CPU with AVX512-BF16, a ``Linear4bit`` in eval mode with an input that needs no grad repacks its
weight in place into an inference-only layout; afterwards its matmul goes through ``gemv_4bit``,
which has no autograd kernel, so a later training step silently gets wrong gradients (torch only
warns), and the repacking crashes outright for ``in_features < 64``. A policy is evaluated and
trained in turn (PPO rollouts, eval during training), so the repacking is switched off
(``support_avx512bf16_for_cpu = False``) on every ``Linear4bit`` of a model loaded on CPU.

Models on ``sdpa`` attention are switched to ``align.models.packed_attention`` (the same
attention, plus per-sequence attention for packed rows that carry ``cu_seq_lens``), and
Llama-family MLPs and norms save fewer activations (``align.models.lean_activations``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from align.config import LoraSettings, ModelConfig
from align.models.freezing import set_partial_trainable
from align.models.sources import hub_load_error, is_local_source, resolve_model_source

logger = logging.getLogger("align.models")

ADAPTER_METHODS = ("lora", "qlora", "prompt_tuning")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Tokens that some vocabularies carry for padding without declaring them as pad_token.
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")


def torch_dtype(name: str) -> torch.dtype:
    """``ModelConfig.dtype`` -> ``torch.dtype``."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype={name!r}: expected one of {', '.join(_DTYPES)}") from None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a tied matrix counts once, a 4-bit weight by its
    unpacked element count (bitsandbytes stores two 4-bit values per uint8)."""
    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        count = quant_state.shape.numel() if quant_state is not None else param.numel()
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def log_parameter_count(model: nn.Module) -> tuple[int, int]:
    trainable, total = count_parameters(model)
    logger.info("trainable params: %d / %d (%.2f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    return trainable, total


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(cfg: ModelConfig, *, padding_side: str = "right"):
    """The model's tokenizer with a pad token set and ``cfg.chat_template`` applied.

    Left padding for generation is the caller's choice (``padding_side="left"``).
    """
    return _load_tokenizer(cfg, resolve_model_source(cfg.name_or_path, cfg.gguf_file), padding_side)


def _load_tokenizer(cfg: ModelConfig, source: str, padding_side: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source, cfg, trust_remote_code=cfg.trust_remote_code)
    ensure_pad_token(tokenizer)
    if cfg.chat_template:
        tokenizer.chat_template = _read_template(cfg.chat_template)
    tokenizer.padding_side = padding_side
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token distinct from eos when its vocabulary has one.

    A pad token equal to eos (SmolLM2 ships pad = eos = ``<|im_end|>``) makes "is padding" and "is
    the end of the answer" the same test, so code that masks pad ids drops the eos it should learn
    and score. Order: a declared pad token distinct from eos; a pad-like token in the vocabulary; the
    unk token if distinct from eos; eos as a last resort.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return
    vocab = tokenizer.get_vocab()
    candidates = [t for t in _PAD_CANDIDATES if t in vocab] + [tokenizer.unk_token]
    choice = next((t for t in candidates if t is not None and t != eos), None)
    if choice is None:
        if tokenizer.pad_token is None and eos is not None:
            logger.info("tokenizer has no pad token and no spare token for one: padding with eos %r", eos)
            tokenizer.pad_token = eos
        return
    logger.info("pad token: %r (was %r; eos is %r)", choice, tokenizer.pad_token, eos)
    tokenizer.pad_token = choice


def _read_template(template: str) -> str:
    if template.endswith((".jinja", ".j2")) and Path(template).expanduser().is_file():
        return Path(template).expanduser().read_text()
    return template


# --------------------------------------------------------------------------- models


def load_policy(cfg: ModelConfig, *, trainable: bool = True) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` with ``cfg.method`` applied.

    ``trainable=False`` gives the bare model (4-bit for qlora, no adapter) in eval mode with every
    parameter frozen: for generation, scoring, references.
    """
    source = resolve_model_source(cfg.name_or_path, cfg.gguf_file)
    tokenizer = _load_tokenizer(cfg, source, padding_side="right")
    model = _load_causal_lm(cfg, source, quantize_4bit=cfg.method == "qlora")
    _sync_special_tokens(model, tokenizer)
    if not trainable:
        freeze(model)
    else:
        if cfg.method not in METHODS:
            raise ValueError(f"model.method='{cfg.method}' applies to the reward model only; a policy trains with "
                             f"one of {', '.join(METHODS)}")
        model = METHODS[cfg.method](model, cfg, source)
        model.train()
    log_parameter_count(model)
    return model, tokenizer


def load_reference(cfg: ModelConfig) -> nn.Module | None:
    """A frozen eval-mode copy of the starting policy, or None for adapter methods: their stage uses
    the policy with the adapter disabled (``with model.disable_adapter():``), which is the same model."""
    if cfg.method in ADAPTER_METHODS:
        return None
    source = resolve_model_source(cfg.name_or_path, cfg.gguf_file)
    model = _load_causal_lm(cfg, source, quantize_4bit=False)
    freeze(model)
    return model


def merge_adapter(cfg: ModelConfig, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge the LoRA adapter saved in ``adapter_dir`` (trained on ``cfg``'s base) into full weights,
    saved with ``save_pretrained`` in ``out_dir``; the tokenizer is the caller's to save.

    The base is loaded unquantized in ``cfg.dtype`` even for qlora: merging into 4-bit weights would
    round the update away. (A qlora adapter was trained against the dequantized 4-bit base, so the
    merged model differs from the trained one by that quantization error, as usual for QLoRA.)
    """
    from peft import PeftModel

    source = resolve_model_source(cfg.name_or_path, cfg.gguf_file)
    base = _load_causal_lm(cfg, source, quantize_4bit=False)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    logger.info("merged adapter %s into %s", adapter_dir, out_dir)
    return Path(out_dir)


def freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    model.eval()
    return model


def _from_pretrained(loader: Callable[..., Any], source: str, cfg: ModelConfig, **kwargs: Any) -> Any:
    """``loader(source, **kwargs)``; for a hub id, an OSError (not cached, no network) becomes a
    ModelNotFoundError that lists the sources tried."""
    try:
        return loader(source, **kwargs)
    except OSError as error:
        if is_local_source(source):
            raise
        raise hub_load_error(cfg.name_or_path, error) from error


def _load_causal_lm(cfg: ModelConfig, source: str, *, quantize_4bit: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from align.models.lean_activations import use_lean_activations
    from align.models.packed_attention import use_packed_attention

    kwargs: dict[str, Any] = {"dtype": torch_dtype(cfg.dtype), "trust_remote_code": cfg.trust_remote_code}
    if quantize_4bit:
        kwargs.update(_four_bit_kwargs(cfg))
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, source, cfg, **kwargs)
    if quantize_4bit and not torch.cuda.is_available():
        _disable_bnb_cpu_repacking(model)
    if not cfg.trust_remote_code:  # remote code may test for "sdpa" by name, or not be the classes we know
        use_packed_attention(model)
        use_lean_activations(model)
    return model


def _four_bit_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ImportError("model.method=qlora needs bitsandbytes: pip install 'align[qlora]'") from error
    from transformers import BitsAndBytesConfig

    on_gpu = torch.cuda.is_available()
    # On CPU the 4-bit matmul runs in float32: bitsandbytes' CPU path is slow or unsupported in half.
    compute_dtype = torch_dtype(cfg.dtype) if on_gpu else torch.float32
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    kwargs: dict[str, Any] = {"quantization_config": quantization}
    if on_gpu:  # one full copy per process, on its own GPU (launchers set LOCAL_RANK)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


def _disable_bnb_cpu_repacking(model: nn.Module) -> None:
    """See the module docstring: keep 4-bit weights in the layout whose matmul has a backward."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _sync_special_tokens(model: nn.Module, tokenizer) -> None:
    """Make the model's pad id the tokenizer's (``ensure_pad_token`` may have changed it)."""
    if tokenizer.pad_token_id is None:
        return
    model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id
        if generation_config.eos_token_id is None:
            generation_config.eos_token_id = tokenizer.eos_token_id


# --------------------------------------------------------------------------- methods


def _full(model: nn.Module, cfg: ModelConfig, source: str) -> nn.Module:
    model.requires_grad_(True)
    return model


def _lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        modules_to_save=settings.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def _lora(model: nn.Module, cfg: ModelConfig, source: str) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, _lora_config(cfg.lora))


def _qlora(model: nn.Module, cfg: ModelConfig, source: str) -> nn.Module:
    from peft import prepare_model_for_kbit_training

    # Gradient checkpointing is the Trainer's business (training.gradient_checkpointing), not the loader's.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _lora(model, cfg, source)


def _prompt_tuning(model: nn.Module, cfg: ModelConfig, source: str) -> nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    settings = cfg.prompt_tuning
    if settings.init_text:
        config = PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=settings.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=settings.init_text,
            tokenizer_name_or_path=source,
        )
    else:
        config = PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=settings.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
    return get_peft_model(model, config)


def _partial(model: nn.Module, cfg: ModelConfig, source: str) -> nn.Module:
    set_partial_trainable(model, cfg.partial, cfg.partial.trainable_top_k)
    return model


METHODS: dict[str, Callable[[nn.Module, ModelConfig, str], nn.Module]] = {
    "full": _full,
    "lora": _lora,
    "qlora": _qlora,
    "prompt_tuning": _prompt_tuning,
    "partial": _partial,
}
