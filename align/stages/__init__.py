"""Stage registry: every ``align X`` runner lives in this package. A stage is ``run(recipe) -> StageResult``.

A stage imports the shared modules (``align.run``, ``align.sampling``, ``align.judges``,
``align.ops``, ``align.data``, ``align.models``), never another stage.

Modules are named as strings and imported on use, so ``align --help`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from align.run import StageResult


@dataclass(frozen=True)
class StageSpec:
    schema: str  # "module:Class" of the recipe schema
    runner: str  # "module:function" taking the validated recipe
    help: str
    cli: bool = True  # False: the command line has its own subcommand for it (flags, not a recipe)

    def load_schema(self) -> type:
        return _import(self.schema)

    def load_runner(self) -> Callable[[Any], StageResult]:
        return _import(self.runner)


STAGES: dict[str, StageSpec] = {
    "sft": StageSpec("align.config:SFTRecipe", "align.stages.sft:run", "supervised fine-tuning (TRL SFTTrainer)"),
    "reward": StageSpec(
        "align.config:RewardRecipe",
        "align.stages.reward:run",
        "reward model: BERT-style encoder + head on preferences, rankings and ratings",
    ),
    "dpo": StageSpec(
        "align.config:DPORecipe",
        "align.stages.dpo:run",
        "direct preference optimisation (TRL DPOTrainer): sigmoid/IPO/hinge/robust/conservative(+SFT), "
        "reference-free SimPO/ORPO, padding-free",
    ),
    "generate": StageSpec(
        "align.config:GenerateRecipe", "align.stages.generate:run", "sample N responses per prompt for labeling", cli=False
    ),
    "autolabel": StageSpec(
        "align.config:AutoLabelRecipe",
        "align.stages.autolabel:run",
        "label candidates with a judge as simulated annotators, export preferences",
    ),
    "ppo": StageSpec(
        "align.config:PPORecipe", "align.stages.ppo:run", "PPO-RLHF: our own loop on accelerate, rewarded by a text judge"
    ),
    "grpo": StageSpec("align.config:GRPORecipe", "align.stages.grpo:run", "GRPO / RLOO through TRL, rewarded by a text judge"),
    "rejection_sampling": StageSpec(
        "align.config:RejectionSamplingRecipe",
        "align.stages.rejection_sampling:run",
        "best-of-N: sample N answers per prompt, keep the judge's best as SFT data (rejection-sampling fine-tuning)",
    ),
    "eval": StageSpec(
        "align.config:EvalRecipe",
        "align.stages.eval:run",
        "evaluate policies vs a baseline: win rate, reward, KL to the reference, length; report + plots",
    ),
    "pretrain": StageSpec(
        "align.config:PretrainRecipe",
        "align.stages.pretrain:run",
        "continued pretraining on raw text (.txt or text records), packed with per-document attention; perplexity",
    ),
    "distill": StageSpec(
        "align.config:DistillRecipe",
        "align.stages.distill:run",
        "knowledge distillation: forward KL on teacher logits, on-policy reverse KL / JSD (GKD), sequence-level",
    ),
    "kto": StageSpec(
        "align.config:KTORecipe", "align.stages.kto:run", "KTO on unpaired thumbs-up/down feedback (TRL KTOTrainer)"
    ),
    "online_dpo": StageSpec(
        "align.config:OnlineDPORecipe",
        "align.stages.dpo.online:run",
        "online / iterative DPO: each round the policy samples, a judge picks pairs, DPO trains",
    ),
    "augment": StageSpec(
        "align.config:AugmentRecipe",
        "align.stages.augment:run",
        "augment sft / preference data (word dropout, swaps, synonyms, paraphrase, back-translation) with "
        "provenance; eval prompts refused",
    ),
    "export": StageSpec(
        "align.config:ExportRecipe",
        "align.stages.export:run",
        "merge LoRA, save safetensors + model card, GGUF (f16, q8_0) and an Ollama Modelfile",
    ),
}


def _import(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
