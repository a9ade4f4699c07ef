"""``RewardTrainer``: HF ``Trainer`` with the reward model's collator, loss and evaluation.

Why HF ``Trainer`` and not TRL's ``RewardTrainer``: TRL's trains a
``AutoModelForSequenceClassification`` on preference pairs only; ours mixes pairs, ties,
ratings and rankings in one batch, with an encoder + pooling + head model. Subclassing
``Trainer`` (``compute_loss`` + ``evaluate``) keeps checkpoints, resume, DeepSpeed,
gradient accumulation and logging as they are for every other stage.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer

from align.adversarial import AdversarialTraining, EmbeddingPerturbation, adversarial_delta
from align.config import PerturbationSettings
from align.models.freezing import parameter_groups
from reward_models.metrics import evaluate_units, plot_reliability, score_units
from reward_models.objective import MODEL_INPUTS, LossSpec, collate_layout, total_loss
from reward_models.scorer import RewardScorer

logger = logging.getLogger("reward_models")


class UnitDataset(Dataset):
    """A list of units (see ``reward_models.objective``) as a map-style torch dataset."""

    def __init__(self, units: Sequence[dict[str, Any]]) -> None:
        self.units = list(units)

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.units[index]


class RewardTrainer(AdversarialTraining, Trainer):
    """Trains a ``RewardModel`` on mixed units; ``evaluate`` reports reward metrics and the eval loss.

    ``adversarial`` (``align.adversarial``): the loss also counts the batch with perturbed input
    embeddings; ``train/loss`` is then the sum, ``train/loss_<kind>`` the clean terms.

    ``compute_loss`` returns the mean loss of one micro-batch; the Trainer divides it by the
    gradient-accumulation steps (``loss_is_scaled_for_ga = False``). Metrics come out as
    ``eval_loss``, ``eval_accuracy``, ``eval_rating_spearman``, ... and, when ``plot_dir`` is
    set, each evaluation rewrites ``reliability.png`` and ``reliability.json`` there.

    ``layer_lr_decay`` < 1: each encoder block learns at ``decay ** depth`` times the rate of the
    one above it (the head at the full rate, the embeddings lowest; ``layer_depths``).
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        loss_spec: LossSpec,
        plot_dir: str | Path | None = None,
        reliability_bins: int = 10,
        layer_lr_decay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.layer_lr_decay = layer_lr_decay
        self.loss_spec = loss_spec
        self.plot_dir = Path(plot_dir) if plot_dir is not None else None
        self.reliability_bins = reliability_bins
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = defaultdict(int)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:  # noqa: ANN001 - HF signature
        """HF's optimizer (and its weight-decay groups), each group split by depth when layer_lr_decay < 1."""
        optimizer = super().create_optimizer(model)
        if self.layer_lr_decay == 1.0:
            return optimizer
        depth = layer_depths(self.model)
        groups = []
        for group in optimizer.param_groups:
            by_depth: dict[int, list[torch.nn.Parameter]] = defaultdict(list)
            for param in group["params"]:
                by_depth[depth.get(id(param), 0)].append(param)
            settings = {k: v for k, v in group.items() if k != "params"}
            groups += [{**settings, "params": params, "lr": settings["lr"] * self.layer_lr_decay**d}
                       for d, params in sorted(by_depth.items())]
        optimizer.param_groups.clear()  # no step taken yet: no state to move
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001 - HF signature
        model_inputs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}

        def clean() -> tuple[torch.Tensor, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
            scores = model(**model_inputs)  # (N,)
            loss, parts = total_loss(scores, inputs, self.loss_spec)
            return loss, (scores, parts)

        def perturbed() -> torch.Tensor:
            return total_loss(model(**model_inputs), inputs, self.loss_spec)[0]

        loss, (scores, parts) = self.with_adversarial_loss(model, clean, perturbed)
        if model.training:
            self._track(scores.detach(), inputs, parts)
        return (loss, {"scores": scores}) if return_outputs else loss

    def _track(self, scores: torch.Tensor, inputs: dict[str, torch.Tensor], parts: dict[str, torch.Tensor]) -> None:
        # Tensors, not floats: no device sync per step; converted once per log.
        for kind, value in parts.items():
            self._sums[f"loss_{kind}"] = self._sums.get(f"loss_{kind}", 0.0) + value.detach()
            self._counts[f"loss_{kind}"] += 1
        pairs = inputs["pair_index"]
        if pairs.numel():
            d = scores[pairs[:, 0]] - scores[pairs[:, 1]]
            self._sums["accuracy"] = self._sums.get("accuracy", 0.0) + pair_wins(d)
            self._counts["accuracy"] += pairs.shape[0]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._counts:
            logs.update({f"train/{k}": float(self._sums[k]) / self._counts[k] for k in self._counts})
            self._sums.clear()
            self._counts.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:  # noqa: ANN001
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        units = list(dataset.units if isinstance(dataset, UnitDataset) else dataset or [])
        if not units:
            return {}
        metrics, bins = self.measure(units)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(dict(metrics))  # log() adds epoch and token counts to the dict it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        if self.plot_dir is not None and self.is_world_process_zero():
            self.save_reliability(bins, self.plot_dir)
        return metrics

    def measure(self, units: Sequence[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, float]]]:
        """(metrics incl. ``loss``, reliability bins) of ``units``, with raw (unnormalised) scores.

        One scoring pass: the loss is computed from the same scores over the whole set at
        once (each kind's mean over all its eval items, weighted as in training).
        """
        model = self.accelerator.unwrap_model(self.model)
        scorer = RewardScorer(model, batch_size=self.args.per_device_eval_batch_size, normalize=False)
        scores = score_units(scorer.score, units)
        metrics, bins = evaluate_units(units, scores, self.reliability_bins)
        _, _, layout = collate_layout(units)
        flat = torch.from_numpy(np.concatenate(scores)).float()
        metrics["loss"] = float(total_loss(flat, layout, self.loss_spec)[0])
        return metrics, bins

    def perturbed_accuracy(self, units: Sequence[dict[str, Any]], settings: PerturbationSettings) -> float | None:
        """Pair accuracy of the preference ``units`` after each pair's input embeddings are perturbed against it.

        Each response's embeddings move by ``settings`` (FGM or PGD, L2 radius epsilon per response)
        to lower its pair's ``r_chosen - r_rejected``; any loss that falls as that gap grows (the pair
        loss) gives the same normalised direction. Raw scores, dropout off, equal scores count 1/2
        as in ``accuracy``. None when ``units`` holds no preference pair.
        """
        pairs = [unit for unit in units if unit["kind"] == "preference"]
        if not pairs:
            return None
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        size = self.args.per_device_eval_batch_size
        right = 0.0
        try:
            for start in range(0, len(pairs), size):
                batch = {k: v.to(self.args.device) for k, v in self.data_collator(pairs[start : start + size]).items()}
                inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
                index = batch["pair_index"]  # (P, 2) rows of chosen, rejected

                def flip_loss() -> torch.Tensor:
                    scores = model(**inputs)  # (2P,)
                    return (scores[index[:, 1]] - scores[index[:, 0]]).sum()

                with EmbeddingPerturbation(model.get_input_embeddings()) as perturbation:
                    perturbation.delta = adversarial_delta(perturbation, flip_loss(), flip_loss, settings)
                    with torch.no_grad():
                        scores = model(**inputs)
                d = scores[index[:, 0]] - scores[index[:, 1]]  # (P,)
                right += float(pair_wins(d))
        finally:
            model.train(was_training)
        return right / len(pairs)

    @staticmethod
    def save_reliability(bins: list[dict[str, float]], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "reliability.json").write_text(json.dumps(bins, indent=2) + "\n")
        plot_reliability(bins, directory / "reliability.png")


def layer_depths(model: torch.nn.Module) -> dict[int, int]:
    """``id(param) -> depth`` below the head: 0 for the head and pooler, k for the k-th block from the top,
    one more than the bottom block for the embeddings."""
    groups = parameter_groups(model.encoder)
    n = len(groups.layers)
    depth = {id(p): n + 1 for p in groups.embeddings}
    depth.update({id(p): n - i for i, block in enumerate(groups.layers) for p in block})
    return depth


def pair_wins(d: torch.Tensor) -> torch.Tensor:
    """Pairs ordered right among score gaps ``d = r_chosen - r_rejected`` (P,): 1 each if d > 0, 1/2 if d == 0."""
    return ((d > 0).float() + 0.5 * (d == 0).float()).sum()
