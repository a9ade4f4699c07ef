"""``align.judges.load_judge``: a reward-model directory or ``module:function`` -> a float-tensor judge.

The functions at the top are judges the PPO tests name as ``test_ppo_judges:count_e``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from align.judges import JudgeError, load_judge


def count_e(prompts: list[str], responses: list[str]) -> list[float]:
    """Reward = how many times the letter 'e' occurs in the response (the tiny Llama emits it sometimes)."""
    return [float(response.count("e")) for response in responses]


def prompt_length(prompts: list[str], responses: list[str]) -> torch.Tensor:
    return torch.tensor([len(p) for p in prompts], dtype=torch.int64)


def wrong_length(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0]


NOT_CALLABLE = 3


def test_module_function_judge_returns_float32() -> None:
    judge = load_judge("test_ppo_judges:count_e")
    scores = judge(["p", "q"], ["eel", "xyz"])
    assert scores.dtype == torch.float32
    assert_close(scores, torch.tensor([2.0, 0.0]))
    assert_close(load_judge("test_ppo_judges:prompt_length")(["ab", "abc"], ["", ""]), torch.tensor([2.0, 3.0]))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("test_ppo_judges:missing", "has no attribute 'missing'"),
        ("test_ppo_judges:NOT_CALLABLE", "not a callable"),
        ("runs/does-not-exist", "no such directory"),
        ("just_a_name", "no such directory"),
    ],
)
def test_bad_specs_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(JudgeError, match=message) as info:
        load_judge(spec)
    assert repr(spec) in str(info.value)


def test_wrong_number_of_scores_is_an_error() -> None:
    with pytest.raises(JudgeError, match="returned 1 scores for 2 responses"):
        load_judge("test_ppo_judges:wrong_length")(["a", "b"], ["c", "d"])


def test_directory_that_is_not_a_reward_model(tiny_llama_dir: Path) -> None:
    with pytest.raises(JudgeError, match="cannot load a reward model"):
        load_judge(str(tiny_llama_dir))


def test_reward_model_directory_scores_text(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from reward_models import RewardModel, RewardScorer

    torch.manual_seed(0)
    RewardModel.from_encoder(tiny_bert_dir, pooling="mean", max_length=64).save_pretrained(tmp_path / "rm")
    judge = load_judge(str(tmp_path / "rm"), batch_size=2, device="cpu")
    prompts, responses = ["what is the capital of france ?", "say yes"], ["paris", "yes , thank you"]
    scores = judge(prompts, responses)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert_close(scores, RewardScorer.from_pretrained(tmp_path / "rm", device="cpu").score(prompts, responses))


def count_a(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(response.count("a")) for response in responses]


def test_an_ensemble_scores_the_mean_less_its_spread_and_reports_the_spread() -> None:
    from align.config import JudgeSettings
    from align.judges import Ensemble, judge_for, score, score_n

    settings = JudgeSettings(judge=["test_ppo_judges:count_e", "test_ppo_judges:count_a"], ensemble_penalty=0.5)
    judge = judge_for(settings)
    assert isinstance(judge, Ensemble)
    # e-counts [2, 0, 1], a-counts [0, 0, 3]: mean [1, 0, 2], spread [1, 0, 1]
    scores = score(judge, ["p"] * 3, ["eel", "xyz", "eaaa"], settings=settings)
    assert_close(scores.disagreement, torch.tensor([1.0, 0.0, 1.0]))
    assert_close(scores.raw, torch.tensor([0.5, 0.0, 1.5]))
    assert_close(judge(["p"], ["eaaa"]), torch.tensor([1.5]))  # called directly, as GRPO and best-of-N do
    by_prompt = score_n(judge, ["p"], ["eel", "xyz", "eaaa"], settings=settings)
    assert by_prompt.disagreement.shape == (1, 3)
    # One member: no spread, the member's own scores; a single judge reports no disagreement.
    assert_close(score(judge_for(JudgeSettings(judge=["test_ppo_judges:count_e"])), ["p"], ["eel"]).disagreement,
                 torch.tensor([0.0]))
    assert score(load_judge("test_ppo_judges:count_e"), ["p"], ["eel"]).disagreement is None


def test_ensemble_settings_errors_name_the_key() -> None:
    from pydantic import ValidationError

    from align.config import JudgeSettings

    with pytest.raises(ValidationError, match="at least one member"):
        JudgeSettings(judge=[])
    with pytest.raises(ValidationError, match="ensemble_penalty=0.5 needs judge to be a list"):
        JudgeSettings(judge="test_ppo_judges:count_e", ensemble_penalty=0.5)
