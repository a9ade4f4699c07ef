"""``align generate``: sample N responses per prompt from one or more models into a candidates file.

    align generate --model smollm2-135m-instruct --prompts examples/data/prompts_demo.jsonl --n 2 --out candidates.jsonl
    align generate recipes/generate.yaml generation.temperature=0.7 generation.n=4

The recipe schema is ``align.config.GenerateRecipe``; the flags are ``align.cli``'s.

Each output line is one prompt with every model's samples, ready for
``align label import candidates.jsonl --project NAME``::

    {"id": "p3f2a...", "prompt": ..., "responses": [{"text": ..., "model": ..., "stop": "eos"}, ...],
     "generation": {"n": 2, "temperature": 1.0, ...}}

Prompts are read through the dataset layer as kind ``prompt`` (any record kind with a prompt
converts) and sampled by ``align.sampling.sample`` (the prompt rendered as in training, ``n``
samples each, seeded per batch); a response ends at the first EOS token (``stop: "eos"``) or at
``max_new_tokens`` (``stop: "length"``). Models are loaded one at a time, frozen, on the GPU when
there is one; every model draws with the same seed. The id of a prompt is a hash of its content, so re-running over a grown prompt
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
from typing import Any

import torch

from align.config import GenerateRecipe
from align.data import load_records, prompt_key
from align.models import load_policy
from align.run import StageResult, finish_stage, prepare_run_dir
from align.sampling import sample

logger = logging.getLogger("align.generate")


def prompt_id(prompt: str | list[dict[str, str]]) -> str:
    """A stable id from the prompt's content."""
    return "p" + hashlib.sha1(prompt_key({"prompt": prompt}).encode("utf-8")).hexdigest()[:12]


def run(recipe: GenerateRecipe) -> StageResult:
    """Sample every model over the prompts and write the candidates file (atomically, once all models are done)."""
    out_dir = prepare_run_dir(recipe, recipe.training.output_dir)
    data = load_records(recipe.data, "prompt", want="prompt")
    prompts = list(data.train["prompt"])
    ids = _unique_ids(prompts)
    responses: list[list[dict[str, str]]] = [[] for _ in prompts]
    settings = recipe.generation
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stops = {"eos": 0, "length": 0}
    for cfg in recipe.models:
        started = time.perf_counter()
        model, tokenizer = load_policy(cfg, trainable=False)
        model.to(device)
        samples = sample(model, tokenizer, prompts, **settings.sample_kwargs(), n=settings.n, seed=settings.seed)
        for row, (text, done) in enumerate(zip(samples.texts, samples.finished.tolist())):
            stop = "eos" if done else "length"
            stops[stop] += 1
            responses[row // settings.n].append({"text": text, "model": cfg.name_or_path, "stop": stop})
        seconds = time.perf_counter() - started
        logger.info("%s: %d responses in %.1f s (%.1f responses/s)", cfg.name_or_path, len(prompts) * settings.n,
                    seconds, len(prompts) * settings.n / max(seconds, 1e-9))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    meta = settings.model_dump(mode="json")
    rows = [{"id": i, "prompt": p, "responses": r, "generation": meta} for i, p, r in zip(ids, prompts, responses)]
    out = _write_jsonl(rows, Path(recipe.output or out_dir / "candidates.jsonl"))
    total = sum(stops.values())
    metrics = {"candidates": str(out), "prompts": len(rows), "responses": total,
               "generate/eos_fraction": stops["eos"] / max(total, 1)}
    logger.info("wrote %s: %s", out, metrics)
    return finish_stage(out_dir, recipe, metrics)


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
