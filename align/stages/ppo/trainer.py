"""The PPO-RLHF loop: rollout, score, KL-penalised rewards, GAE, clipped updates. Orchestration only.

    align ppo recipes/ppo.yaml training.max_steps=20

Each iteration, on every process:

1. take ``ppo.rollouts_per_iteration`` prompts (``rollout.prompt_indices``) and sample one
   response each with ``align.sampling.sample`` (seeded by ``rollout.rollout_seed``; under
   ZeRO-3 the parameters are gathered once per rollout);
2. score the decoded text with ``align.judges.score`` (missing-EOS penalty, clip);
3. with the rollout policy, its value model and the reference: per-token log-probs, values,
   KL; rewards ``-beta * KL_t`` plus the score on the last real token; GAE;
4. ``ppo.epochs`` passes of shuffled minibatches: clipped policy loss + ``vf_coef`` x clipped
   value loss - ``ent_coef`` x entropy, each a token mean over the whole minibatch (so the
   micro-batch size and accumulation steps do not change the update), gradient clipping.
   Micro-batches (here and in 3) hold rows of similar length, cut to the columns they use;
5. update beta (adaptive KL), log, write samples and checkpoints.

The math is in ``align.ops``; this file holds no formula of its own.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch import nn
from transformers import get_scheduler
from trl.models.utils import prepare_deepspeed

from align.config import PPORecipe
from align.data import load_records
from align.judges import Judge, judge_for, score
from align.models import load_policy, load_reference, merge_adapter
from align.ops import ppo as ppo_ops
from align.ops.logprobs import entropy_from_logits, token_logprobs
from align.ops.stats import explained_variance, masked_sum, masked_var, masked_whiten, token_mean
from align.run import StageResult, append_metrics, finish_stage, prepare_run_dir, truncate_jsonl
from align.sampling import Samples, eos_token_ids, response_logits, sample, used_columns
from align.stages.ppo.distributed import is_zero3, make_accelerator, unwrapped_for_generation
from align.stages.ppo.modeling import PolicyAndValue, adapter_disabled, transformer_trunk
from align.stages.ppo.rollout import prompt_indices, rollout_seed
from align.training import report_to

logger = logging.getLogger("align.ppo")

STATE_FILE = "ppo_state.json"
SAMPLES_FILE = "samples.jsonl"


@dataclass
class KLController:
    """beta of the KL penalty: fixed, or adapted toward ``target`` (``ppo_ops.adaptive_kl_coef``)."""

    value: float
    target: float | None
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is not None:
            self.value = ppo_ops.adaptive_kl_coef(self.value, current_kl, self.target, n_steps, self.horizon)


@dataclass
class Experience:
    """One iteration's rollouts on one process, ready for the updates. Tensors are (B, ...) on device.

    sequences, attention_mask: (B, P + T); response_ids, mask, old_logprobs, old_values,
    advantages, returns: (B, T).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def rows(self, idx: torch.Tensor) -> "Experience":
        """Rows ``idx`` without the columns that are padding in all of them (``cut_rows``)."""
        sequences, attention_mask, t = cut_rows(self.sequences, self.attention_mask, self.response_ids.shape[1], idx)
        return Experience(sequences, attention_mask,
                          *(x[idx, :t] for x in (self.response_ids, self.mask, self.old_logprobs, self.old_values,
                                                 self.advantages, self.returns)))


def cut_rows(sequences: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
             idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows ``idx`` of a (B, P + T) batch cut to the columns they use (``used_columns``), and their response length."""
    first, t = used_columns(attention_mask[idx], response_length)
    end = sequences.shape[1] - response_length + t
    return sequences[idx, first:end], attention_mask[idx, first:end], t


def by_length(attention_mask: torch.Tensor) -> torch.Tensor:
    """Row order by real tokens: consecutive rows then share most of their padding, which ``used_columns`` cuts."""
    return torch.argsort(attention_mask.sum(1), stable=True)


class PPOTrainer:
    """Holds the models, optimizer and judge of one run; ``train()`` runs the iterations."""

    def __init__(self, recipe: PPORecipe, judge: Judge | None = None) -> None:
        self.recipe = recipe
        training = recipe.training
        if recipe.model.partial.unfreeze_schedule:
            raise ValueError("model.partial.unfreeze_schedule is not supported by the ppo stage; use trainable_top_k")
        set_seed(training.seed)  # the same initial weights (LoRA, value head) on every process
        self.out = prepare_run_dir(recipe, training.output_dir)

        data = load_records(recipe.data, default_kind="prompt", want="prompt")
        self.prompts: list[Any] = list(data.train["prompt"])
        logger.info("prompts: %d %s", len(self.prompts), data.stats)

        policy, self.tokenizer = load_policy(recipe.model)
        if training.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        reference = load_reference(recipe.model)  # None: the policy with its adapter disabled
        critic = self._load_critic() if recipe.value.model == "separate" else None
        hidden_size = _hidden_size(policy)
        module = PolicyAndValue(policy, hidden_size, critic)
        # Rollout and update must evaluate the same function, or the first ratio is not 1.
        _disable_dropout(module)

        self.accelerator = make_accelerator(
            deepspeed_config=training.deepspeed,
            micro_batch_size=training.per_device_batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            max_grad_norm=training.max_grad_norm,
            bf16=training.bf16,
            hidden_size=hidden_size,
            log_with=report_to(training),
            project_dir=self.out,
        )
        acc = self.accelerator
        optimizer = torch.optim.AdamW(_parameter_groups(module, recipe), lr=training.learning_rate,
                                      weight_decay=training.weight_decay)
        scheduler = _scheduler(recipe, optimizer)
        self.module, self.optimizer, self.scheduler = acc.prepare(module, optimizer, scheduler)
        self.reference = self._prepare_reference(reference)
        self.judge = judge or judge_for(recipe.reward, device=str(acc.device))
        self.kl_ctl = KLController(recipe.ppo.kl_coef, recipe.ppo.target_kl, recipe.ppo.kl_horizon)
        self.eos_token_ids = eos_token_ids(policy, self.tokenizer)
        self.iteration = 0
        if training.resume:
            self._resume()
        # Different samples per process; resume restores the RNG states saved with each checkpoint.
        if not training.resume or self.iteration == 0:
            set_seed(training.seed, device_specific=True)
        if "wandb" in report_to(training):
            acc.init_trackers(training.wandb_project, config=recipe.model_dump(mode="json"))

    # ----------------------------------------------------------------------- set-up helpers

    def _load_critic(self) -> nn.Module:
        cfg = self.recipe.model
        if self.recipe.value.init_from:
            cfg = cfg.model_copy(update={"name_or_path": self.recipe.value.init_from, "gguf_file": None})
        if cfg.method == "prompt_tuning":  # a soft prompt has no trunk weights to train as a critic
            cfg = cfg.model_copy(update={"method": "full"})
        critic_lm, _ = load_policy(cfg)
        return transformer_trunk(critic_lm)

    def _prepare_reference(self, reference: nn.Module | None) -> nn.Module | None:
        if reference is None:
            return None
        if is_zero3(self.accelerator):  # shard the frozen copy too
            return prepare_deepspeed(reference, self.accelerator)
        return reference.to(self.accelerator.device)

    # ----------------------------------------------------------------------- the loop

    def train(self) -> dict[str, float]:
        training = self.recipe.training
        last: dict[str, float] = {}
        while self.iteration < training.max_steps:
            last = self.step()
            self.iteration += 1
            last_one = self.iteration == training.max_steps
            if training.save_steps and (self.iteration % training.save_steps == 0 or last_one):
                self.save_checkpoint()
        self.accelerator.wait_for_everyone()
        return last

    def step(self) -> dict[str, float]:
        """One iteration: rollout, score, experience, updates, beta. Returns its metrics (all processes' mean)."""
        recipe, acc = self.recipe, self.accelerator
        t0 = time.perf_counter()
        stream = (self.iteration, acc.process_index, acc.num_processes, recipe.ppo.rollouts_per_iteration)
        rows = [self.prompts[i] for i in prompt_indices(len(self.prompts), *stream, recipe.training.seed)]
        samples = self.rollout(rows, rollout_seed(*stream, recipe.training.seed))
        t1 = time.perf_counter()
        scores = score(self.judge, rows, samples.texts, samples.finished, recipe.reward)
        t2 = time.perf_counter()
        final = scores.final
        if recipe.ppo.normalize_scores:  # kl_coef then means the same for any judge's scale
            final = (final - final.mean()) / (final.std(unbiased=False) + 1e-8)
        exp, kl, rewards, reference_s = self._experience(samples, final.to(acc.device))
        t3 = time.perf_counter()
        update_stats = self._update(exp)
        t4 = time.perf_counter()

        mask = exp.mask
        kl_per_response = masked_sum(kl, mask, dim=1)  # (B,)
        metrics = {
            "reward/raw": scores.raw.mean(),
            "reward/raw_std": scores.raw.std(unbiased=False),
            "reward/score": scores.final.mean(),
            "reward/normalized": masked_sum(rewards, mask, dim=1).mean(),
            "reward/kl_penalty": -self.kl_ctl.value * kl_per_response.mean(),
            "reward/finished_frac": samples.finished.float().mean(),
            "ppo/kl": kl_per_response.mean(),
            "ppo/explained_var": explained_variance(exp.old_values, exp.returns, mask),
            "ppo/response_length": mask.sum(1).mean(),
            "ppo/advantage_std": masked_var(exp.advantages, mask).sqrt(),
            **update_stats,
        }
        if scores.disagreement is not None:  # rising: the policy is finding what the ensemble disagrees on
            metrics["reward/disagreement"] = scores.disagreement.mean()
        metrics = self._reduce(metrics)
        metrics["ppo/kl_coef"] = self.kl_ctl.value  # the beta these rewards used
        self.kl_ctl.update(metrics["ppo/kl"], recipe.ppo.rollouts_per_iteration * acc.num_processes)
        n_samples = recipe.ppo.rollouts_per_iteration * acc.num_processes
        metrics.update({
            "ppo/lr": self.scheduler.get_last_lr()[0],
            "time/generation": t1 - t0,
            "time/scoring": t2 - t1,
            "time/experience": t3 - t2,  # old log-probs and values, plus the reference:
            "time/reference": reference_s,
            "time/training": t4 - t3,
            "time/iteration": t4 - t0,
            "perf/samples_per_s": n_samples / max(t4 - t0, 1e-9),
        })
        self._log(metrics)
        if (self.iteration + 1) % recipe.ppo.sample_every == 0 or self.iteration == 0:
            self._write_samples(rows, samples, scores.raw, scores.final)
        return metrics

    # ----------------------------------------------------------------------- the parts of a step

    def rollout(self, rows: list[Any], seed: int | None) -> Samples:
        """One response per prompt from the current policy (``align.sampling.sample``), on the accelerator's device."""
        gen = self.recipe.generation
        # Under ZeRO-3 this gathers the parameters once for the whole rollout, not per token.
        with unwrapped_for_generation(self.module, self.accelerator) as unwrapped:
            return sample(unwrapped.policy, self.tokenizer, rows, **gen.sample_kwargs(), seed=seed,
                          eos_ids=self.eos_token_ids)

    @torch.no_grad()
    def _experience(self, samples: Samples, scores: torch.Tensor):  # noqa: ANN202
        ppo, temperature = self.recipe.ppo, self.recipe.generation.temperature
        sequences, attention_mask = samples.sequences, samples.attention_mask  # (B, P + T)
        response_ids, mask, T = samples.response_ids, samples.response_mask, samples.response_ids.shape[1]
        B = response_ids.shape[0]
        old_logprobs, ref_lp, old_values = (torch.zeros(B, T, device=mask.device) for _ in range(3))
        reference_s = 0.0
        micro = self.recipe.training.per_device_batch_size
        order = by_length(attention_mask)  # micro-batches of similar length carry little padding
        for s in range(0, B, micro):
            rows = order[s : s + micro]
            seq, att, t = cut_rows(sequences, attention_mask, T, rows)
            ids = response_ids[rows, :t]
            logits, vals = self.module(seq, att, t, temperature)
            old_logprobs[rows, :t] = token_logprobs(logits, ids).float()
            old_values[rows, :t] = vals.float()
            started = time.perf_counter()
            ref_logits = self._reference_logits(seq, att, t) / temperature
            ref_lp[rows, :t] = token_logprobs(ref_logits, ids).float()
            reference_s += time.perf_counter() - started

        kl = ppo_ops.kl_estimate(old_logprobs, ref_lp, ppo.kl_estimator) * mask  # (B, T)
        rewards = ppo_ops.per_token_rewards(scores, kl, mask, self.kl_ctl.value)
        if ppo.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo_ops.gae_advantages(rewards, old_values, mask, ppo.gamma, ppo.lam)
        if ppo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        exp = Experience(sequences, attention_mask, response_ids, mask, old_logprobs, old_values * mask,
                         advantages, returns)
        return exp, kl, rewards, reference_s

    def _reference_logits(self, seq: torch.Tensor, att: torch.Tensor, T: int) -> torch.Tensor:
        if self.reference is not None:
            return response_logits(self.reference, seq, att, T)[0]
        policy = self.accelerator.unwrap_model(self.module).policy
        with adapter_disabled(policy):
            return response_logits(policy, seq, att, T)[0]

    def _update(self, exp: Experience) -> dict[str, torch.Tensor]:
        """``ppo.epochs`` passes of shuffled minibatches; returns the mean of each loss statistic.

        Every loss is a token mean over the whole minibatch: each micro-batch's token sum is divided
        by the minibatch's token count and multiplied by the accumulation steps (which accelerate,
        or DeepSpeed, divides back out), so 8 x 1 and 1 x 8 give the same gradient.
        """
        ppo, training, acc = self.recipe.ppo, self.recipe.training, self.accelerator
        micro, minibatch = training.per_device_batch_size, self.recipe.minibatch_size
        accumulation = minibatch // micro
        B = exp.response_ids.shape[0]
        sums: dict[str, torch.Tensor] = {}
        minibatches = 0
        self.module.train()
        for _ in range(ppo.epochs):
            order = torch.randperm(B, device=exp.mask.device)
            for mb_start in range(0, B, minibatch):
                rows = order[mb_start : mb_start + minibatch]
                # Micro-batches of similar length (each cut to its own used columns); the minibatch, and so
                # its gradient, is the same whatever rows share a micro-batch.
                rows = rows[by_length(exp.attention_mask[rows])]
                minibatch_tokens = exp.mask[rows].sum()
                for start in range(0, len(rows), micro):
                    with acc.accumulate(self.module):
                        stats = self._micro_step(exp.rows(rows[start : start + micro]), minibatch_tokens,
                                                 accumulation)
                    for key, value in stats.items():  # micro-batch shares add up to the minibatch's token mean
                        sums[key] = sums.get(key, 0.0) + value
                minibatches += 1
        return {key: value / max(minibatches, 1) for key, value in sums.items()}

    def _micro_step(self, exp: Experience, minibatch_tokens: torch.Tensor, accumulation: int) -> dict[str, torch.Tensor]:
        """Forward, losses and backward of one micro-batch (``exp``); the optimizer steps on the minibatch's last."""
        ppo, acc = self.recipe.ppo, self.accelerator
        warming_up = self.iteration < self.recipe.value.warmup_iterations  # the value model alone trains
        logits, values = self.module(exp.sequences, exp.attention_mask, exp.response_ids.shape[1],
                                     self.recipe.generation.temperature, detach_trunk=warming_up)
        mask = exp.mask
        logprobs = token_logprobs(logits, exp.response_ids)
        pg_loss, pg_stats = ppo_ops.policy_loss(logprobs, exp.old_logprobs, exp.advantages, mask, ppo.clip_range,
                                                num_tokens=minibatch_tokens)
        vf_loss, vf_stats = ppo_ops.value_loss(values.float(), exp.old_values, exp.returns, mask,
                                               ppo.clip_range_value, num_tokens=minibatch_tokens)
        # Without a bonus the entropy is only logged: no graph through a (B, T, V) softmax.
        with torch.set_grad_enabled(ppo.ent_coef > 0 and torch.is_grad_enabled()):
            entropy = token_mean(entropy_from_logits(logits.float()), mask, minibatch_tokens)
        loss = ppo.vf_coef * vf_loss if warming_up else pg_loss + ppo.vf_coef * vf_loss - ppo.ent_coef * entropy
        acc.backward(loss * accumulation)  # accelerate divides by the accumulation steps
        if acc.sync_gradients:
            acc.clip_grad_norm_(self.module.parameters(), self.recipe.training.max_grad_norm)
        self.optimizer.step()  # a no-op until the last micro-batch of the minibatch
        if acc.sync_gradients:
            self.scheduler.step()
        self.optimizer.zero_grad()
        return {
            "ppo/loss": loss.detach(),
            "ppo/policy_loss": pg_loss.detach(),
            "ppo/value_loss": vf_loss.detach(),
            "ppo/entropy": entropy.detach(),
            "ppo/clipfrac": pg_stats["clipfrac"],
            "ppo/approx_kl": pg_stats["approx_kl"],
            "ppo/value_clipfrac": vf_stats["clipfrac"],
        }

    # ----------------------------------------------------------------------- logging

    def _reduce(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Mean over processes, as Python floats (NaN stays NaN)."""
        keys = sorted(metrics)
        device = self.accelerator.device
        local = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32, device=device).reshape(()) for k in keys])
        total = self.accelerator.reduce(local, reduction="mean") if self.accelerator.num_processes > 1 else local
        return dict(zip(keys, total.tolist()))

    def _log(self, metrics: dict[str, float]) -> None:
        acc, step = self.accelerator, self.iteration + 1
        if acc.is_main_process:
            append_metrics(self.out, {"step": step, **metrics})
            if step % self.recipe.training.logging_steps == 0 or step == self.recipe.training.max_steps:
                logger.info(
                    "iter %d/%d | reward %.3f | kl %.3f (beta %.3g) | pg %.4f vf %.4f | %.1f s (gen %.1f, score %.1f, "
                    "train %.1f) | %.2f samples/s",
                    step, self.recipe.training.max_steps, metrics["reward/raw"], metrics["ppo/kl"],
                    metrics["ppo/kl_coef"], metrics["ppo/policy_loss"], metrics["ppo/value_loss"],
                    metrics["time/iteration"], metrics["time/generation"], metrics["time/scoring"],
                    metrics["time/training"] + metrics["time/experience"], metrics["perf/samples_per_s"],
                )
        if acc.trackers:
            acc.log({k: v for k, v in metrics.items() if not math.isnan(v)}, step=step)

    def _write_samples(self, rows: list[Any], samples: Samples, raw: torch.Tensor, final: torch.Tensor) -> None:
        if not self.accelerator.is_main_process:
            return
        n = self.recipe.ppo.num_samples
        with (self.out / SAMPLES_FILE).open("a") as fh:
            for row, response, r, f, done in list(zip(rows, samples.texts, raw.tolist(), final.tolist(),
                                                      samples.finished.tolist()))[:n]:
                record = {"iteration": self.iteration + 1, "prompt": row, "response": response, "reward": r,
                          "score": f, "finished": done}
                fh.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        """``checkpoint-N/``: policy, value model, optimizer, scheduler and RNG states (accelerate),
        plus ``ppo_state.json`` (iterations done, KL controller)."""
        acc = self.accelerator
        path = self.out / f"checkpoint-{self.iteration}"
        acc.save_state(str(path))
        if acc.is_main_process:
            state = {"iteration": self.iteration, "kl_controller": asdict(self.kl_ctl)}
            (path / STATE_FILE).write_text(json.dumps(state, indent=2))
            _prune_checkpoints(self.out, self.recipe.training.save_total_limit)
            logger.info("saved %s", path)
        acc.wait_for_everyone()
        return path

    def _resume(self) -> None:
        last = last_checkpoint(self.out)
        if last is None:
            logger.warning("resume: true but no checkpoint in %s; starting from iteration 0", self.out)
            return
        self.accelerator.load_state(str(last))
        state = json.loads((last / STATE_FILE).read_text())
        self.iteration = state["iteration"]
        self.kl_ctl = KLController(**state["kl_controller"])
        if self.accelerator.is_main_process:  # drop what the interrupted run logged after this checkpoint
            truncate_jsonl(self.out / "metrics.jsonl", "step", self.iteration)
            truncate_jsonl(self.out / SAMPLES_FILE, "iteration", self.iteration)
        logger.info("resumed from %s at iteration %d, beta %.4g", last, self.iteration, self.kl_ctl.value)

    def save_final(self) -> None:
        """Policy at the run root (LoRA: ``adapter/`` and the merged model), value model in ``value_model/``."""
        acc = self.accelerator
        state = acc.get_state_dict(self.module)  # gathers ZeRO-3 shards; call on every process
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return
        unwrapped = acc.unwrap_model(self.module)
        policy_state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
        value_state = {k: v for k, v in state.items() if not k.startswith("policy.")}
        if self.recipe.model.method in ("lora", "qlora"):
            unwrapped.policy.save_pretrained(str(self.out / "adapter"), state_dict=policy_state)
            merge_adapter(self.recipe.model, self.out / "adapter", self.out)
        else:
            unwrapped.policy.save_pretrained(str(self.out), state_dict=policy_state)
        self.tokenizer.save_pretrained(str(self.out))
        (self.out / "value_model").mkdir(exist_ok=True)
        value_file = self.out / "value_model" / "model.safetensors"
        save_file({k: v.contiguous() for k, v in value_state.items()}, str(value_file))
        acc.wait_for_everyone()


# --------------------------------------------------------------------------- helpers


def _hidden_size(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


def _disable_dropout(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def _parameter_groups(module: PolicyAndValue, recipe: PPORecipe) -> list[dict[str, Any]]:
    """The policy's trainable parameters at ``training.learning_rate``; the value model's at ``value.learning_rate``."""
    value_ids = {id(p) for p in module.value_parameters()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in value_ids]},
              {"params": [p for p in trainable if id(p) in value_ids]}]
    groups[1]["lr"] = recipe.value.rate(recipe.training.learning_rate)
    return [group for group in groups if group["params"]]


def _scheduler(recipe: PPORecipe, optimizer: torch.optim.Optimizer):  # noqa: ANN202
    training, ppo = recipe.training, recipe.ppo
    total = training.max_steps * ppo.epochs * (ppo.rollouts_per_iteration // recipe.minibatch_size)
    # Stepped once per optimizer step of this process (see make_accelerator), so no world-size factor.
    return get_scheduler(
        training.lr_scheduler, optimizer, num_warmup_steps=int(training.warmup_ratio * total), num_training_steps=total
    )


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_checkpoint(out: Path) -> Path | None:
    """The ``checkpoint-N`` with the largest N that holds a ``ppo_state.json``."""
    found = [(int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := _CHECKPOINT.match(p.name))
             and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def _prune_checkpoints(out: Path, keep: int | None) -> None:
    if keep is None:
        return
    found = sorted((int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := _CHECKPOINT.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def run(recipe: PPORecipe) -> StageResult:
    trainer = PPOTrainer(recipe)
    last = trainer.train()
    trainer.save_final()
    metrics = {k: v for k, v in last.items() if k.startswith(("reward/", "ppo/"))}
    metrics["ppo/iterations"] = trainer.iteration
    result = finish_stage(trainer.out, recipe, metrics, card_title=f"PPO of {recipe.model.name_or_path}")
    trainer.accelerator.end_training()
    return result
