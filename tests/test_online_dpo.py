"""`align online_dpo` on a tiny Llama with a judge that counts the letter e: per-round metrics, the reward
rises over the rounds, and a resumed run starts after its last finished round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.config import OnlineDPORecipe
from align.recipe import validate
from align.run import StageResult, read_metrics
from align.stages.dpo import online

PROMPTS = ["What is the fox?", "Is the dog lazy?", "Say yes.", "Answer politely.", "What is Paris?", "Greet me.",
           "Name a colour.", "Is it great?"]


def count_e(prompts: list[str], responses: list[str]) -> list[float]:
    """Judge: how many times the answer has the letter e (a random tiny model writes bytes; e is learnable)."""
    return [float(r.count("e")) for r in responses]


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in PROMPTS))
    return path


def make_recipe(model_dir: Path, data: Path, out: Path, rounds: int = 3, **training) -> OnlineDPORecipe:  # noqa: ANN003
    return validate(OnlineDPORecipe, {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data)},
        "reward": {"judge": "test_online_dpo:count_e"},
        "generation": {"max_new_tokens": 12, "batch_size": 8},
        "online": {"rounds": rounds, "prompts_per_round": 8, "samples_per_prompt": 4},
        "dpo": {"beta": 0.5},
        "training": {"output_dir": str(out), "max_steps": 8, "per_device_batch_size": 4, "learning_rate": 3e-2,
                     "lr_scheduler": "constant", "logging_steps": 1, "save_steps": None, "max_length": 64,
                     "report_to": "none", **training},
    })


def test_reward_rises_over_rounds(tiny_llama_dir: Path, prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "online"
    online.run(make_recipe(tiny_llama_dir, prompt_file, out))
    rows = [m for m in read_metrics(out) if "online/reward_mean" in m]
    rewards = [m["online/reward_mean"] for m in rows]
    final = StageResult.load(out).metrics["online/final_reward_mean"]
    print("online DPO mean judge reward per round", [round(x, 1) for x in rewards], "final", round(final, 1))
    assert [m["round"] for m in rows] == [1, 2, 3]
    assert all(m["online/pairs"] > 0 for m in rows)
    assert final > rewards[0] + 1.0 and rewards[-1] > rewards[0], (rewards, final)  # at least one more e per answer
    for r in (1, 2, 3):
        assert (out / f"round-{r}" / "pairs.jsonl").is_file() and (out / f"round-{r}" / "policy.safetensors").is_file()
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_resume_starts_after_the_last_round(tiny_llama_dir: Path, prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "online"
    online.run(make_recipe(tiny_llama_dir, prompt_file, out, rounds=1))
    online.run(make_recipe(tiny_llama_dir, prompt_file, out, rounds=2, resume=True))
    assert [m["round"] for m in read_metrics(out) if "online/reward_mean" in m] == [1, 2]
