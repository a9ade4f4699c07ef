"""GRPO and RLOO through TRL, rewarded by our text-only judge.

    align grpo recipes/grpo.yaml training.max_steps=20
    align grpo recipes/grpo.yaml grpo.algorithm=rloo

``grpo.algorithm`` picks TRL's ``GRPOTrainer`` (group-normalised advantages) or
``RLOOTrainer`` (leave-one-out baseline; TRL 1.16 has it as ``trl.RLOOTrainer``). Both sample
``grpo.num_generations`` responses per prompt and need no value model.

The reward is ``align.judges.load_judge(reward.judge)`` wrapped as a TRL reward function over
*text* (``TextJudgeReward``). TRL's built-in path for a reward *model* re-tokenises
``prompt + completion`` with ``add_special_tokens=False``, which drops BERT's ``[CLS]``; our
scorer tokenises its own (prompt, response) pair instead, so it is always passed as a function.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from align.config import GRPORecipe, JudgeSettings
from align.stages import StageResult

logger = logging.getLogger("align.grpo")


class TextJudgeReward:
    """A TRL reward function ``(prompts, completions, completion_ids, **columns) -> list[float]``.

    Prompts and completions arrive as strings or, for conversational data, message lists;
    the judge gets plain text: a prompt as ``role: content`` lines (the reward model's own
    rendering), a completion as its assistant contents. A completion whose ids hold no EOS
    loses ``missing_eos_penalty``; scores are then clipped to ``[-clip, clip]`` if set.
    """

    def __init__(self, judge: Callable[[list[str], list[str]], torch.Tensor], settings: JudgeSettings,
                 eos_token_ids: Sequence[int]) -> None:
        self.judge = judge
        self.settings = settings
        self.eos_token_ids = set(eos_token_ids)
        self.__name__ = getattr(judge, "__name__", "judge")  # TRL names reward columns after it

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
                 **columns: Any) -> list[float]:
        from reward_models.text import render_completion, render_prompt

        scores = self.judge([render_prompt(p) for p in prompts], [render_completion(c) for c in completions]).float()
        if self.settings.missing_eos_penalty is not None and completion_ids is not None:
            unfinished = torch.tensor([not self.eos_token_ids.intersection(ids) for ids in completion_ids])
            scores = scores - self.settings.missing_eos_penalty * unfinished.float()
        if self.settings.clip is not None:
            scores = scores.clamp(-self.settings.clip, self.settings.clip)
        return scores.tolist()


def conversational_prompts(dataset, tokenizer):  # noqa: ANN001, ANN201 - datasets.Dataset in and out
    """String prompts become one user message when the tokenizer has a chat template.

    TRL applies the chat template only to conversational prompts; PPO and generation render a
    string prompt through the template too (``align.data.render_prompt``), so GRPO must see
    the same input. Message-list prompts pass as they are.
    """
    if not getattr(tokenizer, "chat_template", None) or not isinstance(dataset[0]["prompt"], str):
        return dataset
    return dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})


def trainer_arguments(recipe: GRPORecipe) -> Any:
    """``GRPOConfig`` or ``RLOOConfig`` from the recipe (HF training arguments + sampling + algorithm)."""
    from trl import GRPOConfig, RLOOConfig

    from align.training import hf_training_kwargs

    gen, algo = recipe.generation, recipe.grpo
    common = dict(
        **hf_training_kwargs(recipe.training),
        num_generations=algo.num_generations,
        max_completion_length=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        beta=algo.beta,
        epsilon=algo.epsilon,
        num_iterations=algo.num_iterations,
        mask_truncated_completions=algo.mask_truncated_completions,
        log_completions=algo.log_completions,
    )
    if algo.algorithm == "rloo":
        return RLOOConfig(**common)
    return GRPOConfig(**common, scale_rewards=algo.scale_rewards, loss_type=algo.loss_type)


def run(recipe: GRPORecipe) -> StageResult:
    from trl import GRPOTrainer, RLOOTrainer

    from align.data import load_records
    from align.judges import load_judge
    from align.models import load_policy, partial_callbacks
    from align.training import (
        prepare_run_dir,
        resume_checkpoint,
        save_final_model,
        trainer_callbacks,
        write_model_card,
    )

    out = prepare_run_dir(recipe, recipe.training.output_dir)
    data = load_records(recipe.data, default_kind="prompt", want="prompt")
    logger.info("prompts: %d train / %d eval %s", len(data.train), len(data.eval or []), data.stats)
    model, tokenizer = load_policy(recipe.model)
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    settings = recipe.reward
    judge = load_judge(settings.judge, batch_size=settings.batch_size, normalize=settings.normalize)
    eos = tokenizer.eos_token_id
    reward = TextJudgeReward(judge, settings, [eos] if eos is not None else [])

    trainer_class = RLOOTrainer if recipe.grpo.algorithm == "rloo" else GRPOTrainer
    trainer = trainer_class(
        model=model,
        reward_funcs=[reward],
        args=trainer_arguments(recipe),
        train_dataset=conversational_prompts(data.train, tokenizer),
        eval_dataset=conversational_prompts(data.eval, tokenizer) if data.eval is not None else None,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out) + partial_callbacks(recipe.model),
    )
    train_output = trainer.train(resume_from_checkpoint=resume_checkpoint(recipe.training))
    metrics = {"train/loss": train_output.training_loss, "train/steps": trainer.state.global_step}
    rewards = [log for log in trainer.state.log_history if "reward" in log]
    if rewards:
        metrics["reward/mean"] = rewards[-1]["reward"]

    save_final_model(trainer, recipe.model, out)
    result = StageResult(output_dir=out, metrics=metrics)
    if trainer.is_world_process_zero():
        write_model_card(out, recipe, metrics, title=f"{recipe.grpo.algorithm.upper()} of {recipe.model.name_or_path}")
        result.save()
    return result
