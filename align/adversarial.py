"""Embedding-space adversarial training and evaluation: FGM / PGD on a model's input embeddings.

    align reward recipes/reward_adversarial.yaml training.max_steps=20

The perturbation is added to the *output* of ``get_input_embeddings()`` by a forward hook, and its
direction is the gradient of the loss with respect to that output (``torch.autograd.grad``), so it
works the same whether the embedding matrix trains (full fine-tuning) or not (LoRA, partial, a
frozen encoder): no weight is changed, no parameter's ``.grad`` is touched, and removing the hook
restores the model. The clean and the adversarial loss are summed into one loss that the trainer
back-propagates once, so gradient accumulation, mixed precision and DeepSpeed ZeRO-1/2 see an
ordinary loss. Cost per step: one more forward and backward (FGM), ``steps`` more (PGD).
The math is ``align.ops.adversarial``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from align.config import AdversarialSettings, PerturbationSettings
from align.ops.adversarial import fgm_delta, pgd_step


class EmbeddingPerturbation:
    """While entered: a forward hook on ``embeddings`` adds ``delta`` (B, T, H) to its output and keeps it.

    The kept output requires grad even when the embedding weights do not, so ``gradient`` can take
    the loss's gradient with respect to it.
    """

    def __init__(self, embeddings: nn.Module) -> None:
        self.embeddings = embeddings
        self.delta: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._handle: Any = None

    def __enter__(self) -> "EmbeddingPerturbation":
        self._handle = self.embeddings.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        self.delta = self.output = None

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if self.delta is not None:
            output = output + self.delta.to(output.dtype)
        if not output.requires_grad:  # frozen embeddings: a leaf we can differentiate with respect to
            output = output.detach().requires_grad_(True)
        self.output = output
        return output

    def gradient(self, loss: torch.Tensor, *, retain_graph: bool) -> torch.Tensor:
        """d loss / d (embedding output + delta), (B, T, H), detached; parameters' ``.grad`` untouched."""
        if self.output is None:
            raise RuntimeError("the embedding layer was not called inside the perturbation: nothing to perturb")
        (grad,) = torch.autograd.grad(loss, self.output, retain_graph=retain_graph)
        return grad.detach()


def adversarial_delta(
    perturbation: EmbeddingPerturbation,
    clean_loss: torch.Tensor,
    loss_fn: Callable[[], torch.Tensor],
    settings: PerturbationSettings,
) -> torch.Tensor:
    """The perturbation (B, T, H) of the embedding output that raises the loss, detached.

    ``clean_loss`` was computed inside ``perturbation``; its graph is kept for the caller's backward.
    PGD runs ``loss_fn`` (the forward and loss again) ``steps - 1`` times; its first step uses the
    clean loss's gradient, so PGD with one step of size epsilon is FGM.
    """
    grad = perturbation.gradient(clean_loss, retain_graph=True)
    if settings.method == "fgm":
        return fgm_delta(grad, settings.epsilon)
    delta = torch.zeros_like(grad)
    for step in range(settings.steps):
        delta = pgd_step(delta, grad, settings.step_size, settings.epsilon)
        if step < settings.steps - 1:
            perturbation.delta = delta
            grad = perturbation.gradient(loss_fn(), retain_graph=False)
    return delta


class AdversarialTraining:
    """Mixin for HF ``Trainer`` subclasses: ``loss + weight x adversarial loss`` while training.

    A subclass's ``compute_loss`` calls ``with_adversarial_loss``; logs gain
    ``train/loss_adversarial``, the mean adversarial loss since the last log.
    """

    def __init__(self, *args: Any, adversarial: AdversarialSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adversarial = adversarial
        self._adversarial_losses: list[torch.Tensor] = []

    def with_adversarial_loss(
        self, model: nn.Module, clean: Callable[[], tuple[torch.Tensor, Any]], perturbed: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, Any]:
        """(clean loss + weight x adversarial loss, what ``clean`` returned besides its loss).

        ``clean`` runs the model and returns (loss, extra); ``perturbed`` runs it again and returns
        the loss alone, without logging (it sees the perturbed embeddings). Off, or in evaluation,
        this is ``clean()``.
        """
        if self.adversarial is None or not model.training:
            return clean()
        embeddings = self.accelerator.unwrap_model(model).get_input_embeddings()
        with EmbeddingPerturbation(embeddings) as perturbation:
            loss, extra = clean()
            perturbation.delta = adversarial_delta(perturbation, loss, perturbed, self.adversarial)
            adversarial = perturbed()
        self._adversarial_losses.append(adversarial.detach())
        return loss + self.adversarial.weight * adversarial, extra

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._adversarial_losses:  # one device sync per log, not per step
            logs["train/loss_adversarial"] = float(torch.stack(self._adversarial_losses).mean())
            self._adversarial_losses.clear()
        super().log(logs, start_time)
