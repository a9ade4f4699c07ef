"""``align eval``: win rate, reward, KL and length of policies on held-out prompts; report, plots, determinism.

``count_letters`` at the top is the judge the tests name as ``test_eval:count_letters``. The "worse"
policy is the tiny Llama with the LM-head rows of every token holding an ASCII letter zeroed and the
other rows tripled, so it (practically) never writes a letter; the unchanged model writes some.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.config import EvalRecipe
from align.eval.curves import run_curves
from align.ops.logprobs import sequence_log_ratio
from align.ops.stats import win_rate_and_se
from align.stages.eval import run
from align.recipe import RecipeError, validate


def count_letters(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(sum(c.isascii() and c.isalpha() for c in r)) for r in responses]


# --------------------------------------------------------------------------- math


def test_sequence_log_ratio_by_hand() -> None:
    # V = 2. Policy logits [0, 0] -> log p = log 0.5 for both tokens; reference [log 3, 0] -> q = [0.75, 0.25].
    policy = torch.zeros(1, 3, 2)
    reference = torch.tensor([[[math.log(3.0), 0.0]] * 3])
    targets = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[1, 1, 0]])  # the last position is padding
    # log(0.5/0.75) + log(0.5/0.25) = log(2/3) + log(2) = log(4/3)
    torch.testing.assert_close(sequence_log_ratio(policy, reference, targets, mask), torch.tensor([math.log(4 / 3)]))


def test_win_rate_counts_ties_half_with_standard_error() -> None:
    rate, se = win_rate_and_se(torch.tensor([2.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 3.0]))
    # outcomes [1, 0.5, 0]: mean 0.5, population std sqrt(1/6), se sqrt(1/6)/sqrt(3)
    assert rate == 0.5 and se == pytest.approx(math.sqrt(1 / 6) / math.sqrt(3))
    with pytest.raises(ValueError, match="equal, non-empty"):
        win_rate_and_se(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))
    # The same text scored in two differently padded batches may differ in the last bits: still a tie.
    rate, _ = win_rate_and_se(torch.tensor([1.0 + 1e-6, 2.0]), torch.tensor([1.0, 1.0]), torch.tensor([True, False]))
    assert rate == pytest.approx(0.75)  # outcomes [0.5, 1]


# --------------------------------------------------------------------------- curves


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n")


def test_curves_pick_what_each_stage_logs(tmp_path: Path) -> None:
    _jsonl(tmp_path / "ppo" / "metrics.jsonl", [{"step": s, "reward/raw": 0.1 * s, "ppo/kl": 0.01 * s} for s in (1, 2, 3)])
    _jsonl(tmp_path / "dpo" / "metrics.jsonl", [{"step": 5, "train/loss": 0.7, "rewards/margins": 0.2},
                                                {"step": 10, "eval/loss": 0.6}])
    ppo, dpo = run_curves(tmp_path / "ppo"), run_curves(tmp_path / "dpo" / "adapter")  # an adapter dir's parent run
    assert (ppo.reward.key, ppo.reward.steps, ppo.kl.key) == ("reward/raw", [1.0, 2.0, 3.0], "ppo/kl")
    assert (dpo.reward.key, dpo.reward.values, dpo.kl) == ("rewards/margins", [0.2], None)
    assert run_curves(tmp_path / "nothing") is None


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def models(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_models")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    worse = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    special = set(tokenizer.all_special_ids)
    with torch.no_grad():
        weight = worse.lm_head.weight  # (V, d)
        letters = torch.tensor([i not in special and count_letters([], [tokenizer.decode([i])])[0] > 0
                                for i in range(weight.size(0))])
        weight[~letters] *= 3.0  # sharper elsewhere, so a logit of 0 is never sampled
        weight[letters] = 0.0
    worse.save_pretrained(root / "worse")
    tokenizer.save_pretrained(root / "worse")
    # The "PPO run" of the better policy: a copy of the tiny model with a metrics.jsonl beside it.
    better = root / "ppo_run"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(better)
    tokenizer.save_pretrained(better)
    _jsonl(better / "metrics.jsonl", [{"step": s, "reward/raw": 0.5 * s, "ppo/kl": 0.1 * s} for s in range(1, 5)])
    _jsonl(root / "dpo_run" / "metrics.jsonl", [{"step": s, "rewards/margins": 0.3 * s} for s in range(1, 4)])
    prompts = root / "prompts.jsonl"
    questions = ["What is 2+2?", "Name a colour.", "Say hello.", "Is the sky blue?", "Count to 3.", "Thank you!"]
    prompts.write_text("".join(json.dumps({"prompt": f"{q} ({i})"}) + "\n" for i in range(6) for q in questions))
    return {"base": tiny_llama_dir, "worse": root / "worse", "better": better, "dpo_run": root / "dpo_run",
            "prompts": prompts}


def _recipe(models: dict[str, Path], out: Path, num_prompts: int = 32) -> EvalRecipe:
    return validate(EvalRecipe, {
        "policies": [{"name": "better", "model": {"name_or_path": str(models["better"])}},
                     {"name": "worse", "model": {"name_or_path": str(models["worse"])}}],
        "reference": {"name_or_path": str(models["base"])},
        "baseline": {"name_or_path": str(models["worse"])},
        "reward": {"judge": "test_eval:count_letters"},
        "data": {"path": str(models["prompts"]), "kind": "prompt"},
        "generation": {"num_prompts": num_prompts, "max_new_tokens": 12, "batch_size": 16},
        "report": {"num_samples": 2, "runs": [str(models["dpo_run"])]},
        "training": {"output_dir": str(out), "seed": 3},
    })


@pytest.fixture(scope="module")
def evaluated(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    return run(_recipe(models, tmp_path_factory.mktemp("eval")))


def test_win_rates_against_itself_and_a_worse_policy(evaluated) -> None:  # noqa: ANN001
    m = evaluated.metrics
    # Against itself: the same seed gives the same responses, all ties: exactly one half.
    assert m["eval/worse/win_rate"] == 0.5
    # The unchanged model writes letters, the worse one none: clearly above a half (32 prompts, se <= 0.09).
    assert m["eval/better/win_rate"] >= 0.8 and m["eval/better/win_rate_se"] < 0.1
    assert m["eval/better/reward"] > m["eval/baseline/reward"] == m["eval/worse/reward"]


def test_kl_length_and_outputs(evaluated) -> None:  # noqa: ANN001
    m, out = evaluated.metrics, Path(evaluated.output_dir)
    assert abs(m["eval/better/kl"]) < 1e-4 and abs(m["eval/better/kl_full_vocab"]) < 1e-4  # same weights as the reference
    assert m["eval/worse/kl_full_vocab"] > 1.0 and m["eval/worse/kl"] == m["eval/baseline/kl"]
    assert 1 <= m["eval/better/response_tokens"] <= 12 and m["eval/num_prompts"] == 32
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and set(rows[0]["responses"]) == {"baseline", "better", "worse"}
    assert (out / "reward_vs_kl.png").stat().st_size > 1000 and (out / "training_curves.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| better | " in report and "reward/raw" in report and "rewards/margins" in report
    assert report.count("### ") == 2  # report.num_samples sample tables
    assert report.count("greedy response |") == 2
    from align.eval.responses import markdown_cell
    from align.sampling import sample

    shown = [json.loads(line)["prompt"] for line in (out / "samples.jsonl").read_text().splitlines()[:2]]
    model = AutoModelForCausalLM.from_pretrained(m_dir := evaluated_dirs(out)["better"])
    greedy = sample(model, AutoTokenizer.from_pretrained(m_dir), shown, max_new_tokens=12, temperature=0.0).texts
    assert all(f"{markdown_cell(text) or '(empty)'} |" in report for text in greedy)


def evaluated_dirs(out: Path) -> dict[str, str]:
    """Each evaluated policy's model directory, read back from the run's resolved recipe."""
    import yaml

    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    return {policy["name"]: policy["model"]["name_or_path"] for policy in recipe["policies"]}


def test_same_seed_same_report(models: dict[str, Path], evaluated, tmp_path: Path) -> None:  # noqa: ANN001
    again = run(_recipe(models, tmp_path / "again"))
    assert again.metrics.keys() == evaluated.metrics.keys()
    assert again.metrics == pytest.approx(evaluated.metrics, rel=1e-5, abs=1e-6)  # no bit-identical kernels assumed
    first = [json.loads(line) for line in (Path(evaluated.output_dir) / "samples.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (tmp_path / "again" / "samples.jsonl").read_text().splitlines()]
    texts = [[r["text"] for r in row["responses"].values()] for row in first]
    assert texts == [[r["text"] for r in row["responses"].values()] for row in second]


def test_recipe_errors_name_the_key(models: dict[str, Path]) -> None:
    data = {"policies": [str(models["better"]), str(models["better"])], "reference": {"name_or_path": "x"},
            "data": {"path": "p.jsonl"}}
    with pytest.raises(RecipeError, match="policies\\[1\\] and policies\\[0\\] are both labelled 'ppo_run'"):
        validate(EvalRecipe, data)
    with pytest.raises(RecipeError, match="generation.num_promts: unknown key; did you mean 'num_prompts'"):
        validate(EvalRecipe, {**data, "policies": [str(models["better"])], "generation": {"num_promts": 3}})


def test_shipped_recipe_loads() -> None:
    from align.recipe import load_recipe

    recipe = load_recipe(EvalRecipe, Path(__file__).parents[1] / "recipes" / "eval.yaml")
    assert [p.label for p in recipe.policies] == ["dpo", "ppo"] and recipe.reward.judge == "runs/reward"


def test_best_of_n_beats_its_model_with_the_analytic_kl(models: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(models, tmp_path / "bon").model_dump()
    recipe["policies"] = [{"name": "best_of_4", "model": {"name_or_path": str(models["better"])}, "best_of": 4,
                           "selector": {"judge": "test_eval:count_letters"}}]
    recipe["baseline"] = {"name_or_path": str(models["better"])}
    recipe["report"]["runs"] = []
    m = run(validate(EvalRecipe, recipe)).metrics
    assert m["eval/best_of_4/reward"] > m["eval/baseline/reward"]
    assert m["eval/best_of_4/win_rate"] > 0.6
    assert m["eval/best_of_4/kl"] == pytest.approx(math.log(4) - 3 / 4)  # 0.636 nats
    with pytest.raises(RecipeError, match="best_of=4 needs a selector"):
        validate(EvalRecipe, {**recipe, "policies": [{"model": {"name_or_path": "m"}, "best_of": 4}]})


def count_vowels(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(sum(c in "aeiou" for c in r)) for r in responses]


def test_an_ensemble_judge_reports_its_disagreement(models: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(models, tmp_path / "ens", num_prompts=8).model_dump()
    recipe["reward"] = {"judge": ["test_eval:count_letters", "test_eval:count_vowels"]}
    recipe["report"]["runs"] = []
    result = run(validate(EvalRecipe, recipe))
    assert result.metrics["eval/better/disagreement"] > 0
    report = (tmp_path / "ens" / "report.md").read_text()
    assert "(ensemble of 2)" in report and "Ensemble disagreement" in report
