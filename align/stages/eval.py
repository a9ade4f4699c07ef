"""``align eval``: policies against a baseline on held-out prompts: win rate, mean reward, KL to the reference, length.

    align eval recipes/eval.yaml generation.num_prompts=16

For each model (the baseline first, then every policy) one response per prompt is sampled with
the same seed per batch (common random numbers, so differences between models are less noisy;
a model against itself gives identical responses, a win rate of exactly 0.5). The judge scores
every response; the reference scores every sampled token for the KL. Written to the run dir:

- ``report.md``: the summary table, the plots, a sample table per prompt (each model's sampled
  response and, with ``report.greedy``, its greedy one);
- ``samples.jsonl``: every prompt with every model's response, reward, KL and length;
- ``reward_vs_kl.png``: mean reward against KL, one point per model (needs a judge);
- ``training_curves.png``: reward and KL over training of the policies' runs (their
  ``metrics.jsonl``) and of ``report.runs``;
- ``stage_result.json``: metrics ``eval/<label>/win_rate`` (and ``_se``), ``reward`` (and
  ``_se``), ``kl``, ``kl_full_vocab``, ``response_tokens``, ``finished_frac``; the baseline is
  labelled ``baseline``.

The same seed and recipe give the same report. Models are loaded one at a time next to the
reference, on the GPU when there is one.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from align.config import EvalPolicy, EvalRecipe, ModelConfig
from align.data import load_records
from align.eval.curves import RunCurves, plot_reward_vs_kl, plot_training, run_curves
from align.eval.responses import held_out_prompts, markdown_cell, response_kls
from align.judges import judge_for, score, score_n
from align.models import load_policy
from align.ops.stats import win_rate_and_se
from align.recipe import RecipeError
from align.run import StageResult, finish_stage, prepare_run_dir
from align.sampling import Prompt, sample

logger = logging.getLogger("align.eval")

BASELINE = "baseline"


@dataclass
class Responses:
    """One model's responses to every prompt, with per-response KL, length and whether EOS was reached."""

    texts: list[str]
    kl: torch.Tensor  # (N,) k1: sum of log pi - log pi_ref over the response tokens
    kl_full_vocab: torch.Tensor  # (N,)
    tokens: torch.Tensor  # (N,) response length, EOS included
    finished: torch.Tensor  # (N,) bool
    rewards: torch.Tensor | None = None  # (N,) judge scores
    disagreement: torch.Tensor | None = None  # (N,) an ensemble judge's spread over its members
    greedy: list[str] | None = None  # greedy answers to the report's sample prompts


def run(recipe: EvalRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    prompts = load_prompts(recipe)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if recipe.generation.temperature != 1.0 or recipe.generation.top_p < 1.0 or recipe.generation.top_k > 0:
        logger.warning("sampling is not plain (temperature %s, top_p %s, top_k %s): the KL is measured on "
                       "responses not drawn from the policy itself, so it is biased", recipe.generation.temperature,
                       recipe.generation.top_p, recipe.generation.top_k)
    reference, reference_tokenizer = _load(recipe.reference, device)
    models = [EvalPolicy(name=BASELINE, model=recipe.baseline or recipe.reference), *recipe.policies]
    results: dict[str, Responses] = {}
    for policy in models:
        label, cfg = policy.label, policy.model
        same = next((other.label for other in models if other.label in results and other.model == cfg
                     and other.best_of == policy.best_of == 1), None)
        if same is not None:  # the same model with the same seeds gives the same responses
            results[label] = results[same]
            continue
        if cfg == recipe.reference:
            model, tokenizer = reference, reference_tokenizer
        else:
            model, tokenizer = _load(cfg, device)
            _check_same_vocab(label, tokenizer, reference_tokenizer)
        if policy.best_of > 1:
            results[label] = best_of_n(model, tokenizer, prompts, recipe, policy)
        else:
            results[label] = sample_responses(model, tokenizer, reference, prompts, recipe)
        if recipe.report.greedy and recipe.report.num_samples:
            shown = prompts[: recipe.report.num_samples]
            results[label].greedy = sample(model, tokenizer, shown, max_new_tokens=recipe.generation.max_new_tokens,
                                           temperature=0.0, batch_size=recipe.generation.batch_size).texts
        logger.info("%s: %d responses, mean KL %.3f, mean length %.1f tokens", label, len(prompts),
                    results[label].kl.mean().item(), results[label].tokens.mean().item())
        if model is not reference:
            del model
            _free(device)
    del reference
    _free(device)

    if recipe.reward is not None:
        score_responses(recipe, prompts, results)
    metrics = summarize(results)
    metrics["eval/num_prompts"] = len(prompts)
    _write_samples(out / "samples.jsonl", prompts, results)
    plots = _plots(recipe, out, results, metrics)
    (out / "report.md").write_text(report(recipe, prompts, results, metrics, plots))
    logger.info("report: %s", out / "report.md")
    return finish_stage(out, recipe, metrics)


# --------------------------------------------------------------------------- the steps


def load_prompts(recipe: EvalRecipe) -> list[Prompt]:
    """The first ``generation.num_prompts`` distinct prompts: of the eval split when the data has one, else of all rows."""
    data = load_records(recipe.data, "prompt", want="prompt")
    rows = data.eval if data.eval is not None and len(data.eval) else data.train
    prompts = held_out_prompts(rows, recipe.generation.num_prompts)
    logger.info("%d prompts from %s (%s split)", len(prompts), recipe.data.path, "eval" if rows is data.eval else "all")
    return prompts


def _load(cfg: ModelConfig, device: torch.device) -> tuple[Any, Any]:
    model, tokenizer = load_policy(cfg, trainable=False)
    return model.to(device), tokenizer


def _check_same_vocab(label: str, tokenizer: Any, reference_tokenizer: Any) -> None:
    if tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise RecipeError(f"{label}: its tokenizer's vocabulary differs from the reference's; the KL compares "
                          "token probabilities, so every model must share the reference's tokenizer")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sample_responses(model: Any, tokenizer: Any, reference: Any, prompts: list[Prompt], recipe: EvalRecipe) -> Responses:
    """One response per prompt from ``model`` (``align.sampling.sample``, seeded), with KL to ``reference``."""
    settings = recipe.generation
    texts: list[str] = []
    parts: dict[str, list[torch.Tensor]] = {"kl": [], "kl_full_vocab": [], "tokens": [], "finished": []}
    for start in range(0, len(prompts), settings.batch_size):
        # One call per batch, so the KL's (B, T, V) logits stay one batch large; seeds as in one call.
        samples = sample(model, tokenizer, prompts[start : start + settings.batch_size], **settings.sample_kwargs(),
                         seed=recipe.training.seed + start)
        kls = response_kls(model, reference, samples)
        texts += samples.texts
        parts["kl"].append(kls["kl"])
        parts["kl_full_vocab"].append(kls["kl_full_vocab"])
        parts["tokens"].append(samples.lengths.float().cpu())
        parts["finished"].append(samples.finished.cpu())
    return Responses(texts, **{key: torch.cat(values) for key, values in parts.items()})


def best_of_n(model: Any, tokenizer: Any, prompts: list[Prompt], recipe: EvalRecipe, policy: EvalPolicy) -> Responses:
    """For each prompt, ``policy.best_of`` samples and the one ``policy.selector`` scores highest.

    No model samples these responses, so their KL to the reference is not measured: it is the
    analytic ``log N - (N - 1) / N`` of best-of-N (Stiennon et al. 2020, appendix G.3; an upper
    bound, Beirami et al. 2024).
    """
    settings, n = recipe.generation, policy.best_of
    selector = judge_for(policy.selector)
    texts: list[str] = []
    tokens, finished = [], []
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        samples = sample(model, tokenizer, batch, **settings.sample_kwargs(), n=n, seed=recipe.training.seed + start)
        scores = score_n(selector, batch, samples.texts, samples.finished, policy.selector).final  # (b, n)
        best = scores.argmax(dim=1) + torch.arange(len(batch)) * n  # (b,) rows of the chosen samples
        texts += [samples.texts[i] for i in best.tolist()]
        tokens.append(samples.lengths.cpu()[best].float())
        finished.append(samples.finished.cpu()[best])
    kl = torch.full((len(prompts),), math.log(n) - (n - 1) / n)
    return Responses(texts, kl, kl.clone(), torch.cat(tokens), torch.cat(finished))


def score_responses(recipe: EvalRecipe, prompts: list[Prompt], results: dict[str, Responses]) -> None:
    """Judge every response (one call per model) with ``align.judges.score``, as PPO does."""
    judge = judge_for(recipe.reward)
    for responses in results.values():
        scores = score(judge, prompts, responses.texts, responses.finished, recipe.reward)
        responses.rewards, responses.disagreement = scores.final, scores.disagreement


def summarize(results: dict[str, Responses]) -> dict[str, Any]:
    """``eval/<label>/...`` means (and standard errors of win rate and reward) for every model."""
    metrics: dict[str, Any] = {}
    baseline = results[BASELINE]
    for label, res in results.items():
        prefix = f"eval/{label}/"
        metrics[prefix + "kl"] = res.kl.mean().item()
        metrics[prefix + "kl_full_vocab"] = res.kl_full_vocab.mean().item()
        metrics[prefix + "response_tokens"] = res.tokens.mean().item()
        metrics[prefix + "finished_frac"] = res.finished.float().mean().item()
        if res.rewards is not None:
            metrics[prefix + "reward"] = res.rewards.mean().item()
            n = res.rewards.numel()
            metrics[prefix + "reward_se"] = res.rewards.std(unbiased=False).item() / math.sqrt(n) if n > 1 else 0.0
            if res.disagreement is not None:  # high where a policy found what the members disagree on
                metrics[prefix + "disagreement"] = res.disagreement.mean().item()
            if label != BASELINE:
                same = torch.tensor([a == b for a, b in zip(res.texts, baseline.texts)])
                rate, se = win_rate_and_se(res.rewards, baseline.rewards, same)
                metrics[prefix + "win_rate"], metrics[prefix + "win_rate_se"] = rate, se
    return metrics


# --------------------------------------------------------------------------- outputs


def _write_samples(path: Path, prompts: list[Prompt], results: dict[str, Responses]) -> None:
    with path.open("w") as fh:
        for i, prompt in enumerate(prompts):
            row = {"prompt": prompt, "responses": {label: _sample(res, i) for label, res in results.items()}}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _sample(res: Responses, i: int) -> dict[str, Any]:
    row = {"text": res.texts[i], "kl": round(res.kl[i].item(), 4), "tokens": int(res.tokens[i].item()),
           "finished": bool(res.finished[i].item())}
    if res.rewards is not None:
        row["reward"] = round(res.rewards[i].item(), 4)
    return row


def _plots(recipe: EvalRecipe, out: Path, results: dict[str, Responses], metrics: dict[str, Any]) -> dict[str, Any]:
    """Write the PNGs; returns what the report needs to say about them."""
    runs: list[RunCurves] = []
    wanted = [(p.label, p.run_dir or p.model.name_or_path, p.run_dir is not None) for p in recipe.policies]
    wanted += [(Path(path).name, path, True) for path in recipe.report.runs]
    seen: set[Path] = set()
    for label, path, explicit in wanted:
        if Path(path).resolve() in seen:  # a policy's run also named in report.runs is plotted once
            continue
        seen.add(Path(path).resolve())
        curves = run_curves(path, label) if Path(path).exists() else None
        if curves is None:
            if explicit:
                logger.warning("%s: no metrics.jsonl at %s; nothing to plot for it", label, path)
            continue
        runs.append(curves)
    points = [(label, metrics[f"eval/{label}/kl"], metrics[f"eval/{label}/reward"])
              for label in results if f"eval/{label}/reward" in metrics]
    return {
        "runs": runs,
        "training_curves": plot_training(runs, out / "training_curves.png"),
        "reward_vs_kl": plot_reward_vs_kl(points, out / "reward_vs_kl.png"),
    }


def _pm(metrics: dict[str, Any], key: str) -> str:
    if key not in metrics:
        return "-"
    se = metrics.get(key + "_se")
    return f"{metrics[key]:.3f} ± {se:.3f}" if se is not None else f"{metrics[key]:.3f}"


def report(recipe: EvalRecipe, prompts: list[Prompt], results: dict[str, Responses], metrics: dict[str, Any],
           plots: dict[str, Any]) -> str:
    """The markdown report: settings, summary table, plots, sample tables."""
    gen = recipe.generation
    baseline = (recipe.baseline or recipe.reference).name_or_path
    judge = "none (no win rate or reward)"
    if recipe.reward is not None:
        specs = recipe.reward.specs
        judge = ", ".join(f"`{spec}`" for spec in specs) + (f" (ensemble of {len(specs)})" if len(specs) > 1 else "")
    lines = [
        f"# Evaluation on {len(prompts)} held-out prompts", "",
        f"- judge: {judge}",
        f"- KL reference: `{recipe.reference.name_or_path}`; win-rate baseline: `{baseline}`",
        f"- prompts: `{recipe.data.path}`; sampling: temperature {gen.temperature}, top_p {gen.top_p}, "
        f"top_k {gen.top_k}, at most {gen.max_new_tokens} new tokens; seed {recipe.training.seed}",
        "",
        "| model | win rate vs baseline | mean reward | KL to reference | KL (full vocab) | response tokens | ended with EOS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in results:
        p = f"eval/{label}/"
        lines.append(f"| {label} | {_pm(metrics, p + 'win_rate')} | {_pm(metrics, p + 'reward')} | "
                     f"{metrics[p + 'kl']:.3f} | {metrics[p + 'kl_full_vocab']:.3f} | "
                     f"{metrics[p + 'response_tokens']:.1f} | {metrics[p + 'finished_frac']:.0%} |")
    spread = [f"{label} {metrics[f'eval/{label}/disagreement']:.3f}" for label in results
              if f"eval/{label}/disagreement" in metrics]
    if spread:
        lines += ["", "Ensemble disagreement (standard deviation of the members' scores, mean over prompts; "
                  "a policy far above the baseline has found what the members disagree on): " + ", ".join(spread) + "."]
    lines += [
        "",
        "Win rate: share of prompts where the model's response scores above the baseline's (ties count half), "
        "± one standard error. KL: mean over prompts of the sum of log pi(y_t) - log pi_ref(y_t) over the "
        "response's sampled tokens; full vocab: the exact per-token KL summed along the same responses (same "
        "expectation, lower variance). Both are unbiased only for plain sampling at temperature 1.",
        "",
    ]
    if plots["reward_vs_kl"]:
        lines += ["## Reward vs KL", "", "![reward vs KL](reward_vs_kl.png)", ""]
    lines += ["## Training curves", ""]
    if plots["training_curves"]:
        lines += ["![training curves](training_curves.png)", ""]
    for run in plots["runs"]:
        lines.append(f"- {run.label}: `{run.path}`; reward: {run.reward.key if run.reward else 'not logged'}, "
                     f"KL: {run.kl.key if run.kl else 'not logged'}")
    if not plots["runs"]:
        lines.append("No training run with a metrics.jsonl (set a policy's run_dir, or report.runs).")
    lines += ["", "## Samples", ""]
    for i, prompt in enumerate(prompts[: recipe.report.num_samples]):
        greedy = all(res.greedy is not None for res in results.values())
        head = "| model | response | reward | KL | tokens |" + (" greedy response |" if greedy else "")
        lines += [f"### {i + 1}. {markdown_cell(prompt)}", "", head, "| --- | --- | --- | --- | --- |" + (" --- |" if greedy else "")]
        for label, res in results.items():
            reward = f"{res.rewards[i].item():.3f}" if res.rewards is not None else "-"
            row = (f"| {label} | {markdown_cell(res.texts[i]) or '(empty)'} | {reward} | "
                   f"{res.kl[i].item():.3f} | {int(res.tokens[i].item())} |")
            lines.append(row + (f" {markdown_cell(res.greedy[i]) or '(empty)'} |" if greedy else ""))
        lines.append("")
    return "\n".join(lines)
