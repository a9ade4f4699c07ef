"""``align export``: LoRA merge, GGUF (f16, q8_0) that transformers loads back with the same logits, Modelfile, card.

Tolerances (tiny random Llama with a merged LoRA, initializer_range 0.2, logits up to ~5): the largest
logit difference between the GGUF loaded back and the merged model must be below 0.05 for f16
(measured 0.015) and 0.75 for q8_0 (measured 0.37); relative to the largest logit, below the stage
defaults 0.01 (measured 0.003) and 0.15 (measured 0.077). On SmolLM2-135M-Instruct the stage measured
0.031 (f16, relative 0.0008) and 1.09 (q8_0, relative 0.029) with the same top-1 token everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.config import ExportRecipe
from align.export import ExportError
from align.export.gguf import permute_rope
from align.export.ollama import CHATML_TEMPLATE, chatml_system, modelfile
from align.stages.export import run
from align.recipe import RecipeError, validate

PROMPT = "<|im_start|>user\nWhat is 2+2? Paris!<|im_end|>\n<|im_start|>assistant\nThe quick brown fox 42"


def test_permute_rope_by_hand_and_undone_by_transformers() -> None:
    # One head of dim 4: HF pairs dims (0, 2) and (1, 3); llama.cpp wants pairs adjacent: rows 0, 2, 1, 3.
    rows = np.arange(4, dtype=np.float32).reshape(4, 1)
    assert permute_rope(rows, n_head=1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    k = np.random.default_rng(0).normal(size=(2 * 8, 32)).astype(np.float32)  # 2 KV heads of dim 8
    undone = LlamaTensorProcessor(config={})._reverse_permute_weights(permute_rope(k, 2), n_head=4, num_kv_heads=2)
    np.testing.assert_array_equal(undone, k)


def test_q8_0_falls_back_to_f16_for_rows_that_are_not_whole_blocks() -> None:
    from gguf import GGMLQuantizationType

    from align.export.gguf import encode_tensor

    data, qtype = encode_tensor(np.ones((4, 64), dtype=np.float32), "q8_0")
    assert qtype == GGMLQuantizationType.Q8_0 and data.shape == (4, 2 * 34)  # per 32 values: f16 scale + 32 int8
    data, qtype = encode_tensor(np.ones((4, 48), dtype=np.float32), "q8_0")
    assert qtype == GGMLQuantizationType.F16 and data.dtype == np.float16
    assert encode_tensor(np.ones(8, dtype=np.float32), "q8_0")[1] == GGMLQuantizationType.F32  # norms stay f32


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DPO-like run dir: a LoRA adapter with non-zero B in adapter/, recipe.yaml and stage_result.json."""
    from peft import LoraConfig, get_peft_model

    run_dir = tmp_path_factory.mktemp("dpo_run")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(run_dir / "adapter")
    recipe = {"stage": "dpo", "model": {"name_or_path": str(tiny_llama_dir), "method": "lora"},
              "data": {"path": "examples/data/preferences_demo.jsonl"}}
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run_dir / "stage_result.json").write_text(json.dumps({"output_dir": str(run_dir), "metrics": {"dpo/loss": 0.5}}))
    return run_dir


@pytest.fixture(scope="module")
def exported(lora_run: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export")
    recipe = ExportRecipe(model={"name_or_path": str(lora_run)}, model_name="tiny-dpo",
                          training={"output_dir": str(out)})
    return run(recipe)


def _logits(model, tokenizer) -> torch.Tensor:  # noqa: ANN001
    ids = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_lora_adapter_is_merged(exported, lora_run: Path, tiny_llama_dir: Path) -> None:  # noqa: ANN001
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(exported.output_dir)
    merged = AutoModelForCausalLM.from_pretrained(exported.output_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), lora_run / "adapter").eval()
    assert exported.metrics["export/merged_adapter"] is True
    torch.testing.assert_close(_logits(merged, tokenizer), _logits(with_adapter, tokenizer), atol=1e-4, rtol=1e-4)
    assert (_logits(merged, tokenizer) - _logits(base, tokenizer)).abs().max() > 0.1  # the adapter changed something


@pytest.mark.parametrize(("file_type", "tolerance"), [("f16", 0.05), ("q8_0", 0.75)])
def test_gguf_loads_back_with_close_logits(exported, file_type: str, tolerance: float) -> None:  # noqa: ANN001
    out = Path(exported.output_dir)
    name = f"model-{file_type}.gguf"
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(out / "gguf", gguf_file=name, dtype=torch.float32).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(out / "gguf", gguf_file=name)

    assert gguf_tokenizer(PROMPT)["input_ids"] == tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert (gguf_tokenizer.eos_token, gguf_tokenizer.pad_token) == ("<|im_end|>", "<pad>")
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    diff = (_logits(loaded, tokenizer) - _logits(merged, tokenizer)).abs().max().item()
    assert diff < tolerance
    metrics = exported.metrics
    assert metrics[f"export/gguf_{file_type}_max_abs_diff"] < tolerance
    assert metrics[f"export/gguf_{file_type}_rel_diff"] < {"f16": 0.01, "q8_0": 0.15}[file_type]
    assert metrics[f"export/gguf_{file_type}_tokenizer_match"] is True


def test_modelfile_and_card(exported) -> None:  # noqa: ANN001
    out = Path(exported.output_dir)
    text = (out / "gguf" / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf\n" in text
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in text
    assert 'PARAMETER stop "<|im_start|>"' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "SYSTEM" not in text  # the tiny ChatML template has no default system prompt
    card = (out / "README.md").read_text()
    assert "| dpo |" in card and "dpo/loss" in card and "model-q8_0.gguf" in card
    assert (out / "model.safetensors").is_file() and (out / "stage_result.json").is_file()


def test_chatml_detection_reads_the_default_system_prompt(tiny_llama_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe kind.<|im_end|>\n' }}{% endif %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    chat = chatml_system(tokenizer)
    assert chat.chatml and chat.default_system == "Be kind."
    assert 'SYSTEM """Be kind."""' in modelfile("m.gguf", tokenizer)[0]

    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    text, chat = modelfile("m.gguf", tokenizer)
    assert not chat.chatml and "TEMPLATE" not in text and 'PARAMETER stop "<|im_end|>"' in text  # eos still stops


def test_unsupported_architecture_names_it_and_keeps_safetensors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    source = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    recipe = ExportRecipe(model={"name_or_path": str(source)}, training={"output_dir": str(tmp_path / "out")})
    with pytest.raises(ExportError, match="GPT2LMHeadModel.*safetensors"):
        run(recipe)
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "README.md").is_file()


def test_without_the_rope_permutation_the_logits_differ(tiny_llama_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is sensitive to the Q/K layout: skipping the permutation breaks the model loaded back."""
    import align.export.gguf as gguf_module

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    monkeypatch.setattr(gguf_module, "permute_rope", lambda weight, n_head: weight)
    gguf_module.write_llama_gguf(model, tokenizer, tmp_path / "m.gguf", "f16", "unpermuted")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    assert (_logits(loaded, tokenizer) - _logits(model, tokenizer)).abs().max() > 0.5


def test_shipped_recipe_loads() -> None:
    from align.recipe import load_recipe

    recipe = load_recipe(ExportRecipe, Path(__file__).parents[1] / "recipes" / "export.yaml")
    assert recipe.gguf.types == ["f16", "q8_0"] and recipe.ollama.gguf == "q8_0"


def test_recipe_rejects_a_modelfile_without_gguf() -> None:
    with pytest.raises(RecipeError, match="ollama.enabled=true needs gguf.enabled=true"):
        validate(ExportRecipe, {"model": {"name_or_path": "x"}, "gguf": {"enabled": False}})
