"""``align label auto``: fill a labeling project with a judge's labels, given by simulated annotators ``judge-0`` ...

    align label auto --project demo --judge runs/reward --annotators 3 --noise 0.5
    align label auto --project demo --judge mypkg.rewards:helpfulness --noise 1.0 --noise-kind gumbel

The judge is a reward-model directory or a ``module:function`` (``align.judges.load_judge``). Each
simulated annotator is a user of the store (role annotator, a random password nobody is told) and
takes items the way a person does, through ``LabelStore.next_task`` and ``submit``: K labels per
item from distinct annotators, responses in that annotator's shown order, leases. Their labels are
ordinary labels, so ``align label export``, majority aggregation and agreement treat them like
human ones, and humans and judges can share a project.

Annotator ``a`` orders an item's responses by ``s_i + noise * eps_ai`` (``s`` the judge's scores):

- ``gaussian``: ``eps ~ N(0, 1)``; a pair with score gap ``d`` is flipped with probability
  ``Phi(-d / (noise * sqrt 2))``;
- ``gumbel``: ``eps ~ Gumbel(0, 1)``; the ranking is Plackett-Luce with temperature ``noise``, so
  a pair is ordered by Bradley-Terry: ``P(i before j) = sigmoid((s_i - s_j) / noise)``.

With ``noise = 0`` every annotator gives the judge's order (equal scores tie). The draws are
seeded by (seed, annotator, item), so a re-run gives the same labels whatever order items come in.
When the project shows score sliders, each response also gets ``min + (max - min) * sigmoid(s +
noise * eps)``, rounded to the slider step.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("labeling_ui.auto")

NoiseKind = Literal["gaussian", "gumbel"]
NOISE_KINDS = ("gaussian", "gumbel")
Judge = Callable[[list[str], list[str]], "torch.Tensor"]  # torch is imported on use: `align label --help` stays fast


# --------------------------------------------------------------------------- simulated annotators (pure)


def annotator_generator(seed: int, annotator: str, item: str) -> torch.Generator:
    """A torch generator seeded by (seed, annotator, item): the same draws whatever the labeling order."""
    import torch

    digest = hashlib.sha256(f"{seed}\0{annotator}\0{item}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def perturb(scores: torch.Tensor, noise: float, kind: NoiseKind, generator: torch.Generator) -> torch.Tensor:
    """``scores + noise * eps``, eps i.i.d. N(0, 1) or Gumbel(0, 1); any shape, a new tensor (float64).

    Gumbel by inverse CDF: ``-log(-log U)``, U uniform on (0, 1) (clamped away from 0 and 1, where
    the log is infinite; the clamp moves probability mass below 1e-12).
    """
    import torch

    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind '{kind}': expected one of {', '.join(NOISE_KINDS)}")
    if noise < 0:
        raise ValueError(f"noise={noise}: must be >= 0")
    scores = scores.double()
    if noise == 0:
        return scores.clone()
    if kind == "gaussian":
        eps = torch.randn(scores.shape, generator=generator, dtype=torch.float64)
    else:
        u = torch.rand(scores.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        eps = -torch.log(-torch.log(u))
    return scores + noise * eps


def ranks_of(values: Sequence[float]) -> list[int]:
    """Rank 1 for the largest value, equal values share a rank, no gaps: [0.2, 0.9, 0.2] -> [2, 1, 2]."""
    order = {v: i + 1 for i, v in enumerate(sorted(set(values), reverse=True))}
    return [order[v] for v in values]


def slider_scores(values: Sequence[float], minimum: float, maximum: float, step: float) -> list[float]:
    """Noisy scores squashed onto a slider: ``min + (max - min) * sigmoid(v)``, rounded to ``step``, kept in range."""
    out = []
    for v in values:
        x = minimum + (maximum - minimum) / (1.0 + math.exp(-min(max(float(v), -700.0), 700.0)))
        x = minimum + round((x - minimum) / step) * step
        out.append(round(min(max(x, minimum), maximum), 6))
    return out


# --------------------------------------------------------------------------- labeling through the store


@dataclass
class AutoReport:
    labels: dict[str, int] = field(default_factory=dict)  # annotator -> labels given
    items_scored: int = 0


def judge_vote(task: Any, stored_scores: torch.Tensor, annotator: str, noise: float, kind: NoiseKind, seed: int,
               config: Any) -> Any:
    """The Vote ``annotator`` gives ``task`` (responses in its shown order), from the judge's scores in stored order."""
    from labeling_ui.schemas import Vote

    noisy = perturb(stored_scores, noise, kind, annotator_generator(seed, annotator, task.item)).tolist()
    shown = [noisy[index] for index in task.order]
    fields: dict[str, Any] = {"item": task.item}
    if len(shown) == 2:
        fields["choice"] = "a" if shown[0] > shown[1] else "b" if shown[1] > shown[0] else "tie"
    else:
        fields["ranks"] = ranks_of(shown)
    if config.score.enabled:
        fields["scores"] = slider_scores(shown, config.score.minimum, config.score.maximum, config.score.step)
    return Vote(**fields)


def ensure_annotators(store: Any, names: list[str]) -> None:
    """Create the judge users that do not exist yet (role annotator, a random password nobody is told)."""
    existing = {user.name for user in store.users()}
    for name in names:
        if name not in existing:
            store.add_user(name, "annotator", secrets.token_urlsafe(24))
            logger.info("created annotator '%s' for judge labels", name)


def auto_label(store: Any, project: str, judge: Judge, *, annotators: int = 3, noise: float = 0.0,
               kind: NoiseKind = "gaussian", seed: int = 0, prefix: str = "judge",
               max_items: int | None = None) -> AutoReport:
    """Label ``project`` as annotators ``<prefix>-0 .. <prefix>-{annotators-1}``, each until no item is left for them.

    The judge scores each item's responses once (in stored order); every annotator adds its own noise.
    ``max_items`` caps the labels per annotator.
    """
    from align.judges import score

    if annotators < 1:
        raise ValueError(f"annotators={annotators}: need at least one")
    config = store.project_config(project)
    names = [f"{prefix}-{i}" for i in range(annotators)]
    ensure_annotators(store, names)
    scores: dict[str, torch.Tensor] = {}
    report = AutoReport()
    for name in names:
        given = 0
        while max_items is None or given < max_items:
            task = store.next_task(project, name)
            if task is None:
                break
            if task.item not in scores:
                stored = [""] * len(task.order)
                for position, index in enumerate(task.order):
                    stored[index] = task.responses[position]
                scores[task.item] = score(judge, [task.prompt] * len(stored), stored).raw  # as PPO and eval call it
            store.submit(project, name, judge_vote(task, scores[task.item], name, noise, kind, seed, config))
            given += 1
        report.labels[name] = given
        logger.info("%s: %d labels", name, given)
    report.items_scored = len(scores)
    if annotators > config.labels_per_item:
        logger.info("%d annotators but the project needs %d labels per item: the last ones had nothing to do",
                    annotators, config.labels_per_item)
    return report


# --------------------------------------------------------------------------- command line


def add_auto_command(label_parser: argparse.ArgumentParser) -> None:
    """Add ``auto`` to the ``align label`` subcommands (the parser ``labeling_ui.commands`` filled)."""
    # argparse has no public accessor for a parser's subcommands; this action is where add_subparsers put them.
    commands = next(a for a in label_parser._actions if isinstance(a, argparse._SubParsersAction))
    text = "label a project with a judge (reward model or module:function) as simulated annotators judge-N"
    auto = commands.add_parser("auto", help=text, description=text)
    auto.add_argument("--db", default=None, help="database URL or SQLite path (default: $ALIGN_LABEL_DB or sqlite:///labels.db)")
    auto.add_argument("--project", required=True)
    auto.add_argument("--judge", required=True, help="an `align reward` output dir, or module:function (prompts, responses) -> scores")
    auto.add_argument("--annotators", type=int, default=3, help="simulated annotators judge-0 .. judge-(N-1)")
    auto.add_argument("--noise", type=float, default=0.0, help="scale of each annotator's noise on the scores (0: none)")
    auto.add_argument("--noise-kind", choices=NOISE_KINDS, default="gaussian",
                      help="gaussian, or gumbel (Bradley-Terry / Plackett-Luce with temperature = noise)")
    auto.add_argument("--seed", type=int, default=0)
    auto.add_argument("--prefix", default="judge", help="annotator names: PREFIX-0, PREFIX-1, ...")
    auto.add_argument("--max-items", type=int, default=None, help="at most this many labels per annotator")
    auto.add_argument("--batch-size", type=int, default=32, help="reward model: pairs per forward pass")


def main(args: argparse.Namespace) -> int:
    """Run ``align label auto``; a refused request prints ``align: error: ...`` and returns 2."""
    from align.data import DataError
    from align.judges import JudgeError, load_judge
    from labeling_ui.commands import default_db
    from labeling_ui.errors import LabelError
    from labeling_ui.store import LabelStore

    try:
        if args.noise < 0:
            raise LabelError(f"--noise {args.noise}: must be >= 0")
        judge = load_judge(args.judge, batch_size=args.batch_size)
        store = LabelStore(args.db or default_db())
        report = auto_label(store, args.project, judge, annotators=args.annotators, noise=args.noise,
                            kind=args.noise_kind, seed=args.seed, prefix=args.prefix, max_items=args.max_items)
    except (LabelError, JudgeError, DataError) as err:
        print(f"align: error: {err}", file=sys.stderr)
        return 2
    given = ", ".join(f"{name}: {n}" for name, n in report.labels.items())
    print(f"project '{args.project}': {sum(report.labels.values())} judge labels ({given}) on "
          f"{report.items_scored} items; export them with `align label export --project {args.project}`")
    return 0
