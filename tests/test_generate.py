"""``align generate`` on tiny random models: N responses per prompt, the model recorded, EOS ends a response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align.cli import generate_recipe_from_args, main
from align.config import GenerateRecipe
from align.recipe import RecipeError
from align.stages.generate import prompt_id, run


@pytest.fixture(scope="module")
def eos_llama_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama rewired so EOS is always the most likely token: every response is empty and stops at EOS.

    The layers add nothing (o_proj, down_proj zeroed), every embedding has a large positive
    component d, the final norm keeps only d, and the head maps d to EOS alone.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    eos, d = tokenizer.eos_token_id, 0
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, d] = 10.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[d] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[eos, d] = 50.0
    out = tmp_path_factory.mktemp("eos_llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _prompts(path: Path, chat: bool = False) -> Path:
    texts = ["What is the capital of France?", "Say yes.", "Name a colour."]
    if chat:
        rows = [{"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": t}]} for t in texts]
    else:
        rows = [{"prompt": t} for t in texts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_two_models_n_each_with_the_model_recorded(tiny_llama_dir: Path, eos_llama_dir: Path, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "cands.jsonl"
    code = main([
        "generate", "--model", str(tiny_llama_dir), "--model", str(eos_llama_dir), "--prompts", str(prompts),
        "--n", "3", "--max-new-tokens", "12", "--batch-size", "2", "--temperature", "1.0", "--out", str(out),
    ])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [prompt_id(json.loads(line)["prompt"]) for line in prompts.read_text().splitlines()]
    for row in rows:
        assert len(row["responses"]) == 6  # n=3 from each of 2 models
        by_model = [r["model"] for r in row["responses"]]
        assert by_model == [str(tiny_llama_dir)] * 3 + [str(eos_llama_dir)] * 3
        # The EOS model's first token is EOS: empty text, stopped by EOS, not by the 12-token limit.
        assert all(r["text"] == "" and r["stop"] == "eos" for r in row["responses"][3:])
        random_model = row["responses"][:3]
        assert all(r["stop"] in ("eos", "length") for r in random_model)
        assert any(r["text"] for r in random_model)
        assert "<|im_end|>" not in "".join(r["text"] for r in random_model)  # EOS itself never in the text
        assert row["generation"]["n"] == 3 and row["generation"]["max_new_tokens"] == 12


def test_recipe_and_flags_precedence(tmp_path: Path) -> None:
    recipe = tmp_path / "gen.yaml"
    recipe.write_text("model: {name_or_path: some/model}\ndata: {path: p.jsonl}\ngeneration: {n: 4, temperature: 0.7}\n")

    class Args:
        pass

    args = Args()
    args.recipe, args.overrides, args.model = str(recipe), ["generation.top_p=0.9"], None
    for flag in ("prompts", "n", "temperature", "top_p", "top_k", "max_new_tokens", "batch_size", "seed", "out"):
        setattr(args, flag, None)
    args.n = 2
    got = generate_recipe_from_args(args)
    assert isinstance(got, GenerateRecipe)
    assert [m.name_or_path for m in got.models] == ["some/model"]
    assert (got.generation.n, got.generation.temperature, got.generation.top_p) == (2, 0.7, 0.9)

    recipe.write_text("models: [{name_or_path: a}]\ndata: {path: p.jsonl}\ngeneration: {temprature: 0.5}\n")
    args.n = None
    with pytest.raises(RecipeError, match="generation.temprature: unknown key; did you mean .temperature."):
        generate_recipe_from_args(args)


def test_missing_prompt_file_is_a_named_error(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["generate", "--model", str(tiny_llama_dir), "--prompts", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "c.jsonl")])
    assert code == 2
    assert "nope.jsonl: file not found" in capsys.readouterr().err


def test_run_is_callable_without_the_cli(tiny_llama_dir: Path, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", chat=True)
    recipe = GenerateRecipe(models=[{"name_or_path": str(tiny_llama_dir)}], data={"path": str(prompts)},
                            generation={"n": 2, "max_new_tokens": 4}, output=str(tmp_path / "c.jsonl"))
    result = run(recipe)
    assert result.metrics["prompts"] == 3 and result.metrics["responses"] == 6
    rows = [json.loads(line) for line in Path(result.metrics["candidates"]).read_text().splitlines()]
    assert all(isinstance(row["prompt"], list) for row in rows)  # chat prompts kept as messages
