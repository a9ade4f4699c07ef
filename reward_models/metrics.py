"""Evaluation of a reward model on units: pairwise accuracy, rank correlations, reliability.

Metric names (keys of ``evaluate_units``' result):

- ``accuracy``: share of preference pairs with ``r_chosen > r_rejected`` (equal scores count 1/2);
  ``margin``: mean ``r_chosen - r_rejected``
- ``tie_gap``: mean ``|r_a - r_b|`` over tied pairs
- ``rating_spearman``, ``rating_kendall``: scores vs ratings, over all rating units
- ``ranking_spearman``, ``ranking_kendall``: per list (scores vs ``-rank``), averaged over lists;
  ``ranking_pair_accuracy``: over the strict pairs inside lists
- ``ece``: expected calibration error of ``sigmoid(r_a - r_b)`` on the reliability bins (raw
  scores: the Bradley-Terry scale; meaningful for pair and ranking losses, only a rough
  guide when ratings alone set the scale)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

ScoreFn = Callable[[list[Any], list[Any]], torch.Tensor]


def score_units(score_fn: ScoreFn, units: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """Score every response of every unit in one call; returns one array per unit (in unit order)."""
    prompts, responses, sizes = [], [], []
    for unit in units:
        texts = {
            "preference": lambda u: [u["chosen"], u["rejected"]],
            "tie": lambda u: [u["a"], u["b"]],
            "rating": lambda u: [u["response"]],
            "ranking": lambda u: list(u["responses"]),
        }[unit["kind"]](unit)
        prompts += [unit["prompt"]] * len(texts)
        responses += texts
        sizes.append(len(texts))
    flat = score_fn(prompts, responses).double().numpy() if prompts else np.zeros(0)
    return np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []


def strict_pairs(units: Sequence[dict[str, Any]], scores: Sequence[np.ndarray]) -> np.ndarray:
    """Score differences ``r_better - r_worse`` of every strict pair.

    Pairs are the preferences, the pairs inside rankings, and pairs of ratings of the same
    prompt with different scores (a rating only says something relative to its prompt).
    """
    diffs: list[float] = []
    rated: dict[str, list[tuple[float, float]]] = {}
    for unit, s in zip(units, scores):
        if unit["kind"] == "rating":
            key = json.dumps(unit["prompt"], sort_keys=True)
            rated.setdefault(key, []).append((unit["score"], float(s[0])))
        if unit["kind"] == "preference":
            diffs.append(s[0] - s[1])
        elif unit["kind"] == "ranking":
            ranks = unit["ranks"]
            for i in range(len(ranks)):
                for j in range(len(ranks)):
                    if ranks[i] < ranks[j]:
                        diffs.append(s[i] - s[j])
    for group in rated.values():
        diffs += [sa - sb for ta, sa in group for tb, sb in group if ta > tb]
    return np.asarray(diffs, dtype=np.float64)


def reliability_bins(diffs: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Bin score differences and compare the observed preference rate with ``sigmoid(d)``.

    ``diffs``: (P,) ``r_better - r_worse``. Each pair enters in both orientations, ``(d, 1)``
    and ``(-d, 0)``, so the curve is symmetric and every bin has both outcomes to count.
    Bins are equal-count (quantiles of the 2P differences). Each bin reports its bounds,
    ``count``, ``mean_diff``, ``observed`` (share of outcome 1) and ``predicted`` (mean
    ``sigmoid(d)``, what Bradley-Terry claims).
    """
    if diffs.size == 0:
        return []
    d = np.concatenate([diffs, -diffs])
    y = np.concatenate([np.ones_like(diffs), np.zeros_like(diffs)])
    edges = np.unique(np.quantile(d, np.linspace(0.0, 1.0, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        if not sel.any():
            continue
        out.append({
            "low": float(edges[b]),
            "high": float(edges[min(b + 1, len(edges) - 1)]),
            "count": int(sel.sum()),
            "mean_diff": float(d[sel].mean()),
            "observed": float(y[sel].mean()),
            "predicted": float((1.0 / (1.0 + np.exp(-d[sel]))).mean()),
        })
    return out


def expected_calibration_error(bins: Sequence[dict[str, float]]) -> float:
    """``sum_b (count_b / N) |observed_b - predicted_b|``."""
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["observed"] - b["predicted"]) for b in bins) / total) if total else math.nan


def plot_reliability(bins: Sequence[dict[str, float]], path: str | Path, title: str = "Reward model reliability") -> Path:
    """Save the reliability curve (observed rate per bin vs mean score difference, with ``sigmoid``) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    if bins:
        x = np.array([b["mean_diff"] for b in bins])
        span = max(float(np.abs(x).max()), 1.0)
        grid = np.linspace(-span, span, 200)
        ax.plot(grid, 1.0 / (1.0 + np.exp(-grid)), "--", color="grey", label="Bradley-Terry sigmoid(d)")
        ax.plot(x, [b["observed"] for b in bins], "o-", label="observed")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no strict pairs to compare", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("score difference r_a - r_b (bin mean)")
    ax.set_ylabel("rate a preferred")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_units(
    units: Sequence[dict[str, Any]], scores: Sequence[np.ndarray], n_bins: int = 10
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(metrics, reliability bins) of ``units`` given their ``scores`` (as from ``score_units``)."""
    from scipy.stats import kendalltau, spearmanr

    metrics: dict[str, float] = {}
    pref = [s for u, s in zip(units, scores) if u["kind"] == "preference"]
    if pref:
        d = np.array([s[0] - s[1] for s in pref])
        metrics["accuracy"] = float(((d > 0) + 0.5 * (d == 0)).mean())
        metrics["margin"] = float(d.mean())
    ties = [s for u, s in zip(units, scores) if u["kind"] == "tie"]
    if ties:
        metrics["tie_gap"] = float(np.mean([abs(s[0] - s[1]) for s in ties]))
    rated = [(s[0], u["score"]) for u, s in zip(units, scores) if u["kind"] == "rating"]
    if len(rated) >= 2:
        pred, target = np.array(rated).T
        metrics["rating_spearman"] = _finite_or_nan(spearmanr(pred, target).statistic)
        metrics["rating_kendall"] = _finite_or_nan(kendalltau(pred, target).statistic)
    lists = [(s, np.asarray(u["ranks"])) for u, s in zip(units, scores) if u["kind"] == "ranking"]
    lists = [(s, r) for s, r in lists if len(set(r.tolist())) > 1]
    if lists:
        metrics["ranking_spearman"] = _nanmean([spearmanr(s, -r).statistic for s, r in lists])
        metrics["ranking_kendall"] = _nanmean([kendalltau(s, -r).statistic for s, r in lists])
        inner = strict_pairs([u for u in units if u["kind"] == "ranking"],
                             [s for u, s in zip(units, scores) if u["kind"] == "ranking"])
        metrics["ranking_pair_accuracy"] = float(((inner > 0) + 0.5 * (inner == 0)).mean())
    bins = reliability_bins(strict_pairs(units, scores), n_bins)
    if bins:
        metrics["ece"] = expected_calibration_error(bins)
    return metrics, bins


def _finite_or_nan(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _nanmean(values: Sequence[Any]) -> float:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan
