"""What every stage that trains with an HF ``Trainer`` (SFT, DPO, GRPO, reward) shares.

Training arguments from a recipe, callbacks (``metrics.jsonl`` and the progress line, early
stopping), training with resume, and the final save. The run directory itself is ``align.run``'s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from align.config import ModelConfig, TrainingConfig
from align.distributed import route_cpu_deepspeed_to_gloo
from align.run import METRICS_FILE, append_metrics, is_main_process, truncate_jsonl

logger = logging.getLogger("align")

def report_to(training: TrainingConfig) -> list[str]:
    """Resolve ``report_to``: wandb runs offline when no API key is set, so runs never need network."""
    wants_wandb = training.report_to == "wandb" or (
        training.report_to == "auto" and importlib.util.find_spec("wandb") is not None
    )
    if not wants_wandb:
        return []
    if "WANDB_API_KEY" not in os.environ:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_PROJECT", training.wandb_project)
    return ["wandb"]


def hf_training_kwargs(training: TrainingConfig) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` (and TRL's configs built on it)."""
    has_eval = training.eval_steps is not None
    if training.deepspeed:
        route_cpu_deepspeed_to_gloo()
    return dict(
        output_dir=training.output_dir,
        seed=training.seed,
        max_steps=training.max_steps,
        num_train_epochs=training.num_epochs,
        per_device_train_batch_size=training.per_device_batch_size,
        per_device_eval_batch_size=training.per_device_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        logging_steps=training.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=training.eval_steps,
        save_strategy="steps" if training.save_steps else "no",
        save_steps=training.save_steps or 500,
        save_total_limit=training.save_total_limit,
        load_best_model_at_end=training.early_stopping_patience is not None,
        metric_for_best_model="eval_loss" if training.early_stopping_patience is not None else None,
        report_to=report_to(training),
        deepspeed=training.deepspeed,
        gradient_checkpointing=training.gradient_checkpointing,
        bf16=training.bf16,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not is_main_process(),
    )


def resume_checkpoint(training: TrainingConfig) -> str | None:
    """The last ``checkpoint-N`` in output_dir when ``resume: true``; None to start fresh."""
    if not training.resume:
        return None
    out = Path(training.output_dir)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last is None:
        logger.warning("resume: true but no checkpoint in %s; starting from step 0", out)
    else:
        logger.info("resuming from %s", last)
    return last


def trainer_callbacks(training: TrainingConfig, output_dir: Path) -> list[Any]:
    """Callbacks every HF-trainer stage uses: metrics.jsonl + progress line, and early stopping."""
    callbacks: list[Any] = [MetricsJsonlCallback(output_dir)]
    if training.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    return callbacks


def namespace_metrics(logs: dict[str, Any]) -> dict[str, Any]:
    """HF log keys -> namespaced names: ``loss`` -> ``train/loss``, ``eval_loss`` -> ``eval/loss``.

    Keys that already carry a namespace (``rewards/chosen``) are kept as they are.
    """
    out = {}
    for key, value in logs.items():
        if key.startswith("eval_"):
            out["eval/" + key.removeprefix("eval_")] = value
        elif "/" in key:
            out[key] = value
        else:
            out["train/" + key] = value
    return out


class MetricsJsonlCallback(TrainerCallback):
    """Append every log to metrics.jsonl and print one progress line: step, loss, ms/step, tokens/s.

    A resumed run first drops the rows the interrupted run logged after its checkpoint, so no
    step is logged twice.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self._last_time = time.perf_counter()
        self._last_step = 0
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - HF callback signature
        # The trainer has restored ``state`` from the checkpoint by now: global_step is where it resumes.
        self._last_step, self._last_tokens = state.global_step, state.num_input_tokens_seen or 0
        if state.is_world_process_zero and state.global_step > 0:
            truncate_jsonl(self.out / METRICS_FILE, "step", state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - HF callback signature
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        steps = max(state.global_step - self._last_step, 1)
        tokens = state.num_input_tokens_seen or 0
        elapsed = max(now - self._last_time, 1e-9)
        record = {"step": state.global_step, "epoch": state.epoch, **namespace_metrics(logs)}
        if "loss" in logs:
            record["perf/ms_per_step"] = 1000 * elapsed / steps
            record["perf/tokens_per_s"] = (tokens - self._last_tokens) / elapsed
            logger.info(
                "step %d | loss %.4f | %.0f ms/step | %.0f tok/s",
                state.global_step,
                logs["loss"],
                record["perf/ms_per_step"],
                record["perf/tokens_per_s"],
            )
            self._last_time, self._last_step, self._last_tokens = now, state.global_step, tokens
        append_metrics(self.out, record)


def train_with_resume(trainer: Any, training: TrainingConfig, evaluate: bool = True) -> dict[str, Any]:
    """Train (from the last checkpoint when ``resume: true``); ``train/loss``, ``train/steps`` and ``eval/*``.

    ``evaluate``: run the trainer's evaluation once more at the end when it has eval data.
    """
    output = trainer.train(resume_from_checkpoint=resume_checkpoint(training))
    metrics: dict[str, Any] = {"train/loss": output.training_loss, "train/steps": trainer.state.global_step}
    if evaluate and trainer.eval_dataset is not None:
        metrics.update({"eval/" + k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()
                        if k.startswith("eval_")})
    return metrics


def save_final_model(trainer: Any, model_cfg: ModelConfig, out: Path) -> None:
    """Full weights at the run root; LoRA/QLoRA: ``adapter/`` plus the merged model at the root.

    Either way the run root loads with ``from_pretrained``, so a later stage can start from it.
    """
    if model_cfg.method in ("lora", "qlora"):
        trainer.save_model(str(out / "adapter"))
        if trainer.is_world_process_zero():
            from align.models import merge_adapter

            merge_adapter(model_cfg, out / "adapter", out)
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
