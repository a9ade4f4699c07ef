"""Per-token log-probs of the scored tokens only, straight from the last hidden states.

    python -c "from align.models.logprob_head import add_scored_logprob_head; help(add_scored_logprob_head)"

TRL's DPOTrainer patches the model so that ``model(..., labels=labels, fused_lm_head=True)``
returns per-token log-probs without the (B, T, V) logits. Off CUDA its kernel projects *every*
position of the batch through the LM head (prompt tokens, padding, packed neighbours) and also
computes entropy and top-1 statistics that our DPO loss never reads. ``add_scored_logprob_head``
answers the same call, projecting only the positions whose label is not -100
(``align.ops.logprobs.linear_token_logprobs``). Calls without ``fused_lm_head`` (generation,
eval) reach the forward it wrapped, unchanged.
"""

from __future__ import annotations

import functools
import types

import torch
from torch import nn
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

from align.ops.logprobs import linear_token_logprobs

# Config fields that change the logits after the head's matmul; TRL's head applies them, ours does not.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def add_scored_logprob_head(model: nn.Module) -> bool:
    """Patch ``model.forward`` (a transformers causal LM, before any PEFT wrapper) for ``fused_lm_head=True`` calls.

    ``labels`` (B, T) as for a causal-LM loss; the result's ``log_probs`` (B, T - 1) holds at
    position t the log-prob of ``labels[:, t + 1]``, 0 where that label is -100. Returns False and
    leaves the model alone when its config transforms the logits (softcapping, logit scales).
    Patch after TRL's ``add_fused_lm_head``: what this head does not handle goes to the forward it wraps.
    """
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return False
    wrapped = model.forward

    @functools.wraps(type(model).forward)  # generate validates its kwargs against this signature
    def forward(self, *args, fused_lm_head: bool = False, labels: torch.Tensor | None = None, **kwargs):  # noqa: ANN001, ANN202
        if not fused_lm_head:
            return wrapped(*args, labels=labels, **kwargs) if labels is not None else wrapped(*args, **kwargs)
        if kwargs.get("shift_labels") is not None:  # pre-shifted labels (sequence parallelism): TRL's head
            return wrapped(*args, labels=labels, fused_lm_head=True, **kwargs)
        kwargs.pop("num_items_in_batch", None)  # it only scales a loss we do not compute
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]  # (B, T-1, H)
        head = self.get_output_embeddings()
        hidden = hidden.to(head.weight.device)  # a model split across devices can end elsewhere than its head
        labels = labels[:, 1:].to(hidden.device)
        scored = labels != -100
        # ZeRO-3 keeps the head's weight partitioned outside its own forward: gather it around the whole call
        # (autograd records the weight's shape here) and again in backward, which recomputes the logits.
        with maybe_gather_lm_head_ctx(head.weight, head.bias):
            per_token = linear_token_logprobs(
                hidden[scored], head.weight, labels[scored], head.bias,
                gathered=lambda: maybe_gather_lm_head_ctx(head.weight, head.bias),
            )
        # masked_scatter keeps the output attached to the graph even when nothing is scored.
        log_probs = hidden.new_zeros(scored.shape, dtype=torch.float32).masked_scatter(scored, per_token)
        return FusedCausalLMOutput(log_probs=log_probs, label_mask=scored)

    model.forward = types.MethodType(forward, model)
    return True
