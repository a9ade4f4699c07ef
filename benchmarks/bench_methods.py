"""One measured number per method on the demo models: does each of the eight methods do what it says?

    python benchmarks/bench_methods.py --out runs/bench-methods --threads 1
    python benchmarks/bench_methods.py --out runs/bench-methods --methods distill,preference   # run some again

Models: SmolLM2-135M-Instruct (``smollm2-135m-instruct``) for policies, MiniLM-L6 (``minilm-l6``) for
reward models. Data: what ``benchmarks/bench_alignment.py`` wrote under ``--data`` (SmolLM2's own
answers, labelled by the programmatic gold judge ``benchmarks/gold.py``): ``gold_pairs.jsonl`` to
train on, ``fresh_pairs.jsonl`` (held-out prompts on unseen topics, clearly different answers) to
measure on (160 of them, drawn once), and its 1000-label reward model (``--judge``) as the judge; all
copied once into ``--out/inputs/``, so a later run of that benchmark does not change these. Methods:

1. ``pretrain``: ``align pretrain`` on the shipped beekeeping text: held-out domain and general perplexity;
2. ``distill``: ``align distill``, teacher SmolLM2, student SmolLM2 with every third layer dropped,
   modes token / on_policy / sequence: KL(teacher || student) per token on held-out rows;
3. ``adversarial``: reward model with ``training.adversarial`` (FGM) vs the same without: accuracy on
   fresh pairs, clean and under a PGD perturbation of the input embeddings;
4. ``augment``: ``align augment`` (synonyms, word dropout): rows and words edited per kind, and a reward
   model on the augmented pairs vs the plain one on noisy (synonym + dropout) fresh pairs;
5. ``feature_extraction``: frozen encoder + head on cached features vs full fine-tuning: accuracy, s/epoch;
6. ``preference``: KTO, SimPO, ORPO (LoRA, a few steps): held-out preference accuracy of each method's
   own implicit reward on the fresh pairs, before and after;
7. ``online_dpo``: rounds of sample -> judge -> DPO: the judge's mean reward per round;
8. ``best_of_n``: ``align rejection_sampling`` (best vs mean judge score) and best-of-N as an
   ``align eval`` baseline (gold win rate against the start model).

Each method writes under ``--out/<method>/`` and its summary ``stage_result.json`` last; a method whose
summary exists is skipped, ``--methods`` picks methods and runs them even if done. A stage run that
finished with the same resolved recipe is reused, seconds included, unless ``--redo``. ``report`` writes
``--out/methods.md`` and ``benchmarks/results/methods.md``: one table, method | setting | metric | before |
after | seconds. Sized for about half an hour on one CPU thread.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkout import ROOT  # noqa: F401 - offline env and the checkout on sys.path, before align is imported

import torch
import yaml
from torch import nn

from align.augment.edits import synonym_swap, word_dropout
from align.config import (AugmentRecipe, DistillRecipe, DPORecipe, EvalRecipe, KTORecipe, ModelConfig, OnlineDPORecipe,
                          PretrainRecipe, RejectionSamplingRecipe, RewardRecipe)
from align.models import load_policy, resolve_model_source
from align.ops.dpo import log_odds
from align.ops.logprobs import token_logprobs
from align.ops.stats import win_rate_and_se
from align.recipe import validate
from align.run import StageResult, read_metrics, setup_logging
from align.sampling import eos_token_ids
from align.stages.distill import PromptCompletionCollator
from reward_models import RewardScorer

START = "smollm2-135m-instruct"
ENCODER = "minilm-l6"
GOLD = "benchmarks.gold:gold"
METHODS = ("pretrain", "distill", "adversarial", "augment", "feature_extraction", "preference", "online_dpo",
           "best_of_n")
RESULTS = ROOT / "benchmarks" / "results" / "methods.md"
logger = logging.getLogger("bench.methods")

Row = dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    parser.add_argument("--data", type=Path, default=Path("runs/bench-alignment/data"),
                        help="gold_pairs.jsonl, fresh_pairs.jsonl, train/held_out_prompts.jsonl (bench_alignment.py)")
    parser.add_argument("--judge", default="runs/bench-alignment/rm/full-1000", help="reward-model dir judging samples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="", help="comma-separated methods to run (even if done): " + ",".join(METHODS))
    parser.add_argument("--redo", action="store_true", help="retrain every stage run of those methods, not only the "
                        "unfinished ones (after changing a setting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging()
    chosen = [m for m in args.methods.split(",") if m] or list(METHODS)
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    for name in ("gold_pairs.jsonl", "fresh_pairs.jsonl", "train_prompts.jsonl", "held_out_prompts.jsonl"):
        if not (args.out / "inputs/sources.json").is_file() and not (args.data / name).is_file():
            parser.error(f"{args.data / name} is missing: run benchmarks/bench_alignment.py --steps candidates,labels first")
    bench = Bench(args.out, args.data, args.judge, force=args.redo)
    for method in chosen:
        summary = args.out / method
        if StageResult.load(summary) is not None and not args.methods:
            logger.info("%s: done (%s), skipped", method, summary / "stage_result.json")
            continue
        logger.info("=== %s", method)
        rows = getattr(bench, method)()
        summary.mkdir(parents=True, exist_ok=True)
        StageResult(summary, {"rows": rows}).save()
    report(args.out)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def row(method: str, setting: str, metric: str, before: Any, after: Any, seconds: float) -> Row:
    return {"method": method, "setting": setting, "metric": metric, "before": before, "after": after,
            "seconds": round(seconds, 1)}


# --------------------------------------------------------------------------- the methods


class Bench:
    """One method per public method; each returns its table rows. Stage runs are timed and reused when finished."""

    def __init__(self, out: Path, data: Path, judge: str, force: bool) -> None:
        self.out, self.force = out, force
        self.data = snapshot(out / "inputs", data, judge)
        self.judge = str(self.data / "judge")
        self.ran: set[Path] = set()  # runs made by this process: a forced run shared by two methods runs once
        (out / "data").mkdir(parents=True, exist_ok=True)

    def stage(self, run: Callable[[Any], StageResult], schema: type, recipe: dict[str, Any]) -> tuple[StageResult, float]:
        """Run ``recipe``; the result and the run's wall-clock seconds.

        A finished run of the same resolved recipe is reused, unless forced (once per process).
        """
        out = Path(recipe["training"]["output_dir"])
        timer = out / "bench_seconds.json"
        resolved = validate(schema, recipe)
        saved = yaml.safe_load((out / "recipe.yaml").read_text()) if (out / "recipe.yaml").is_file() else None
        result = StageResult.load(out)
        if (result is None or not timer.is_file() or saved != resolved.model_dump(mode="json")
                or (self.force and out not in self.ran)):
            start = time.perf_counter()
            result = run(resolved)
            timer.write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
            self.ran.add(out)
        return result, json.loads(timer.read_text())["seconds"]

    def training(self, out: Path, **overrides: Any) -> dict[str, Any]:
        return {"output_dir": str(out), "save_steps": None, "report_to": "none", "logging_steps": 2, **overrides}

    # ----------------------------------------------------------------- 1. continued pretraining

    def pretrain(self) -> list[Row]:
        from align.stages.pretrain import run

        steps = 10
        result, seconds = self.stage(run, PretrainRecipe, {
            "model": {"name_or_path": START, "method": "full"},
            "data": {"path": str(ROOT / "examples/data/domain_demo"), "eval_fraction": 0.25, "seed": 42},
            "pretrain": {"general_eval": {"path": str(ROOT / "examples/data/general_text_demo.jsonl")}},
            "training": self.training(self.out / "pretrain/run", max_steps=steps, per_device_batch_size=2,
                                      learning_rate=5e-5, warmup_ratio=0.1, max_length=256)})
        m, logged = result.metrics, read_metrics(result.output_dir)
        tokens = max(r.get("train/num_input_tokens_seen", 0) for r in logged) / steps
        setting = f"SmolLM2 full, {steps} steps, each one pass over 6 short beekeeping documents ({tokens:.0f} tokens)"
        return [row("continued pretraining", setting, "held-out domain perplexity", m["eval/domain_perplexity_before"],
                    m["eval/domain_perplexity_after"], seconds),
                row("continued pretraining", setting, "general-text perplexity", m["eval/general_perplexity_before"],
                    m["eval/general_perplexity_after"], seconds)]

    # ----------------------------------------------------------------- 2. distillation

    def distill(self) -> list[Row]:
        from align.stages.distill import run

        student = build_student(self.out / "distill/student-init", drop_every=3)
        steps, eval_prompts = 8, 8
        pairs = read_jsonl(self.data / "gold_pairs.jsonl")
        train = write_jsonl(self.out / "data/distill_train.jsonl", [
            {"prompt": p["prompt"], "completion": p["chosen"]} for p in distinct_prompts(pairs, 4 * steps)])
        held_out = write_jsonl(self.out / "data/distill_eval.jsonl", [
            {"prompt": p["prompt"], "completion": p["chosen"]}
            for p in distinct_prompts(read_jsonl(self.data / "eval_pairs.jsonl"), eval_prompts)])
        rows = []
        token_student = self.out / "distill/token"
        runs = [("token", "token", student), ("on_policy", "on_policy", student), ("sequence", "sequence", student),
                ("token_then_on_policy", "on_policy", token_student)]  # GKD's practice: supervised first
        for name, mode, start in runs:
            result, seconds = self.stage(run, DistillRecipe, {
                "model": {"name_or_path": str(start), "method": "full"},
                "data": {"path": str(train), "eval_path": str(held_out)},
                "distill": {"teacher": {"name_or_path": START}, "mode": mode,
                            "generation": {"max_new_tokens": 32, "temperature": 1.0, "batch_size": 8}},
                "training": self.training(self.out / f"distill/{name}", max_steps=steps, per_device_batch_size=4,
                                          learning_rate=1e-4, warmup_ratio=0.1, max_length=160)})
            m = result.metrics
            on = "data answers" if mode == "token" else "teacher's answers"
            setting = f"{mode}: SmolLM2 -> its 20 of 30 layers, {steps} steps of 4"
            if name == "token_then_on_policy":
                setting = f"on_policy from the token run's student, {steps} more steps"
            if mode == "on_policy":
                losses = [r["train/loss"] for r in read_metrics(result.output_dir) if "train/loss" in r]
                setting += f"; its loss, reverse KL on its own samples: {losses[0]:.2f} -> {losses[-1]:.2f}"
            rows.append(row("distillation", setting, f"KL(teacher ‖ student) per token, {eval_prompts} held-out prompts ({on})",
                            m["eval/kl_teacher_student_before"], m["eval/kl_teacher_student_after"], seconds))
        return rows

    # ----------------------------------------------------------------- 3. adversarial training (and plain RM)

    RM_LABELS, RM_EPOCHS = 320, 2
    EPSILON = 0.1  # MiniLM: a PGD push of L2 0.1 per response already takes the plain model's accuracy below chance

    def reward_model(self, name: str, method: str = "full", adversarial: bool = False, **overrides: Any
                     ) -> tuple[StageResult, float]:
        from align.stages.reward import run

        data = overrides.pop("data", {"path": str(self.data / "gold_pairs.jsonl"), "max_samples": self.RM_LABELS})
        recipe = {
            "model": {"name_or_path": ENCODER, "method": method},
            "data": [{**data, "eval_path": str(self.data / "eval_pairs.jsonl")}],
            "training": self.training(self.out / name, **{
                "num_epochs": self.RM_EPOCHS, "per_device_batch_size": 16, "learning_rate": 5e-5, "warmup_ratio": 0.1,
                "max_length": 256, "logging_steps": 5, **overrides}),
            "reward": {"pooling": "mean", "clip": 5.0}}
        if method != "feature_extraction":
            recipe["reward"]["perturbed_eval"] = {"method": "pgd", "epsilon": self.EPSILON, "steps": 3}
        if adversarial:
            recipe["training"]["adversarial"] = {"method": "fgm", "epsilon": self.EPSILON, "weight": 1.0}
        return self.stage(run, RewardRecipe, recipe)

    def adversarial(self) -> list[Row]:
        plain, plain_s = self.reward_model("reward/plain")
        robust, robust_s = self.reward_model("adversarial/fgm", adversarial=True)
        setting = (f"MiniLM full, {self.RM_LABELS} gold labels x {self.RM_EPOCHS} epochs; before = plain, after = "
                   f"FGM eps {self.EPSILON}")
        return [row("adversarial training", setting, "fresh-pair accuracy, clean", plain.metrics["eval/accuracy"],
                    robust.metrics["eval/accuracy"], plain_s + robust_s),
                row("adversarial training", setting, f"fresh-pair accuracy under PGD (L2 {self.EPSILON}, 3 steps)",
                    plain.metrics["eval/accuracy_perturbed"], robust.metrics["eval/accuracy_perturbed"], plain_s + robust_s)]

    # ----------------------------------------------------------------- 4. augmentation

    def augment(self) -> list[Row]:
        from align.stages.augment import run

        methods = [{"kind": "synonym", "probability": 0.5}, {"kind": "word_dropout", "probability": 0.1}]
        result, seconds = self.stage(run, AugmentRecipe, {
            "data": {"path": str(self.data / "gold_pairs.jsonl"), "kind": "preference", "max_samples": self.RM_LABELS},
            "methods": methods, "keep_original": True,
            "training": {"output_dir": str(self.out / "augment/data"), "seed": 42}})
        m = result.metrics
        edits = words_edited(read_jsonl(self.out / "augment/data/train.jsonl"))
        setting = f"{self.RM_LABELS} gold pairs; synonym p 0.5, word_dropout p 0.1, one copy each"
        rows = [row("augmentation", setting, "rows written (originals + rewrites)", m["augment/original"],
                    m["augment/rows_written"], seconds)]
        for kind in ("synonym", "word_dropout"):
            skipped = m.get("augment/skipped_unchanged", 0) if kind == "synonym" else None
            note = f"; {skipped} pairs unchanged by the small table, skipped" if skipped else ""
            rows.append(row("augmentation", f"{kind}: {m.get(f'augment/{kind}', 0)} rows{note}",
                            "words edited per rewritten pair (prompt + both answers)", None, edits.get(kind, 0.0), seconds))
        # Does it buy robustness? Reward models on the plain and the augmented pairs, same number of steps,
        # scored on fresh pairs rewritten the same way (their gold labels kept).
        plain, plain_s = self.reward_model("reward/plain")
        steps = plain.metrics["train/steps"]
        augmented, aug_s = self.reward_model("augment/reward", data={"path": str(self.out / "augment/data/train.jsonl")},
                                             max_steps=steps)
        noisy = noisy_pairs(read_jsonl(self.data / "eval_pairs.jsonl"))
        setting = f"MiniLM full, {steps} steps each; before = plain pairs, after = augmented pairs"
        rows += [
            row("augmentation", setting, "fresh-pair accuracy, clean", plain.metrics["eval/accuracy"],
                augmented.metrics["eval/accuracy"], plain_s + aug_s),
            row("augmentation", setting, "fresh-pair accuracy, synonym + dropout rewritten",
                pair_accuracy(plain.output_dir, noisy), pair_accuracy(augmented.output_dir, noisy), plain_s + aug_s)]
        return rows

    # ----------------------------------------------------------------- 5. feature extraction

    def feature_extraction(self) -> list[Row]:
        full, full_s = self.reward_model("reward/plain")
        epochs = 10  # cached features: an epoch after the first is one head pass per batch
        frozen, frozen_s = self.reward_model("feature_extraction/run", method="feature_extraction", num_epochs=epochs,
                                             learning_rate=3e-3)
        setting = (f"MiniLM, {self.RM_LABELS} gold labels; before = full ({self.RM_EPOCHS} epochs, 5e-5), after = "
                   f"frozen encoder + head ({epochs} epochs, 3e-3)")
        return [row("feature extraction", setting, "fresh-pair accuracy", full.metrics["eval/accuracy"],
                    frozen.metrics["eval/accuracy"], full_s + frozen_s),
                row("feature extraction", setting, "training seconds per epoch (mean; the first one fills the feature cache)",
                    train_runtime(full.output_dir) / self.RM_EPOCHS, train_runtime(frozen.output_dir) / epochs,
                    full_s + frozen_s)]

    # ----------------------------------------------------------------- 6. KTO, SimPO, ORPO

    def preference(self) -> list[Row]:
        from align.stages.dpo import run as dpo
        from align.stages.kto import run as kto

        steps, held_out = 16, read_jsonl(self.data / "eval_pairs.jsonl")[:64]
        data = {"path": str(self.data / "gold_pairs.jsonl"), "kind": "preference", "max_samples": 4 * steps * 4}
        common = {"model": {"name_or_path": START, "method": "lora"}, "data": data}

        def training(name: str) -> dict[str, Any]:
            return self.training(self.out / f"preference/{name}", max_steps=steps, per_device_batch_size=4,
                                 learning_rate=2e-4, warmup_ratio=0.1, max_length=128)

        ref = self.held_out_logps(START, self.out / "preference/start_logps.pt", held_out)
        runs = {
            "kto": (kto, KTORecipe, {**common, "kto": {"beta": 0.1}, "training": training("kto")}),
            "simpo": (dpo, DPORecipe, {**common, "dpo": {"loss": ["simpo"], "beta": 2.0, "simpo_gamma": 0.5},
                                       "eval": {"enabled": False}, "training": training("simpo")}),
            "orpo": (dpo, DPORecipe, {**common, "dpo": {"loss": ["orpo"], "beta": 0.1}, "eval": {"enabled": False},
                                      "training": training("orpo")}),
        }
        # Each method's own implicit reward of an answer, from (summed log-prob, tokens) of policy and start model.
        rewards: dict[str, tuple[str, Callable[..., torch.Tensor]]] = {
            "kto": ("beta log π/π_ref, beta 0.1", lambda lp, n, ref_lp: 0.1 * (lp - ref_lp)),
            "simpo": ("beta x mean log-prob per token, beta 2", lambda lp, n, ref_lp: 2.0 * lp / n),
            "orpo": ("log odds of the mean token probability", lambda lp, n, ref_lp: log_odds(lp / n)),
        }
        rows = []
        for name, (run, schema, recipe) in runs.items():
            result, seconds = self.stage(run, schema, recipe)
            after = self.held_out_logps(str(result.output_dir), Path(result.output_dir) / "bench_logps.pt", held_out)
            label, reward = rewards[name]
            cells = []
            for policy in (ref, after):
                chosen = reward(policy["chosen"], policy["chosen_n"], ref["chosen"])
                rejected = reward(policy["rejected"], policy["rejected_n"], ref["rejected"])
                cells.append(f"{accuracy(chosen, rejected):.3f} ({float((chosen - rejected).mean()):+.2f})")
            examples = "answers (gold pairs unpaired: chosen up, rejected down)" if name == "kto" else "gold pairs"
            rows.append(row({"kto": "KTO", "simpo": "SimPO", "orpo": "ORPO"}[name],
                            f"SmolLM2 LoRA r16, {steps} steps of 4 {examples}, lr 2e-4, 128 tokens",
                            f"held-out preference accuracy (mean margin) of its reward, {label}; "
                            f"{len(held_out)} fresh pairs", *cells, seconds))
        return rows

    def held_out_logps(self, model: str, cache: Path, pairs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``pair_logps`` of ``model`` on ``pairs``, kept in ``cache`` (recomputed with ``--redo``)."""
        if not cache.is_file() or (self.force and cache not in self.ran):
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(pair_logps(model, pairs), cache)
            self.ran.add(cache)
        return torch.load(cache)

    # ----------------------------------------------------------------- 7. online DPO

    def online_dpo(self) -> list[Row]:
        from align.stages.dpo.online import run

        rounds, steps = 2, 4
        result, seconds = self.stage(run, OnlineDPORecipe, {
            "model": {"name_or_path": START, "method": "lora"},
            "data": {"path": str(self.data / "train_prompts.jsonl")},
            "reward": {"judge": self.judge},
            "generation": {"max_new_tokens": 48, "temperature": 1.0, "batch_size": 8},
            "online": {"rounds": rounds, "prompts_per_round": 8, "samples_per_prompt": 4},
            "dpo": {"beta": 0.1, "loss": ["sigmoid"], "padding_free": True, "pack_row_tokens": 512},
            "training": self.training(self.out / "online_dpo/run", max_steps=steps, per_device_batch_size=4,
                                      learning_rate=2e-4, lr_scheduler="constant", max_length=128)})
        m = result.metrics
        per_round = " -> ".join(f"{m[f'round{r}/reward_mean']:.2f}" for r in range(1, rounds + 1))
        setting = (f"SmolLM2 LoRA, {rounds} rounds x (8 new prompts x 4 samples, best vs worst, {steps} DPO steps); "
                   f"each round's mean before it trains: {per_round}")
        return [row("online DPO", setting, "judge's mean reward (1000-label RM) on round 1's prompts: start -> final policy",
                    m["round1/reward_mean"], m["online/final_reward_mean"], seconds)]

    # ----------------------------------------------------------------- 8. rejection sampling, best-of-N

    def best_of_n(self) -> list[Row]:
        from align.stages.eval import run as evaluate
        from align.stages.rejection_sampling import run as rejection

        n, prompts = 4, 16
        sampled, sampled_s = self.stage(rejection, RejectionSamplingRecipe, {
            "model": {"name_or_path": START}, "data": {"path": str(self.data / "train_prompts.jsonl"),
                                                       "max_samples": prompts},
            "reward": {"judge": self.judge},
            "generation": {"n": n, "max_new_tokens": 48, "temperature": 1.0, "batch_size": 8, "seed": 0},
            "training": {"output_dir": str(self.out / "best_of_n/rejection_sampling"), "seed": 0}})
        num_prompts = 48
        evaluated, eval_s = self.stage(evaluate, EvalRecipe, {
            "policies": [{"name": f"best-of-{n}", "model": {"name_or_path": START}, "best_of": n,
                          "selector": {"judge": self.judge}}],
            "reference": {"name_or_path": START}, "reward": {"judge": GOLD},
            "data": {"path": str(self.data / "held_out_prompts.jsonl")},
            "generation": {"num_prompts": num_prompts, "max_new_tokens": 48, "temperature": 1.0, "batch_size": 8},
            "report": {"num_samples": 0, "greedy": False},
            "training": {"output_dir": str(self.out / "best_of_n/eval"), "seed": 0}})
        m, e = sampled.metrics, evaluated.metrics
        label = f"eval/best-of-{n}"
        return [
            row("rejection sampling", f"SmolLM2, {prompts} train prompts x {n} answers, judge = 1000-label RM",
                "judge score: mean of the N -> the kept best", m["rejection/mean_score"], m["rejection/best_score"],
                sampled_s),
            row("best-of-N eval baseline", f"best-of-{n} picked by the RM, {num_prompts} held-out prompts, gold judge",
                "gold reward: start model -> best-of-N", e["eval/baseline/reward"], e[f"{label}/reward"], eval_s),
            row("best-of-N eval baseline", f"(same; KL log N - (N-1)/N = {e[f'{label}/kl_full_vocab']:.2f})",
                "gold win rate vs the start model", None,
                f"{e[f'{label}/win_rate']:.3f} ± {e[f'{label}/win_rate_se']:.3f}", eval_s)]


# --------------------------------------------------------------------------- helpers


def snapshot(dest: Path, data: Path, judge: str, eval_pairs: int = 160) -> Path:
    """Copy the inputs into ``dest`` once (another run of bench_alignment.py may rewrite them); ``dest``.

    ``eval_pairs.jsonl``: ``eval_pairs`` fresh pairs drawn at random (seed 0), every measurement's held-out set.
    """
    if (dest / "sources.json").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("gold_pairs.jsonl", "fresh_pairs.jsonl", "train_prompts.jsonl", "held_out_prompts.jsonl"):
        shutil.copyfile(data / name, dest / name)
    fresh = read_jsonl(dest / "fresh_pairs.jsonl")
    write_jsonl(dest / "eval_pairs.jsonl", random.Random(0).sample(fresh, min(eval_pairs, len(fresh))))
    shutil.copytree(judge, dest / "judge", dirs_exist_ok=True)
    (dest / "sources.json").write_text(json.dumps({"data": str(data), "judge": judge}) + "\n")
    return dest


def build_student(path: Path, drop_every: int) -> Path:
    """SmolLM2 without every ``drop_every``-th decoder layer: a smaller student sharing the teacher's tokenizer."""
    if (path / "config.json").is_file():
        return path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(START)
    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    keep = [i for i in range(model.config.num_hidden_layers) if i % drop_every != drop_every - 1]
    model.model.layers = nn.ModuleList(model.model.layers[i] for i in keep)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.config.num_hidden_layers = len(keep)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    logger.info("student: layers %s of %s -> %s", keep, source, path)
    return path


def distinct_prompts(pairs: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first pair of each of the first ``limit`` distinct prompts."""
    seen: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        seen.setdefault(pair["prompt"], pair)
    return list(seen.values())[:limit]


def words_edited(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean words changed (replaced, dropped) per augmented row, by augmentation, against its original row."""
    originals = {r["source_id"]: r for r in rows if r["augmentation"] == "original"}
    edits: dict[str, list[int]] = {}
    for r in rows:
        if r["augmentation"] == "original":
            continue
        source = originals[r["source_id"]]
        changed = 0
        for field in ("prompt", "chosen", "rejected"):
            old, new = source[field].split(), r[field].split()
            same = sum(block.size for block in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_matching_blocks())
            changed += len(old) - same
        edits.setdefault(r["augmentation"], []).append(changed)
    return {kind: sum(v) / len(v) for kind, v in edits.items()}


def noisy_pairs(pairs: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Each pair with every text rewritten by synonyms (p 0.5) then word dropout (p 0.1); the label kept."""
    rng = random.Random(seed)

    def noise(text: str) -> str:
        return word_dropout(synonym_swap(text, 0.5, rng), 0.1, rng)

    return [{"prompt": noise(p["prompt"]), "chosen": noise(p["chosen"]), "rejected": noise(p["rejected"])} for p in pairs]


def pair_accuracy(reward_dir: str | Path, pairs: list[dict[str, Any]]) -> float:
    """Share of pairs the reward model orders chosen over rejected (ties 1/2)."""
    scorer = RewardScorer.from_pretrained(str(reward_dir))
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer.score(prompts, [p["chosen"] for p in pairs])
    rejected = scorer.score(prompts, [p["rejected"] for p in pairs])
    return accuracy(chosen, rejected)


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs ordered chosen over rejected, ties 1/2: the win rate of chosen against rejected."""
    return win_rate_and_se(chosen, rejected)[0]


@torch.no_grad()
def pair_logps(model_path: str, pairs: list[dict[str, Any]], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Summed log-probs and token counts of each pair's chosen and rejected answer (``chosen``, ``chosen_n``, ...).

    Rows are laid out as the sampler shows them to the policy: the rendered prompt, the answer, EOS.
    """
    model, tokenizer = load_policy(ModelConfig(name_or_path=model_path), trainable=False)
    collate = PromptCompletionCollator(tokenizer, eos_token_ids(model, tokenizer)[0], max_length=256)
    found: dict[str, list[torch.Tensor]] = {}
    for side in ("chosen", "rejected"):
        for start in range(0, len(pairs), batch_size):
            batch = collate([{"prompt": p["prompt"], "completion": p[side]} for p in pairs[start : start + batch_size]])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            mask = batch["completion_mask"][:, 1:].float()
            logps = token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:])
            found.setdefault(side, []).append((logps * mask).sum(-1))
            found.setdefault(f"{side}_n", []).append(mask.sum(-1))
    return {key: torch.cat(parts) for key, parts in found.items()}


def train_runtime(run_dir: str | Path) -> float:
    """The trainer's own ``train_runtime`` (seconds in its training loop) from the run's metrics.jsonl."""
    return next(r["train/train_runtime"] for r in reversed(read_metrics(run_dir)) if "train/train_runtime" in r)


# --------------------------------------------------------------------------- report


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value)}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def total_seconds(out: Path) -> float:
    return sum(json.loads(path.read_text())["seconds"] for path in out.rglob("bench_seconds.json"))


def report(out: Path) -> None:
    lines = ["# Methods on the demo models", "",
             f"`python benchmarks/bench_methods.py --out {out} --threads 1`: SmolLM2-135M-Instruct for policies, "
             "MiniLM-L6 for reward models, on the gold-judge data of `bench_alignment.py` (fresh pairs: held-out "
             "prompts on unseen topics). One CPU thread of a shared machine; seconds: the wall clock of each row's "
             f"stage runs ({total_seconds(out) / 60:.0f} minutes for all of them).", "",
             "| method | setting | metric | before | after | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    missing = []
    for method in METHODS:
        result = StageResult.load(out / method)
        if result is None:
            missing.append(method)
            continue
        for r in result.metrics["rows"]:
            seconds = f"{r['seconds']:.0f}" if r["seconds"] >= 10 else f"{r['seconds']:.1f}"
            lines.append(f"| {r['method']} | {r['setting']} | {r['metric']} | {cell(r['before'])} | {cell(r['after'])} | "
                         f"{seconds} |")
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    text = "\n".join(lines) + "\n"
    (out / "methods.md").write_text(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    logger.info("wrote %s and %s\n%s", out / "methods.md", RESULTS, text)


if __name__ == "__main__":
    main()
