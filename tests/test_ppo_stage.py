"""PPO stage on the tiny Llama: reward goes up with KL bounded (full and LoRA), resume, critic, outputs.

The judge counts the letter 'e' in the response text (``test_ppo_judges:count_e``): the
random tiny model emits it now and then, and a high learning rate teaches it fast. Each run
is a few seconds with one torch thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from align.config import PPORecipe
from align.recipe import RecipeError, validate
from align.run import StageResult
from align.stages.ppo import run
from align.stages.ppo.trainer import STATE_FILE, PPOTrainer
from align.run import read_metrics

PROMPTS = [
    "Say yes.", "Greet me.", "What is 2 + 3?", "Name a colour.", "Is the dog lazy?", "Answer briefly.",
    "Thank you!", "What is the capital of France?",
]
LOGGED = [
    "reward/raw", "reward/normalized", "reward/score", "reward/kl_penalty", "ppo/kl", "ppo/kl_coef", "ppo/entropy",
    "ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl", "ppo/explained_var",
    "ppo/response_length", "time/generation", "time/scoring", "time/training", "perf/samples_per_s",
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two shared cores: one thread per process is ~5x faster here than torch's default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


@pytest.fixture
def chat_prompts_file(tmp_path: Path) -> Path:
    """The same prompts as chat messages with a system turn."""
    path = tmp_path / "chat_prompts.jsonl"
    rows = [{"prompt": [{"role": "system", "content": "Be polite."}, {"role": "user", "content": p}]} for p in PROMPTS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_recipe(model_dir: Path, prompts: Path, out: Path, **sections: dict[str, Any]) -> PPORecipe:
    data: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir), "method": "full"},
        "data": {"path": str(prompts)},
        "reward": {"judge": "test_ppo_judges:count_e"},
        "generation": {"max_new_tokens": 16, "batch_size": 16},
        "ppo": {"rollouts_per_iteration": 32, "epochs": 4, "kl_coef": 0.05},
        "training": {"output_dir": str(out), "max_steps": 15, "per_device_batch_size": 16, "learning_rate": 1e-3,
                     "report_to": "none", "save_steps": None},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return validate(PPORecipe, data)


def curve(out: Path, key: str) -> list[float]:
    return [m[key] for m in read_metrics(out)]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_reward_rises_with_bounded_kl_full(tiny_llama_dir: Path, prompts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    result = run(make_recipe(tiny_llama_dir, prompts_file, out))
    rewards, kls = curve(out, "reward/raw"), curve(out, "ppo/kl")
    assert len(rewards) == 15
    assert mean(rewards[-3:]) > mean(rewards[:3]) + 0.8, rewards  # ~0.8 -> ~2.6 'e' per response
    assert max(kls) < 15.0, kls  # nats per 16-token response (~10 at the end here)
    metrics = read_metrics(out)[-1]
    assert set(LOGGED) <= set(metrics) and metrics["step"] == 15
    assert all(math.isfinite(metrics[k]) for k in LOGGED if k != "ppo/explained_var")
    # outputs: a loadable policy, the value head, samples, the stage result
    assert StageResult.load(out).metrics["ppo/iterations"] == 15 == result.metrics["ppo/iterations"]
    policy = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(policy(torch.tensor([[1, 2, 3]])).logits).all()
    assert (out / "value_model" / "model.safetensors").is_file() and (out / "README.md").is_file()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["iteration"] for s in samples} == {1, 10}  # the first iteration and every sample_every (10)
    assert set(samples[0]) >= {"prompt", "response", "reward"}


def test_reward_rises_with_lora_and_only_the_adapter_trains(tiny_llama_dir: Path, prompts_file: Path,
                                                            tmp_path: Path) -> None:
    # LoRA on the head too: on a random tiny model the head is the quickest lever on the output.
    recipe = make_recipe(
        tiny_llama_dir, prompts_file, tmp_path / "lora",
        model={"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                          "target_modules": ["q_proj", "v_proj", "lm_head"]}},
        training={"learning_rate": 1.5e-3, "max_steps": 12},
    )
    trainer = PPOTrainer(recipe)
    policy = trainer.accelerator.unwrap_model(trainer.module).policy
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    trainer.train()
    rewards, kls = curve(trainer.out, "reward/raw"), curve(trainer.out, "ppo/kl")
    assert mean(rewards[-3:]) > mean(rewards[:3]) + 0.8, rewards  # ~0.9 -> ~2.6
    assert max(kls) < 12.0, kls  # ~5 at the end here
    for name, param in policy.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"{name} is frozen but changed"
    trainer.save_final()
    assert (trainer.out / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(trainer.out)  # the merged model at the run root
    assert not torch.equal(merged.lm_head.weight, before["base_model.model.lm_head.base_layer.weight"])


def test_resume_continues_iterations_rng_and_kl_controller(tiny_llama_dir: Path, prompts_file: Path,
                                                           tmp_path: Path) -> None:
    # A tiny target KL makes beta move every iteration, so a lost controller state would show.
    adaptive = {"kl_coef": 0.05, "target_kl": 0.01, "kl_horizon": 100, "epochs": 2, "rollouts_per_iteration": 16}
    short = {"max_steps": 3, "save_steps": 3}
    first = make_recipe(tiny_llama_dir, prompts_file, tmp_path / "a", ppo=adaptive, training=short)
    run(first)
    state = json.loads((tmp_path / "a" / "checkpoint-3" / STATE_FILE).read_text())
    assert state["iteration"] == 3 and state["kl_controller"]["value"] > 0.05

    resumed = make_recipe(tiny_llama_dir, prompts_file, tmp_path / "a", ppo=adaptive,
                          training={"max_steps": 5, "resume": True, "save_steps": None})
    result = run(resumed)
    assert result.metrics["ppo/iterations"] == 5
    metrics = read_metrics(tmp_path / "a")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[3]["ppo/kl_coef"] == pytest.approx(state["kl_controller"]["value"])  # beta picked up, not reset

    straight = make_recipe(tiny_llama_dir, prompts_file, tmp_path / "b", ppo=adaptive,
                           training={"max_steps": 5, "save_steps": None})
    run(straight)
    reference = read_metrics(tmp_path / "b")
    for key in ("reward/raw", "ppo/kl_coef", "ppo/kl", "ppo/policy_loss"):  # same samples, same updates
        assert [m[key] for m in metrics] == pytest.approx([m[key] for m in reference], rel=1e-4, abs=1e-6), key


def test_separate_critic_with_a_reward_model_judge_on_chat_prompts(
    tiny_llama_dir: Path, tiny_bert_dir: Path, chat_prompts_file: Path, tmp_path: Path
) -> None:
    from reward_models import RewardModel

    torch.manual_seed(0)
    RewardModel.from_encoder(tiny_bert_dir, pooling="mean", max_length=64).save_pretrained(tmp_path / "rm")
    out = tmp_path / "critic"
    recipe = make_recipe(
        tiny_llama_dir, chat_prompts_file, out,
        reward={"judge": str(tmp_path / "rm"), "missing_eos_penalty": 1.0, "batch_size": 4},
        value={"model": "separate"},
        ppo={"kl_estimator": "k3", "rollouts_per_iteration": 8, "epochs": 1},
        generation={"max_new_tokens": 8},
        training={"max_steps": 2, "per_device_batch_size": 4},
    )
    run(recipe)
    metrics = read_metrics(out)
    assert len(metrics) == 2 and all(m["ppo/kl"] >= 0 for m in metrics)  # k3 is never negative
    for m in metrics:  # the penalty hits exactly the unfinished responses
        penalty = 1.0 * (1 - m["reward/finished_frac"])
        assert m["reward/score"] == pytest.approx(m["reward/raw"] - penalty, abs=1e-5)
    from safetensors.torch import load_file

    saved = load_file(out / "value_model" / "model.safetensors")
    assert any(k.startswith("critic.layers.") for k in saved) and "value_head.summary.weight" in saved


def test_minibatch_must_divide_the_rollouts(tiny_llama_dir: Path, prompts_file: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"rollouts_per_iteration=12 must be a multiple .* = 16"):
        make_recipe(tiny_llama_dir, prompts_file, tmp_path, ppo={"rollouts_per_iteration": 12})


def test_left_padded_rollout_scores_tokens_as_each_prompt_alone(tiny_llama_dir: Path) -> None:
    """Position ids skip the left padding: a padded batch gives each response the log-probs it has unpadded."""
    from transformers import AutoTokenizer

    from align.ops.logprobs import token_logprobs
    from align.sampling import sample
    from align.stages.ppo.modeling import PolicyAndValue

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    prompts = ["Hi", "What is the capital of France? Answer politely and briefly, please."]
    gen = sample(model, tokenizer, prompts, max_new_tokens=10, temperature=0.7, batch_size=2, seed=0)
    assert gen.query_mask[0, 0] == 0 and gen.query_mask[1].all()  # the short prompt is left-padded
    mask = gen.response_mask
    with torch.no_grad():
        logits, values = PolicyAndValue(model, 32)(gen.sequences, gen.attention_mask, gen.response_ids.shape[1],
                                                   temperature=0.7)
        batched = token_logprobs(logits, gen.response_ids)
        for i, prompt in enumerate(prompts):
            n = int(mask[i].sum())
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            alone = torch.cat([tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids,
                               gen.response_ids[i : i + 1, :n]], 1)
            expected = token_logprobs(model(alone).logits[:, -(n + 1) : -1] / 0.7, gen.response_ids[i : i + 1, :n])
            torch.testing.assert_close(batched[i : i + 1, :n], expected, atol=1e-5, rtol=1e-5)
    assert values.shape == gen.response_ids.shape and torch.equal(values, torch.zeros_like(values))  # zero-init head


def _minibatch_gradient(tiny_llama_dir: Path, prompts_file: Path, out: Path, micro: int, exp) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The gradient of one PPO minibatch of 8 sequences, split into micro-batches of ``micro``."""
    recipe = make_recipe(tiny_llama_dir, prompts_file, out, ppo={"rollouts_per_iteration": 8, "epochs": 1},
                         training={"per_device_batch_size": micro, "gradient_accumulation_steps": 8 // micro,
                                   "max_grad_norm": 1e9})
    trainer = PPOTrainer(recipe, judge=lambda prompts, responses: torch.zeros(len(responses)))
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def capture(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if trainer.accelerator.sync_gradients:  # the minibatch's last micro-batch: the whole gradient is in
            grads.update({n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = capture
    torch.manual_seed(0)  # the same minibatch order
    trainer._update(exp)
    return grads


def test_gradient_accumulation_does_not_change_the_update(tiny_llama_dir: Path, prompts_file: Path,
                                                          tmp_path: Path) -> None:
    """8 x 1, 4 x 2 and 1 x 8 give one gradient: losses are token means over the whole minibatch."""
    from align.stages.ppo.trainer import Experience

    generator = torch.Generator().manual_seed(1)
    P, T, vocab = 5, 6, 64
    lengths = torch.tensor([1, 6, 2, 6, 3, 5, 1, 4])  # very unequal: a per-micro-batch mean would weigh tokens unevenly
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()  # (8, T)
    response_ids = torch.randint(4, vocab, (8, T), generator=generator)
    exp = Experience(
        sequences=torch.cat([torch.randint(4, vocab, (8, P), generator=generator), response_ids], 1),
        attention_mask=torch.cat([torch.ones(8, P, dtype=torch.long), mask.long()], 1),
        response_ids=response_ids, mask=mask,
        old_logprobs=-torch.rand(8, T, generator=generator) * 4 * mask,
        old_values=torch.randn(8, T, generator=generator) * mask,
        advantages=torch.randn(8, T, generator=generator) * mask,
        returns=torch.randn(8, T, generator=generator) * mask,
    )
    grads = {micro: _minibatch_gradient(tiny_llama_dir, prompts_file, tmp_path / str(micro), micro, exp)
             for micro in (8, 4, 1)}
    assert grads[8] and grads[8].keys() == grads[4].keys() == grads[1].keys()
    for name, expected in grads[8].items():
        for micro in (4, 1):
            torch.testing.assert_close(grads[micro][name], expected, rtol=1e-4, atol=1e-6, msg=f"{name}, micro {micro}")


def test_value_warmup_trains_only_the_value_head_at_its_own_rate(tiny_llama_dir: Path, prompts_file: Path,
                                                                 tmp_path: Path) -> None:
    recipe = make_recipe(tiny_llama_dir, prompts_file, tmp_path / "warm", value={"learning_rate": 5e-3,
                         "warmup_iterations": 1}, ppo={"rollouts_per_iteration": 16, "epochs": 1,
                         "normalize_scores": True}, training={"max_steps": 1})
    trainer = PPOTrainer(recipe)
    lrs = sorted(group["lr"] for group in trainer.optimizer.param_groups)
    assert lrs == pytest.approx([1e-3, 5e-3])  # the policy's rate, the value head's own
    module = trainer.accelerator.unwrap_model(trainer.module)
    policy_before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    head_before = module.value_head.summary.weight.detach().clone()
    metrics = trainer.step()
    assert all(torch.equal(p, policy_before[n]) for n, p in module.policy.named_parameters())  # not even the trunk
    assert not torch.equal(module.value_head.summary.weight, head_before)
    assert math.isfinite(metrics["ppo/value_loss"])
    trainer.iteration = 1  # warm-up over: the policy trains
    trainer.step()
    assert any(not torch.equal(p, policy_before[n]) for n, p in module.policy.named_parameters())


def test_an_ensemble_judge_logs_its_disagreement(tiny_llama_dir: Path, prompts_file: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tiny_llama_dir, prompts_file, tmp_path / "ensemble",
                         reward={"judge": ["test_ppo_judges:count_e", "test_ppo_judges:count_a"]},
                         ppo={"rollouts_per_iteration": 16, "epochs": 1}, training={"max_steps": 1})
    metrics = PPOTrainer(recipe).step()
    assert metrics["reward/disagreement"] > 0  # 'e' and 'a' counts differ on some of 16 random responses
    assert read_metrics(tmp_path / "ensemble")[-1]["reward/disagreement"] == pytest.approx(metrics["reward/disagreement"])


def test_a_value_head_defaults_to_its_own_rate_and_a_separate_critic_to_the_policys() -> None:
    from align.config import ValueSettings

    assert ValueSettings().rate(1e-5) == pytest.approx(1e-3)  # zero-initialised head: learns nothing at 1e-5
    assert ValueSettings(model="separate").rate(1e-5) == pytest.approx(1e-5)  # a whole trunk: the policy's rate
    assert ValueSettings(learning_rate=3e-4).rate(1e-5) == pytest.approx(3e-4)
