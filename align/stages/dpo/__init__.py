"""Direct preference optimisation through TRL's DPOTrainer, with our loss table and padding-free batches.

    align dpo recipes/dpo.yaml training.max_steps=20

The policy (usually an SFT output) trains on preference pairs; ranking and rating files are
expanded to pairs by the dataset layer. The reference is the starting policy: under LoRA /
QLoRA / prompt tuning the policy with its adapter disabled (no second copy), under full or
partial fine-tuning a frozen copy, or, with ``dpo.precompute_ref``, log-probs computed once
before training so no reference sits in memory while training.

The run directory ends up with the model (merged + ``adapter/`` for LoRA), ``metrics.jsonl``
(``train/loss``, ``rewards/{chosen,rejected,accuracies,margins}``, ``logps/{chosen,rejected}``),
and, when the data has an eval split, ``samples.md`` / ``samples.jsonl`` with KL to the
reference and, given ``eval.reward_model``, the win rate against it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from trl import DPOConfig

from align.config import DPORecipe
from align.data import load_records
from align.eval.responses import held_out_prompts, no_scope
from align.models import load_policy, load_reference, partial_callbacks
from align.ops.dpo import REFERENCE_FREE
from align.run import StageResult, finish_stage, prepare_run_dir
from align.sampling import conversational
from align.stages.dpo.evaluation import evaluate_against_reference
from align.stages.dpo.trainer import AlignDPOTrainer, FallingChosenLogpsCallback
from align.training import hf_training_kwargs, save_final_model, train_with_resume, trainer_callbacks

logger = logging.getLogger("align.dpo")


def run(recipe: DPORecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    data = load_records(recipe.data, default_kind="preference", want="preference")
    logger.info("data: %d train / %d eval pairs %s", len(data.train), len(data.eval or []), data.stats)
    model, tokenizer = load_policy(recipe.model)
    # precompute_ref with full fine-tuning: TRL scores the data with the policy before its first step.
    no_reference = recipe.dpo.precompute_ref or set(recipe.dpo.loss) <= REFERENCE_FREE
    reference = None if no_reference else load_reference(recipe.model)

    trainer, monitor = build_trainer(recipe, model, reference, tokenizer, data.train, data.eval, out)
    metrics: dict[str, Any] = train_with_resume(trainer, recipe.training)
    metrics["dpo/falling_chosen_logps_warnings"] = len(monitor.warnings)
    logged = last_logged(trainer, ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"))
    metrics.update({f"dpo/{key}": value for key, value in logged.items()})
    warning = held_out_warning(metrics)
    if warning:
        logger.warning(warning)
    save_final_model(trainer, recipe.model, out)
    if recipe.eval.enabled:
        metrics.update(_evaluate(trainer, recipe, data.eval, out))
    return finish_stage(out, recipe, metrics, card_title=f"DPO of {recipe.model.name_or_path}")


def held_out_warning(metrics: dict[str, Any], min_margin: float = 0.05) -> str | None:
    """A warning when the held-out pairs were not learned: their mean implicit reward margin is near 0.

    A mean margin ``beta * h`` near 0 is a held-out sigmoid loss near ln 2: the policy prefers the
    chosen answers of unseen prompts no more than its reference did, whatever the training loss says.
    """
    margin, accuracy = metrics.get("eval/rewards/margins"), metrics.get("eval/rewards/accuracies")
    if margin is None or margin >= min_margin:
        return None
    return (f"DPO did not generalise: on held-out pairs the implicit reward margin is {margin:.3f} (accuracy "
            f"{accuracy if accuracy is not None else float('nan'):.2f}), so their loss is still about ln 2 = 0.693. "
            "Train longer or at a higher learning rate, or check that the labels are consistent.")


def build_trainer(recipe: DPORecipe, model, reference, tokenizer, train, eval_data, out: Path):  # noqa: ANN001, ANN201
    """``(AlignDPOTrainer, FallingChosenLogpsCallback)`` for ``recipe``; tests call this to inspect one step.

    Pairs are rendered as ``align.sampling`` renders prompts (``conversational``), so the policy is
    trained on the prompts it is sampled from in PPO, generation and eval.
    """
    options = recipe.dpo
    args = DPOConfig(
        **hf_training_kwargs(recipe.training),
        max_length=recipe.training.max_length,
        beta=options.beta,
        precompute_ref_log_probs=options.precompute_ref,
        dataset_num_proc=None,
    )
    monitor = FallingChosenLogpsCallback(options.warn_window, options.warn_min_drop)
    trainer = AlignDPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=conversational(train, tokenizer, ["chosen", "rejected"]),
        eval_dataset=conversational(eval_data, tokenizer, ["chosen", "rejected"]),
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out) + partial_callbacks(recipe.model) + [monitor],
        losses=options.loss,
        loss_weights=options.loss_weights,
        label_smoothing=options.label_smoothing,
        simpo_gamma=options.simpo_gamma,
        padding_free=options.padding_free if options.padding_free is not None else packs_by_default(model, recipe),
        pack_row_tokens=options.pack_row_tokens,
    )
    return trainer, monitor


def packs_by_default(model, recipe: DPORecipe) -> bool:  # noqa: ANN001
    """``dpo.padding_free: null``: pack when the policy's attention keeps packed sequences apart at their own cost.

    That is ``align.models.packed_attention`` (what a loaded model on sdpa runs) or flash-attention's
    varlen kernels; eager attention would pay the whole row squared, and a soft prompt cannot pack.
    """
    from align.models.packed_attention import NAME

    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return recipe.model.method != "prompt_tuning" and attention in (NAME, "flash_attention_2", "flash_attention_3")


def last_logged(trainer, keys: tuple[str, ...]) -> dict[str, float]:  # noqa: ANN001
    """The last logged training value of each of ``keys`` that was logged (from the trainer's log history)."""
    found: dict[str, float] = {}
    for entry in reversed(trainer.state.log_history):
        for key in keys:
            if key in entry:
                found.setdefault(key, entry[key])
    return found


def _evaluate(trainer, recipe: DPORecipe, eval_data, out: Path) -> dict[str, float]:  # noqa: ANN001
    """Policy vs reference on held-out prompts (``stages.dpo.evaluation``), single process only."""
    if eval_data is None or len(eval_data) == 0:
        logger.warning("eval: no held-out prompts (set data.eval_fraction or data.eval_path); skipping policy vs reference")
        return {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logger.warning("eval: policy vs reference runs in a single process; skipped under a %s-process launch",
                       os.environ["WORLD_SIZE"])
        return {}
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(policy):
        reference, scope = policy, policy.disable_adapter
    else:
        # With precompute_ref the reference was never loaded for training; it is loaded now, after it.
        reference = trainer.ref_model if trainer.ref_model is not None else load_reference(recipe.model)
        reference = reference.to(next(policy.parameters()).device)
        scope = no_scope
    prompts = held_out_prompts(eval_data, recipe.eval.num_prompts)
    return evaluate_against_reference(
        policy, reference, scope, trainer.processing_class, prompts, recipe.eval, out, seed=recipe.training.seed
    )


__all__ = ["build_trainer", "held_out_warning", "last_logged", "packs_by_default", "run"]
