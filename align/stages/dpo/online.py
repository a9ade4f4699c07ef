"""Online (iterative) DPO: each round the policy samples, a judge labels, DPO trains on the new pairs.

    align online_dpo recipes/online_dpo.yaml online.rounds=3

Round r: ``online.prompts_per_round`` prompts (cycling through the data) are answered
``online.samples_per_prompt`` times by the current policy (``align.sampling.sample``); the judge
(``align.judges.score``: a reward-model dir or ``module:function``) scores every answer, and each
prompt's best and worst answers form a pair (prompts whose answers all tie give none). DPO then
trains ``training.max_steps`` steps on the round's pairs with the DPO stage's trainer and loss
table. The reference stays the starting policy throughout (Xiong et al., https://arxiv.org/abs/2312.11456,
iterative DPO with a fixed reference), so rounds do not drift away from it unchecked.

Run directory: ``round-<r>/`` holds the round's ``pairs.jsonl``, its trainer's ``metrics.jsonl`` and
``policy.safetensors`` (the trainable weights after the round); the top-level ``metrics.jsonl`` has
one row per round (``online/reward_mean`` of the round's samples, before it trains, ``online/pairs``
...) and a last row with the final policy's reward. ``training.resume: true`` restarts after the last
finished round.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file

from align.config import DataConfig, DPOEvalSettings, DPORecipe, OnlineDPORecipe
from align.data import load_records
from align.judges import judge_for, score_n
from align.models import load_policy, load_reference
from align.ops.dpo import REFERENCE_FREE
from align.run import StageResult, append_metrics, finish_stage, prepare_run_dir
from align.sampling import sample
from align.stages.dpo import build_trainer, last_logged
from align.training import save_final_model

logger = logging.getLogger("align.online_dpo")

POLICY_FILE = "policy.safetensors"


def run(recipe: OnlineDPORecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    prompts = load_records(recipe.data, default_kind="prompt", want="prompt").train["prompt"]
    model, tokenizer = load_policy(recipe.model)
    reference = None if set(recipe.dpo.loss) <= REFERENCE_FREE else load_reference(recipe.model)
    judge = judge_for(recipe.reward)
    first = _resume(model, out) + 1 if recipe.training.resume else 1
    trainer, metrics = None, {}
    for r in range(first, recipe.online.rounds + 1):
        round_dir = out / f"round-{r}"
        round_dir.mkdir(exist_ok=True)
        pairs, stats = label_round(model, tokenizer, judge, _round_prompts(prompts, r, recipe), recipe, seed=r)
        (round_dir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        if not pairs:
            raise RuntimeError(f"online_dpo round {r}: every prompt's answers tied under the judge; no pairs to train on")
        trainer = build_trainer(_round_recipe(recipe, round_dir), model, reference, tokenizer, Dataset.from_list(pairs),
                                None, round_dir)[0]
        output = trainer.train()
        logged = last_logged(trainer, ("rewards/margins", "rewards/accuracies"))
        stats.update({"online/train_loss": output.training_loss,
                      **{f"online/{key.split('/')[-1]}": value for key, value in logged.items()}})
        append_metrics(out, {"step": r * recipe.training.max_steps, "round": r, **stats})
        logger.info("round %d/%d: %s", r, recipe.online.rounds, {k: round(v, 4) for k, v in stats.items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in _trainable(model).items()}, str(round_dir / POLICY_FILE))
        metrics.update({f"round{r}/{k.removeprefix('online/')}": v for k, v in stats.items()})
    _, final = label_round(model, tokenizer, judge, _round_prompts(prompts, 1, recipe), recipe, seed=0)
    metrics["online/final_reward_mean"] = final["online/reward_mean"]
    append_metrics(out, {"step": recipe.online.rounds * recipe.training.max_steps, "round": recipe.online.rounds,
                         "online/final_reward_mean": final["online/reward_mean"]})
    if trainer is not None:
        save_final_model(trainer, recipe.model, out)
    return finish_stage(out, recipe, metrics, card_title=f"Online DPO of {recipe.model.name_or_path}")


def label_round(model, tokenizer, judge, prompts: list[Any], recipe: OnlineDPORecipe, seed: int):  # noqa: ANN001, ANN201
    """``(pairs, stats)``: each prompt's best and worst sampled answers by the judge, and the round's reward stats."""
    k, generation = recipe.online.samples_per_prompt, recipe.generation
    samples = sample(model, tokenizer, prompts, **generation.sample_kwargs(), n=k,
                     seed=recipe.training.seed + 100_003 * seed)
    scores = score_n(judge, prompts, samples.texts, samples.finished, recipe.reward).final  # (P, k)
    pairs = []
    for i, prompt in enumerate(prompts):
        best, worst = int(scores[i].argmax()), int(scores[i].argmin())
        if scores[i, best] > scores[i, worst]:
            pairs.append({"prompt": prompt, "chosen": samples.texts[i * k + best],
                          "rejected": samples.texts[i * k + worst], "margin": 0.0})
    stats = {"online/reward_mean": float(scores.mean()), "online/reward_best": float(scores.max(1).values.mean()),
             "online/pairs": float(len(pairs))}
    return pairs, stats


def _round_prompts(prompts: list[Any], r: int, recipe: OnlineDPORecipe) -> list[Any]:
    n = recipe.online.prompts_per_round
    start = ((r - 1) * n) % len(prompts)
    return [prompts[(start + i) % len(prompts)] for i in range(min(n, len(prompts)))]


def _round_recipe(recipe: OnlineDPORecipe, round_dir: Path) -> DPORecipe:
    """The DPO recipe of one round: its pairs, its run dir, no end-of-run eval, no resume inside a round."""
    training = recipe.training.model_copy(update={"output_dir": str(round_dir), "resume": False})
    return DPORecipe(model=recipe.model, data=DataConfig(path=str(round_dir / "pairs.jsonl")), training=training,
                     dpo=recipe.dpo, eval=DPOEvalSettings(enabled=False))


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _resume(model: torch.nn.Module, out: Path) -> int:
    """Load the trainable weights of the last finished round; its number, or 0 when none finished."""
    done = sorted((int(p.parent.name.split("-")[1]), p) for p in out.glob(f"round-*/{POLICY_FILE}"))
    if not done:
        logger.warning("resume: true but no finished round in %s; starting at round 1", out)
        return 0
    last, path = done[-1]
    missing = set(_trainable(model)) - set(load_file(str(path)))
    if missing:
        raise RuntimeError(f"resume: {path} lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); "
                           "was it written by another model.method?")
    model.load_state_dict(load_file(str(path)), strict=False)
    logger.info("resuming after round %d (%s)", last, path)
    return last
