"""KTO on unpaired thumbs-up/down feedback through TRL's KTOTrainer.

    align kto recipes/kto.yaml training.max_steps=20

Kahneman-Tversky optimisation (https://arxiv.org/abs/2402.01306, Eq. 7-8): with implicit reward
``r = log pi(y|x) - log pi_ref(y|x)`` and reference point ``z`` (the batch's KL estimate on
mismatched prompt/completion pairs, detached, at least 0), a thumbs-up costs
``lambda_D (1 - sigmoid(beta (r - z)))`` and a thumbs-down ``lambda_U (1 - sigmoid(beta (z - r)))``.

Feedback is rating records (a score above ``kto.threshold`` is a thumbs-up) or preference pairs,
each unpaired into one up and one down (``align.data.feedback``). The reference is the starting
policy: the adapter-disabled policy under LoRA, else a frozen copy. Metrics: ``rewards/chosen``
(mean implicit reward of thumbs-up examples), ``rewards/rejected``, ``kl``.
"""

from __future__ import annotations

import logging
from typing import Any

from trl import KTOConfig, KTOTrainer

from align.config import KTORecipe
from align.data import load_records
from align.data.feedback import to_feedback
from align.models import load_policy, load_reference, partial_callbacks
from align.run import StageResult, finish_stage, prepare_run_dir
from align.sampling import conversational
from align.training import hf_training_kwargs, save_final_model, train_with_resume, trainer_callbacks

logger = logging.getLogger("align.kto")


def run(recipe: KTORecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    data = load_records(recipe.data, default_kind="rating")
    train, evaluation = (None if rows is None else feedback_dataset(rows.to_list(), data.kind, recipe.kto.threshold)
                         for rows in (data.train, data.eval))
    ups = sum(train["label"])
    if ups in (0, len(train)):
        which = "thumbs-up" if ups else "thumbs-down"
        raise ValueError(f"kto: every training example is a {which} (kto.threshold={recipe.kto.threshold}); "
                         "KTO needs some of each")
    logger.info("feedback: %d thumbs-up / %d thumbs-down (train) %s", ups, len(train) - ups, data.stats)
    model, tokenizer = load_policy(recipe.model)
    args = KTOConfig(
        **hf_training_kwargs(recipe.training),
        max_length=recipe.training.max_length,
        beta=recipe.kto.beta,
        desirable_weight=recipe.kto.desirable_weight,
        undesirable_weight=recipe.kto.undesirable_weight,
        dataset_num_proc=None,
    )
    trainer = KTOTrainer(
        model=model,
        ref_model=load_reference(recipe.model),
        args=args,
        train_dataset=conversational(train, tokenizer, ["completion"]),
        eval_dataset=conversational(evaluation, tokenizer, ["completion"]),
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out) + partial_callbacks(recipe.model),
    )
    metrics: dict[str, Any] = train_with_resume(trainer, recipe.training)
    for entry in reversed(trainer.state.log_history):
        for key in ("rewards/chosen", "rewards/rejected", "kl"):
            if key in entry:
                metrics.setdefault(f"kto/{key}", entry[key])
    save_final_model(trainer, recipe.model, out)
    return finish_stage(out, recipe, metrics, card_title=f"KTO of {recipe.model.name_or_path}")


def feedback_dataset(rows: list[dict[str, Any]], kind: str, threshold: float):  # noqa: ANN201 - datasets.Dataset
    """``{prompt, completion, label}`` rows (``align.data.feedback.to_feedback``) as a Dataset."""
    from datasets import Dataset

    return Dataset.from_list(to_feedback(rows, kind, threshold))  # type: ignore[arg-type]
