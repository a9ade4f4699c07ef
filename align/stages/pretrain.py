"""Continued pretraining (domain adaptation): causal-LM training on raw text, packed, one document per attention block.

    align pretrain recipes/pretrain.yaml training.max_steps=20
    align run recipes/domain_adaptation.yaml        # pretrain, then SFT on top

Documents are ``text`` records, ``.txt`` files or directories of them (``align.data``). TRL's
SFTTrainer packs them into ``max_length`` rows (best-fit decreasing; a longer document is split
into ``max_length`` chunks, each its own document) and batches them padding-free: one row per
micro-batch, ``position_ids`` restarting at 0 at every document, no attention mask, and no loss
on a document's first token. What keeps a document from attending to its neighbours:

- TRL passes the documents' boundaries (``cu_seq_lens``) to the model: flash-attention 2/3 and,
  for models loaded on sdpa, ``align.models.packed_attention`` run each document's attention alone.
- eager attention: transformers builds a block-diagonal causal mask from the restarting
  ``position_ids`` (``masking_utils.find_packed_sequence_indices``), which it does only without
  an attention mask and without a KV cache; that mask costs (row tokens)^2 memory and time.

``check_document_attention`` verifies this once, before training, on two of the run's own
documents and stops the run if the model's attention lets a document see its neighbour.

Perplexity on held-out domain text (``data.eval_path`` / ``eval_fraction``) and on general text
(``pretrain.general_eval``) is measured before and after training (``align.eval.perplexity``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from align.config import PretrainRecipe
from align.data import DataError, load_records
from align.eval.perplexity import perplexity
from align.models import load_policy, partial_callbacks
from align.run import StageResult, finish_stage, prepare_run_dir
from align.training import hf_training_kwargs, save_final_model, train_with_resume, trainer_callbacks

logger = logging.getLogger("align.pretrain")

# Sequence boundaries TRL's padding-free collator adds for varlen attention (flash-attention, align.models.packed_attention).
_BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def run(recipe: PretrainRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    data = load_records(recipe.data, default_kind="sft", want="sft")
    _require_text(data.train, recipe.data.path)
    general = None
    if recipe.pretrain.general_eval is not None:
        general = load_records(recipe.pretrain.general_eval, default_kind="sft", want="sft").train
        _require_text(general, recipe.pretrain.general_eval.path)
    logger.info("data: %d train / %d eval documents %s", len(data.train), len(data.eval or []), data.stats)
    model, tokenizer = load_policy(recipe.model)
    held_out = {"domain": data.eval, "general": general}
    metrics: dict[str, Any] = _perplexities(model, tokenizer, held_out, recipe, "before")
    trainer = build_trainer(recipe, model, tokenizer, data.train, data.eval, out)
    check_document_attention(trainer, data.train["text"][:2])
    metrics.update(train_with_resume(trainer, recipe.training))
    metrics.update(_perplexities(model, tokenizer, held_out, recipe, "after"))
    save_final_model(trainer, recipe.model, out)
    return finish_stage(out, recipe, metrics, card_title=f"Continued pretraining of {recipe.model.name_or_path}")


def build_trainer(recipe: PretrainRecipe, model, tokenizer, train: Dataset, evaluation: Dataset | None,  # noqa: ANN001
                  out: Path) -> SFTTrainer:
    """SFTTrainer on ``text`` rows: packed (bfd_split) and padding-free, loss on every token."""
    args = SFTConfig(
        **hf_training_kwargs(recipe.training),
        max_length=recipe.training.max_length,
        packing=True,
        packing_strategy="bfd_split",
        padding_free=True,
        completion_only_loss=False,
        dataset_text_field="text",
        dataset_num_proc=None,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out) + partial_callbacks(recipe.model),
    )


@torch.no_grad()
def check_document_attention(trainer: SFTTrainer, texts: list[str], tokens: int = 16, tolerance: float = 1e-3) -> float:
    """Pack two documents the way training does; the second one's logits must equal its logits alone.

    Returns the largest absolute logit gap; raises when it exceeds ``tolerance`` (float32), which
    means the model's attention crosses document boundaries in packed rows.
    """
    if len(texts) < 2:
        return 0.0
    tokenizer = trainer.processing_class
    docs = [tokenizer(text)["input_ids"][:tokens] for text in texts[:2]]
    batch = trainer.data_collator([{"input_ids": ids} for ids in docs])
    model = trainer.accelerator.unwrap_model(trainer.model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        packed_inputs = {key: batch[key].to(device) if torch.is_tensor(batch[key]) else batch[key]
                         for key in ("input_ids", "position_ids", *_BOUNDARY_KEYS) if key in batch}
        packed = model(**packed_inputs, use_cache=False).logits[0, len(docs[0]) : len(docs[0]) + len(docs[1])]  # (T2, V)
        alone = model(input_ids=torch.tensor([docs[1]], device=device), use_cache=False).logits[0]  # (T2, V)
    finally:
        model.train(was_training)
    gap = float((packed.float() - alone.float()).abs().max())
    if model.dtype == torch.float32 and gap > tolerance:
        attn = getattr(model.config, "_attn_implementation", "?")
        raise RuntimeError(
            f"pretrain: a packed document's logits differ from the document alone by {gap:.3g} with "
            f"attn_implementation={attn!r}: this model's attention crosses document boundaries in packed rows"
        )
    logger.info("per-document attention checked on two packed documents: max logit gap %.2g", gap)
    return gap


def _require_text(dataset: Dataset, path: str) -> None:
    if "text" not in dataset.column_names:
        raise DataError(path, f"pretrain reads raw text ('text' records or .txt files), got columns {dataset.column_names}",
                        "text")


def _perplexities(model, tokenizer, sets: dict[str, Dataset | None], recipe: PretrainRecipe, when: str) -> dict[str, float]:  # noqa: ANN001
    """``eval/<set>_perplexity_<when>`` for every held-out set present."""
    found = {}
    for name, dataset in sets.items():
        if dataset is not None and len(dataset):
            texts = dataset["text"][: recipe.pretrain.eval_documents]
            found[f"eval/{name}_perplexity_{when}"] = perplexity(
                model, tokenizer, texts, max_length=recipe.training.max_length, batch_size=recipe.training.per_device_batch_size
            )
            logger.info("%s perplexity %s training: %.2f", name, when, found[f"eval/{name}_perplexity_{when}"])
    return found
