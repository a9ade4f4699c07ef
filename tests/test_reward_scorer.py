"""Pair encoding, the scorer, and save/load of the reward model (tiny BERT, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from reward_models import PairEncoder, RewardModel, RewardScorer

PROMPTS = [
    "the quick brown fox jumps over the lazy dog . what is the capital of france ?",
    "yes",
    [{"role": "system", "content": "answer politely"}, {"role": "user", "content": "is paris great ?"}],
]
RESPONSES = ["good", "paris is the capital of france . thank you !", [{"role": "assistant", "content": "yes , great"}]]


@pytest.fixture(scope="module")
def model(tiny_bert_dir: Path) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_encoder(tiny_bert_dir, pooling="mean", max_length=64).eval()


def tokens(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def test_pair_keeps_cls_first_and_sep_between(model):
    enc = PairEncoder(model.tokenizer, 64)
    for pair in enc.encode(PROMPTS, RESPONSES):
        toks = tokens(model.tokenizer, pair.input_ids)
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and toks.count("[SEP]") == 2
    batch = enc(PROMPTS, RESPONSES)
    assert (batch["input_ids"][:, 0] == model.tokenizer.cls_token_id).all()
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    # The response is segment B (type 1), the prompt segment A.
    first = enc.encode(PROMPTS[:1], RESPONSES[:1])[0]
    assert first.token_type_ids[-2:] == [1, 1] and first.token_type_ids[0] == 0


def test_long_prompt_is_cut_from_the_left_never_the_response(model):
    prompt = "the quick brown fox jumps over the lazy dog " * 5  # 45 words
    response = "paris is the capital of france"
    enc = PairEncoder(model.tokenizer, max_length=12)  # 3 specials + 6 response tokens -> 3 prompt tokens left
    toks = tokens(model.tokenizer, enc.encode([prompt], [response])[0].input_ids)
    assert len(toks) == 12
    # The prompt keeps its last 3 tokens; all 6 response tokens survive.
    assert toks == ["[CLS]", "the", "lazy", "dog", "[SEP]", "paris", "is", "the", "capital", "of", "france", "[SEP]"]


def test_response_alone_too_long_is_cut_from_the_right(model):
    response = "paris is the capital of france and the quick brown fox"
    enc = PairEncoder(model.tokenizer, max_length=8)  # 8 - 3 specials: room for 5 response tokens, no prompt
    toks = tokens(model.tokenizer, enc.encode(["what is the capital ?"], [response])[0].input_ids)
    assert toks == ["[CLS]", "[SEP]", "paris", "is", "the", "capital", "of", "[SEP]"]


def test_scores_same_in_batch_and_one_at_a_time(model):
    scorer = RewardScorer(model, batch_size=3)
    batched = scorer.score(PROMPTS, RESPONSES)
    single = torch.cat([scorer.score([p], [r]) for p, r in zip(PROMPTS, RESPONSES)])
    assert batched.dtype == torch.float32 and batched.shape == (3,) and batched.device.type == "cpu"
    # Padding changes only masked positions; float32 reductions over different lengths differ by ~1e-7.
    assert_close(batched, single, atol=1e-5, rtol=0)
    # Sorting by length across batches of 2 returns the same order as the input.
    assert_close(RewardScorer(model, batch_size=2).score(PROMPTS, RESPONSES), batched, atol=1e-5, rtol=0)


def test_grpo_reward_function_interface(model):
    scorer = RewardScorer(model)
    prompts = [[{"role": "user", "content": "is paris great ?"}]] * 2
    completions = [[{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}]]
    out = scorer(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None)
    assert isinstance(out, list) and all(isinstance(x, float) for x in out)
    assert_close(torch.tensor(out), scorer.score(prompts, ["yes", "no"]))


def test_score_rejects_single_strings(model):
    with pytest.raises(TypeError, match="lists"):
        RewardScorer(model).score("a prompt", "a response")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        RewardScorer(model).score(["a", "b"], ["c"])


def test_save_load_round_trip(model, tmp_path):
    raw = RewardScorer(model, normalize=False).score(PROMPTS, RESPONSES)
    model.set_normalization(raw, clip=0.5)
    before = RewardScorer(model).score(PROMPTS, RESPONSES)
    model.save_pretrained(tmp_path / "rm")
    assert {"reward_config.json", "reward_head.safetensors", "config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "rm").iterdir()
    }
    loaded = RewardScorer.from_pretrained(tmp_path / "rm", device="cpu")
    cfg = loaded.model.reward_config
    assert (cfg.mean, cfg.std, cfg.clip, cfg.pooling, cfg.max_length, cfg.normalized) == (
        model.reward_config.mean, model.reward_config.std, 0.5, "mean", 64, True
    )
    assert_close(loaded.score(PROMPTS, RESPONSES), before, atol=1e-6, rtol=0)
    # Normalised on these three: mean 0, std 1 before the clip; the clip bounds them.
    z = RewardScorer(model, normalize=False).score(PROMPTS, RESPONSES)
    z = (z - cfg.mean) / cfg.std
    assert_close(z.double().mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-5, rtol=0)
    assert_close(z.double().std(unbiased=False), torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)
    assert before.abs().max() <= 0.5


def test_not_a_reward_model_dir(tiny_bert_dir):
    with pytest.raises(FileNotFoundError, match="reward_config.json"):
        RewardScorer.from_pretrained(tiny_bert_dir)
