"""End-of-run check of a DPO policy against its reference on held-out prompts.

For each prompt both models sample one response (same seed). Reported: mean KL(policy || reference)
over the policy's responses, their mean length, and, with a reward model, the policy's win rate and
both mean scores. Every row goes to ``samples.jsonl`` and a markdown table ``samples.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from align.config import DPOEvalSettings
from align.eval.responses import markdown_cell, response_kl
from align.judges import load_judge, score
from align.ops.stats import win_rate_and_se
from align.sampling import Prompt, sample

logger = logging.getLogger("align.dpo")


def evaluate_against_reference(
    policy: Any,
    reference: Any,
    reference_scope: Callable[[], contextlib.AbstractContextManager],
    tokenizer: Any,
    prompts: list[Prompt],
    settings: DPOEvalSettings,
    out: Path,
    seed: int,
) -> dict[str, float]:
    """Metrics ``eval/kl_to_reference``, ``eval/response_tokens`` (+ ``eval/win_rate``, ``eval/reward_policy``,
    ``eval/reward_reference`` with a reward model); writes ``samples.jsonl`` and ``samples.md`` into ``out``.

    ``reference`` is the frozen reference model, or the policy itself with ``reference_scope`` disabling its
    adapter; ``reference_scope()`` is entered around every reference call.
    """
    rows: list[dict[str, Any]] = []
    kls: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, len(prompts), settings.batch_size):
            batch = prompts[start : start + settings.batch_size]
            sampling = {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                        "batch_size": settings.batch_size, "seed": seed + start}
            ours = sample(policy, tokenizer, batch, **sampling)
            with reference_scope():
                theirs = sample(reference, tokenizer, batch, **sampling)
            kl = response_kl(policy, reference_scope, reference, ours)
            kls.append(kl)
            lengths.append(ours.lengths.float().cpu())
            for i, prompt in enumerate(batch):
                rows.append({"prompt": prompt, "policy": ours.texts[i], "reference": theirs.texts[i],
                             "kl": round(kl[i].item(), 4)})
    finally:
        policy.train(was_training)

    metrics = {"eval/kl_to_reference": torch.cat(kls).mean().item(), "eval/response_tokens": torch.cat(lengths).mean().item()}
    if settings.reward_model:
        metrics.update(_judge(settings.reward_model, rows))
    _write_samples(out, rows)
    logger.info("policy vs reference on %d held-out prompts: %s", len(rows), metrics)
    return metrics


def _judge(reward_dir: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    judge = load_judge(reward_dir)
    prompts = [row["prompt"] for row in rows]
    ours = score(judge, prompts, [row["policy"] for row in rows]).raw
    theirs = score(judge, prompts, [row["reference"] for row in rows]).raw
    for row, a, b in zip(rows, ours.tolist(), theirs.tolist()):
        row.update(reward_policy=round(a, 4), reward_reference=round(b, 4))
    return {
        "eval/win_rate": win_rate_and_se(ours, theirs)[0],
        "eval/reward_policy": ours.mean().item(),
        "eval/reward_reference": theirs.mean().item(),
    }


def _write_samples(out: Path, rows: list[dict[str, Any]]) -> None:
    with (out / "samples.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    scored = "reward_policy" in rows[0] if rows else False
    head = ["prompt", "policy", "reference", "KL"] + (["reward policy", "reward reference"] if scored else [])
    lines = ["# Policy vs reference on held-out prompts", "", "| " + " | ".join(head) + " |",
             "|" + " --- |" * len(head)]
    for row in rows:
        cells = [markdown_cell(row[key]) for key in ("prompt", "policy", "reference")] + [f"{row['kl']:.3f}"]
        if scored:
            cells += [f"{row['reward_policy']:.3f}", f"{row['reward_reference']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "samples.md").write_text("\n".join(lines) + "\n")
