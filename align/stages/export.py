"""``align export``: merged safetensors + tokenizer + model card, GGUF files checked by loading them back, a Modelfile.

    align export recipes/export.yaml model.name_or_path=runs/dpo training.output_dir=runs/export

Output directory::

    model.safetensors, config.json, generation_config.json   AutoModelForCausalLM.from_pretrained(out)
    tokenizer.json, tokenizer_config.json, chat_template.jinja
    README.md                                                 model card
    gguf/model-f16.gguf, gguf/model-q8_0.gguf                 llama.cpp; from_pretrained(out/"gguf", gguf_file=...)
    gguf/Modelfile                                            ollama create NAME -f out/gguf/Modelfile
    recipe.yaml, stage_result.json

The GGUF files sit in their own folder: transformers reads a GGUF's tokenizer only from a folder
without ``tokenizer.json`` (with one, it mixes the two and loses the special tokens).

What is merged: ``adapter`` into ``model`` when given; else a LoRA adapter dir given as
``model.name_or_path``, or the ``adapter/`` of a run dir, into the base its adapter_config.json
names. Each GGUF is loaded back with transformers and its logits on a probe chat compared with the
merged model's: the largest difference relative to the largest logit must stay within
``gguf.tolerance_<type>``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.config import ExportRecipe, ModelConfig
from align.export import ExportError
from align.export.card import lineage, model_card
from align.export.gguf import UnsupportedModel, check_supported, write_llama_gguf
from align.export.ollama import modelfile
from align.models import resolve_model_source, torch_dtype
from align.run import StageResult, finish_stage, prepare_run_dir

logger = logging.getLogger("align.export")

GGUF_DIR = "gguf"
PROBE_CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2+2? And the capital of France?"},
    {"role": "assistant", "content": "4, and Paris. Thank you!"},
]


@dataclass
class Source:
    """Where the exported weights come from: a base model, an optional LoRA adapter, the tokenizer's dir."""

    base: str
    adapter: Path | None
    tokenizer: str
    run_dir: str  # what the model card traces back from


def find_source(recipe: ExportRecipe) -> Source:
    """Resolve ``model`` / ``adapter`` into base + adapter + tokenizer locations (see the module docstring)."""
    path = Path(recipe.model.name_or_path).expanduser()
    adapter: Path | None = None
    base = recipe.model.name_or_path
    if recipe.adapter:
        adapter = Path(recipe.adapter).expanduser()
        if not (adapter / "adapter_config.json").is_file():
            raise ExportError(f"adapter: {adapter} has no adapter_config.json; give a LoRA adapter directory")
    elif (path / "adapter_config.json").is_file():
        adapter = path
    elif (path / "adapter" / "adapter_config.json").is_file():
        adapter = path / "adapter"
    if adapter is not None and not recipe.adapter:
        config = json.loads((adapter / "adapter_config.json").read_text())
        if config.get("peft_type") not in (None, "LORA"):
            raise ExportError(f"{adapter} holds a {config['peft_type']} adapter; only LoRA adapters merge into weights")
        base = config.get("base_model_name_or_path") or ""
        if not base:
            raise ExportError(f"{adapter / 'adapter_config.json'} names no base_model_name_or_path; set adapter: and model:")
    tokenizer_dirs = [d for d in (adapter, path) if d is not None and (d / "tokenizer_config.json").is_file()]
    tokenizer = str(tokenizer_dirs[0]) if tokenizer_dirs else resolve_model_source(base, recipe.model.gguf_file)
    return Source(base=base, adapter=adapter, tokenizer=tokenizer, run_dir=str(path))


def load_merged(recipe: ExportRecipe, source: Source) -> tuple[Any, Any]:
    """The model in ``model.dtype`` with the adapter merged (eval mode), and the tokenizer with ``model.chat_template``."""
    cfg: ModelConfig = recipe.model
    gguf_file = cfg.gguf_file if source.adapter is None or recipe.adapter else None
    base_dir = resolve_model_source(source.base, gguf_file)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype(cfg.dtype),
                                                 trust_remote_code=cfg.trust_remote_code)
    if source.adapter is not None:
        model = PeftModel.from_pretrained(model, str(source.adapter)).merge_and_unload()
        logger.info("merged LoRA adapter %s into %s", source.adapter, source.base)
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer, trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template:  # a .jinja file or the template itself, as for training
        template = Path(cfg.chat_template).expanduser()
        is_file = cfg.chat_template.endswith((".jinja", ".j2")) and template.is_file()
        tokenizer.chat_template = template.read_text() if is_file else cfg.chat_template
    return model.eval(), tokenizer


def probe_text(tokenizer: Any) -> str:
    """What the GGUF check runs on: a short chat with digits and punctuation, through the chat template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(PROBE_CHAT, tokenize=False)
    return " ".join(m["content"] for m in PROBE_CHAT)


@torch.no_grad()
def check_gguf(model: Any, tokenizer: Any, gguf_path: Path, tolerance: float) -> dict[str, Any]:
    """Load ``gguf_path`` back with transformers; compare token ids and logits with ``model``'s on the probe chat."""
    text = probe_text(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    same_ids = loaded_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    batch = torch.tensor([ids])
    expected = model.float()(batch).logits
    got = loaded(batch).logits
    diff = (got - expected).abs().max().item()
    rel = diff / max(expected.abs().max().item(), 1e-6)
    return {
        "file": f"{GGUF_DIR}/{gguf_path.name}",
        "max_abs_diff": diff,
        "rel_diff": rel,
        "tolerance": tolerance,
        "top1_agreement": (got.argmax(-1) == expected.argmax(-1)).float().mean().item(),
        "tokenizer_match": same_ids,
    }


def run(recipe: ExportRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    name = recipe.model_name or out.resolve().name
    source = find_source(recipe)
    model, tokenizer = load_merged(recipe, source)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    logger.info("saved the merged model and tokenizer (safetensors) to %s", out)

    runs = lineage(source.run_dir) if Path(source.run_dir).exists() else []
    metrics: dict[str, Any] = {"export/merged_adapter": source.adapter is not None,
                               "export/parameters": sum(p.numel() for p in model.parameters())}
    files = [("model.safetensors, config.json", "the merged model: `AutoModelForCausalLM.from_pretrained(dir)`"),
             ("tokenizer.json, tokenizer_config.json", "the tokenizer, with its chat template")]
    checks: list[dict[str, Any]] = []
    _write_card(out, name, source, runs, files, checks)  # a card even if the GGUF part fails below
    if recipe.gguf.enabled:
        files += _write_gguf(recipe, model, tokenizer, out, name, metrics, checks)
        _write_card(out, name, source, runs, files, checks)
    return finish_stage(out, recipe, metrics)


def _write_gguf(recipe: ExportRecipe, model: Any, tokenizer: Any, out: Path, name: str, metrics: dict[str, Any],
                checks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """GGUF files (checked), then the Modelfile; fills ``metrics`` and ``checks``; returns the files written."""
    try:
        check_supported(model.config)
    except UnsupportedModel as err:
        raise ExportError(
            f"GGUF export: unsupported {err}. The merged model, tokenizer and model card were still exported as "
            f"safetensors to {out}; set gguf.enabled=false to skip GGUF"
        ) from None
    folder = out / GGUF_DIR
    folder.mkdir(exist_ok=True)
    files: list[tuple[str, str]] = []
    for file_type in recipe.gguf.types:
        path = folder / f"model-{file_type}.gguf"
        written = write_llama_gguf(model, tokenizer, path, file_type, name, recipe.gguf.tokenizer_pre)
        metrics[f"export/gguf_{file_type}_bytes"] = written["bytes"]
        files.append((f"{GGUF_DIR}/{path.name}", f"GGUF {file_type} for llama.cpp / Ollama "
                      f"(`from_pretrained('{GGUF_DIR}', gguf_file='{path.name}')` in transformers)"))
        if recipe.gguf.verify:
            tolerance = getattr(recipe.gguf, f"tolerance_{file_type}")
            check = check_gguf(model, tokenizer, path, tolerance)
            checks.append(check)
            metrics.update({
                f"export/gguf_{file_type}_max_abs_diff": check["max_abs_diff"],
                f"export/gguf_{file_type}_rel_diff": check["rel_diff"],
                f"export/gguf_{file_type}_top1_agreement": check["top1_agreement"],
                f"export/gguf_{file_type}_tokenizer_match": check["tokenizer_match"],
            })
            logger.info("%s loads back: max |logit diff| %.4g (%.4g of the largest logit; tolerance %g), top-1 "
                        "agreement %.3f, same token ids: %s", path.name, check["max_abs_diff"], check["rel_diff"],
                        tolerance, check["top1_agreement"], check["tokenizer_match"])
            if not check["tokenizer_match"]:
                logger.warning("%s tokenizes the probe chat differently from the HF tokenizer", path.name)
            if check["rel_diff"] > tolerance:
                raise RuntimeError(
                    f"{path}: logits differ from the merged model's by {check['max_abs_diff']:.4g} "
                    f"({check['rel_diff']:.4g} of the largest logit), above gguf.tolerance_{file_type}={tolerance}; "
                    f"the safetensors export in {out} is unaffected"
                )
    if recipe.ollama.enabled:
        text, chat = modelfile(f"model-{recipe.ollama.gguf}.gguf", tokenizer, system=recipe.ollama.system,
                               parameters=recipe.ollama.parameters, title=name)
        (folder / "Modelfile").write_text(text)
        metrics["export/ollama_chatml_template"] = chat.chatml
        files.append((f"{GGUF_DIR}/Modelfile", f"`ollama create {name} -f {out / GGUF_DIR / 'Modelfile'}`"))
    return files


def _write_card(out: Path, name: str, source: Source, runs: list[dict[str, Any]], files: list[tuple[str, str]],
                checks: list[dict[str, Any]]) -> None:
    adapter = str(source.adapter) if source.adapter is not None else None
    (out / "README.md").write_text(model_card(name, source.run_dir, adapter, runs, files, checks))
