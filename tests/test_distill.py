"""`align distill` on tiny Llamas: the divergences by hand, a shared tokenizer enforced, and the student's
KL to the teacher falls in every mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from align.config import DistillRecipe
from align.ops.distill import generalized_jsd
from align.ops.stats import masked_mean
from align.recipe import validate
from align.run import StageResult
from align.stages import distill as distill_stage
from tiny_models import build_causal_tokenizer

# One position, two tokens. Student logits [0, 0]: p_S = [1/2, 1/2]; teacher logits [ln 3, 0]: p_T = [3/4, 1/4].
STUDENT = torch.zeros(1, 1, 2)
TEACHER = torch.tensor([[[math.log(3.0), 0.0]]])


def test_forward_kl_by_hand() -> None:
    # KL(T || S) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.30409883 - 0.17328680 = 0.13081203
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=0.0), torch.tensor([[0.13081203]]))


def test_reverse_kl_by_hand() -> None:
    # KL(S || T) = 1/2 ln(2/3) + 1/2 ln(2) = -0.20273255 + 0.34657359 = 0.14384104
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=1.0), torch.tensor([[0.14384104]]))


def test_jsd_by_hand() -> None:
    # beta 1/2: M = [5/8, 3/8]. KL(T || M) = 3/4 ln(6/5) + 1/4 ln(2/3) = 0.13674165 - 0.10136628 = 0.03537537;
    # KL(S || M) = 1/2 ln(4/5) + 1/2 ln(4/3) = -0.11157178 + 0.14384104 = 0.03226926; half of the sum: 0.03382232
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=0.5), torch.tensor([[0.03382232]]))


def test_temperature_softens_both() -> None:
    # T = 2: p_T = [sqrt3, 1] / (1 + sqrt3) = [0.63397460, 0.36602540], p_S unchanged;
    # KL = 0.63397460 ln(1.26794919) + 0.36602540 ln(0.73205081) = 0.15051288 - 0.11417214 = 0.03634074
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=0.0, temperature=2.0), torch.tensor([[0.03634074]]))


def test_masked_mean_ignores_masked_tokens_and_empty_masks() -> None:
    values = torch.tensor([[1.0, 2.0, 9.0]])
    assert_close(masked_mean(values, torch.tensor([[1, 1, 0]])), torch.tensor(1.5))
    assert_close(masked_mean(values, torch.zeros(1, 3)), torch.tensor(0.0))


QA = [("What colour is the sky?", "The sky is blue."), ("Say yes.", "yes"), ("Say no.", "no"),
      ("What is 2 + 3?", "2 + 3 = 5."), ("Greet me.", "Hello! Thank you."), ("Name a fox trait.", "The fox is quick."),
      ("Is the dog lazy?", "Yes, the dog is lazy."), ("What is the capital of France?", "Paris is the capital.")]


@pytest.fixture(scope="module")
def small_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two layers, 16 wide: half the depth and width of the tiny teacher, the same tokenizer."""
    tokenizer = build_causal_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.2)
    path = tmp_path_factory.mktemp("student")
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in QA))
    return path


@pytest.fixture(scope="module")
def teacher(tiny_llama_dir: Path, sft_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama fine-tuned on the data for 20 steps: a confident teacher, as a real one is."""
    from align.config import SFTRecipe
    from align.stages import sft

    out = tmp_path_factory.mktemp("teacher")
    sft.run(validate(SFTRecipe, {
        "model": {"name_or_path": str(tiny_llama_dir)}, "data": {"path": str(sft_file)},
        "training": {"output_dir": str(out), "max_steps": 20, "per_device_batch_size": 4, "learning_rate": 1e-2,
                     "lr_scheduler": "constant", "save_steps": None, "max_length": 64, "report_to": "none"},
    }))
    return out


def make_recipe(student: Path, teacher: Path, data: Path, out: Path, mode: str) -> DistillRecipe:
    return validate(DistillRecipe, {
        "model": {"name_or_path": str(student)},
        "data": {"path": str(data), "eval_fraction": 0.25, "seed": 0},
        "training": {"output_dir": str(out), "max_steps": 12, "per_device_batch_size": 3, "learning_rate": 2e-2,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 64,
                     "report_to": "none"},
        "distill": {"teacher": {"name_or_path": str(teacher)}, "mode": mode,
                    "generation": {"max_new_tokens": 8, "batch_size": 3}},
    })


@pytest.mark.parametrize("mode", ["token", "on_policy", "sequence"])
def test_student_teacher_kl_falls(small_student: Path, teacher: Path, sft_file: Path, tmp_path: Path,
                                  mode: str) -> None:
    out = tmp_path / mode
    distill_stage.run(make_recipe(small_student, teacher, sft_file, out, mode))
    metrics = StageResult.load(out).metrics
    before, after = metrics["eval/kl_teacher_student_before"], metrics["eval/kl_teacher_student_after"]
    print(mode, "KL(teacher || student) per token", round(before, 3), "->", round(after, 3))
    # Sequence-level KD learns the teacher's sampled answers only, not its whole distribution: a smaller fall.
    assert after < {"token": 0.8, "on_policy": 0.8, "sequence": 0.99}[mode] * before, (before, after)
    if mode == "sequence":
        assert len((out / "teacher_samples.jsonl").read_text().splitlines()) == 6  # the 6 training prompts


def test_different_tokenizers_are_refused(small_student: Path, tmp_path: Path, sft_file: Path) -> None:
    other = tmp_path / "other_teacher"
    tokenizer = build_causal_tokenizer(vocab_size=300)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        distill_stage.run(make_recipe(small_student, other, sft_file, tmp_path / "out", "token"))
