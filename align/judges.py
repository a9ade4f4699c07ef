"""Judges: the one place that turns a recipe's ``reward.judge`` into scores.

    python -c "from align.judges import load_judge; print(load_judge('runs/reward')(['Hi'], ['Hello!']))"

``score(judge, prompts, responses, finished, settings)`` is the one judge call of PPO, GRPO,
eval and the simulated annotators: prompts and responses rendered as plain text
(``align.data.chat``), scored, then ``settings.missing_eos_penalty`` subtracted from the
responses that did not finish and the result clipped to ``[-clip, clip]``.

A judge takes ``(prompts: list[str], responses: list[str])`` and returns a float32 tensor of
shape (N,) on CPU. A spec is either

- a directory written by ``align reward``: a ``reward_models.RewardScorer`` (it tokenises the
  text itself, so it never needs the policy's tokenizer), or
- ``module:function``: an importable callable with that signature returning a list or tensor
  of floats, for research and tests (e.g. ``mypkg.rewards:length_penalty``), or
- a list of those: an ``Ensemble``. Its score is the members' mean (less ``ensemble_penalty``
  times their standard deviation), and ``Scores.disagreement`` carries that deviation so PPO and
  eval can report where the members disagree, the place a policy learns to game them.

PPO, GRPO, labeling's auto-judge and eval all load their judges here.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from align.config import JudgeSettings
from align.data.chat import prompt_text, response_text

Judge = Callable[[list[str], list[str]], torch.Tensor]


class JudgeError(ValueError):
    """A judge spec that names neither a reward-model directory nor an importable callable."""


@dataclass
class Scores:
    """A judge's scores of N responses, (N,) float32 on CPU each: as returned, and after penalty and clip.

    ``disagreement``: an ensemble's per-response standard deviation over its members, else None.
    """

    raw: torch.Tensor
    final: torch.Tensor
    disagreement: torch.Tensor | None = None


class Ensemble:
    """Several judges as one: score = members' mean - ``penalty`` x their standard deviation."""

    def __init__(self, members: Sequence[Judge], penalty: float = 0.0) -> None:
        self.members, self.penalty = list(members), penalty
        self.__name__ = f"ensemble of {len(self.members)}"

    def member_scores(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """(M, N): every member's scores of the N responses."""
        return torch.stack([member(prompts, responses).float().cpu().reshape(-1) for member in self.members])

    def combine(self, by_member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, N) member scores -> the (N,) ensemble score and the (N,) disagreement."""
        spread = by_member.std(dim=0, unbiased=False)
        return by_member.mean(dim=0) - self.penalty * spread, spread

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.combine(self.member_scores(prompts, responses))[0]


def score(judge: Judge, prompts: Sequence[Any], responses: Sequence[Any], finished: Any = None,
          settings: JudgeSettings | None = None) -> Scores:
    """Score responses to prompts (strings or chat messages) as a recipe's ``reward`` section says.

    ``finished`` (N bools, or None when every response finished) marks responses that ended with
    EOS; the others lose ``settings.missing_eos_penalty`` (times the raw scores' standard deviation
    over these N responses when ``missing_eos_penalty_unit`` is ``std``). Scores are then clipped to
    ``[-settings.clip, settings.clip]`` when set. ``settings`` None: the raw scores.
    """
    texts = [prompt_text(p) for p in prompts], [response_text(r) for r in responses]
    disagreement = None
    if isinstance(judge, Ensemble):
        raw, disagreement = judge.combine(judge.member_scores(*texts))
    else:
        raw = judge(*texts).float().cpu().reshape(-1)
    final = raw
    if settings is not None and settings.missing_eos_penalty is not None and finished is not None:
        unfinished = ~torch.as_tensor(finished, dtype=torch.bool).cpu().reshape(-1)
        penalty = settings.missing_eos_penalty
        if settings.missing_eos_penalty_unit == "std":
            penalty = penalty * raw.std(unbiased=False).item() if raw.numel() > 1 else 0.0
        final = final - penalty * unfinished.float()
    if settings is not None and settings.clip is not None:
        final = final.clamp(-settings.clip, settings.clip)
    return Scores(raw=raw, final=final, disagreement=disagreement)


def score_n(judge: Judge, prompts: Sequence[Any], responses: Sequence[Any], finished: Any = None,
            settings: JudgeSettings | None = None) -> Scores:
    """``score`` of N responses per prompt, ``responses[i * N + j]`` answering ``prompts[i]``; (P, N) scores.

    One call for all of them, so a penalty in standard deviations uses the spread of every answer.
    """
    if not prompts or len(responses) % len(prompts):
        raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts: need the same number for each")
    n = len(responses) // len(prompts)
    scores = score(judge, [prompt for prompt in prompts for _ in range(n)], responses, finished, settings)
    spread = scores.disagreement.view(-1, n) if scores.disagreement is not None else None
    return Scores(raw=scores.raw.view(-1, n), final=scores.final.view(-1, n), disagreement=spread)


def judge_for(settings: JudgeSettings, device: str | None = None) -> Judge:
    """``load_judge`` with a recipe's ``reward`` section (batch size, normalisation and precision apply to a
    reward model); a list of specs is an ``Ensemble`` with the section's ``ensemble_penalty``."""
    judges = [load_judge(spec, batch_size=settings.batch_size, normalize=settings.normalize,
                         precision=settings.precision, device=device)
              for spec in settings.specs]
    return Ensemble(judges, settings.ensemble_penalty) if isinstance(settings.judge, list) else judges[0]


def load_judge(spec: str, *, batch_size: int = 32, normalize: bool = True, precision: str = "float32",
               device: str | None = None) -> Judge:
    """Resolve ``spec`` (a directory or ``module:function``) to a judge; errors name the spec.

    ``batch_size``, ``normalize``, ``precision`` and ``device`` apply to a reward-model directory only.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return _reward_model_judge(path, batch_size=batch_size, normalize=normalize, precision=precision,
                                   device=device)
    module_name, sep, attr = spec.partition(":")
    if sep and module_name and attr and "/" not in module_name:
        return _callable_judge(spec, module_name, attr)
    why = "no such directory" if not path.exists() else "not a directory"
    raise JudgeError(
        f"reward judge {spec!r}: {why}; a judge is an `align reward` output directory or 'module:function'"
    )


def _reward_model_judge(path: Path, *, batch_size: int, normalize: bool, precision: str,
                        device: str | None) -> Judge:
    from reward_models import RewardScorer

    try:
        scorer = RewardScorer.from_pretrained(path, device=device, batch_size=batch_size, normalize=normalize,
                                              precision=precision)
    except (OSError, ValueError, KeyError) as err:
        raise JudgeError(f"reward judge {str(path)!r}: cannot load a reward model from it: {err}") from err

    def judge(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return scorer.score(list(prompts), list(responses)).float().cpu()

    judge.__name__ = "reward_model"
    judge.scorer = scorer  # type: ignore[attr-defined]
    return judge


def _callable_judge(spec: str, module_name: str, attr: str) -> Judge:
    if os.getcwd() not in sys.path:  # like `python -m`: a module in the working directory is found
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise JudgeError(f"reward judge {spec!r}: cannot import module {module_name!r}: {err}") from err
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise JudgeError(f"reward judge {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise JudgeError(f"reward judge {spec!r}: {attr!r} is a {type(fn).__name__}, not a callable")

    def judge(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        scores = torch.as_tensor(fn(list(prompts), list(responses)), dtype=torch.float32).reshape(-1).cpu()
        if scores.numel() != len(responses):
            raise JudgeError(f"reward judge {spec!r} returned {scores.numel()} scores for {len(responses)} responses")
        return scores

    judge.__name__ = attr.rsplit(".", 1)[-1]
    return judge
