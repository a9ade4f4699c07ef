"""Train the BERT-style reward model on preferences, rankings and ratings, mixed.

    align reward recipes/reward.yaml training.max_steps=50

The run directory ends up holding a saved reward model (encoder with LoRA merged,
tokenizer, head, ``reward_config.json`` with the score normalisation) that
``reward_models.RewardScorer.from_pretrained(output_dir)`` loads, plus
``reliability.png``/``reliability.json`` from the last evaluation, ``metrics.jsonl``,
checkpoints and a model card.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import TrainingArguments, set_seed

from align.config import DataConfig, PerturbationSettings, RewardRecipe
from align.data import DataError, load_records
from align.models import resolve_model_source, set_partial_trainable, torch_dtype
from align.recipe import RecipeError
from align.run import StageResult, finish_stage, prepare_run_dir
from align.training import hf_training_kwargs, train_with_resume, trainer_callbacks
from reward_models.metrics import score_units
from reward_models.model import RewardModel
from reward_models.objective import LossSpec, RewardCollator, units_from_records
from reward_models.scorer import RewardScorer
from reward_models.text import PairEncoder
from reward_models.trainer import RewardTrainer, UnitDataset

logger = logging.getLogger("align.reward")

FINAL_EVAL_MAX_UNITS = 2000


def run(recipe: RewardRecipe) -> StageResult:
    _check_deepspeed(recipe.training.deepspeed)
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    train_units, eval_units, data_stats = load_units(recipe.data)
    rating_stats = standardize_ratings(train_units, eval_units) if recipe.reward.standardize_ratings else {}
    if recipe.training.eval_steps is not None and not eval_units:
        raise DataError("data", f"training.eval_steps={recipe.training.eval_steps} needs eval data, and the split gave none")

    set_seed(recipe.training.seed)  # the head's initial weights come from the recipe's seed, not the process's past
    model = build_model(recipe)
    tokenizer = model.tokenizer
    options = recipe.reward
    spec = LossSpec(
        pair_loss=options.pair_loss,
        use_margin=options.use_margin,
        tie_penalty=options.tie_loss,
        rating_loss=options.rating_loss,
        huber_delta=options.huber_delta,
        ranking_loss=options.ranking_loss,
        weights=options.weights.model_dump(),
    )
    args = TrainingArguments(
        **hf_training_kwargs(recipe.training),
        remove_unused_columns=False,  # units are dicts the collator reads whole
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=UnitDataset(train_units),
        eval_dataset=UnitDataset(eval_units) if eval_units else None,
        data_collator=RewardCollator(PairEncoder(tokenizer, model.reward_config.max_length)),
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out),
        loss_spec=spec,
        plot_dir=out,
        reliability_bins=options.reliability_bins,
        layer_lr_decay=options.layer_lr_decay,
        adversarial=recipe.training.adversarial,
    )
    # The final evaluation below is the reward model's own (accuracy, correlations, reliability).
    metrics: dict[str, Any] = train_with_resume(trainer, recipe.training, evaluate=False)

    if options.normalize:
        norm_units = _sample(train_units, options.normalize_max_samples, recipe.training.seed)
        fit_normalization(model, norm_units, options.clip, batch_size=args.per_device_eval_batch_size)
    else:
        model.reward_config.clip = options.clip
    metrics.update({"reward/norm_mean": model.reward_config.mean, "reward/norm_std": model.reward_config.std})
    metrics.update(final_evaluation(trainer, train_units, eval_units, out, recipe.training.seed, recipe.perturbation))

    if trainer.is_world_process_zero():
        model.save_pretrained(out)
        (out / "data_stats.json").write_text(
            json.dumps({"sources": data_stats, "ratings": rating_stats}, indent=2, default=str) + "\n"
        )
    return finish_stage(out, recipe, metrics, card_title=f"Reward model on {recipe.model.name_or_path}")


# --------------------------------------------------------------------------- data


def load_units(sources: list[DataConfig]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(train units, eval units, per-source stats): every source in its own kind (default preference)."""
    train: list[dict[str, Any]] = []
    evaluation: list[dict[str, Any]] = []
    stats = []
    for source in sources:
        loaded = load_records(source, "preference")
        if loaded.kind not in ("preference", "ranking", "rating"):
            raise DataError(source.path, f"holds {loaded.kind} records; the reward model needs preference, ranking or rating", "kind")
        train += units_from_records(loaded.kind, loaded.train)
        if loaded.eval is not None:
            evaluation += units_from_records(loaded.kind, loaded.eval)
        stats.append(loaded.stats)
    kinds = {kind: sum(u["kind"] == kind for u in train) for kind in ("preference", "tie", "rating", "ranking")}
    logger.info("reward data: %d train / %d eval units; train by kind: %s", len(train), len(evaluation), kinds)
    return train, evaluation, stats


def standardize_ratings(train: list[dict[str, Any]], evaluation: list[dict[str, Any]]) -> dict[str, float]:
    """Z-score rating targets in place with the training ratings' mean and std; returns them.

    Puts a 1-10 rating scale on the scale of the pair logits, so mixed losses are balanced.
    """
    scores = [u["score"] for u in train if u["kind"] == "rating"]
    if not scores:
        return {}
    values = torch.tensor(scores, dtype=torch.float64)
    mean = float(values.mean())
    std = float(values.std(unbiased=False)) if len(scores) > 1 else 1.0
    std = std if std > 1e-8 else 1.0
    for unit in train + evaluation:
        if unit["kind"] == "rating":
            unit["score"] = (unit["score"] - mean) / std
    return {"rating_mean": mean, "rating_std": std}


def _sample(units: list[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    return units if len(units) <= limit else random.Random(seed).sample(units, limit)


# --------------------------------------------------------------------------- model


def build_model(recipe: RewardRecipe) -> RewardModel:
    """A fresh RewardModel on the recipe's encoder; the head always trains, the encoder as ``model.method`` says.

    full: all of it; lora: adapters; partial: its top ``partial.trainable_top_k`` layers;
    feature_extraction: none of it, with features cached (small label sets overfit a full encoder).
    """
    cfg = recipe.model
    source = resolve_model_source(cfg.name_or_path, cfg.gguf_file)
    model = RewardModel.from_encoder(
        source,
        pooling=recipe.reward.pooling,
        max_length=recipe.training.max_length,
        head_dropout=recipe.reward.head_dropout,
        dtype=torch_dtype(cfg.dtype),
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.method == "lora":
        lora = LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            modules_to_save=cfg.lora.modules_to_save or None,
        )
        model.encoder = get_peft_model(model.encoder, lora)
    elif cfg.method == "partial":  # the top encoder layers train, the rest stays as pretrained
        set_partial_trainable(model.encoder, cfg.partial, cfg.partial.trainable_top_k)
    elif cfg.method == "feature_extraction":
        model.cache_features()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("reward model on %s (%s): %d / %d parameters trainable", source, cfg.method, trainable, total)
    return model


def fit_normalization(model, units: list[dict[str, Any]], clip: float | None, batch_size: int = 32) -> None:  # noqa: ANN001
    """Score every distinct (prompt, response) of ``units`` raw and store their mean/std in the model."""
    scorer = RewardScorer(model, batch_size=batch_size, normalize=False)
    seen: dict[str, float] = {}
    for unit, scores in zip(units, score_units(scorer.score, units)):
        for response, value in zip(_responses(unit), scores):
            seen.setdefault(json.dumps([unit["prompt"], response], sort_keys=True), float(value))
    model.set_normalization(torch.tensor(list(seen.values())), clip=clip)
    logger.info("score normalisation on %d training responses: mean %.4f, std %.4f",
                len(seen), model.reward_config.mean, model.reward_config.std)


def _responses(unit: dict[str, Any]) -> list[Any]:
    return {
        "preference": lambda u: [u["chosen"], u["rejected"]],
        "tie": lambda u: [u["a"], u["b"]],
        "rating": lambda u: [u["response"]],
        "ranking": lambda u: list(u["responses"]),
    }[unit["kind"]](unit)


def final_evaluation(trainer, train_units, eval_units, out: Path, seed: int,  # noqa: ANN001
                     perturbation: PerturbationSettings | None = None) -> dict[str, float]:
    """Eval metrics (``eval/...``) and reliability.png; on a training sample (``train/...``) without eval data.

    With ``perturbation``, also ``accuracy_perturbed``: pair accuracy after each pair's input embeddings
    are pushed to flip it (``RewardTrainer.perturbed_accuracy``).
    """
    metrics = _final_metrics(trainer, train_units, eval_units, out, seed)
    if perturbation is not None:
        prefix = "eval" if eval_units else "train"
        accuracy = trainer.perturbed_accuracy(eval_units or _sample(train_units, FINAL_EVAL_MAX_UNITS, seed), perturbation)
        if accuracy is not None:
            metrics[f"{prefix}/accuracy_perturbed"] = accuracy
    return metrics


def _final_metrics(trainer, train_units, eval_units, out: Path, seed: int) -> dict[str, float]:  # noqa: ANN001
    if eval_units:
        # The trainer may just have evaluated at this very step (eval_steps divides max_steps):
        # reuse that rather than score the eval set twice. Scores there are raw, as here.
        last = trainer.state.log_history[-2:] if trainer.state.log_history else []
        done = [row for row in last if "eval_loss" in row and row.get("step") == trainer.state.global_step]
        metrics = done[-1] if done else trainer.evaluate()
        return {f"eval/{k.removeprefix('eval_')}": v for k, v in metrics.items()
                if k.startswith("eval_")}
    sample = _sample(train_units, FINAL_EVAL_MAX_UNITS, seed)
    metrics, bins = trainer.measure(sample)
    if trainer.is_world_process_zero():
        trainer.save_reliability(bins, out)
    return {f"train/{k}": v for k, v in metrics.items() if k != "loss"} | {"train/final_loss": metrics["loss"]}


def _check_deepspeed(config_path: str | None) -> None:
    """ZeRO-3 shards the encoder's weights, which the in-process scoring and saving here do not gather."""
    if not config_path:
        return
    stage = json.loads(Path(config_path).read_text()).get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise RecipeError(
            f"training.deepspeed={config_path} is ZeRO stage 3; the reward stage supports ZeRO 1/2 "
            "(BERT-size encoders fit on one GPU; ZeRO-2 shards their optimizer state)"
        )
