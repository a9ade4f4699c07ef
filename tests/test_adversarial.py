"""Embedding-space adversarial training: FGM/PGD math by hand, the hook on frozen and trainable embeddings,
adversarial SFT and reward training on tiny models, and the reward model's accuracy on perturbed inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_reward_stage import preference_rows, recipe, write_jsonl
from test_sft import make_recipe, sft_file  # noqa: F401 - sft_file is a fixture
from torch import nn

from align.adversarial import EmbeddingPerturbation, adversarial_delta
from align.config import AdversarialSettings, DPORecipe, PerturbationSettings, RewardRecipe
from align.ops.adversarial import fgm_delta, l2_normalize, pgd_step, project_l2
from align.run import read_metrics
from align.stages import reward as reward_stage
from align.stages import sft as sft_stage

# --------------------------------------------------------------------------- the math, by hand


def test_fgm_has_norm_epsilon_along_the_gradient_per_sequence() -> None:
    # Row 0: g = (3, 4 | 0, 0), ||g|| = 5 -> delta = 2 x (0.6, 0.8 | 0, 0).
    # Row 1: g = (0, 0 | 0, -2), ||g|| = 2 -> delta = 2 x (0, 0 | 0, -1).
    grad = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -2.0]]])  # (B=2, T=2, H=2)
    delta = fgm_delta(grad, epsilon=2.0)
    torch.testing.assert_close(delta, torch.tensor([[[1.2, 1.6], [0.0, 0.0]], [[0.0, 0.0], [0.0, -2.0]]]))
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), torch.tensor([2.0, 2.0]))
    cosine = nn.functional.cosine_similarity(delta.flatten(1), grad.flatten(1), dim=1)
    torch.testing.assert_close(cosine, torch.ones(2))


def test_zero_gradient_gives_zero_perturbation_not_nan() -> None:
    grad = torch.zeros(1, 3, 2)
    torch.testing.assert_close(l2_normalize(grad), grad)
    torch.testing.assert_close(fgm_delta(grad, 1.0), grad)


def test_projection_scales_only_rows_outside_the_ball() -> None:
    # Row 0 has norm 5 > 1: scaled by 1/5 to (0.6, 0.8). Row 1 has norm 0.5 < 1: unchanged.
    delta = torch.tensor([[[3.0, 4.0]], [[0.3, 0.4]]])
    torch.testing.assert_close(project_l2(delta, 1.0), torch.tensor([[[0.6, 0.8]], [[0.3, 0.4]]]))


def test_pgd_step_by_hand_and_one_full_step_is_fgm() -> None:
    # delta (0.5, 0) + alpha 1.0 x g/||g|| with g = (0, 2) -> (0.5, 1.0), norm sqrt(1.25) > 1 -> / sqrt(1.25).
    delta, grad = torch.tensor([[[0.5, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    expected = torch.tensor([[[0.5, 1.0]]]) / math.sqrt(1.25)
    torch.testing.assert_close(pgd_step(delta, grad, alpha=1.0, epsilon=1.0), expected)
    g = torch.randn(3, 4, 5)
    torch.testing.assert_close(pgd_step(torch.zeros_like(g), g, alpha=0.7, epsilon=0.7), fgm_delta(g, 0.7))


def test_inputs_are_not_changed() -> None:
    delta, grad = torch.ones(1, 2, 2), torch.full((1, 2, 2), 3.0)
    pgd_step(delta, grad, 0.5, 1.0)
    fgm_delta(grad, 1.0)
    assert torch.equal(delta, torch.ones(1, 2, 2)) and torch.equal(grad, torch.full((1, 2, 2), 3.0))


# --------------------------------------------------------------------------- the hook


class _Tiny(nn.Module):
    """Embedding (V=5, H=2) -> sum over tokens -> a fixed linear readout: score = sum_t w . e_t."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 2)
        self.w = torch.tensor([3.0, 4.0])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.embed(ids) @ self.w).sum(-1)  # (B,)


@pytest.mark.parametrize("frozen", [False, True])
def test_perturbation_follows_the_embedding_output_gradient_and_leaves_weights_alone(frozen: bool) -> None:
    model = _Tiny()
    model.embed.weight.requires_grad_(not frozen)
    before = model.embed.weight.detach().clone()
    ids = torch.tensor([[1, 2]])
    loss_fn = lambda: model(ids).sum()  # noqa: E731 - d loss / d e_t = w = (3, 4) at each of the 2 tokens
    with EmbeddingPerturbation(model.embed) as perturbation:
        clean = loss_fn()
        delta = adversarial_delta(perturbation, clean, loss_fn, PerturbationSettings(method="fgm", epsilon=1.0))
        # g = (3, 4, 3, 4), ||g|| = sqrt(50): delta = g / sqrt(50); the score rises by w . delta summed = 50 / sqrt(50).
        torch.testing.assert_close(delta, torch.tensor([[[3.0, 4.0], [3.0, 4.0]]]) / math.sqrt(50))
        perturbation.delta = delta
        perturbed = loss_fn()
    torch.testing.assert_close(perturbed - clean, torch.tensor(math.sqrt(50)))
    assert model.embed.weight.grad is None  # autograd.grad filled no parameter's .grad
    assert torch.equal(model.embed.weight, before)
    torch.testing.assert_close(loss_fn(), clean)  # hook removed: the clean model again
    if not frozen:
        clean.backward()  # the clean loss's graph was kept for the trainer's backward
        assert model.embed.weight.grad is not None


def test_pgd_settings() -> None:
    assert PerturbationSettings(method="pgd", epsilon=1.5, steps=3).step_size == pytest.approx(1.0)
    with pytest.raises(ValueError, match="steps applies to method 'pgd', not method 'fgm'"):
        AdversarialSettings(method="fgm", steps=2)
    with pytest.raises(ValueError, match="feature_extraction"):
        RewardRecipe.model_validate({"data": {"path": "x"}, "model": {"method": "feature_extraction"},
                                     "training": {"adversarial": {"epsilon": 0.1}}})
    with pytest.raises(ValueError, match="adversarial"):  # only sft and reward train adversarially
        DPORecipe.model_validate({"data": {"path": "x"}, "training": {"adversarial": {"epsilon": 0.1}}})


# --------------------------------------------------------------------------- stages


@pytest.mark.parametrize(("method", "lr"), [("full", 1e-2), ("lora", 5e-2)])
def test_adversarial_sft_trains_and_logs_the_perturbed_loss(tiny_llama_dir: Path, sft_file: Path, tmp_path: Path,
                                                            method: str, lr: float) -> None:
    recipe = make_recipe(tiny_llama_dir, sft_file, tmp_path / method, method, learning_rate=lr)
    adversarial = AdversarialSettings(method="pgd", epsilon=1.0, steps=2, weight=1.0)
    recipe.training.adversarial = adversarial
    sft_stage.run(recipe)
    rows = [row for row in read_metrics(tmp_path / method) if "train/loss" in row]
    total = torch.tensor([row["train/loss"] for row in rows])
    perturbed = torch.tensor([row["train/loss_adversarial"] for row in rows])
    clean = total - perturbed  # train/loss is clean + weight x adversarial, weight 1
    assert len(rows) == 12 and torch.isfinite(total).all()
    assert total[-3:].mean() < total[:3].mean() - 1.0, total
    assert (perturbed > clean).all(), (perturbed, clean)  # the perturbation raises the loss at every step


def test_adversarial_reward_model_keeps_its_accuracy_under_perturbation(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Toy rule ("good" beats "bad"): both models rank every clean eval pair right; under an FGM perturbation of
    L2 size 0.15 per response, the plain model keeps 0.26-0.28 of them, the adversarially trained one 1.0 (measured)."""
    data = {"path": write_jsonl(tmp_path / "train.jsonl", preference_rows(300, seed=0)),
            "eval_path": write_jsonl(tmp_path / "eval.jsonl", preference_rows(100, seed=1))}
    results = {}
    for adversarial in (None, AdversarialSettings(method="fgm", epsilon=0.15)):
        config = recipe(tiny_bert_dir, tmp_path / str(adversarial is not None), data)
        config.reward.perturbed_eval = PerturbationSettings(method="fgm", epsilon=0.15)
        config.training.adversarial = adversarial
        results[adversarial is not None] = reward_stage.run(config).metrics
    plain, robust = results[False], results[True]
    print({k: (plain[k], robust[k]) for k in ("eval/accuracy", "eval/accuracy_perturbed")})
    assert plain["eval/accuracy"] > 0.9 and robust["eval/accuracy"] > 0.9
    assert robust["eval/accuracy_perturbed"] > 0.9
    assert robust["eval/accuracy_perturbed"] > plain["eval/accuracy_perturbed"] + 0.3
    assert "train/loss_adversarial" in read_metrics(tmp_path / "True")[0]


def test_adversarial_lora_reward_model_leaves_frozen_embeddings_bit_identical(tiny_bert_dir: Path, tmp_path: Path) -> None:
    data = {"path": write_jsonl(tmp_path / "train.jsonl", preference_rows(60, seed=0))}
    lora = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "key", "value"]}}
    config = recipe(tiny_bert_dir, tmp_path / "run", data, model=lora, max_steps=6, logging_steps=1)
    config.training.adversarial = AdversarialSettings(method="pgd", epsilon=0.15, steps=2)
    result = reward_stage.run(config)
    assert 0.0 <= result.metrics["train/accuracy_perturbed"] <= 1.0  # no eval data: measured on a training sample
    logged = [row["train/loss_adversarial"] for row in read_metrics(result.output_dir) if "train/loss" in row]
    assert len(logged) == 6 and all(math.isfinite(x) for x in logged)
    base, trained = load_file(str(tiny_bert_dir / "model.safetensors")), load_file(str(result.output_dir / "model.safetensors"))
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed and not any("embeddings" in name for name in changed), changed
