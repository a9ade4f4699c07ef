"""Reward and KL over training, read from runs' ``metrics.jsonl``, and the eval report's plots (matplotlib, Agg).

    python -c "from align.eval.curves import run_curves; print(run_curves('runs/ppo'))"

Stages log different names: PPO ``reward/raw`` and ``ppo/kl``, GRPO ``train/reward`` and
``train/kl``, DPO ``rewards/margins`` (or ``train/rewards/margins``) and no KL. Each run gets the
first name of ``REWARD_KEYS`` and of ``KL_KEYS`` it has; a run with neither is skipped, and a
malformed line is skipped with a warning, so a run still being written can be plotted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.run import read_metrics

logger = logging.getLogger("align.eval")

REWARD_KEYS = (
    "reward/raw", "reward/score", "reward/mean", "train/reward", "objective/scores",
    "rewards/margins", "train/rewards/margins", "rewards/chosen", "train/rewards/chosen", "eval/rewards/margins",
)
KL_KEYS = ("ppo/kl", "objective/kl", "train/kl", "kl", "eval/kl_to_reference")


@dataclass
class Series:
    key: str
    steps: list[float]
    values: list[float]


@dataclass
class RunCurves:
    """One training run's reward and KL series (None where the run logged neither name)."""

    label: str
    path: Path
    reward: Series | None = None
    kl: Series | None = None
    keys: list[str] = field(default_factory=list)


def series(rows: list[dict[str, Any]], key: str) -> Series | None:
    """``key`` against ``step`` over the rows that have a finite number for it (row index when no step)."""
    steps, values = [], []
    for index, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        step = row.get("step", index)
        steps.append(float(step) if isinstance(step, (int, float)) else float(index))
        values.append(float(value))
    return Series(key, steps, values) if values else None


def first_series(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> Series | None:
    for key in keys:
        found = series(rows, key)
        if found is not None:
            return found
    return None


def find_metrics(path: str | Path) -> Path | None:
    """The metrics.jsonl of a run dir, or of an adapter dir's parent run (``runs/dpo/adapter``); None if there is none."""
    path = Path(path)
    candidates = [path / "metrics.jsonl"]
    if path.name == "adapter" or (path / "adapter_config.json").is_file():
        candidates.append(path.parent / "metrics.jsonl")
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def run_curves(path: str | Path, label: str | None = None) -> RunCurves | None:
    """Reward and KL series of the run at ``path``; None when it has no metrics.jsonl."""
    metrics = find_metrics(path)
    if metrics is None:
        return None
    rows = read_metrics(metrics)
    curves = RunCurves(label or metrics.parent.name, metrics)
    curves.reward = first_series(rows, REWARD_KEYS)
    curves.kl = first_series(rows, KL_KEYS)
    curves.keys = sorted({key for row in rows for key in row})
    return curves


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_training(runs: list[RunCurves], path: Path) -> bool:
    """Reward (left) and KL (right) against step, one line per run; False (nothing written) without any series."""
    if not any(run.reward or run.kl for run in runs):
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, what in zip(axes, ("reward", "kl")):
        for run in runs:
            found: Series | None = getattr(run, what)
            if found is not None:
                ax.plot(found.steps, found.values, marker="." if len(found.steps) < 30 else None,
                        label=f"{run.label} ({found.key})")
        ax.set_xlabel("step")
        ax.set_title("reward over training" if what == "reward" else "KL to the reference over training")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no run logged it", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_reward_vs_kl(points: list[tuple[str, float, float]], path: Path) -> bool:
    """Scatter of (label, KL, mean reward) as measured by the eval; False (nothing written) without points."""
    if not points:
        return False
    merged: dict[tuple[float, float], list[str]] = {}  # one point, one label, for models that coincide
    for label, kl, reward in points:
        merged.setdefault((kl, reward), []).append(label)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for (kl, reward), labels in merged.items():
        ax.scatter([kl], [reward], s=40)
        ax.annotate(" = ".join(labels), (kl, reward), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("KL(policy || reference), nats per response")
    ax.set_ylabel("mean reward (judge)")
    ax.set_title("reward vs KL on held-out prompts")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
