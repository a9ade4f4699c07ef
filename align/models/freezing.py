"""Partial fine-tuning: train only the top k transformer blocks (plus head / embeddings), widened on a schedule.

Gradual unfreezing and the optimizer
------------------------------------
HF ``Trainer`` builds its optimizer once, in ``create_optimizer`` (called from ``train()`` before
``on_train_begin``), from the parameters whose ``requires_grad`` is True *at that moment*
(``[p for n, p in model.named_parameters() if ... and p.requires_grad]``; weight-decay groups come
from ``get_decay_parameter_names``, by name only). A layer frozen then is never in the optimizer,
so unfreezing it later would compute gradients that nothing applies.

So ``GradualUnfreezeCallback`` puts every parameter that the schedule will ever train into the
optimizer and lets ``requires_grad`` alone decide what trains at each step:

1. ``on_init_end`` (end of ``Trainer.__init__``, before the optimizer exists) makes the union of all
   scheduled layers trainable, so ``create_optimizer`` includes them;
2. ``on_train_begin`` (after the optimizer exists) narrows ``requires_grad`` to the layers trainable at
   ``state.global_step``: the latest schedule entry ``<= global_step``, which also makes a resumed run
   right;
3. ``on_step_begin`` widens it when ``global_step`` reaches an entry.

A parameter with ``requires_grad=False`` gets no gradient, its ``.grad`` stays None (Trainer zeroes
grads with ``set_to_none``) and torch's Adam/AdamW/SGD skip parameters whose grad is None: no update,
no weight decay, no moment estimates. Once unfrozen it trains at the scheduler's current learning
rate, with fresh Adam moments. ``on_train_begin`` checks that the optimizer holds every scheduled
parameter, and raises if the callback was added after the optimizer was built.

Requirements this puts on a stage:

- pass the callback to ``Trainer(callbacks=partial_callbacks(cfg))``, not ``add_callback`` after
  ``Trainer.__init__`` (that misses ``on_init_end``);
- under DDP set ``ddp_find_unused_parameters=True``: DDP registers its hooks when the model is
  wrapped (with the union trainable), and a layer frozen afterwards never reports a gradient;
- under DeepSpeed ZeRO the engine owns flattened partitions and may treat a missing gradient as
  zero; with ``weight_decay > 0`` that could decay the not-yet-unfrozen layers. Not checked here: use
  ``weight_decay: 0`` with a schedule under ZeRO, or check the frozen layers stay put;
- a hand-written loop (no Trainer) builds its optimizer over ``unfreezable_parameters(model, partial)``
  and calls ``set_partial_trainable(model, partial, top_k_at(partial, step))`` each step.

Tied embeddings
---------------
When ``lm_head.weight`` *is* the input embedding matrix (``tie_word_embeddings``, e.g. SmolLM2), the
head and the embeddings are one Parameter: it trains when ``train_head`` OR ``train_embeddings`` is
set, so ``train_head=True, train_embeddings=False`` (the default) still changes the input
embeddings. A warning says so; nothing is untied (untying would change the saved architecture).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn
from transformers import TrainerCallback

from align.config import ModelConfig, PartialSettings

logger = logging.getLogger("align.models")


@dataclass
class ParameterGroups:
    """A model's parameters split around its block list, in registration order."""

    layer_list_name: str
    embeddings: list[nn.Parameter]  # registered before the first block: token/position embeddings
    layers: list[list[nn.Parameter]]  # one list per block, bottom to top
    head: list[nn.Parameter]  # registered after the last block (final norm, lm_head) + output embeddings
    tied: bool  # the output embedding matrix is the input embedding matrix


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks: the ``nn.ModuleList`` of same-class modules holding the
    most parameters (``model.layers`` in Llama, ``transformer.h`` in GPT-2, ``encoder.layer`` in BERT).
    Lists nested inside a block (MoE experts) hold fewer parameters than the stack that contains them."""
    best: tuple[str, nn.ModuleList, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > 0 and (best is None or size > best[2]):
            best = (name, module, size)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks; method 'partial' cannot find layers")
    return best[0], best[1]


def parameter_groups(model: nn.Module) -> ParameterGroups:
    name, layer_list = find_layer_list(model)
    layer_of = {id(p): i for i, block in enumerate(layer_list) for p in block.parameters()}
    embeddings: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    layers: list[list[nn.Parameter]] = [[] for _ in layer_list]
    seen_layer = False
    for param in model.parameters():  # deduplicated: a tied matrix appears once, as the input embedding
        index = layer_of.get(id(param))
        if index is not None:
            layers[index].append(param)
            seen_layer = True
        elif seen_layer:
            head.append(param)
        else:
            embeddings.append(param)
    tied = False
    output, inputs = _embeddings(model)
    if output is not None and all(output is not p for p in head):
        head.append(output)
        tied = inputs is not None and output is inputs
    return ParameterGroups(name, embeddings, layers, head, tied)


def _embeddings(model: nn.Module) -> tuple[nn.Parameter | None, nn.Parameter | None]:
    def weight(getter: str) -> nn.Parameter | None:
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            return None
        return getattr(module, "weight", None) if module is not None else None

    return weight("get_output_embeddings"), weight("get_input_embeddings")


def top_k_at(partial: PartialSettings, step: int) -> int:
    """Top blocks trainable at optimizer step ``step``: the largest of ``trainable_top_k`` and the
    ``top_k`` of every schedule entry with ``entry.step <= step`` (layers are never re-frozen)."""
    return max([partial.trainable_top_k, *(e.top_k for e in partial.unfreeze_schedule if e.step <= step)])


def max_top_k(partial: PartialSettings) -> int:
    return max([partial.trainable_top_k, *(e.top_k for e in partial.unfreeze_schedule)])


def _selected(groups: ParameterGroups, partial: PartialSettings, top_k: int) -> list[nn.Parameter]:
    n_layers = len(groups.layers)
    if top_k > n_layers:
        raise ValueError(
            f"partial: top_k={top_k} (from trainable_top_k/unfreeze_schedule) but the model has {n_layers} layers "
            f"in {groups.layer_list_name}"
        )
    chosen = [p for block in groups.layers[n_layers - top_k :] for p in block]
    if partial.train_head:
        chosen += groups.head
    if partial.train_embeddings:
        chosen += groups.embeddings
    return chosen


def set_partial_trainable(model: nn.Module, partial: PartialSettings, top_k: int) -> None:
    """Freeze everything, then unfreeze the top ``top_k`` blocks, plus head / embeddings as configured."""
    groups = parameter_groups(model)
    if groups.tied and partial.train_head != partial.train_embeddings:
        logger.warning(
            "lm_head is tied to the input embeddings: with train_head=%s, train_embeddings=%s the shared matrix "
            "trains, so the input embeddings change too",
            partial.train_head,
            partial.train_embeddings,
        )
    model.requires_grad_(False)
    for param in _selected(groups, partial, top_k):
        param.requires_grad_(True)


def unfreezable_parameters(model: nn.Module, partial: PartialSettings) -> list[nn.Parameter]:
    """Every parameter that trains at some step of the schedule: what an optimizer must hold."""
    selected = _selected(parameter_groups(model), partial, max_top_k(partial))
    unique = {id(p): p for p in selected}
    return list(unique.values())


class GradualUnfreezeCallback(TrainerCallback):
    """Widen the trainable top blocks on ``partial.unfreeze_schedule``; see the module docstring for why
    it makes every scheduled layer trainable at ``on_init_end`` and narrows at ``on_train_begin``."""

    def __init__(self, partial: PartialSettings):
        self.partial = partial
        self._top_k: int | None = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_partial_trainable(model, self.partial, max_top_k(self.partial))

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            return
        self._check_optimizer(model, optimizer)
        self._top_k = None
        self._apply(model, state.global_step)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._apply(model, state.global_step)

    def _apply(self, model: nn.Module, step: int) -> None:
        top_k = top_k_at(self.partial, step)
        if top_k == self._top_k:
            return
        set_partial_trainable(model, self.partial, top_k)
        self._top_k = top_k
        logger.info("gradual unfreezing: step %d, top %d layers trainable", step, top_k)

    def _check_optimizer(self, model: nn.Module, optimizer) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        groups = getattr(inner, "param_groups", None)
        if not groups:
            return
        held = {id(p) for group in groups for p in group["params"]}
        if not any(id(p) in held for p in model.parameters()):
            return  # e.g. DeepSpeed: the optimizer holds flattened copies, not the model's parameters
        missing = [p for p in unfreezable_parameters(model, self.partial) if id(p) not in held]
        if missing:
            raise RuntimeError(
                f"GradualUnfreezeCallback: the optimizer lacks {len(missing)} parameter tensors that "
                "partial.unfreeze_schedule trains later. Pass the callback as Trainer(callbacks=...) so its "
                "on_init_end runs before the optimizer is created, or build the optimizer over "
                "align.models.unfreezable_parameters(model, cfg.partial)."
            )


def partial_callbacks(cfg: ModelConfig) -> list[TrainerCallback]:
    """``[GradualUnfreezeCallback]`` when ``cfg`` is partial with a schedule, else ``[]``."""
    if cfg.method == "partial" and cfg.partial.unfreeze_schedule:
        return [GradualUnfreezeCallback(cfg.partial)]
    return []
