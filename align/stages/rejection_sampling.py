"""``align rejection_sampling``: sample N answers per prompt, keep the judge's best, write them as SFT data.

    align rejection_sampling recipes/rejection_sampling.yaml generation.n=8
    align run recipes/rejection_sampling_sft.yaml            # then SFT on the kept answers

Llama 2's rejection-sampling fine-tuning (Touvron et al. 2023, section 3.2.3): the policy answers each
prompt ``generation.n`` times (``align.sampling.sample``, seeded), ``align.judges.score`` scores every
answer as PPO and eval do (missing-EOS penalty and clip included), and the best one becomes a
prompt/completion row of ``best.jsonl``, which ``align sft`` reads as it is. Each row keeps its
provenance: ``score``, ``mean_score`` of the N, and ``n``. ``min_gain`` drops prompts whose best
answer is no better than their average one. The same best-of-N serves ``align eval`` as a
no-training baseline (``policies: [{best_of: N, selector: ...}]``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from align.config import RejectionSamplingRecipe
from align.data import load_records
from align.judges import judge_for, score_n
from align.models import load_policy
from align.run import StageResult, finish_stage, prepare_run_dir
from align.sampling import sample

logger = logging.getLogger("align.rejection_sampling")


def run(recipe: RejectionSamplingRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    prompts = list(load_records(recipe.data, "prompt", want="prompt").train["prompt"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_policy(recipe.model, trainable=False)
    settings = recipe.generation
    samples = sample(model.to(device), tokenizer, prompts, **settings.sample_kwargs(), n=settings.n, seed=settings.seed)
    scores = score_n(judge_for(recipe.reward), prompts, samples.texts, samples.finished, recipe.reward).final  # (P, N)
    rows = best_rows(prompts, samples.texts, scores, recipe.min_gain)
    path = Path(recipe.output or out / "best.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    metrics = {
        "sft_data": str(path), "prompts": len(prompts), "kept": len(rows),
        "rejection/mean_score": scores.mean().item(),
        "rejection/best_score": sum(row["score"] for row in rows) / max(len(rows), 1),
    }
    logger.info("kept %d of %d prompts: mean score of all answers %.3f, of the kept best %.3f -> %s", len(rows),
                len(prompts), metrics["rejection/mean_score"], metrics["rejection/best_score"], path)
    return finish_stage(out, recipe, metrics)


def best_rows(prompts: list[Any], texts: list[str], scores: torch.Tensor, min_gain: float | None) -> list[dict[str, Any]]:
    """One SFT row per prompt: its best answer, with the provenance of the choice.

    ``scores``: (P, N), answer j of prompt i at ``texts[i * N + j]``. A prompt whose best answer is
    empty, or beats the mean of its N by less than ``min_gain``, gives no row.
    """
    n = scores.shape[1]
    rows = []
    for i, (prompt, row_scores) in enumerate(zip(prompts, scores)):
        best = int(row_scores.argmax())
        gain = (row_scores[best] - row_scores.mean()).item()
        text = texts[i * n + best]
        if not text.strip() or (min_gain is not None and gain < min_gain):
            continue
        rows.append({"prompt": prompt, "completion": text, "score": round(row_scores[best].item(), 4),
                     "mean_score": round(row_scores.mean().item(), 4), "n": n})
    return rows
