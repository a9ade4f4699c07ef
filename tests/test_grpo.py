"""GRPO / RLOO through TRL with our text judge: the reward function sees plain text; a few steps run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from align.config import GRPORecipe, JudgeSettings
from align.recipe import RecipeError, validate
from align.run import StageResult
from align.stages.grpo import TextJudgeReward, run
from align.run import read_metrics


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reward_function_passes_text_and_penalises_unfinished() -> None:
    seen: dict[str, list[str]] = {}

    def judge(prompts: list[str], responses: list[str]) -> torch.Tensor:
        seen["prompts"], seen["responses"] = prompts, responses
        return torch.tensor([3.0, 1.0])

    reward = TextJudgeReward(judge, JudgeSettings(judge="x:y", missing_eos_penalty=0.5, clip=2.0), eos_ids=[2])
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "Plain"]
    completions = [[{"role": "assistant", "content": "Hello!"}], " there"]
    # row 0 ends with EOS (2): 3.0 clipped to 2.0; row 1 has none: 1.0 - 0.5
    assert reward(prompts=prompts, completions=completions, completion_ids=[[7, 2], [7, 8]]) == [2.0, 0.5]
    assert seen == {"prompts": ["system: Be brief.\nuser: Hi", "Plain"], "responses": ["Hello!", " there"]}


def test_rloo_rejects_grpo_only_keys() -> None:
    with pytest.raises(RecipeError, match="grpo.scale_rewards applies to algorithm 'grpo', not 'rloo'"):
        validate(GRPORecipe, {"data": {"path": "p"}, "reward": {"judge": "m:f"},
                              "grpo": {"algorithm": "rloo", "scale_rewards": "batch"}})


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_few_steps_run_and_log_the_judge_reward(tiny_llama_dir: Path, tmp_path: Path, algorithm: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say yes.", "Greet me.", "Thank you!", "Hi"]))
    out = tmp_path / algorithm
    recipe = validate(GRPORecipe, {
        "model": {"name_or_path": str(tiny_llama_dir), "method": "full"},
        "data": {"path": str(prompts)},
        "reward": {"judge": "test_ppo_judges:count_e"},
        "generation": {"max_new_tokens": 8},
        "grpo": {"algorithm": algorithm, "num_generations": 4},
        "training": {"output_dir": str(out), "max_steps": 2, "per_device_batch_size": 4, "learning_rate": 1e-3,
                     "logging_steps": 1, "save_steps": None, "report_to": "none"},
    })
    result = run(recipe)
    logged = [m for m in read_metrics(out) if "train/reward" in m]
    assert len(logged) == 2 and all(math.isfinite(m["train/reward"]) for m in logged)
    assert "rewards/count_e/mean" in logged[0]  # TRL names the column after the judge
    assert StageResult.load(out).metrics["train/steps"] == 2 == result.metrics["train/steps"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
