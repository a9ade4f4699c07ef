"""Same loss, three ways: padded vs padding-free batches (loss and gradients), precomputed vs live reference,
and our padded loss vs plain TRL DPOTrainer, on a tiny Llama with pairs of uneven lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from align.config import DPORecipe
from align.data import load_records
from align.models import load_policy, load_reference
from align.recipe import validate
from align.stages.dpo import build_trainer

# Uneven on purpose: completions of 1 to ~40 tokens, so a padded batch is mostly padding.
PAIRS = [
    ("Say yes.", "yes", "no, no, no, no, no, no, no, no, no and no."),
    ("What is the capital of France?", "Paris is the capital of France. Thank you!", "bad"),
    ("Is the dog lazy?", "Yes, the lazy dog is lazy.", "The quick brown fox jumps over the lazy dog, twice over."),
    ("Answer politely.", "Thank you! Please.", "no"),
    ("What is 2 + 3?", "5", "2 + 3 = 6? maybe 7? maybe 8!"),
    ("Greet me.", "Hello, and thank you!", "bad terrible bad"),
]
# float32 sums of ~40 per-token log-probs of magnitude ~6, reduced in a different order: ~1e-6 apart.
TOL = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dpo_pack") / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": c, "rejected": r} for p, c, r in PAIRS]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def make_recipe(model_dir: Path, data: Path, out: Path, **dpo) -> DPORecipe:  # noqa: ANN003
    return validate(DPORecipe, {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data)},
        "training": {"output_dir": str(out), "max_steps": 1, "per_device_batch_size": len(PAIRS), "learning_rate": 1e-3,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 64,
                     "report_to": "none"},
        "dpo": dpo,
        "eval": {"enabled": False},
    })


def trainer_for(recipe: DPORecipe, attn: str = "sdpa_packed"):  # noqa: ANN201
    data = load_records(recipe.data, default_kind="preference", want="preference")
    model, tokenizer = load_policy(recipe.model)
    model.set_attn_implementation(attn)
    reference = None if recipe.dpo.precompute_ref else load_reference(recipe.model)
    trainer, _ = build_trainer(recipe, model, reference, tokenizer, data.train, None, Path(recipe.training.output_dir))
    return trainer


def loss_and_grads(trainer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # noqa: ANN001
    """The loss of all pairs in one batch and its gradients (order-free: the loss is a mean over pairs)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("attn", "row_tokens"), [("sdpa_packed", None), ("sdpa_packed", 48), ("sdpa", None),
                                                  ("eager", None), ("sdpa", 48)])
def test_padding_free_matches_padded(tiny_llama_dir: Path, pairs_file: Path, tmp_path: Path, attn: str,
                                     row_tokens: int | None) -> None:
    padded = trainer_for(make_recipe(tiny_llama_dir, pairs_file, tmp_path / "a", loss=["sigmoid", "sft"],
                                     padding_free=False), attn)
    packed = trainer_for(make_recipe(tiny_llama_dir, pairs_file, tmp_path / "b", loss=["sigmoid", "sft"],
                                     padding_free=True, pack_row_tokens=row_tokens), attn)
    padded_batch = padded.data_collator([padded.train_dataset[i] for i in range(len(PAIRS))])
    packed_batch = packed.data_collator([packed.train_dataset[i] for i in range(len(PAIRS))])
    real = padded_batch["attention_mask"].sum().item()
    assert packed_batch["attention_mask"].sum().item() == real
    if row_tokens is None:  # all 12 sequences in one row, not one pad token
        assert packed_batch["input_ids"].shape == (1, real) and real < 0.7 * padded_batch["input_ids"].numel()
    else:
        assert packed_batch["input_ids"].numel() < padded_batch["input_ids"].numel()

    loss_a, grads_a = loss_and_grads(padded)
    loss_b, grads_b = loss_and_grads(packed)
    assert packed._packing_checked  # the first-batch check ran, and passed
    assert_close(loss_b, loss_a, **TOL)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert_close(grads_b[name], grads_a[name], **TOL, msg=name)


def test_packing_without_position_reset_is_caught(tiny_llama_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    """Negative control: a row read as one sequence (positions 0..N-1, one boundary pair) lets attention cross
    sequences; the check fails."""
    trainer = trainer_for(make_recipe(tiny_llama_dir, pairs_file, tmp_path / "c", padding_free=True))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    width = batch["input_ids"].size(1)
    batch["position_ids"] = torch.arange(width).unsqueeze(0)
    batch["cu_seq_lens"] = torch.tensor([0, width], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="does not keep packed sequences apart"):
        trainer.compute_loss(trainer.model, batch)


def test_precomputed_reference_gives_the_same_first_step(tiny_llama_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    live = trainer_for(make_recipe(tiny_llama_dir, pairs_file, tmp_path / "live"))
    precomputed = trainer_for(make_recipe(tiny_llama_dir, pairs_file, tmp_path / "pre", precompute_ref=True))
    assert live.ref_model is not None and precomputed.ref_model is None  # no reference in memory while training
    assert "ref_chosen_logps" in precomputed.train_dataset.column_names
    live.train()
    precomputed.train()
    first = [t.state.log_history[0] for t in (live, precomputed)]
    # Step 1 (all pairs in one batch, so the data order cannot differ): before the first update policy ==
    # reference, so the loss is log 2 and every reward 0, with either reference.
    assert first[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert first[1]["loss"] == pytest.approx(first[0]["loss"], abs=1e-6)
    assert first[1]["logps/chosen"] == pytest.approx(first[0]["logps/chosen"], abs=1e-5)
    assert first[1]["grad_norm"] == pytest.approx(first[0]["grad_norm"], rel=1e-4)


@pytest.mark.parametrize(("loss", "smoothing"), [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)])
def test_padded_loss_matches_trl(tiny_llama_dir: Path, pairs_file: Path, tmp_path: Path, loss: str,
                                 smoothing: float) -> None:
    """Ours vs TRL's DPOTrainer with the same loss_type, on one batch after the policy has moved off the reference."""
    from trl import DPOConfig, DPOTrainer

    ours = trainer_for(make_recipe(tiny_llama_dir, pairs_file, tmp_path / "ours", loss=loss, label_smoothing=smoothing,
                                   beta=0.5, padding_free=False))
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy so that the loss is not trivially log 2
        for p in ours.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    recipe = make_recipe(tiny_llama_dir, pairs_file, tmp_path / "trl")
    data = load_records(recipe.data, default_kind="preference", want="preference")
    _, tokenizer = load_policy(recipe.model)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), loss_type=[loss], label_smoothing=smoothing, beta=0.5,
                     max_length=64, report_to=[], bf16=False, gradient_checkpointing=False)
    theirs = DPOTrainer(model=ours.model, ref_model=ours.ref_model, args=args, train_dataset=data.train,
                        processing_class=tokenizer)
    batch = theirs.data_collator([theirs.train_dataset[i] for i in range(len(PAIRS))])
    with torch.no_grad():
        expected = theirs.compute_loss(ours.model, batch)
        got = ours.compute_loss(ours.model, batch)
    assert expected.item() != pytest.approx(0.693147, abs=1e-3)
    assert_close(got, expected, **TOL)


def test_packing_is_the_default_where_attention_keeps_sequences_apart(tiny_llama_dir: Path, pairs_file: Path,
                                                                      tmp_path: Path) -> None:
    from align.stages.dpo import packs_by_default
    from align.stages.dpo.packing import DataCollatorForPackedPreference

    recipe = make_recipe(tiny_llama_dir, pairs_file, tmp_path / "auto")  # dpo.padding_free unset
    assert recipe.dpo.padding_free is None
    trainer = trainer_for(recipe)  # loaded models run align's packed sdpa
    assert isinstance(trainer.data_collator, DataCollatorForPackedPreference)
    model = trainer.model
    soft_prompt = recipe.model_copy(update={"model": recipe.model.model_copy(update={"method": "prompt_tuning"})})
    assert not packs_by_default(model, soft_prompt)  # a soft prompt is prepended once per row
    model.set_attn_implementation("eager")  # would pay the whole row squared
    assert not packs_by_default(model, recipe)
