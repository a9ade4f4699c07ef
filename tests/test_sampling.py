"""``align.sampling``: one prompt rule, one EOS rule, one seeded sampler for every stage.

The cross-stage tests sample the same tiny policy through ``align generate``, a PPO rollout and
``align eval`` and require the same tokens; and score the same responses through PPO's, GRPO's
and eval's judge calls and require the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import apply_chat_template

from align.config import EvalRecipe, GenerateRecipe, JudgeSettings, PPORecipe
from align.judges import load_judge, score
from align.recipe import validate
from align.sampling import (conversational, eos_token_ids, prompt_ids, render_prompt, response_logits, sample,
                            used_columns)
from align.stages.eval import Responses, sample_responses, score_responses
from align.stages.generate import run as run_generate
from align.stages.grpo import TextJudgeReward
from align.stages.ppo.trainer import PPOTrainer
from tiny_models import build_causal_tokenizer

PROMPTS = ["What is the capital of France?", "Say yes.", "Name a colour."]
CHAT = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": p}] for p in PROMPTS]


@pytest.fixture(scope="module")
def no_template_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a tokenizer that has no chat template."""
    out = tmp_path_factory.mktemp("no_template")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(out)
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(out)
    assert not AutoTokenizer.from_pretrained(out).chat_template
    return out


# --------------------------------------------------------------------------- the prompt rule


def test_render_prompt_with_chat_template() -> None:
    tok = build_causal_tokenizer()
    assert render_prompt(tok, "What is 2+2?") == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_prompt(tok, msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_prompt_without_chat_template() -> None:
    tok = SimpleNamespace(chat_template=None)
    assert render_prompt(tok, "Hello") == "Hello"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_prompt(tok, msgs) == "system: Be brief.\nuser: Hi"


@pytest.mark.parametrize("prompt", [PROMPTS[0], CHAT[0]], ids=["string", "messages"])
def test_training_rows_render_the_prompt_the_sampler_shows(prompt) -> None:  # noqa: ANN001
    """``conversational`` rows, rendered by TRL as its trainers do, start with exactly ``prompt_ids``."""
    from datasets import Dataset

    tok = build_causal_tokenizer()
    rows = conversational(Dataset.from_list([{"prompt": prompt, "chosen": "Paris.", "rejected": "Rome."}]), tok,
                          ["chosen", "rejected"])
    rendered = apply_chat_template(rows[0], tok)  # what DPOTrainer tokenizes, without special tokens
    assert tok(rendered["prompt"], add_special_tokens=False)["input_ids"] == prompt_ids(tok, prompt)
    assert rendered["chosen"].startswith("Paris.")
    assert rendered["chosen"].endswith(tok.eos_token + "\n")  # the template ends the turn with EOS


def test_without_a_template_rows_stay_text_and_bos_is_added() -> None:
    from datasets import Dataset
    from tokenizers import processors

    tok = build_causal_tokenizer()
    tok.chat_template = None
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    rows = Dataset.from_list([{"prompt": "Hi", "completion": " there"}])
    assert conversational(rows, tok, ["completion"]) is rows
    ids = prompt_ids(tok, "Hi")
    assert ids[0] == tok.bos_token_id and ids == tok(text="Hi")["input_ids"]  # as TRL tokenizes a text prompt


def test_eos_ids_are_the_generation_config_and_the_tokenizer() -> None:
    tok = SimpleNamespace(eos_token_id=2)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 2]))
    assert eos_token_ids(model, tok) == [7, 2]
    assert eos_token_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None)), tok) == [2]
    with pytest.raises(ValueError, match="no EOS token"):
        eos_token_ids(SimpleNamespace(), SimpleNamespace(eos_token_id=None))


def test_seeded_sampling_repeats_and_masks_end_at_eos(tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    first = sample(model, tok, PROMPTS, max_new_tokens=12, batch_size=2, n=2, seed=5)
    again = sample(model, tok, PROMPTS, max_new_tokens=12, batch_size=2, n=2, seed=5)
    other = sample(model, tok, PROMPTS, max_new_tokens=12, batch_size=2, n=2, seed=6)
    assert torch.equal(first.response_ids, again.response_ids) and first.texts == again.texts
    assert not torch.equal(first.response_ids, other.response_ids)
    assert first.response_ids.shape[0] == 6 and torch.equal(first.query_ids[0], first.query_ids[1])  # n per prompt
    for row, mask, done in zip(first.response_ids, first.response_mask, first.finished):
        n = int(mask.sum())
        assert bool(done) == (tok.eos_token_id in row.tolist())
        assert (row[n - 1] == tok.eos_token_id) == bool(done)  # a finished response's mask ends on its EOS
    greedy = sample(model, tok, PROMPTS, max_new_tokens=12, temperature=0.0, batch_size=3, seed=1)
    assert torch.equal(greedy.response_ids, sample(model, tok, PROMPTS, max_new_tokens=12, temperature=0.0,
                                                   batch_size=3, seed=2).response_ids)  # greedy ignores the seed


def test_cutting_all_padding_columns_keeps_every_real_positions_logits(tiny_llama_dir: Path) -> None:
    """PPO's length-sorted micro-batches run on ``used_columns`` only: the cut must change no real output."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    batch = sample(model, tok, PROMPTS + ["A much longer prompt, " * 6], max_new_tokens=10, batch_size=4, seed=3)
    T = batch.response_ids.shape[1]
    rows = torch.tensor([1, 2])  # the two short prompts: the long one's padding columns are unused by both
    att = batch.attention_mask[rows]
    first, t = used_columns(att, T)
    assert first > 0 and t == int(batch.lengths[rows].max())
    assert not att[:, :first].any() and not att[:, att.shape[1] - T + t :].any()  # only padding is cut
    end = att.shape[1] - T + t
    with torch.no_grad():
        full, _ = response_logits(model, batch.sequences[rows], att, T)
        cut, _ = response_logits(model, batch.sequences[rows][:, first:end], att[:, first:end], t)
    real = batch.response_mask[rows][:, :t].bool()
    torch.testing.assert_close(cut[real], full[:, :t][real], rtol=1e-4, atol=1e-5)
    assert used_columns(torch.tensor([[0, 1, 1, 0, 0]]), 2) == (1, 0)  # a row with no response token yet


# --------------------------------------------------------------------------- across stages


def _write_prompts(path: Path, chat: bool) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (CHAT if chat else PROMPTS)))
    return path


@pytest.mark.parametrize("template", [True, False], ids=["template", "no-template"])
@pytest.mark.parametrize("chat", [False, True], ids=["string", "messages"])
def test_generate_ppo_rollout_and_eval_draw_the_same_tokens(tiny_llama_dir: Path, no_template_dir: Path,
                                                           tmp_path: Path, chat: bool, template: bool) -> None:
    model_dir = str(tiny_llama_dir if template else no_template_dir)
    prompts_file = _write_prompts(tmp_path / "prompts.jsonl", chat)
    prompts = CHAT if chat else PROMPTS
    seed, sampling = 11, {"max_new_tokens": 10, "batch_size": 2}

    generated = run_generate(GenerateRecipe(
        models=[{"name_or_path": model_dir}], data={"path": str(prompts_file), "dedup": False},
        generation={"n": 1, "seed": seed, **sampling}, training={"output_dir": str(tmp_path / "gen")}))
    rows = [json.loads(line) for line in Path(generated.metrics["candidates"]).read_text().splitlines()]

    ppo = PPOTrainer(validate(PPORecipe, {
        "model": {"name_or_path": model_dir, "method": "full"}, "data": {"path": str(prompts_file)},
        "reward": {"judge": "test_ppo_judges:count_e"}, "generation": sampling,
        "ppo": {"rollouts_per_iteration": 3},
        "training": {"output_dir": str(tmp_path / "ppo"), "per_device_batch_size": 1, "seed": seed,
                     "report_to": "none", "save_steps": None}}))
    rollout = ppo.rollout(prompts, seed)

    recipe = validate(EvalRecipe, {
        "policies": [model_dir], "reference": {"name_or_path": model_dir}, "data": {"path": str(prompts_file)},
        "generation": {"num_prompts": 3, **sampling}, "training": {"output_dir": str(tmp_path / "eval"), "seed": seed}})
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    evaluated = sample_responses(model, AutoTokenizer.from_pretrained(model_dir), model, prompts, recipe)
    direct = sample(model, AutoTokenizer.from_pretrained(model_dir), prompts, seed=seed, **sampling)

    assert torch.equal(rollout.response_ids, direct.response_ids)
    assert rollout.texts == evaluated.texts == [row["responses"][0]["text"] for row in rows] == direct.texts
    assert any(rollout.texts)
    assert rollout.lengths.tolist() == evaluated.tokens.tolist()
    assert rollout.finished.tolist() == evaluated.finished.tolist() == [row["responses"][0]["stop"] == "eos"
                                                                         for row in rows]


def test_a_judge_scores_alike_in_ppo_grpo_and_eval(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The missing-EOS penalty and clip: one function, the same numbers from each stage's call."""
    settings = JudgeSettings(judge="test_ppo_judges:count_e", missing_eos_penalty=1.5, clip=2.5)
    judge = load_judge(settings.judge)
    prompts = [CHAT[0], PROMPTS[1], PROMPTS[2], CHAT[1]]
    responses = ["eee eee", "yes", "green", "e"]
    finished = [True, False, True, False]
    expected = torch.tensor([2.5, -0.5, 2.0, -0.5])  # clip(6) ; 1 - 1.5 ; 2 ; 1 - 1.5

    ppo = score(judge, prompts, responses, torch.tensor(finished), settings).final  # PPO's call, as in its step
    eos = AutoTokenizer.from_pretrained(tiny_llama_dir).eos_token_id
    ids = [[5, eos] if done else [5, 6] for done in finished]
    grpo = torch.tensor(TextJudgeReward(judge, settings, [eos])(prompts=prompts, completions=responses,
                                                                completion_ids=ids))
    results = {"baseline": Responses(responses, torch.zeros(4), torch.zeros(4), torch.ones(4), torch.tensor(finished))}
    recipe = validate(EvalRecipe, {"policies": ["p"], "reference": {"name_or_path": "r"}, "data": {"path": "d"},
                                   "reward": settings.model_dump()})
    score_responses(recipe, prompts, results)
    for got in (ppo, grpo, results["baseline"].rewards):
        torch.testing.assert_close(got, expected)


def test_missing_eos_penalty_in_standard_deviations_of_the_batch() -> None:
    settings = JudgeSettings(judge="x:y", missing_eos_penalty=0.5, missing_eos_penalty_unit="std")
    judge = lambda prompts, responses: torch.tensor([1.0, 3.0, 5.0, 7.0])  # noqa: E731 - std (population) sqrt(5)
    got = score(judge, ["p"] * 4, ["a", "b", "c", "d"], [True, False, True, False], settings)
    torch.testing.assert_close(got.final, torch.tensor([1.0, 3.0 - 0.5 * 5**0.5, 5.0, 7.0 - 0.5 * 5**0.5]))
    torch.testing.assert_close(got.raw, torch.tensor([1.0, 3.0, 5.0, 7.0]))


def test_n_answers_per_prompt_score_in_one_call() -> None:
    from align.judges import score_n

    judge = load_judge("test_ppo_judges:count_e")
    got = score_n(judge, ["p", "q"], ["e", "ee", "", "eee"])
    torch.testing.assert_close(got.final, torch.tensor([[1.0, 2.0], [0.0, 3.0]]))  # row i answers prompt i
    with pytest.raises(ValueError, match="3 responses for 2 prompts"):
        score_n(judge, ["p", "q"], ["a", "b", "c"])
