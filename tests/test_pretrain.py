"""`align pretrain` on a tiny Llama: .txt documents pack with per-document attention; domain perplexity falls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align.config import PretrainRecipe
from align.eval.perplexity import perplexity
from align.recipe import validate
from align.run import StageResult, read_metrics
from align.stages import pretrain as pretrain_stage

DOMAIN = [
    "The fox is quick and brown. The fox jumps over the lazy dog.",
    "A quick brown fox jumps. The lazy dog sleeps. The fox is quick.",
    "The lazy dog and the quick brown fox. The fox jumps over the dog.",
    "Quick fox, lazy dog: the brown fox jumps over the lazy dog again.",
    "The dog is lazy. The fox is quick and brown and jumps over the dog.",
    "The brown fox jumps over the lazy dog. The quick fox jumps again.",
]
GENERAL = ["What is the capital of France? Paris is the capital of France.", "Answer the question politely."]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    domain = tmp_path / "domain"
    (domain / "more").mkdir(parents=True)
    for i, text in enumerate(DOMAIN):
        (domain / ("more" if i % 2 else "") / f"doc{i}.txt").write_text(text + "\n")
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"text": t}) + "\n" for t in GENERAL))
    return domain, general


def make_recipe(model_dir: Path, domain: Path, general: Path, out: Path, **training) -> PretrainRecipe:  # noqa: ANN003
    return validate(PretrainRecipe, {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(domain), "eval_fraction": 0.34, "seed": 0},
        "training": {"output_dir": str(out), "max_steps": 10, "per_device_batch_size": 2, "learning_rate": 1e-2,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 32,
                     "report_to": "none", **training},
        "pretrain": {"general_eval": {"path": str(general)}},
    })


def test_packed_document_sees_only_itself(tiny_llama_dir: Path, corpus: tuple[Path, Path], tmp_path: Path) -> None:
    from align.models import load_policy

    recipe = make_recipe(tiny_llama_dir, *corpus, tmp_path / "out")
    model, tokenizer = load_policy(recipe.model)
    trainer = pretrain_stage.build_trainer(recipe, model, tokenizer, _texts(DOMAIN), None, tmp_path / "out")
    texts = [DOMAIN[0], GENERAL[0]]
    assert pretrain_stage.check_document_attention(trainer, texts) < 1e-4
    # The same two documents without their boundaries (positions that do not restart, no cu_seq_lens): the
    # second one now sees the first.
    collate = trainer.data_collator

    def unmarked(rows: list[dict]) -> dict:
        batch = {k: v for k, v in collate(rows).items() if not k.startswith(("cu_seq_lens", "max_length"))}
        return {**batch, "position_ids": torch.arange(batch["input_ids"].shape[1])[None]}

    trainer.data_collator = unmarked
    with pytest.raises(RuntimeError, match="attention crosses document boundaries"):
        pretrain_stage.check_document_attention(trainer, texts)


def test_pretraining_lowers_domain_perplexity(tiny_llama_dir: Path, corpus: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "pretrain"
    result = pretrain_stage.run(make_recipe(tiny_llama_dir, *corpus, out))
    metrics = StageResult.load(out).metrics
    print({k: round(v, 2) for k, v in metrics.items() if "perplexity" in k})
    assert metrics["eval/domain_perplexity_after"] < 0.5 * metrics["eval/domain_perplexity_before"]
    assert set(metrics) >= {"eval/general_perplexity_before", "eval/general_perplexity_after"}
    losses = [m["train/loss"] for m in read_metrics(out) if "train/loss" in m]
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert result.metrics["train/steps"] == 10 and (out / "README.md").is_file() and (out / "model.safetensors").is_file()


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    class Uniform(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, use_cache=False):  # noqa: ANN001, ANN202
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 7)})()

    class Tok:
        pad_token_id, eos_token_id, eos_token = 0, 1, "</s>"

        def __call__(self, text: str) -> dict:
            return {"input_ids": [2] * len(text.split())}

    # Every next token has probability 1/7: perplexity exp(log 7) = 7, whatever the lengths.
    assert perplexity(Uniform(), Tok(), ["a b c", "a b c d e f"], max_length=8) == pytest.approx(7.0)


def _texts(texts: list[str]):  # noqa: ANN202
    from datasets import Dataset

    return Dataset.from_list([{"text": t} for t in texts])
