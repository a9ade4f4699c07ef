"""Recipe schema: one pydantic model per stage, grouped model / data / training.

Every YAML key is a field here. An unknown key is an error naming its full dotted
path and the closest valid name; precedence is defaults < recipe < ``key.sub=value``
overrides. Each field is documented once, by its ``description``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    method: Literal["full", "lora", "qlora", "prompt_tuning", "partial"] = Field(
        "full", description="Which parameters train."
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
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "disk", "hub"] = Field(
        "auto", description="File format; 'auto' guesses from the extension or directory contents."
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

    @model_validator(mode="after")
    def _eval_needs_schedule(self) -> "TrainingConfig":
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError(
                f"early_stopping_patience={self.early_stopping_patience} needs eval_steps to be set (got eval_steps=None)"
            )
        return self


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
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(output_dir="runs/sft"))
    sft: SFTOptions = Field(default_factory=SFTOptions)


class PipelineRecipe(Section):
    """A list of stage recipes run in order; ``${name.key}`` refers to an earlier stage's resolved value."""

    pipeline: list[dict[str, Any]] = Field(..., min_length=1)
    output_root: str | None = Field(
        None, description="If set, each stage without its own training.output_dir writes to output_root/<name>."
    )


def recipe_path_label(path: str | Path | None) -> str:
    return str(path) if path is not None else "<recipe>"
