"""Labels where they teach most: order annotators' queues by a reward model's uncertainty.

    align label import candidates.jsonl --project demo --reward-model runs/reward     # score on import
    align label prioritize --project demo --reward-model runs/reward-v2               # a newer model: re-score
    align label prioritize --project demo --reward-model runs/rm-a runs/rm-b --strategy ensemble

An item's *priority* (higher: served sooner) is computed once per item and kept in the store:

- ``margin``: minus the smallest gap between adjacent scores of its responses (two responses:
  ``-|s_a - s_b|``), so the pair the model can hardly tell apart comes first. Several models:
  the gap of their mean score.
- ``ensemble``: the models' disagreement, the largest std over models of a score difference
  ``s_i - s_j`` over the item's response pairs (population std).

A thumbs item (one response) has no pair: its margin is the distance of its score from the
project's median score, and its ensemble disagreement the std of the models' scores.

Scores come from ``align.judges`` (a reward-model directory, or ``module:function``), each
distinct (prompt, response) scored once. ``Refresher`` is the server's side: every
``active.refresh_every`` new labels it re-scores in a background thread, when a model on disk
changed since the last scoring (a retrained reward model written to the same directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
import time
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from labeling_ui.schemas import ActiveSettings

logger = logging.getLogger("labeling_ui.active")


# --------------------------------------------------------------------------- priorities (pure)


def margin_priority(scores: Sequence[float], center: float = 0.0) -> float:
    """Minus the smallest gap between adjacent sorted scores; one score: minus its distance from ``center``.

    ``[0.0, 1.0, 0.3]`` -> sorted ``[0, 0.3, 1]``, gaps 0.3 and 0.7 -> ``-0.3``.
    """
    if len(scores) == 1:
        return -abs(scores[0] - center)
    ordered = sorted(scores)
    return -min(b - a for a, b in zip(ordered, ordered[1:]))


def ensemble_priority(member_scores: Sequence[Sequence[float]]) -> float:
    """Largest std over members of a pairwise score difference; one response: the std of the members' scores.

    ``member_scores``: (M members, n responses). Two members on two responses, differences
    ``d = [1.0, -1.0]`` -> std 1.0.
    """
    n = len(member_scores[0])
    if n == 1:
        return statistics.pstdev(scores[0] for scores in member_scores)
    return max(statistics.pstdev(scores[i] - scores[j] for scores in member_scores)
               for i, j in combinations(range(n), 2))


def item_priority(member_scores: Sequence[Sequence[float]], strategy: str, center: float = 0.0) -> float:
    """An item's priority from each member's scores of its responses (M, n)."""
    if strategy == "ensemble":
        return ensemble_priority(member_scores)
    if strategy != "margin":
        raise ValueError(f"strategy '{strategy}': expected margin or ensemble")
    mean = [statistics.fmean(column) for column in zip(*member_scores)]
    return margin_priority(mean, center)


# --------------------------------------------------------------------------- scoring a project


def fingerprint(specs: Sequence[str]) -> str | None:
    """What changes when a reward-model directory is rewritten (file names, sizes, mtimes); None for a callable."""
    digest = hashlib.sha256()
    for spec in specs:
        path = Path(spec).expanduser()
        if not path.is_dir():
            return None  # a module:function may answer differently each time: always re-score
        for file in sorted(path.glob("*")):
            if file.is_file():
                stat = file.stat()
                digest.update(f"{spec}\0{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class Scorer:
    """The judges of one ``active`` setting, loaded once; ``reload`` when the files on disk changed."""

    def __init__(self, settings: ActiveSettings) -> None:
        self.settings = settings
        self.print: str | None = None
        self.judges: list[Any] = []

    def load(self) -> list[Any]:
        from align.judges import load_judge

        current = fingerprint(self.settings.reward_model)
        if not self.judges or current is None or current != self.print:
            self.judges = [load_judge(spec, batch_size=self.settings.batch_size) for spec in self.settings.reward_model]
            self.print = current
        return self.judges


def score_items(store: Any, project: str, settings: ActiveSettings | None = None, *, only_unscored: bool = False,
                scorer: Scorer | None = None) -> int:
    """Score the project's items (all, or those without a priority) and store their priorities; items scored.

    ``settings`` default to the project's ``active`` config. One judge call per model over the
    distinct (prompt, response) pairs.
    """
    from align.judges import score
    from labeling_ui.errors import LabelError

    settings = settings or store.project_config(project).active
    if settings is None:
        raise LabelError(f"project '{project}' is linked to no reward model: set active.reward_model "
                         "(or pass --reward-model)")
    labels_before = store.done_labels(project)
    items = store.items_to_score(project, only_unscored=only_unscored)
    state = store.priority_state(project) or {}
    if not items:
        return 0
    scorer = scorer or Scorer(settings)
    pairs: dict[str, tuple[Any, str]] = {}
    for _, prompt, texts in items:
        for text in texts:
            pairs.setdefault(_pair_key(prompt, text), (prompt, text))
    keys = list(pairs)
    prompts, texts = [pairs[k][0] for k in keys], [pairs[k][1] for k in keys]
    started = time.monotonic()
    by_member = [dict(zip(keys, score(judge, prompts, texts).raw.tolist())) for judge in scorer.load()]
    members = {key: [[member[_pair_key(prompt, t)] for t in texts] for member in by_member]
               for key, prompt, texts in items}
    center = state.get("center", 0.0) if only_unscored and "center" in state else _median_score(members)
    priorities = {key: item_priority(scores, settings.strategy, center) for key, scores in members.items()}
    new_state = {"reward_model": list(settings.reward_model), "strategy": settings.strategy, "fingerprint": scorer.print,
                 "labels": labels_before if not only_unscored else state.get("labels", labels_before),
                 "scored_at": time.time(), "items": len(priorities), "center": center}
    store.set_priorities(project, priorities, new_state)
    logger.info("project '%s': %d items scored by %s (%s) in %.1f s", project, len(priorities),
                ", ".join(settings.reward_model), settings.strategy, time.monotonic() - started)
    return len(priorities)


def _pair_key(prompt: Any, text: str) -> str:
    return json.dumps([prompt, text], sort_keys=True)


def _median_score(members: dict[str, list[list[float]]]) -> float:
    """Median of every response's mean score over the models (the thumbs task's boundary)."""
    means = [statistics.fmean(column) for scores in members.values() for column in zip(*scores)]
    return statistics.median(means) if means else 0.0


class Refresher:
    """The server's re-scoring: after every ``refresh_every`` new labels, one background thread at a time.

    ``after_label`` is cheap (a count); the scoring runs outside the request and the priorities
    are written in one transaction, so leasing never sees half of them.
    """

    def __init__(self, store: Any, project: str, settings: ActiveSettings) -> None:
        self.store, self.project, self.settings = store, project, settings
        self.scorer = Scorer(settings)
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def due(self) -> bool:
        if not self.settings.refresh_every:
            return False
        state = self.store.priority_state(self.project) or {}
        done = self.store.done_labels(self.project)
        if done - state.get("labels", 0) < self.settings.refresh_every:
            return False
        current = fingerprint(self.settings.reward_model)
        if current is not None and current == state.get("fingerprint"):
            return False  # the same model would give the same order
        return True

    def after_label(self) -> threading.Thread | None:
        """Start a re-scoring when one is due and none is running; the thread (None when nothing started)."""
        if not self.due() or not self._lock.acquire(blocking=False):
            return None
        self.thread = threading.Thread(target=self._run, name=f"rescore-{self.project}", daemon=True)
        self.thread.start()
        return self.thread

    def _run(self) -> None:
        try:
            score_items(self.store, self.project, self.settings, scorer=self.scorer)
        except Exception:  # a broken model file must not take the server down; the old order stays
            logger.exception("project '%s': re-scoring with %s failed; the queue keeps its previous order",
                             self.project, self.settings.reward_model)
        finally:
            self._lock.release()
