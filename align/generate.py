"""``align generate``: sample N responses per prompt from one or more models into a candidates file.

    align generate --model smollm2-135m-instruct --prompts examples/data/prompts_demo.jsonl --n 2 --out candidates.jsonl
    align generate recipes/generate.yaml generation.temperature=0.7 generation.n=4

Each output line is one prompt with every model's samples, ready for
``align label import candidates.jsonl --project NAME``::

    {"id": "p3f2a...", "prompt": ..., "responses": [{"text": ..., "model": ..., "stop": "eos"}, ...],
     "generation": {"n": 2, "temperature": 1.0, ...}}

Prompts are read through the dataset layer as kind ``prompt`` (any record kind with a prompt
converts), rendered with the model's chat template (``render_prompt``), left-padded in batches and
sampled with ``n`` return sequences each; a response ends at the first EOS token (``stop: "eos"``)
or at ``max_new_tokens`` (``stop: "length"``). Models are loaded one at a time, frozen, on the GPU
when there is one. The id of a prompt is a hash of its content, so re-running over a grown prompt
file gives the old prompts their old ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from align.config import DataConfig, GenerationSettings, ModelConfig, OutputSettings, StageRecipe
from align.data import load_records, prompt_key, render_prompt
from align.recipe import dump_recipe
from align.stages import StageResult

logger = logging.getLogger("align.generate")


class CandidateSampling(GenerationSettings):
    n: int = Field(2, gt=0, description="Responses per prompt from each model.")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0, description="Prompts per generate call (each sampled n times).")
    seed: int = Field(42, description="Seed of the sampling, set before each model.")


class GenerateRecipe(StageRecipe):
    """``align generate``: candidates for labeling. ``model:`` (one) is accepted for ``models:``."""

    stage: Literal["generate"] = "generate"
    models: list[ModelConfig] = Field(..., min_length=1, description="Models to sample from; each is recorded by name_or_path.")
    data: DataConfig = Field(..., description="Prompts; any record kind with a prompt converts (default kind: prompt).")
    generation: CandidateSampling = Field(default_factory=CandidateSampling)
    output: str | None = Field(None, description="Candidates JSONL to write; default: <training.output_dir>/candidates.jsonl.")
    training: OutputSettings = Field(default_factory=lambda: OutputSettings(output_dir="runs/generate"))

    @model_validator(mode="before")
    @classmethod
    def _one_model(cls, values: Any) -> Any:
        if isinstance(values, dict) and "model" in values:
            if "models" in values:
                raise ValueError("give either 'model' or 'models', not both")
            values = {k: v for k, v in values.items() if k != "model"} | {"models": [values["model"]]}
        return values


def prompt_id(prompt: str | list[dict[str, str]]) -> str:
    """A stable id from the prompt's content."""
    return "p" + hashlib.sha1(prompt_key({"prompt": prompt}).encode("utf-8")).hexdigest()[:12]


def cut_at_eos(ids: list[int], eos_ids: set[int]) -> tuple[list[int], Literal["eos", "length"]]:
    """Tokens before the first EOS, and why sampling stopped; anything after EOS (padding) is dropped.

    ``[5, 7, EOS, PAD, PAD]`` -> ``([5, 7], "eos")``; ``[5, 7, 9]`` -> ``([5, 7, 9], "length")``.
    """
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position], "eos"
    return ids, "length"


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a response: the generation config's (an int or a list) and the tokenizer's."""
    found: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if value is not None and value not in found:
            found.append(int(value))
    if not found:
        raise ValueError("the model and tokenizer declare no EOS token; sampling could not stop before max_new_tokens")
    return found


def sample_responses(model: Any, tokenizer: Any, prompt_texts: list[str], settings: CandidateSampling) -> list[list[dict[str, str]]]:
    """``settings.n`` samples for each rendered prompt: ``[[{text, stop}] * n] * len(prompt_texts)``."""
    import torch

    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    # A rendered chat template already holds its special tokens; a bare prompt gets the tokenizer's (BOS).
    add_special = not bool(getattr(tokenizer, "chat_template", None))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # every prompt ends at the same column, where sampling starts
    out: list[list[dict[str, str]]] = []
    try:
        for start in range(0, len(prompt_texts), settings.batch_size):
            batch = prompt_texts[start : start + settings.batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=add_special).to(device)
            with torch.no_grad():
                generated = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    top_k=settings.top_k,
                    max_new_tokens=settings.max_new_tokens,
                    num_return_sequences=settings.n,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = generated[:, enc["input_ids"].shape[1] :].tolist()  # (b * n, t): prompt i's samples are rows i*n..i*n+n-1
            for i in range(len(batch)):
                samples = []
                for ids in new_tokens[i * settings.n : (i + 1) * settings.n]:
                    kept, stop = cut_at_eos(ids, set(eos))
                    samples.append({"text": tokenizer.decode(kept, skip_special_tokens=True), "stop": stop})
                out.append(samples)
    finally:
        tokenizer.padding_side = side
    return out


def run(recipe: GenerateRecipe) -> StageResult:
    """Sample every model over the prompts and write the candidates file (atomically, once all models are done)."""
    import torch

    from align.models import load_policy

    data = load_records(recipe.data, "prompt", want="prompt")
    prompts = list(data.train["prompt"])
    ids = _unique_ids(prompts)
    responses: list[list[dict[str, str]]] = [[] for _ in prompts]
    settings = recipe.generation
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stops = {"eos": 0, "length": 0}
    for cfg in recipe.models:
        started = time.perf_counter()
        torch.manual_seed(settings.seed)
        model, tokenizer = load_policy(cfg, trainable=False)
        model.to(device)
        texts = [render_prompt(tokenizer, prompt) for prompt in prompts]
        for i, samples in enumerate(sample_responses(model, tokenizer, texts, settings)):
            for sample in samples:
                stops[sample["stop"]] += 1
                responses[i].append({"text": sample["text"], "model": cfg.name_or_path, "stop": sample["stop"]})
        seconds = time.perf_counter() - started
        logger.info("%s: %d responses in %.1f s (%.1f responses/s)", cfg.name_or_path, len(prompts) * settings.n,
                    seconds, len(prompts) * settings.n / max(seconds, 1e-9))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    meta = settings.model_dump(mode="json")
    rows = [{"id": i, "prompt": p, "responses": r, "generation": meta} for i, p, r in zip(ids, prompts, responses)]
    out = _write_jsonl(rows, Path(recipe.output or Path(recipe.training.output_dir) / "candidates.jsonl"))
    total = sum(stops.values())
    metrics = {"candidates": str(out), "prompts": len(rows), "responses": total,
               "generate/eos_fraction": stops["eos"] / max(total, 1)}
    logger.info("wrote %s: %s", out, metrics)
    result = StageResult(output_dir=Path(recipe.training.output_dir), metrics=metrics)
    result.output_dir.mkdir(parents=True, exist_ok=True)
    dump_recipe(recipe, result.output_dir / "recipe.yaml")
    result.save()
    return result


def _unique_ids(prompts: list[Any]) -> list[str]:
    ids, seen = [], {}
    for prompt in prompts:
        base = prompt_id(prompt)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")  # only with data.dedup=false
    return ids


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------- command line

FLAG_KEYS = {
    "prompts": "data.path",
    "n": "generation.n",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "max_new_tokens": "generation.max_new_tokens",
    "batch_size": "generation.batch_size",
    "seed": "generation.seed",
    "out": "output",
}


def add_generate_arguments(parser: Any) -> None:
    parser.add_argument("recipe", nargs="?", default=None, help="YAML recipe (optional: flags alone are enough)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    parser.add_argument("--model", action="append", default=None, help="model to sample from (repeat for several)")
    parser.add_argument("--prompts", help="prompt file, read with the dataset layer (kind prompt)")
    parser.add_argument("--n", type=int, help="responses per prompt from each model")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", dest="top_p", type=float)
    parser.add_argument("--top-k", dest="top_k", type=int)
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="prompts per generate call")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="candidates JSONL to write")


def recipe_from_args(args: Any) -> GenerateRecipe:
    """Defaults < recipe < key=value overrides < flags."""
    from align.recipe import apply_overrides, read_yaml, validate

    overrides = list(args.overrides or [])
    recipe_path = args.recipe
    if recipe_path is not None and "=" in recipe_path and not Path(recipe_path).exists():
        overrides.insert(0, recipe_path)  # `align generate key=value ...` without a recipe
        recipe_path = None
    data = apply_overrides(read_yaml(recipe_path) if recipe_path else {}, overrides)
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data = _set(data, key, value)
    if args.model:
        data.pop("model", None)
        data["models"] = [{"name_or_path": name} for name in args.model]
    return validate(GenerateRecipe, data, source=recipe_path or "align generate")


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data
