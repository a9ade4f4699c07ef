"""Write a Llama-architecture model and its byte-level BPE tokenizer as GGUF (f16 or q8_0) with the ``gguf`` package.

    from align.export.gguf import write_llama_gguf
    write_llama_gguf(model, tokenizer, "model-q8_0.gguf", "q8_0", name="my-model")

What llama.cpp's ``convert_hf_to_gguf.py`` (class ``LlamaModel``) writes for a ``LlamaForCausalLM``,
and what transformers' GGUF loader reads back:

- architecture ``llama``; context/embedding/feed-forward lengths, block count, head counts, rope
  base and dimension, RMS-norm epsilon, vocabulary size;
- tensors under llama.cpp's names (``token_embd``, ``blk.N.attn_q`` ... ``output``). 1-D tensors
  (norms) stay float32; 2-D ones become f16, or q8_0 (blocks of 32 int8 with one f16 scale) when
  their rows divide into blocks, else f16 as llama.cpp does. A tied LM head is not written:
  llama.cpp then reuses ``token_embd``;
- ``attn_q`` / ``attn_k`` rows permuted from HF's rotate-half rope layout to llama.cpp's
  interleaved pairs (``permute_rope``); transformers undoes this when it loads the file;
- the tokenizer as ``gpt2`` BPE: tokens by id, their types (special added tokens CONTROL, other
  added tokens USER_DEFINED, ids without a token ``[PAD<id>]`` UNUSED), merges, special ids,
  whether BOS is added, the chat template. ``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer
  regex; it is detected from the HF pre-tokenizer (``detect_pretokenizer``).

Anything else (another architecture, biases, rope scaling, a sentencepiece tokenizer) raises
``UnsupportedModel`` naming what is not supported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("align.export")

# HF Llama parameter (inside model.layers.N.) -> llama.cpp tensor (blk.N.<name>.weight).
BLOCK_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# What llama.cpp's "llama" graph computes: config values any other setting would change.
_FIXED_CONFIG = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


class UnsupportedModel(ValueError):
    """The model or tokenizer cannot be written as a llama GGUF; the message says what is unsupported."""


def check_supported(config: Any) -> None:
    """Raise ``UnsupportedModel`` unless ``config`` is a plain Llama that llama.cpp's "llama" graph computes."""
    arch = (getattr(config, "architectures", None) or [getattr(config, "model_type", "?")])[0]
    if getattr(config, "model_type", None) != "llama":
        raise UnsupportedModel(f"architecture {arch} (model_type '{config.model_type}'); GGUF export supports "
                               "LlamaForCausalLM (model_type 'llama') only")
    for key, wanted in _FIXED_CONFIG.items():
        value = getattr(config, key, wanted)
        if value != wanted:
            raise UnsupportedModel(f"{arch} with {key}={value!r} (the llama GGUF graph needs {key}={wanted!r})")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModel(f"{arch} with rope scaling {rope!r}; only unscaled rope is written")


def permute_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q/k projection ``(n_head * head_dim, in)`` from HF's rope layout to llama.cpp's.

    HF rotates the two halves of each head (``rotate_half``): dims ``i`` and ``i + head_dim/2`` form
    a pair. llama.cpp rotates adjacent dims ``2i, 2i+1``. Per head, rows ``[0 .. d/2) + [d/2 .. d)``
    are interleaved: head_dim 4, rows ``[r0, r1, r2, r3]`` -> ``[r0, r2, r1, r3]``. Same as
    ``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py; k uses the KV head count.
    """
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])  # (heads, half, d/2, ...)
            .swapaxes(1, 2)  # (heads, d/2, half, ...)
            .reshape(weight.shape))


def gguf_tensors(state_dict: dict[str, Any], config: Any) -> dict[str, np.ndarray]:
    """HF Llama state dict -> llama.cpp tensor name -> float32 array, q/k permuted, tied head left out."""
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: dict[str, np.ndarray] = {}
    for name, tensor in state_dict.items():
        array = tensor.detach().float().cpu().numpy()
        if name == "lm_head.weight" and tied:
            continue
        if name in GLOBAL_TENSORS:
            out[GLOBAL_TENSORS[name]] = array
            continue
        parts = name.split(".")  # model.layers.N.<module...>.weight
        module = ".".join(parts[3:-1])
        if parts[:2] != ["model", "layers"] or parts[-1] != "weight" or module not in BLOCK_TENSORS:
            raise UnsupportedModel(f"tensor '{name}' has no llama GGUF name (biases and extra modules are not supported)")
        if module == "self_attn.q_proj":
            array = permute_rope(array, config.num_attention_heads)
        elif module == "self_attn.k_proj":
            array = permute_rope(array, config.num_key_value_heads)
        out[f"blk.{parts[2]}.{BLOCK_TENSORS[module]}.weight"] = array
    if "output.weight" not in out and not tied:
        raise UnsupportedModel("the model has no lm_head.weight and does not tie it to the embeddings")
    return out


def encode_tensor(array: np.ndarray, file_type: str) -> tuple[np.ndarray, Any]:
    """(data, ggml type) of one tensor in a ``file_type`` ("f16" or "q8_0") file, as llama.cpp stores it."""
    from gguf import GGMLQuantizationType, quants

    if array.ndim == 1:  # norms: tiny, and precision-sensitive
        return array.astype(np.float32), GGMLQuantizationType.F32
    if file_type == "q8_0":
        try:
            return quants.quantize(array.astype(np.float32), GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
        except quants.QuantError:  # rows not a multiple of the 32-value block
            logger.info("tensor of shape %s stays f16: rows do not divide into q8_0 blocks", array.shape)
    return array.astype(np.float16), GGMLQuantizationType.F16


# --------------------------------------------------------------------------- tokenizer


def detect_pretokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for the HF pre-tokenizer, or "default" (with a warning).

    ``ByteLevel(use_regex=True)`` alone is GPT-2's regex ("gpt-2"); preceded by single-digit splitting
    it is SmolLM's ("smollm"). llama.cpp picks its split regex by this name.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("use_regex", True), s.get("individual_digits", False)) for s in steps]
    if kinds == [("ByteLevel", True, False)]:
        return "gpt-2"
    if len(kinds) == 2 and kinds[0][0] == "Digits" and kinds[0][2] and kinds[1][:2] == ("ByteLevel", True):
        return "smollm"
    logger.warning("pre-tokenizer %s has no known llama.cpp name: writing 'default'; llama.cpp may split text "
                   "differently (set gguf.tokenizer_pre to override)", json.dumps(pre)[:200])
    return "default"


def tokenizer_metadata(tokenizer: Any, vocab_size: int, pre: str | None = None) -> dict[str, Any]:
    """The tokenizer fields of a GGUF for a byte-level BPE ``tokenizer`` (a fast tokenizer) and ``vocab_size`` ids."""
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedModel(f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or (spec.get("decoder") or {}).get("type") == "ByteLevel"
    if model.get("type") != "BPE" or not byte_level:
        raise UnsupportedModel(f"tokenizer model {model.get('type')} (byte-level: {byte_level}); GGUF export writes "
                               "byte-level BPE (gpt2) tokenizers only")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedModel(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} embeddings")
    by_id = {index: token for token, index in vocab.items()}
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(TokenType.CONTROL if added[index].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tokenizer("a")["input_ids"]
    meta: dict[str, Any] = {
        "pre": pre or detect_pretokenizer(spec),
        "tokens": tokens,
        "token_types": types,
        "merges": merges,
        "add_bos": bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id,
        "chat_template": tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None,
    }
    for key in ("bos", "eos", "unk", "pad"):
        meta[f"{key}_id"] = getattr(tokenizer, f"{key}_token_id", None)
    return meta


# --------------------------------------------------------------------------- writer


FILE_TYPES = ("f16", "q8_0")


def write_llama_gguf(model: Any, tokenizer: Any, path: str | Path, file_type: str, name: str,
                     tokenizer_pre: str | None = None) -> dict[str, Any]:
    """Write ``model`` (a ``LlamaForCausalLM``) and ``tokenizer`` to ``path``; returns a summary of what was written."""
    import gguf

    if file_type not in FILE_TYPES:
        raise ValueError(f"GGUF file type '{file_type}': expected one of {', '.join(FILE_TYPES)}")
    config = model.config
    check_supported(config)
    tensors = gguf_tensors(model.state_dict(), config)
    tok = tokenizer_metadata(tokenizer, config.vocab_size, tokenizer_pre)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(_rope_parameters(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if file_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["token_types"])
    writer.add_token_merges(tok["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if tok[f"{key}_id"] is not None:
            add(tok[f"{key}_id"])
    writer.add_add_bos_token(tok["add_bos"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    kinds: dict[str, int] = {}
    for tensor_name, array in tensors.items():
        data, qtype = encode_tensor(array, file_type)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        kinds[qtype.name] = kinds.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    size = Path(path).stat().st_size
    logger.info("wrote %s (%s, %.1f MB): tensors %s, pre-tokenizer '%s'", path, file_type, size / 1e6, kinds, tok["pre"])
    return {"path": str(path), "bytes": size, "tensor_types": kinds, "tokenizer_pre": tok["pre"]}


def _rope_parameters(config: Any) -> dict[str, Any]:
    """Rope settings across transformers versions: ``rope_parameters`` (v5) or ``rope_theta`` + ``rope_scaling``."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        if getattr(config, "rope_theta", None) is not None:
            params.setdefault("rope_theta", config.rope_theta)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params
