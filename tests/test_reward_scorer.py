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


# --------------------------------------------------------------------------- precision and length buckets


@pytest.mark.parametrize(
    "precision, atol",
    # bf16 keeps 8 bits of mantissa (relative error 2^-9 per rounding) on activations entering each matmul;
    # on the tiny model's scores (|score| < 1) the measured gap is ~1.5e-3, int8 per-channel ~2e-4.
    [("bfloat16", 1e-2), ("int8", 1e-2)],
)
def test_reduced_precision_scores_close_to_float32(model, precision, atol):
    prompts, responses = PROMPTS * 3, RESPONSES[::-1] * 3
    reference = RewardScorer(model, batch_size=4).score(prompts, responses)
    scores = RewardScorer(model, batch_size=4, precision=precision).score(prompts, responses)
    assert scores.dtype == torch.float32 and scores.shape == reference.shape
    assert_close(scores, reference, atol=atol, rtol=0)
    assert not torch.equal(scores, reference)  # the option did change the arithmetic


def test_int8_quantises_a_copy_and_leaves_the_model_alone(model):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    before = RewardScorer(model).score(PROMPTS, RESPONSES)
    scorer = RewardScorer(model, precision="int8")
    linears = [m for m in scorer.model.encoder.modules() if isinstance(m, (torch.nn.Linear, DynamicQuantizedLinear))]
    assert linears and all(isinstance(m, DynamicQuantizedLinear) for m in linears)
    assert type(scorer.model.head) is torch.nn.Linear  # the head stays float32
    assert not any(isinstance(m, DynamicQuantizedLinear) for m in model.modules())
    assert_close(RewardScorer(model).score(PROMPTS, RESPONSES), before, atol=0, rtol=0)


def test_bfloat16_scores_with_a_bfloat16_copy_and_leaves_the_model_alone(model):
    before = RewardScorer(model).score(PROMPTS, RESPONSES)
    scorer = RewardScorer(model, precision="bfloat16")
    assert {p.dtype for p in scorer.model.encoder.parameters()} == {torch.bfloat16}
    assert scorer.model.head.weight.dtype == torch.float32  # the head and pooled features stay float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert_close(RewardScorer(model).score(PROMPTS, RESPONSES), before, atol=0, rtol=0)


def test_unknown_precision_names_the_key(model, tmp_path):
    from align.config import PPORecipe
    from align.recipe import RecipeError, load_recipe

    with pytest.raises(ValueError, match=r"precision='fp16' is not one of float32, bfloat16, int8"):
        RewardScorer(model, precision="fp16")
    with pytest.raises(ValueError, match=r"precision='int8' runs on CPU only"):
        RewardScorer(model, device="cuda", precision="int8")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "ppo.yaml"
    with pytest.raises(RecipeError, match=r"reward\.precision: Input should be 'float32', 'bfloat16' or 'int8'"):
        load_recipe(PPORecipe, recipe, ["reward.precision=fp16"])


def test_schema_and_scorer_offer_the_same_precisions():
    from typing import get_args

    from align.config import JudgeSettings
    from reward_models.scorer import PRECISIONS

    assert get_args(JudgeSettings.model_fields["precision"].annotation) == PRECISIONS


def test_judge_settings_reach_the_scorer(model, tmp_path):
    from align.config import JudgeSettings
    from align.judges import judge_for

    model.save_pretrained(tmp_path / "rm")
    judge = judge_for(JudgeSettings(judge=str(tmp_path / "rm"), batch_size=2, precision="bfloat16"), device="cpu")
    assert judge.scorer.precision == "bfloat16" and judge.scorer.batch_size == 2
    assert_close(judge(["yes"], ["good"]), RewardScorer(model).score(["yes"], ["good"]), atol=1e-2, rtol=0)


def brute_force_buckets(lengths: list[int], max_batch: int, forward_cost: float) -> float:
    """The cheapest split's cost, trying every way to cut the sorted lengths (the reference for the DP)."""
    if not lengths:
        return 0.0
    return min(
        k * lengths[k - 1] + forward_cost + brute_force_buckets(lengths[k:], max_batch, forward_cost)
        for k in range(1, min(max_batch, len(lengths)) + 1)
    )


def test_length_buckets_is_the_cheapest_split():
    from reward_models.scorer import length_buckets

    # Worked by hand: 3 * 4 + 8 and 1 * 16 + 8 is 44; one batch of 4 padded to 16 is 4 * 16 + 8 = 72.
    assert length_buckets([4, 4, 4, 16], 4, 8) == [range(0, 3), range(3, 4)]
    assert length_buckets([5, 5, 5, 5, 5], 2, 8) == [range(0, 1), range(1, 3), range(3, 5)]
    assert length_buckets([], 4, 8) == []
    rng = torch.Generator().manual_seed(0)
    for _ in range(30):
        lengths = sorted(torch.randint(1, 40, (int(torch.randint(1, 9, (1,), generator=rng)),), generator=rng).tolist())
        max_batch, cost = int(torch.randint(1, 5, (1,), generator=rng)), float(torch.randint(0, 30, (1,), generator=rng))
        buckets = length_buckets(lengths, max_batch, cost)
        assert [i for b in buckets for i in b] == list(range(len(lengths)))  # consecutive, every pair once
        assert all(1 <= len(b) <= max_batch for b in buckets)
        assert sum(len(b) * lengths[b.stop - 1] + cost for b in buckets) == brute_force_buckets(lengths, max_batch, cost)


def test_length_buckets_cut_a_mixed_batch(model):
    # Eight short pairs and one long one in a batch of 16: the long one gets its own forward.
    scorer = RewardScorer(model, batch_size=16)
    assert scorer._buckets([10] * 8 + [60]) == [range(0, 8), range(8, 9)]
    prompts, responses = ["yes"] * 8 + [PROMPTS[0]], ["good"] * 8 + [RESPONSES[1]]
    assert_close(scorer.score(prompts, responses), RewardScorer(model, batch_size=1).score(prompts, responses),
                 atol=1e-5, rtol=0)
