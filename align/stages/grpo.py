"""GRPO and RLOO through TRL, rewarded by our text-only judge.

    align grpo recipes/grpo.yaml training.max_steps=20
    align grpo recipes/grpo.yaml grpo.algorithm=rloo

``grpo.algorithm`` picks TRL's ``GRPOTrainer`` (group-normalised advantages) or
``RLOOTrainer`` (leave-one-out baseline; TRL 1.16 has it as ``trl.RLOOTrainer``). Both sample
``grpo.num_generations`` responses per prompt and need no value model.

The reward is ``align.judges.score`` with ``reward.judge`` wrapped as a TRL reward function over
*text* (``TextJudgeReward``). TRL's built-in path for a reward *model* re-tokenises
``prompt + completion`` with ``add_special_tokens=False``, which drops BERT's ``[CLS]``; our
scorer tokenises its own (prompt, response) pair instead, so it is always passed as a function.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from align.config import GRPORecipe, JudgeSettings
from align.data import load_records
from align.judges import Judge, judge_for, score
from align.models import load_policy, partial_callbacks
from align.run import StageResult, finish_stage, prepare_run_dir
from align.sampling import conversational, eos_token_ids
from align.training import hf_training_kwargs, save_final_model, train_with_resume, trainer_callbacks

logger = logging.getLogger("align.grpo")


class TextJudgeReward:
    """A TRL reward function ``(prompts, completions, completion_ids, **columns) -> list[float]``.

    Scores go through ``align.judges.score``, as in PPO and eval: the judge reads plain text, a
    completion whose ids hold none of the policy's EOS ids (``align.sampling.eos_token_ids``)
    loses ``missing_eos_penalty``, and scores are clipped to ``[-clip, clip]`` if set.
    """

    def __init__(self, judge: Judge, settings: JudgeSettings, eos_ids: Sequence[int]) -> None:
        self.judge = judge
        self.settings = settings
        self.eos_ids = set(eos_ids)
        self.__name__ = getattr(judge, "__name__", "judge")  # TRL names reward columns after it

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
                 **columns: Any) -> list[float]:
        finished = None if completion_ids is None else [bool(self.eos_ids.intersection(ids)) for ids in completion_ids]
        return score(self.judge, prompts, completions, finished, self.settings).final.tolist()


def trainer_arguments(recipe: GRPORecipe, eos_ids: Sequence[int]) -> Any:
    """``GRPOConfig`` or ``RLOOConfig`` from the recipe (HF training arguments + sampling + algorithm).

    Generation stops at every EOS id the other stages stop at (``align.sampling.eos_token_ids``).
    """
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
        generation_kwargs={"eos_token_id": list(eos_ids)},
    )
    if algo.algorithm == "rloo":
        return RLOOConfig(**common)
    return GRPOConfig(**common, scale_rewards=algo.scale_rewards, loss_type=algo.loss_type)


def run(recipe: GRPORecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    data = load_records(recipe.data, default_kind="prompt", want="prompt")
    logger.info("prompts: %d train / %d eval %s", len(data.train), len(data.eval or []), data.stats)
    model, tokenizer = load_policy(recipe.model)
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    eos_ids = eos_token_ids(model, tokenizer)
    reward = TextJudgeReward(judge_for(recipe.reward), recipe.reward, eos_ids)

    trainer_class = RLOOTrainer if recipe.grpo.algorithm == "rloo" else GRPOTrainer
    trainer = trainer_class(
        model=model,
        reward_funcs=[reward],
        args=trainer_arguments(recipe, eos_ids),
        # Prompts rendered as align.sampling renders them (TRL applies a template only to messages).
        train_dataset=conversational(data.train, tokenizer, []),
        eval_dataset=conversational(data.eval, tokenizer, []),
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out) + partial_callbacks(recipe.model),
    )
    metrics = train_with_resume(trainer, recipe.training, evaluate=False)
    rewards = [log for log in trainer.state.log_history if "reward" in log]
    if rewards:
        metrics["reward/mean"] = rewards[-1]["reward"]
    save_final_model(trainer, recipe.model, out)
    title = f"{recipe.grpo.algorithm.upper()} of {recipe.model.name_or_path}"
    return finish_stage(out, recipe, metrics, card_title=title)
