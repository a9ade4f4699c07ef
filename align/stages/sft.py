"""Supervised fine-tuning through TRL's SFTTrainer.

    align sft recipes/sft.yaml training.max_steps=20

The run directory ends up holding a model that loads with ``from_pretrained``:
full weights (full / partial), the merged model plus ``adapter/`` (LoRA / QLoRA),
or the peft soft-prompt adapter (prompt tuning, which cannot be merged).
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from align.adversarial import AdversarialTraining
from align.config import SFTRecipe
from align.data import chat_to_prompt_completion, load_records, rows_to_dataset
from align.models import load_policy, partial_callbacks
from align.run import StageResult, finish_stage, prepare_run_dir
from align.sampling import conversational
from align.training import hf_training_kwargs, save_final_model, train_with_resume, trainer_callbacks

logger = logging.getLogger("align.sft")


def run(recipe: SFTRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    data = load_records(recipe.data, default_kind="sft", want="sft")
    logger.info("data: %d train / %d eval rows %s", len(data.train), len(data.eval or []), data.stats)
    model, tokenizer = load_policy(recipe.model)
    train, evaluation = data.train, data.eval
    assistant_only = recipe.sft.completion_only_loss and _marks_assistant_turns(tokenizer, train)
    if recipe.sft.completion_only_loss and not assistant_only and "messages" in train.column_names:
        # The template cannot mark assistant turns: train on each chat's last answer instead.
        train, evaluation = (_split_last_answer(d) for d in (train, evaluation))
    if "prompt" in train.column_names:  # prompt/completion rows: rendered as align.sampling renders prompts
        train, evaluation = (conversational(d, tokenizer, ["completion"]) for d in (train, evaluation))

    args = SFTConfig(
        **hf_training_kwargs(recipe.training),
        max_length=recipe.training.max_length,
        packing=recipe.sft.packing,
        completion_only_loss=recipe.sft.completion_only_loss,
        assistant_only_loss=assistant_only,
        dataset_num_proc=None,
    )
    trainer = AdversarialSFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out) + partial_callbacks(recipe.model),
        adversarial=recipe.training.adversarial,
    )
    metrics = train_with_resume(trainer, recipe.training)
    save_final_model(trainer, recipe.model, out)
    return finish_stage(out, recipe, metrics, card_title=f"SFT of {recipe.model.name_or_path}")


class AdversarialSFTTrainer(AdversarialTraining, SFTTrainer):
    """TRL's SFTTrainer with ``training.adversarial`` (``align.adversarial``).

    The perturbed pass takes the model's own loss (the same token NLL), so TRL's token-accuracy and
    entropy metrics count the clean pass only.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001 - HF signature
        if return_outputs:  # evaluation asking for logits
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def clean() -> tuple[Any, None]:
            return super(AdversarialSFTTrainer, self).compute_loss(model, inputs, num_items_in_batch=num_items_in_batch), None

        def perturbed() -> Any:
            return Trainer.compute_loss(self, model, inputs, num_items_in_batch=num_items_in_batch)

        return self.with_adversarial_loss(model, clean, perturbed)[0]


def _marks_assistant_turns(tokenizer, dataset) -> bool:  # noqa: ANN001
    """Multi-turn chats train on every assistant turn when the template marks them for TRL's mask."""
    template = tokenizer.chat_template or ""
    return "messages" in dataset.column_names and "{% generation %}" in template


def _split_last_answer(dataset: Dataset | None) -> Dataset | None:
    return None if dataset is None else rows_to_dataset(chat_to_prompt_completion(dataset.to_list()), "sft")
