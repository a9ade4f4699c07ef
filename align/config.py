"""Recipe schema: one pydantic model per stage, grouped model / data / training.

Every YAML key is a field here. An unknown key is an error naming its full dotted
path and the closest valid name; precedence is defaults < recipe < ``key.sub=value``
overrides. Each field is documented once, by its ``description``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RecordKind = Literal["sft", "preference", "ranking", "rating", "prompt"]


class Section(BaseModel):
    """Base for every recipe section: unknown keys fail with a suggestion."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        known = set(cls.model_fields)
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(known))}"
                raise ValueError(f"unknown key '{key}'{hint}")
        return values


# --------------------------------------------------------------------------- model


class LoraSettings(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the head."
    )
    modules_to_save: list[str] = Field(default_factory=list, description="Extra modules trained in full and saved.")


class PromptTuningSettings(Section):
    num_virtual_tokens: int = Field(16, gt=0, description="Number of trainable soft-prompt vectors.")
    init_text: str | None = Field(None, description="Initialise the soft prompt from this text's embeddings.")


class UnfreezeStep(Section):
    step: int = Field(..., ge=0, description="Optimizer step at which this many top layers become trainable.")
    top_k: int = Field(..., ge=0, description="Number of top transformer layers trainable from this step on.")


class PartialSettings(Section):
    trainable_top_k: int = Field(2, ge=0, description="Train only the top k transformer layers.")
    train_embeddings: bool = Field(False, description="Also train the input embeddings.")
    train_head: bool = Field(True, description="Also train the final norm and LM head.")
    unfreeze_schedule: list[UnfreezeStep] = Field(
        default_factory=list, description="Gradual unfreezing: at each step, widen the trainable top layers to top_k."
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Hub id, local directory, .gguf file, or an offline alias (smollm2-135m-instruct, minilm-l6).",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path (a directory).")
    method: Literal["full", "lora", "qlora", "prompt_tuning", "partial", "feature_extraction"] = Field(
        "full", description="Which parameters train; feature_extraction (reward model only): the head alone, on "
        "the frozen encoder's cached features."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loading.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Used when method is lora or qlora.")
    prompt_tuning: PromptTuningSettings = Field(default_factory=PromptTuningSettings)
    partial: PartialSettings = Field(default_factory=PartialSettings)
    chat_template: str | None = Field(None, description="Jinja chat template overriding the tokenizer's.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")


# --------------------------------------------------------------------------- data


class DataConfig(Section):
    path: str = Field(..., description="JSONL/JSON/CSV/Parquet file, save_to_disk directory, or hub dataset id.")
    format: Literal["auto", "records", "hh-rlhf", "trl", "ultrafeedback", "shp"] = Field(
        "auto", description="Dataset format (README's data table); 'auto' recognises it and logs what it found."
    )
    file_type: Literal["auto", "jsonl", "json", "csv", "parquet", "disk", "hub", "txt"] = Field(
        "auto", description="How path is read; 'auto' guesses from the extension or directory contents. 'txt': a "
        ".txt file, or a directory of them, one document (an sft 'text' record) per file."
    )
    kind: RecordKind | None = Field(None, description="Record kind in the file; default: the stage's own kind.")
    split: str = Field("train", description="Split to read from a hub or save_to_disk DatasetDict.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map a canonical field to the file's column, e.g. {prompt: question}."
    )
    eval_path: str | None = Field(None, description="Separate eval file; else eval_fraction of train is held out.")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of rows held out for eval.")
    seed: int = Field(42, description="Seed of the train/eval split.")
    dedup: bool = Field(True, description="Drop exact duplicate rows.")
    on_error: Literal["raise", "skip"] = Field("raise", description="A malformed row raises, or is skipped and counted.")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many rows (after dedup).")
    tie_policy: Literal["drop", "keep"] = Field(
        "drop", description="Ranking/rating -> pairs: drop tied responses, or keep them (with margin 0)."
    )
    aspect: str = Field(
        "mean",
        description="UltraFeedback: what scores a completion: 'mean' of its aspect ratings, one aspect "
        "(helpfulness, honesty, instruction_following, truthfulness) or a numeric field (overall_score).",
    )

    @field_validator("format", mode="before")
    @classmethod
    def _file_type_is_not_format(cls, value: Any) -> Any:
        if value in ("jsonl", "json", "csv", "parquet", "disk", "hub"):
            raise ValueError(f"'{value}' is a file type: set data.file_type: {value} (data.format is the dataset format)")
        return value


# --------------------------------------------------------------------------- training


class TrainingConfig(Section):
    output_dir: str = Field("runs/run", description="Run directory: recipe, metrics, checkpoints, final model.")
    seed: int = Field(42)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 means use num_epochs.")
    num_epochs: float = Field(1.0, gt=0)
    per_device_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_length: int = Field(512, gt=0, description="Maximum tokens per sequence.")
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps (needs eval data).")
    save_steps: int | None = Field(500, gt=0, description="Checkpoint every N steps; null saves only at the end.")
    save_total_limit: int | None = Field(2, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0, description="Stop after N evals without improvement.")
    resume: bool = Field(False, description="Continue from the last checkpoint in output_dir.")
    report_to: Literal["auto", "wandb", "none"] = Field(
        "auto", description="'auto': wandb (offline without WANDB_API_KEY) if installed; 'none': metrics.jsonl only."
    )
    wandb_project: str = Field("align")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config, e.g. ds_configs/zero2.json.")
    gradient_checkpointing: bool = False
    bf16: bool = False

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step on one process (times world size under a launcher)."""
        return self.per_device_batch_size * self.gradient_accumulation_steps

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        # The trainer reads any value below 1 as "use num_epochs": only -1 says so on purpose.
        if value < 1 and value != -1:
            raise ValueError(f"{value} is not a number of steps: give a positive count, or -1 to train for num_epochs")
        return value

    @model_validator(mode="after")
    def _eval_needs_schedule(self) -> "TrainingConfig":
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError(
                f"early_stopping_patience={self.early_stopping_patience} needs eval_steps to be set (got eval_steps=None)"
            )
        return self


class PerturbationSettings(Section):
    """An L2 perturbation of each sequence's input embeddings along the loss gradient (``align.ops.adversarial``)."""

    method: Literal["fgm", "pgd"] = Field(
        "fgm", description="'fgm': one step of size epsilon along the gradient (https://arxiv.org/abs/1605.07725); "
        "'pgd': `steps` steps of size alpha, each projected back into the epsilon ball (https://arxiv.org/abs/1706.06083)."
    )
    epsilon: float = Field(
        1.0, gt=0, description="L2 radius of a sequence's perturbation over all its token embeddings, in the units of "
        "the embedding layer's output (a sequence of T tokens has an embedding norm of about sqrt(T) x a token's).",
    )
    steps: int = Field(3, ge=1, description="pgd: ascent steps.")
    alpha: float | None = Field(None, gt=0, description="pgd: step size; default 2 x epsilon / steps.")

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2 * self.epsilon / self.steps

    @model_validator(mode="after")
    def _pgd_only(self) -> "PerturbationSettings":
        given = sorted({"alpha", "steps"} & self.model_fields_set)
        if self.method == "fgm" and given:
            raise ValueError(f"{given[0]} applies to method 'pgd', not method 'fgm'; remove it or set method: pgd")
        return self


class AdversarialSettings(PerturbationSettings):
    weight: float = Field(1.0, ge=0, description="Weight of the loss on perturbed embeddings, added to the clean loss.")


class AdversarialTrainingConfig(TrainingConfig):
    """``training`` of the stages that can also train on adversarially perturbed input embeddings (sft, reward)."""

    adversarial: AdversarialSettings | None = Field(
        None, description="Embedding-space adversarial training: loss = clean loss + weight x loss at the "
        "perturbation; null: off.",
    )


class RewardTrainingConfig(AdversarialTrainingConfig):
    """``training`` of the reward stage: an encoder fine-tuned on few labels wants a larger step."""

    learning_rate: float = Field(
        1e-4, gt=0, description="1e-4: on the alignment benchmark's 500 labels, 0.80 fresh-pair accuracy (mean of 3 "
        "seeds, 4 epochs) against 0.77 at 5e-5 (6 epochs).",
    )


# --------------------------------------------------------------------------- stages


class SFTOptions(Section):
    packing: bool = Field(False, description="Pack several examples into each max_length sequence.")
    completion_only_loss: bool = Field(True, description="Loss on completions / assistant turns only.")


class StageRecipe(Section):
    """Fields every stage recipe has."""

    stage: str
    name: str | None = Field(None, description="Name other pipeline stages use to refer to this one.")
    force: bool = Field(False, description="In a pipeline, re-run even if a finished output exists.")


class SFTRecipe(StageRecipe):
    stage: Literal["sft"] = "sft"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    training: AdversarialTrainingConfig = Field(default_factory=lambda: AdversarialTrainingConfig(output_dir="runs/sft"))
    sft: SFTOptions = Field(default_factory=SFTOptions)


class PipelineRecipe(Section):
    """A list of stage recipes run in order; ``${name.key}`` refers to an earlier stage's resolved value."""

    pipeline: list[dict[str, Any]] = Field(..., min_length=1)
    output_root: str | None = Field(
        None, description="If set, each stage without its own training.output_dir writes to output_root/<name>."
    )


# --------------------------------------------------------------------------- reward model


class RewardLossWeights(Section):
    """Weights of the total loss ``sum_kind weight * loss_kind`` over the kinds present in a batch."""

    preference: float = Field(1.0, ge=0, description="Weight of the pair loss on preference records.")
    tie: float = Field(1.0, ge=0, description="Weight of the tie loss (two-response rankings with equal ranks).")
    rating: float = Field(1.0, ge=0, description="Weight of the regression loss on rating records.")
    ranking: float = Field(1.0, ge=0, description="Weight of the listwise loss on ranking records.")


class RewardOptions(Section):
    pooling: Literal["cls", "mean"] = Field(
        "mean", description="Vector the head reads: the first token ([CLS]) or the masked mean of all tokens."
    )
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout before the linear head.")
    layer_lr_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="Layer-wise learning-rate decay: each encoder block below the top learns at "
        "this factor of the rate of the block above (the head at training.learning_rate, the embeddings lowest).",
    )
    pair_loss: Literal["bradley_terry"] = Field(
        "bradley_terry", description="Loss on preference pairs: -logsigmoid(r_chosen - r_rejected - margin)."
    )
    use_margin: bool = Field(True, description="Use each pair's 'margin' in the pair loss (else margin 0).")
    tie_loss: Literal["half_win", "squared"] = Field(
        "half_win",
        description="Penalty pulling tied scores together: 'half_win' (BT cross-entropy vs 1/2), 'squared' (d^2).",
    )
    rating_loss: Literal["mse", "huber"] = Field("mse", description="Regression loss on ratings.")
    huber_delta: float = Field(1.0, gt=0, description="Huber threshold (in standardised rating units).")
    standardize_ratings: bool = Field(
        True, description="Regress on ratings z-scored with the training ratings' mean and std."
    )
    ranking_loss: Literal["plackett_luce", "pairwise"] = Field(
        "plackett_luce",
        description="Loss on rankings: listwise Plackett-Luce (ties by Breslow), or BT on all pairs + tie loss.",
    )
    weights: RewardLossWeights = Field(default_factory=RewardLossWeights)
    normalize: bool = Field(
        True, description="After training, standardise scores to mean 0, std 1 on the training responses."
    )
    normalize_max_samples: int = Field(
        20000, gt=1, description="Measure the normalisation on the responses of at most this many training records."
    )
    clip: float | None = Field(None, gt=0, description="Clamp normalised scores to [-clip, clip].")
    reliability_bins: int = Field(10, ge=2, description="Bins of the reliability curve (reliability.png).")
    perturbed_eval: PerturbationSettings | None = Field(
        None, description="The perturbation of accuracy_perturbed in the final evaluation: each pair's embeddings "
        "pushed to flip its order; default: training.adversarial's (none: not measured).",
    )


REWARD_METHODS = ("full", "lora", "partial", "feature_extraction")


class RewardRecipe(StageRecipe):
    """``align reward``: a BERT-style encoder + head trained on preferences, rankings and ratings.

    ``data`` is one source or a list of them; each source's kind (``kind:``, default
    preference) may differ, and all train together.
    """

    stage: Literal["reward"] = "reward"
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(
            name_or_path="minilm-l6", lora=LoraSettings(target_modules=["query", "key", "value"])
        )
    )
    data: list[DataConfig] = Field(..., min_length=1)
    training: RewardTrainingConfig = Field(default_factory=lambda: RewardTrainingConfig(output_dir="runs/reward"))
    reward: RewardOptions = Field(default_factory=RewardOptions)

    @model_validator(mode="before")
    @classmethod
    def _one_source_is_a_list(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("data"), dict):
            values = {**values, "data": [values["data"]]}
        return values

    @property
    def perturbation(self) -> PerturbationSettings | None:
        """The perturbation of the final evaluation's accuracy_perturbed, if any."""
        return self.reward.perturbed_eval or self.training.adversarial

    @model_validator(mode="after")
    def _supported(self) -> "RewardRecipe":
        if self.model.method not in REWARD_METHODS:
            raise ValueError(f"model.method='{self.model.method}' is not supported by the reward stage; use one of "
                             f"{', '.join(REWARD_METHODS)}")
        if self.model.method == "feature_extraction" and self.perturbation is not None:
            key = "training.adversarial" if self.training.adversarial is not None else "reward.perturbed_eval"
            raise ValueError(f"{key} perturbs the encoder's input, but model.method='feature_extraction' caches its "
                             "output; use model.method: partial with partial.trainable_top_k: 0 for a frozen encoder")
        for i, source in enumerate(self.data):
            if source.kind not in (None, "preference", "ranking", "rating"):
                raise ValueError(
                    f"data[{i}].kind='{source.kind}': the reward model trains on preference, ranking or rating records"
                )
        has_eval = any(source.eval_path or source.eval_fraction > 0 for source in self.data)
        if self.training.eval_steps is not None and not has_eval:
            raise ValueError(
                f"training.eval_steps={self.training.eval_steps} needs eval data, but no data source sets "
                "eval_path or eval_fraction"
            )
        return self


# --------------------------------------------------------------------------- online RL: PPO, GRPO / RLOO


class RLTrainingConfig(TrainingConfig):
    """``training`` of the PPO stage, where one step is one iteration: sample, score, update."""

    max_steps: int = Field(100, gt=0, description="PPO iterations; each generates, scores and runs ppo.epochs of updates.")
    per_device_batch_size: int = Field(4, gt=0, description="Sequences per forward/backward (micro-batch) on each process.")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Micro-batches per optimizer step; a PPO minibatch is per_device_batch_size x this."
    )
    learning_rate: float = Field(1e-6, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"] = "constant"
    save_steps: int | None = Field(50, gt=0, description="Checkpoint every N iterations; null saves only the final model.")
    logging_steps: int = Field(1, gt=0, description="Progress line every N iterations (metrics.jsonl gets every one).")


class JudgeSettings(Section):
    judge: str | list[str] = Field(
        ..., description="An `align reward` output directory, or 'module:function' taking (prompts, responses) -> floats; "
        "a list of them is an ensemble: the score is the members' mean and their standard deviation is reported as "
        "the disagreement.",
    )
    ensemble_penalty: float = Field(
        0.0, ge=0, description="Ensemble only: score = mean - this x the members' standard deviation, so a policy is not "
        "paid for what the members disagree on (uncertainty-weighted optimisation, Coste et al. 2023).",
    )
    batch_size: int = Field(32, gt=0, description="Most pairs per reward-model forward pass (on CPU, length buckets may "
                            "take fewer where padding would cost more than another pass).")
    normalize: bool = Field(True, description="Reward model only: apply its training-set normalisation (mean 0, std 1).")
    precision: Literal["float32", "bfloat16", "int8"] = Field(
        "float32", description="Reward model only: what its encoder computes in. bfloat16: about 3x faster on a CPU "
        "with AVX-512 bf16, same fresh-pair accuracy; int8 (CPU only): a little faster still, but up to 0.7 off and 5% "
        "of pair orders flip (benchmarks/results/reward_scorer.md).",
    )
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="Subtracted from the score of a response cut at max_new_tokens without EOS."
    )
    missing_eos_penalty_unit: Literal["score", "std"] = Field(
        "score", description="'score': the penalty as given; 'std': in standard deviations of the batch's scores, so "
        "it stays in proportion to the judge's spread.",
    )
    clip: float | None = Field(None, gt=0, description="Clip scores to [-clip, clip] after the penalty.")

    @property
    def specs(self) -> list[str]:
        """The judge spec, or an ensemble's member specs, as a list."""
        return self.judge if isinstance(self.judge, list) else [self.judge]

    @model_validator(mode="after")
    def _ensemble_has_members(self) -> "JudgeSettings":
        if isinstance(self.judge, list) and not self.judge:
            raise ValueError("judge: an ensemble needs at least one member (got an empty list)")
        if self.ensemble_penalty and not isinstance(self.judge, list):
            raise ValueError(f"ensemble_penalty={self.ensemble_penalty} needs judge to be a list of members")
        return self


class SamplingSettings(Section):
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0 disables.")

    def sample_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``align.sampling.sample``: how to draw and, when the settings have one, the batch size."""
        return self.model_dump(include={"max_new_tokens", "temperature", "top_p", "top_k", "batch_size"})


class GenerationSettings(SamplingSettings):
    batch_size: int = Field(16, gt=0, description="Prompts per generate call.")


class ValueSettings(Section):
    HEAD_LEARNING_RATE: ClassVar[float] = 1e-3

    model: Literal["head", "separate"] = Field(
        "head", description="'head': a linear value head on the policy's trunk; 'separate': its own trunk plus head."
    )
    init_from: str | None = Field(
        None, description="'separate': starting weights of the critic (a causal LM with the policy's tokenizer); default the policy's."
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Learning rate of the value head (and critic). Default: HEAD_LEARNING_RATE (1e-3) for "
        "'head', training.learning_rate for a 'separate' critic. At a policy's rate a zero-initialised head learns "
        "nothing: on the alignment benchmark its explained variance stayed at 0.00-0.03 with 1e-4, 0.1-0.4 with 1e-3.",
    )
    warmup_iterations: int = Field(
        0, ge=0, description="First N iterations train only the value model (no policy loss, no gradient into a shared trunk)."
    )

    def rate(self, policy_learning_rate: float) -> float:
        """The value model's learning rate: as set, else the default for its kind."""
        if self.learning_rate is not None:
            return self.learning_rate
        return self.HEAD_LEARNING_RATE if self.model == "head" else policy_learning_rate


class PPOSettings(Section):
    rollouts_per_iteration: int = Field(16, gt=0, description="Prompts (one response each) per iteration on each process.")
    epochs: int = Field(4, gt=0, description="Passes of minibatch updates over each iteration's rollouts.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    clip_range_value: float = Field(0.2, gt=0, description="Value clip: new values stay within this of the rollout's.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL to the reference in the reward.")
    kl_coef: float = Field(0.05, ge=0, description="KL penalty coefficient beta (the initial one when adaptive).")
    target_kl: float | None = Field(
        None, gt=0, description="Adapt beta toward this KL per response (Ziegler et al. 2019); null keeps beta fixed."
    )
    kl_horizon: int = Field(10000, gt=0, description="Adaptive KL horizon, in samples.")
    whiten_rewards: bool = Field(False, description="Scale per-token rewards to unit variance over the batch (mean kept).")
    normalize_scores: bool = Field(
        False, description="Standardise each iteration's judge scores (after penalty and clip) to mean 0, std 1 before "
        "the KL penalty, so kl_coef means the same for any judge's scale.",
    )
    whiten_advantages: bool = Field(True, description="Whiten advantages over the batch before the updates.")
    sample_every: int = Field(10, gt=0, description="Append a sample table (prompt, response, reward) every N iterations.")
    num_samples: int = Field(8, gt=0, description="Rows per sample table.")


class PPORecipe(StageRecipe):
    """Our PPO-RLHF on accelerate: policy + value model, a frozen reference, a text-only judge."""

    stage: Literal["ppo"] = "ppo"
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy (usually the SFT output).")
    data: DataConfig = Field(..., description="Prompts; any record kind with a prompt converts.")
    reward: JudgeSettings
    value: ValueSettings = Field(default_factory=ValueSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    training: RLTrainingConfig = Field(default_factory=lambda: RLTrainingConfig(output_dir="runs/ppo"))

    @property
    def minibatch_size(self) -> int:
        """Sequences per optimizer step on one process."""
        return self.training.per_device_batch_size * self.training.gradient_accumulation_steps

    @model_validator(mode="after")
    def _minibatches_fit(self) -> "PPORecipe":
        if self.ppo.rollouts_per_iteration % self.minibatch_size:
            raise ValueError(
                f"ppo.rollouts_per_iteration={self.ppo.rollouts_per_iteration} must be a multiple of the minibatch "
                f"training.per_device_batch_size x training.gradient_accumulation_steps = {self.minibatch_size}"
            )
        return self


class GRPOSettings(Section):
    algorithm: Literal["grpo", "rloo"] = Field("grpo", description="TRL GRPOTrainer, or RLOOTrainer (leave-one-out baseline).")
    num_generations: int = Field(8, ge=2, description="Responses per prompt; the group each reward is compared within.")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference; 0 loads no reference model.")
    epsilon: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    num_iterations: int = Field(1, gt=0, description="Updates per generation batch (mu in the GRPO paper).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="grpo: divide advantages by the group's (or batch's) reward std, or not."
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description="grpo: token aggregation of the loss.")
    mask_truncated_completions: bool = Field(False, description="Leave responses cut at max_new_tokens out of the loss.")
    log_completions: bool = Field(False, description="Log a sample of completions with their rewards.")


class GRPORecipe(StageRecipe):
    """GRPO / RLOO through TRL, rewarded by our text-only judge."""

    stage: Literal["grpo"] = "grpo"
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy (usually the SFT output).")
    data: DataConfig = Field(..., description="Prompts; any record kind with a prompt converts.")
    reward: JudgeSettings
    generation: SamplingSettings = Field(default_factory=SamplingSettings)
    grpo: GRPOSettings = Field(default_factory=GRPOSettings)
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(output_dir="runs/grpo", learning_rate=1e-6))

    @model_validator(mode="after")
    def _groups_fit(self) -> "GRPORecipe":
        per_step = self.training.per_device_batch_size * self.training.gradient_accumulation_steps
        if per_step % self.grpo.num_generations:
            raise ValueError(
                f"training.per_device_batch_size x gradient_accumulation_steps = {per_step} must be a multiple of "
                f"grpo.num_generations={self.grpo.num_generations} (whole groups per step)"
            )
        only_grpo = sorted({"scale_rewards", "loss_type"} & self.grpo.model_fields_set)
        if self.grpo.algorithm == "rloo" and only_grpo:
            raise ValueError(f"grpo.{only_grpo[0]} applies to algorithm 'grpo', not 'rloo'; remove it or switch")
        return self


# --------------------------------------------------------------------------- dpo

DPOLoss = Literal["sigmoid", "conservative", "robust", "hinge", "ipo", "sft", "simpo", "orpo"]


class DPOOptions(Section):
    beta: float = Field(0.1, gt=0, description="Strength of the pull to the reference; higher stays closer (tau for ipo).")
    loss: list[DPOLoss] = Field(
        default_factory=lambda: ["sigmoid"],
        min_length=1,
        description="Loss variants, summed with loss_weights: sigmoid (DPO), conservative (cDPO), robust (rDPO), "
        "hinge (SLiC), ipo, sft (chosen NLL per token; [sigmoid, sft] is DPO+SFT), and the reference-free simpo "
        "and orpo (NLL + beta x odds-ratio term; no reference model is loaded when every loss is reference-free). "
        "A single name is allowed.",
    )
    loss_weights: list[float] | None = Field(None, description="One weight per loss; default 1.0 each.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed rate eps of flipped labels, read by the conservative and robust losses."
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin gamma (SimPO, Eq. 6).")
    precompute_ref: bool = Field(
        False, description="Full/partial fine-tuning: score the data with the reference before training, so no "
        "reference model is in memory while training. (Adapter methods never hold a second model.)"
    )
    padding_free: bool | None = Field(
        None, description="Pack chosen and rejected sequences into rows without pad tokens, positions restarting "
        "at each sequence; same loss as padded. null: on when the policy's attention keeps packed sequences apart "
        "at their own cost (align's packed sdpa, what loaded models run on sdpa; flash-attention) and model.method "
        "is not prompt_tuning: on CPU 1.35-1.47x the padded speed at 0.75-0.82x its memory "
        "(benchmarks/results/dpo.md)."
    )
    pack_row_tokens: int | None = Field(
        None, gt=0, description="padding_free: tokens per packed row (at least the longest sequence); null puts a "
        "micro-batch in one row. Attention runs per sequence either way (flash-attention's varlen kernels, or "
        "align.models.packed_attention on sdpa); on eager attention a row costs row_tokens^2."
    )
    warn_window: int = Field(
        5, ge=0, description="Warn when the logged mean chosen log-prob falls steadily over this many logs; 0: never."
    )
    warn_min_drop: float = Field(2.0, gt=0, description="... and drops by at least this many nats over the window.")

    @model_validator(mode="before")
    @classmethod
    def _one_loss_is_a_list(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("loss"), str):
            values = {**values, "loss": [values["loss"]]}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "DPOOptions":
        if len(set(self.loss)) != len(self.loss):
            raise ValueError(f"loss={self.loss} names a loss twice")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss):
            raise ValueError(f"loss_weights={self.loss_weights} needs one weight per loss in loss={self.loss}")
        if self.label_smoothing > 0 and not {"conservative", "robust"} & set(self.loss):
            raise ValueError(
                f"label_smoothing={self.label_smoothing} is read only by the conservative and robust losses, "
                f"but loss={self.loss}"
            )
        if "orpo" in self.loss and "sft" in self.loss:
            raise ValueError(f"loss={self.loss}: orpo already includes the chosen NLL (sft); remove 'sft'")
        if "simpo_gamma" in self.model_fields_set and "simpo" not in self.loss:
            raise ValueError(f"simpo_gamma={self.simpo_gamma} is read only by the simpo loss, but loss={self.loss}")
        if self.pack_row_tokens is not None and self.padding_free is False:
            raise ValueError(f"pack_row_tokens={self.pack_row_tokens} needs padding_free=true (got padding_free=false)")
        return self


class DPOEvalSettings(Section):
    enabled: bool = Field(True, description="After training: policy vs reference on held-out prompts (needs eval data).")
    reward_model: str | None = Field(
        None, description="An `align reward` output directory judging policy vs reference responses (win rate)."
    )
    num_prompts: int = Field(8, gt=0, description="Held-out prompts to generate for (distinct prompts of the eval split).")
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(
        1.0, ge=0, description="Sampling temperature; 0 is greedy. KL is measured on the policy's samples, an "
        "unbiased estimate only at 1.0."
    )
    batch_size: int = Field(4, gt=0, description="Prompts per generate call.")


class DPORecipe(StageRecipe):
    """``align dpo``: direct preference optimisation of a policy (usually the SFT output) on preference pairs."""

    stage: Literal["dpo"] = "dpo"
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy; also the reference, frozen.")
    data: DataConfig = Field(..., description="Preference pairs, or rankings/ratings (expanded to pairs).")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(output_dir="runs/dpo", learning_rate=5e-6))
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    eval: DPOEvalSettings = Field(default_factory=DPOEvalSettings)

    @model_validator(mode="after")
    def _packing_fits_method(self) -> "DPORecipe":
        if self.dpo.padding_free and self.model.method == "prompt_tuning":
            raise ValueError(
                "dpo.padding_free=true cannot pack with model.method=prompt_tuning: the soft prompt is prepended once "
                "per row, not once per sequence"
            )
        return self


# --------------------------------------------------------------------------- eval and export (no training)


class OutputSettings(Section):
    """``training`` of the stages that train nothing (eval, export); a pipeline sets output_dir as for any stage."""

    output_dir: str = Field("runs/out", description="Run directory: resolved recipe, outputs, stage_result.json.")
    seed: int = Field(42, description="Seed of every random draw; the same seed gives the same outputs.")


class CandidateSampling(GenerationSettings):
    n: int = Field(2, gt=0, description="Responses per prompt from each model.")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0, description="Prompts per generate call (each sampled n times).")
    seed: int = Field(42, description="Seed of the sampling, set before each model.")


class GenerateRecipe(StageRecipe):
    """``align generate``: candidates for labeling. ``model:`` (one) is accepted for ``models:``."""

    stage: Literal["generate"] = "generate"
    models: list[ModelConfig] = Field(..., min_length=1, description="Models to sample from; each is recorded by name_or_path.")
    data: DataConfig = Field(..., description="Prompts; any record kind with a prompt converts (default kind: prompt).")
    generation: CandidateSampling = Field(default_factory=CandidateSampling)
    output: str | None = Field(None, description="Candidates JSONL to write; default: <training.output_dir>/candidates.jsonl.")
    training: OutputSettings = Field(default_factory=lambda: OutputSettings(output_dir="runs/generate"))

    @model_validator(mode="before")
    @classmethod
    def _one_model(cls, values: Any) -> Any:
        if isinstance(values, dict) and "model" in values:
            if "models" in values:
                raise ValueError("give either 'model' or 'models', not both")
            values = {k: v for k, v in values.items() if k != "model"} | {"models": [values["model"]]}
        return values


class RejectionSamplingRecipe(StageRecipe):
    """``align rejection_sampling``: best-of-N answers as SFT data (Llama 2's rejection-sampling fine-tuning)."""

    stage: Literal["rejection_sampling"] = "rejection_sampling"
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy that answers (usually the SFT output).")
    data: DataConfig = Field(..., description="Prompts; any record kind with a prompt converts.")
    reward: JudgeSettings = Field(..., description="The judge that picks each prompt's best answer.")
    generation: CandidateSampling = Field(
        default_factory=lambda: CandidateSampling(n=8), description="n: answers sampled per prompt (the N of best-of-N)."
    )
    min_gain: float | None = Field(
        None, description="Keep a prompt only when its best answer beats the mean of its N by at least this much."
    )
    output: str | None = Field(None, description="SFT JSONL to write; default: <training.output_dir>/best.jsonl.")
    training: OutputSettings = Field(default_factory=lambda: OutputSettings(output_dir="runs/rejection_sampling"))


class EvalPolicy(Section):
    name: str | None = Field(None, description="Label in the report; default: the last part of model.name_or_path.")
    model: ModelConfig = Field(
        ..., description="The policy: a run dir, an adapter dir (merged on load), HF dir, .gguf or alias."
    )
    run_dir: str | None = Field(
        None, description="Training run whose metrics.jsonl is plotted; default: model.name_or_path (or an adapter "
        "dir's parent) when it holds a metrics.jsonl."
    )
    best_of: int = Field(
        1, ge=1, description="Best-of-N: sample N responses per prompt and keep the one 'selector' scores highest "
        "(no training; its KL is the analytic log N - (N - 1) / N)."
    )
    selector: JudgeSettings | None = Field(None, description="The judge that picks the best of N (e.g. the reward model).")

    @model_validator(mode="before")
    @classmethod
    def _path_is_a_model(cls, values: Any) -> Any:
        return {"model": {"name_or_path": values}} if isinstance(values, str) else values

    @model_validator(mode="after")
    def _best_of_needs_a_selector(self) -> "EvalPolicy":
        if self.best_of > 1 and self.selector is None:
            raise ValueError(f"best_of={self.best_of} needs a selector: the judge that picks the best response")
        return self

    @property
    def label(self) -> str:
        return self.name or Path(self.model.name_or_path.rstrip("/")).name or self.model.name_or_path


class EvalSampling(SamplingSettings):
    num_prompts: int = Field(64, gt=0, description="Held-out prompts to answer: the first N distinct ones.")
    batch_size: int = Field(8, gt=0, description="Prompts per generate call.")


class EvalReportSettings(Section):
    num_samples: int = Field(8, ge=0, description="Prompts shown in report.md's sample table (samples.jsonl has all).")
    greedy: bool = Field(
        True, description="Also show each model's greedy answer to those prompts: what the policy says most "
        "likely, next to one draw at the evaluation temperature.",
    )
    runs: list[str] = Field(default_factory=list, description="More training run dirs whose metrics.jsonl is plotted.")


class EvalRecipe(StageRecipe):
    """``align eval``: policies vs a baseline on held-out prompts: win rate, reward, KL to the reference, length.

    KL(pi || pi_ref) is estimated on the policy's own samples, unbiased only for plain sampling
    (temperature 1, top_p 1, top_k 0).
    """

    stage: Literal["eval"] = "eval"
    policies: list[EvalPolicy] = Field(..., min_length=1, description="Policies to evaluate; a bare path is a model.")
    reference: ModelConfig = Field(..., description="KL reference: the policies' starting point, usually the SFT model.")
    baseline: ModelConfig | None = Field(None, description="Opponent in the win rate; default: the reference.")
    reward: JudgeSettings | None = Field(None, description="Judge of win rate and mean reward; null: KL and length only.")
    data: DataConfig = Field(..., description="Prompts; its eval split when eval_path/eval_fraction is set, else all rows.")
    generation: EvalSampling = Field(default_factory=EvalSampling)
    report: EvalReportSettings = Field(default_factory=EvalReportSettings)
    training: OutputSettings = Field(default_factory=lambda: OutputSettings(output_dir="runs/eval"))

    @model_validator(mode="after")
    def _unique_labels(self) -> "EvalRecipe":
        seen: dict[str, int] = {}
        for i, policy in enumerate(self.policies):
            if policy.label in seen or policy.label == "baseline":
                first = f"policies[{seen[policy.label]}]" if policy.label in seen else "the baseline"
                raise ValueError(
                    f"policies[{i}] and {first} are both labelled '{policy.label}'; give policies[{i}] a distinct name"
                )
            seen[policy.label] = i
        return self


GGUFType = Literal["f16", "q8_0"]


class GGUFSettings(Section):
    enabled: bool = Field(True, description="Write GGUF files (Llama architecture); false: safetensors only.")
    types: list[GGUFType] = Field(
        default_factory=lambda: ["f16", "q8_0"], min_length=1, description="One file per type: model-<type>.gguf."
    )
    verify: bool = Field(True, description="Load each GGUF back with transformers and compare its logits with the model's.")
    tolerance_f16: float = Field(
        0.01, gt=0, description="Largest |logit difference| accepted for f16, relative to the largest |logit|."
    )
    tolerance_q8_0: float = Field(
        0.15, gt=0, description="Largest |logit difference| accepted for q8_0, relative to the largest |logit|."
    )
    tokenizer_pre: str | None = Field(
        None, description="llama.cpp pre-tokenizer name (tokenizer.ggml.pre); default: detected from the tokenizer."
    )


class OllamaSettings(Section):
    enabled: bool = Field(True, description="Write an Ollama Modelfile next to the GGUF files.")
    gguf: GGUFType = Field("q8_0", description="GGUF file the Modelfile's FROM names (must be among gguf.types).")
    system: str | None = Field(None, description="SYSTEM prompt; default: the chat template's own default, if any.")
    parameters: dict[str, float | int | str] = Field(
        default_factory=dict, description="Extra PARAMETER lines, e.g. {temperature: 0.7, num_ctx: 4096}."
    )


class ExportRecipe(StageRecipe):
    """``align export``: merged safetensors + tokenizer + model card, GGUF (f16, q8_0) and an Ollama Modelfile."""

    stage: Literal["export"] = "export"
    model: ModelConfig = Field(..., description="What to export: a run dir (its adapter/ is merged), adapter dir, HF dir.")
    adapter: str | None = Field(None, description="A LoRA adapter dir to merge into model (when model is its base).")
    model_name: str | None = Field(None, description="Name in the model card and GGUF metadata; default: output dir name.")
    gguf: GGUFSettings = Field(default_factory=GGUFSettings)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    training: OutputSettings = Field(default_factory=lambda: OutputSettings(output_dir="runs/export"))

    @model_validator(mode="after")
    def _modelfile_has_a_gguf(self) -> "ExportRecipe":
        if self.ollama.enabled and not self.gguf.enabled:
            raise ValueError("ollama.enabled=true needs gguf.enabled=true (got gguf.enabled=false); disable one of them")
        if self.ollama.enabled and self.ollama.gguf not in self.gguf.types:
            raise ValueError(f"ollama.gguf='{self.ollama.gguf}' is not among gguf.types={self.gguf.types}")
        return self


# --------------------------------------------------------------------------- auto-labeling (pipeline stage)


class AutoLabelExport(Section):
    ties: Literal["drop", "keep"] = Field("drop", description="Tied responses: dropped, or kept as margin-0 pairs.")
    aggregate: Literal["none", "majority"] = Field(
        "majority", description="'majority': one ranking per item by majority vote; 'none': every label's pairs."
    )
    min_agreement: float = Field(0.0, ge=0, le=1, description="Drop items whose annotators agree less than this.")


class AutoLabelRecipe(StageRecipe):
    """Import candidates into a labeling project, label them with simulated annotators, export preferences."""

    stage: Literal["autolabel"] = "autolabel"
    candidates: str = Field(..., description="Candidates JSONL written by `align generate`.")
    project: str = Field("auto", description="Labeling project name in the store.")
    db: str | None = Field(None, description="Store URL; default: SQLite labels.db in the run directory.")
    judge: JudgeSettings = Field(..., description="Who labels: a reward-model dir or module:function.")
    annotators: int = Field(3, gt=0, description="Simulated annotators judge-0..N-1; each item gets N labels.")
    noise: float = Field(0.5, ge=0, description="Scale of each annotator's noise on the judge's scores.")
    noise_kind: Literal["gaussian", "gumbel"] = Field("gaussian")
    export: AutoLabelExport = Field(default_factory=AutoLabelExport)
    training: OutputSettings = Field(default_factory=lambda: OutputSettings(output_dir="runs/autolabel"))


# --------------------------------------------------------------------------- pretrain, distill, kto, online dpo


class PretrainOptions(Section):
    general_eval: DataConfig | None = Field(
        None, description="Held-out general (out-of-domain) text: perplexity before and after shows what adaptation costs."
    )
    eval_documents: int = Field(64, gt=0, description="Perplexity on at most this many held-out documents per set.")


class PretrainRecipe(StageRecipe):
    """``align pretrain``: continued pretraining on raw text, packed rows with per-document attention."""

    stage: Literal["pretrain"] = "pretrain"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(..., description="Domain text: sft 'text' records, a .txt file or a directory of them.")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(output_dir="runs/pretrain", learning_rate=1e-4))
    pretrain: PretrainOptions = Field(default_factory=PretrainOptions)


class DistillOptions(Section):
    teacher: ModelConfig = Field(..., description="The teacher: must share the student's tokenizer.")
    mode: Literal["token", "on_policy", "sequence"] = Field(
        "token", description="'token': divergence on the data's completions (teacher logits); 'on_policy': on the "
        "student's own samples each step (GKD); 'sequence': NLL of teacher generations, made once before training."
    )
    beta: float | None = Field(
        None, ge=0, le=1, description="Generalized JSD weight: 0 forward KL(teacher||student), 1 reverse "
        "KL(student||teacher), between: JSD_beta. Default 0 for 'token', 1 for 'on_policy'; unused by 'sequence'."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of both distributions in the loss.")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Sampling of on_policy (student) and sequence (teacher) completions."
    )

    @property
    def divergence_beta(self) -> float:
        return self.beta if self.beta is not None else (1.0 if self.mode == "on_policy" else 0.0)

    @model_validator(mode="after")
    def _beta_has_a_use(self) -> "DistillOptions":
        if self.mode == "sequence" and self.beta is not None:
            raise ValueError(f"beta={self.beta} is unused by mode 'sequence' (NLL of teacher generations); remove it")
        return self


class DistillRecipe(StageRecipe):
    """``align distill``: a student learns from a teacher's logits or generations."""

    stage: Literal["distill"] = "distill"
    model: ModelConfig = Field(default_factory=ModelConfig, description="The student.")
    data: DataConfig = Field(..., description="SFT data (prompt/completion or chats), or prompts for on_policy/sequence.")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(output_dir="runs/distill", learning_rate=1e-4))
    distill: DistillOptions


class KTOOptions(Section):
    beta: float = Field(0.1, gt=0, description="KTO beta: scale of the implicit reward beta x log-ratio.")
    desirable_weight: float = Field(1.0, gt=0, description="lambda_D: weight of thumbs-up examples.")
    undesirable_weight: float = Field(1.0, gt=0, description="lambda_U: weight of thumbs-down examples.")
    threshold: float = Field(0.5, description="Rating records: a score above this is a thumbs-up, else a thumbs-down.")


class KTORecipe(StageRecipe):
    """``align kto``: Kahneman-Tversky optimisation on unpaired thumbs-up/down feedback (TRL KTOTrainer)."""

    stage: Literal["kto"] = "kto"
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy; also the reference, frozen.")
    data: DataConfig = Field(..., description="Rating records (thumbs by threshold) or preference pairs (unpaired).")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(output_dir="runs/kto", learning_rate=5e-6))
    kto: KTOOptions = Field(default_factory=KTOOptions)

    @model_validator(mode="after")
    def _feedback_kind(self) -> "KTORecipe":
        if self.data.kind not in (None, "rating", "preference"):
            raise ValueError(f"data.kind='{self.data.kind}': kto trains on rating (thumbs) or preference records")
        return self


class OnlineSettings(Section):
    rounds: int = Field(3, gt=0, description="Rounds of sample -> judge -> DPO; each trains training.max_steps steps.")
    prompts_per_round: int = Field(16, gt=0, description="Prompts sampled per round (cycling through the data).")
    samples_per_prompt: int = Field(
        2, ge=2, description="Responses per prompt; the judge's best and worst form the pair (ties dropped)."
    )


class OnlineDPORecipe(StageRecipe):
    """``align online_dpo``: iterative DPO; the reference stays the starting policy across rounds."""

    stage: Literal["online_dpo"] = "online_dpo"
    model: ModelConfig = Field(default_factory=ModelConfig, description="The starting policy (and reference).")
    data: DataConfig = Field(..., description="Prompts; any record kind with a prompt converts.")
    reward: JudgeSettings
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    training: TrainingConfig = Field(
        default_factory=lambda: TrainingConfig(output_dir="runs/online_dpo", learning_rate=5e-6, max_steps=10)
    )

    @model_validator(mode="after")
    def _steps_per_round(self) -> "OnlineDPORecipe":
        if self.training.max_steps == -1:
            raise ValueError("training.max_steps=-1: online_dpo trains max_steps steps per round; give a count")
        return self


# --------------------------------------------------------------------------- data augmentation

AugmentField = Literal["prompt", "completion", "chosen", "rejected"]
AUGMENT_FIELDS: dict[str, tuple[AugmentField, ...]] = {
    "sft": ("prompt", "completion"), "preference": ("prompt", "chosen", "rejected"),
}
WORD_EDITS = ("word_dropout", "word_swap", "synonym")


class AugmentMethod(Section):
    kind: Literal["word_dropout", "word_swap", "synonym", "paraphrase", "back_translation"] = Field(
        ..., description="word_dropout: drop words; word_swap: swap neighbouring words; synonym: replace words from a "
        "table; paraphrase / back_translation: rewrites sampled from `model`."
    )
    copies: int = Field(1, gt=0, description="Augmented rows made per source row, each with its own random draws.")
    fields: list[AugmentField] | None = Field(
        None, description="Text fields rewritten (in chats: user turns for prompt, assistant turns for the others); "
        "default: prompt for sft rows (a noisy completion would be learned), prompt, chosen and rejected for "
        "preference rows.",
    )
    probability: float = Field(0.1, gt=0, le=1, description="Word edits: the chance that each word is edited.")
    synonyms: str | None = Field(
        None, description="synonym: a JSON file {word: [synonyms, ...]} used instead of the small built-in table."
    )
    model: ModelConfig | None = Field(None, description="paraphrase / back_translation: the causal LM that rewrites.")
    instruction: str | None = Field(
        None, description="paraphrase / back_translation: the prompt the model answers, with {text} (and {language} "
        "for back_translation); default: a plain request for the paraphrase or translation alone.",
    )
    pivot_language: str = Field("French", description="back_translation: the language translated to and back from.")
    language: str = Field("English", description="back_translation: the language of the data.")
    generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(max_new_tokens=96, temperature=0.7),
        description="paraphrase / back_translation: sampling of the rewrites.",
    )

    def fields_for(self, kind: str) -> tuple[AugmentField, ...]:
        """The fields rewritten in records of ``kind`` (sft or preference)."""
        return tuple(self.fields) if self.fields else ("prompt",) if kind == "sft" else AUGMENT_FIELDS[kind]

    @model_validator(mode="after")
    def _options_fit_kind(self) -> "AugmentMethod":
        by_model = self.kind in ("paraphrase", "back_translation")
        if by_model and self.model is None:
            raise ValueError(f"kind '{self.kind}' needs model: a causal LM that follows instructions")
        only_for = {"synonyms": ("synonym",), "probability": WORD_EDITS, "model": ("paraphrase", "back_translation"),
                    "instruction": ("paraphrase", "back_translation"), "generation": ("paraphrase", "back_translation"),
                    "pivot_language": ("back_translation",), "language": ("back_translation",)}
        for key, kinds in only_for.items():
            if key in self.model_fields_set and getattr(self, key) is not None and self.kind not in kinds:
                raise ValueError(f"{key} applies to kind {' / '.join(kinds)}, not kind '{self.kind}'; remove it")
        placeholders = ("{text}", "{language}") if self.kind == "back_translation" else ("{text}",)
        missing = [p for p in placeholders if self.instruction is not None and p not in self.instruction]
        if missing:
            raise ValueError(f"instruction={self.instruction!r} lacks {missing[0]}")
        return self


class AugmentRecipe(StageRecipe):
    """``align augment``: augmented sft / preference rows with provenance; eval prompts never reach them."""

    stage: Literal["augment"] = "augment"
    data: DataConfig = Field(
        ..., description="sft or preference records; its eval split (eval_path or eval_fraction) is written "
        "unchanged to eval.jsonl and no augmented row may carry one of its prompts."
    )
    methods: list[AugmentMethod] = Field(..., min_length=1, description="Each method adds its copies of every train row.")
    keep_original: bool = Field(True, description="Write the original train rows too (augmentation 'original').")
    training: OutputSettings = Field(default_factory=lambda: OutputSettings(output_dir="runs/augment"))

    @property
    def record_kind(self) -> RecordKind:
        return self.data.kind or "sft"

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> "AugmentRecipe":
        kind = self.record_kind
        if kind not in AUGMENT_FIELDS:
            raise ValueError(f"data.kind='{kind}': augment reads sft or preference records")
        for i, method in enumerate(self.methods):
            wrong = sorted(set(method.fields or ()) - set(AUGMENT_FIELDS[kind]))
            if wrong:
                raise ValueError(f"methods[{i}].fields: {wrong} are not fields of {kind} records "
                                 f"(those are {list(AUGMENT_FIELDS[kind])})")
        return self
