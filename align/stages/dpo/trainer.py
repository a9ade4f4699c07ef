"""TRL's DPOTrainer with our loss table, a padding-free batch layout and a falling-logps warning.

TRL keeps: tokenization, the reference (a frozen copy, the adapter-disabled policy under
PEFT, or log-probs precomputed before training) and DeepSpeed/accelerate wiring. Ours: the
forward that sums completion log-probs per sequence for a padded *or* packed batch, projecting
only completion tokens through the LM head (``align.models.logprob_head``; TRL's head projects
every position off CUDA), and the loss, one function per variant from ``align.ops.dpo.LOSSES``.

TRL 1.16's own ``padding_free=True`` is switched off in its constructor (it warns and falls
back to padding), hence ``align.stages.dpo.packing``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from align.models.logprob_head import add_scored_logprob_head
from align.ops.dpo import REFERENCE_FREE, PairLogps, dpo_loss, reward_metrics
from align.ops.stats import falling_steadily
from align.stages.dpo.packing import (
    DataCollatorForPackedPreference,
    leading_sequences,
    scored_token_mask,
    sequence_sums,
    unpack_to_padded,
)

logger = logging.getLogger("align.dpo")

# Largest per-token gap between the packed and padded log-probs of the same sequence on the first batch.
_PACKING_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 3e-2}


class AlignDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss is ``sum_k w_k * LOSSES[name_k]`` over pairs, on padded or packed batches.

    Args beyond DPOTrainer's: ``losses`` / ``loss_weights`` / ``label_smoothing`` (see
    ``align.ops.dpo.dpo_loss``; ``args.beta`` is beta), ``simpo_gamma``, ``padding_free`` and
    ``pack_row_tokens`` (see ``align.stages.dpo.packing.pack_preference``).

    When every loss is reference-free (``align.ops.dpo.REFERENCE_FREE``) no reference is scored:
    its log-probs are zeros. Under full fine-tuning TRL's constructor still builds a reference copy,
    which is dropped at once.
    """

    def __init__(
        self,
        *args: Any,
        losses: list[str] | None = None,
        loss_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        padding_free: bool = False,
        pack_row_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        # Set before super().__init__: with precompute_ref_log_probs it already runs compute_ref_log_probs.
        self._loss_names = list(losses or ["sigmoid"])
        self._loss_weights = loss_weights
        self._label_smoothing = label_smoothing
        self._simpo_gamma = simpo_gamma
        self._reference_free = set(self._loss_names) <= REFERENCE_FREE
        self._packing_checked = not padding_free
        if padding_free:
            tokenizer = kwargs["processing_class"]
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            kwargs["data_collator"] = DataCollatorForPackedPreference(
                pad_token_id=pad_id, max_length=kwargs["args"].max_length, row_tokens=pack_row_tokens
            )
        super().__init__(*args, **kwargs)
        policy = self.accelerator.unwrap_model(self.model)
        add_scored_logprob_head(policy.get_base_model() if is_peft_model(policy) else policy)
        if self.ref_model is not None:
            add_scored_logprob_head(self.ref_model)
        if is_peft_model(policy) and "ref" in policy.peft_config:
            # TRL adds a "ref" copy of a pre-wrapped adapter; a fresh adapter disabled *is* the reference, so
            # drop the copy (and keep it out of the saved adapter).
            policy.delete_adapter("ref")
            policy.set_adapter("default")
        if self._reference_free:
            self.ref_model = None

    # ------------------------------------------------------------------ log-probs

    def sequence_logps(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs and scored-token counts per sequence, ``(2B,)`` each: chosen then rejected.

        Padded batch: ``input_ids``/``attention_mask``/``completion_mask`` ``(2B, T)``.
        Packed batch: ``input_ids``/``position_ids``/``completion_mask``/``sequence_index`` ``(R, T)``
        and ``cu_seq_lens``; the model gets positions, sequence boundaries and no attention mask, so
        attention stays inside each sequence (``align.models.packed_attention``, or flash-attention's
        varlen kernels).
        """
        input_ids = inputs["input_ids"]
        packed = "sequence_index" in inputs
        scored = scored_token_mask(inputs["completion_mask"], inputs["position_ids"] if packed else None)  # (R, T-1)
        labels = torch.full_like(input_ids, -100)
        labels[:, 1:] = input_ids[:, 1:].masked_fill(~scored, -100)
        model_inputs = {"input_ids": input_ids}
        if packed:
            model_inputs["position_ids"] = inputs["position_ids"]
            bounds = inputs["cu_seq_lens"].to(torch.int32)
            longest = int(bounds.diff().max())
            model_inputs.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)
        else:
            model_inputs["attention_mask"] = inputs["attention_mask"]
        outputs = model(**model_inputs, labels=labels, fused_lm_head=True, use_cache=False)
        # Prompt tuning prepends virtual tokens: keep the positions of the real ones. Zero where not scored.
        per_token = outputs.log_probs[:, -scored.size(1) :]  # (R, T-1)
        if not packed:
            return per_token.sum(-1), scored.sum(-1).float()
        num_sequences = int(inputs["sequence_index"].max()) + 1
        index = inputs["sequence_index"]
        return sequence_sums(per_token, index, num_sequences), sequence_sums(scored.float(), index, num_sequences)

    def compute_ref_log_probs(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):  # noqa: ANN201
        """Reference log-probs ``(B,), (B,)``; TRL calls this to precompute, we call it for the live reference.

        With PEFT and no reference model, the reference is the policy with its adapter disabled.
        """
        adapter_off = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            adapter_off = use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter_off,
            self.accelerator.autocast(),
        ):
            logps, _ = self.sequence_logps(model, inputs)
        return logps.chunk(2)

    # ------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs, return_outputs):  # noqa: ANN001, ANN202 - TRL's signature
        mode = "train" if self.model.training else "eval"
        if not self._packing_checked and "sequence_index" in inputs:  # a padded batch has nothing to check
            self._check_packing(model, inputs)
        logps, tokens = self.sequence_logps(model, inputs)
        if self._reference_free:
            ref_chosen = ref_rejected = torch.zeros(len(logps) // 2, device=logps.device)
        elif "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model or self.model, inputs)
        chosen, rejected = logps.chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        pairs = PairLogps(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
        loss, terms = dpo_loss(
            pairs, self._loss_names, self.beta, self._loss_weights, self._label_smoothing, self._simpo_gamma
        )
        self._record(mode, pairs, terms, inputs)
        return (loss, None) if return_outputs else loss

    def _record(self, mode: str, pairs: PairLogps, terms: dict[str, torch.Tensor], inputs: dict[str, Any]) -> None:
        """Per-step means over pairs (gathered across processes); TRL's ``log`` averages them per logging interval."""
        gather = self.accelerator.gather_for_metrics
        for key, value in reward_metrics(pairs, self.beta).items():
            self._metrics[mode][key].append(gather(value).mean().item())
        if len(terms) > 1:
            for name, value in terms.items():
                self._metrics[mode][f"loss/{name}"].append(gather(value.detach()).mean().item())
        if mode == "train":
            self._total_train_tokens += int(gather(inputs["attention_mask"].sum()).sum().item())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _check_packing(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        """Once, on the first packed batch's first two sequences: the same sequences padded must give the same log-probs.

        A model whose attention ignores packed ``position_ids`` lets tokens attend across sequence
        boundaries and trains on wrong log-probs without any error; this turns that into one.
        """
        self._packing_checked = True
        inputs = leading_sequences(inputs)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            packed, tokens = self.sequence_logps(model, inputs)
            padded, _ = self.sequence_logps(model, unpack_to_padded(inputs, self.data_collator.pad_token_id))
        gap = ((packed - padded).abs() / tokens.clamp(min=1)).max().item()
        dtype = next(self.accelerator.unwrap_model(model).parameters()).dtype
        tolerance = _PACKING_TOLERANCE.get(dtype, 3e-2)
        if gap > tolerance:
            attn = getattr(self.accelerator.unwrap_model(model).config, "_attn_implementation", "?")
            raise RuntimeError(
                f"dpo.padding_free: packed and padded log-probs differ by {gap:.3g} per token (tolerance {tolerance}) "
                f"with attn_implementation={attn!r}: this model's attention does not keep packed sequences apart "
                "(position_ids, cu_seq_lens). "
                "Set dpo.padding_free=false."
            )
        logger.info("padding-free batches checked against padded on the first batch: max gap %.2g per token", gap)


class FallingChosenLogpsCallback(TrainerCallback):
    """Warn when the logged mean chosen log-prob falls steadily (``align.ops.stats.falling_steadily``).

    After a warning it stays quiet for one window. ``warnings`` keeps the steps it warned at.
    """

    def __init__(self, window: int, min_drop: float) -> None:
        self.window = window
        self.min_drop = min_drop
        self.values: list[float] = []
        self.warnings: list[int] = []
        self._quiet_until = 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - HF callback signature
        if not logs or "logps/chosen" not in logs:
            return
        self.values.append(float(logs["logps/chosen"]))
        if len(self.values) < self._quiet_until or not falling_steadily(self.values, self.window, self.min_drop):
            return
        self._quiet_until = len(self.values) + self.window
        self.warnings.append(state.global_step)
        if state.is_world_process_zero:
            logger.warning(
                "step %d: mean chosen log-prob fell steadily over the last %d logs (%.2f -> %.2f): DPO is pushing "
                "chosen responses down too. Consider dpo.loss=[sigmoid, sft], a larger dpo.beta or a smaller "
                "learning rate.",
                state.global_step, self.window, self.values[-self.window], self.values[-1],
            )
