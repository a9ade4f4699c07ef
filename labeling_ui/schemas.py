"""What crosses a boundary, kept apart from the database tables: project config, candidate rows, votes.

A project's config is YAML-able and strict like a recipe (an unknown key names the closest
valid one). A candidate row is one line of ``align generate``'s output. A vote is what a
callback hands the store, in the order the annotator saw the responses; the store maps it back
to the stored order.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from align.config import Section
from align.data import DataError, validate_row
from align.data.records import FormChecker, describe
from labeling_ui.errors import LabelError

# a|b|tie|both_bad compare two responses; up|down judge one alone (the thumbs task: the unpaired feedback KTO trains on)
Choice = Literal["a", "b", "tie", "both_bad", "up", "down"]
PAIR_CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
THUMB_CHOICES: tuple[str, ...] = ("up", "down")

# A project name becomes part of a file name (admin export): a slug, so it can never be a path.
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Column sizes in labeling_ui.db: checked here so SQLite (which ignores them) and PostgreSQL agree.
MAX_PROJECT_NAME = 128
MAX_ITEM_ID = 255
MAX_SKIP_REASON = 200
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # ... and every control character

DEFAULT_GUIDELINES = """\
Read the prompt, then every response in full.

- **Better** means more helpful, more correct and safer, in that order.
- **Tie**: both are about equally good. **Both bad**: neither is acceptable.
- With more than two responses, give each a rank (1 is best); equal numbers are ties.
- Flag a response that is unsafe or nonsense; skip an item you cannot judge, with a reason.
- Keyboard: `1`/`a` A better, `2`/`b` B better, `3`/`t` tie, `4`/`x` both bad; with more responses type
  the order, best first (`BAC`, `=` for a tie: `B=A C`) and press Enter; `e` shows long responses in full.
"""

THUMBS_GUIDELINES = """\
Read the prompt and the response in full, then judge the response on its own.

- **Good** (`u`): helpful, correct and safe; you would be glad to receive it.
- **Bad** (`d`): unhelpful, wrong or unsafe in any way that matters.
- Flag a response that is unsafe or nonsense; skip an item you cannot judge, with a reason.
"""


class ScoreSettings(Section):
    enabled: bool = Field(False, description="Show a score slider under each response.")
    minimum: float = Field(1.0, allow_inf_nan=False, description="Lowest score.")
    maximum: float = Field(7.0, allow_inf_nan=False, description="Highest score.")
    step: float = Field(0.1, gt=0, allow_inf_nan=False, description="Slider step.")
    required: bool = Field(False, description="A vote needs a score for every response.")

    @model_validator(mode="after")
    def _ordered(self) -> ScoreSettings:
        if self.minimum >= self.maximum:
            raise ValueError(f"score.minimum={self.minimum} must be below score.maximum={self.maximum}")
        return self


class ActiveSettings(Section):
    reward_model: list[str] = Field(
        ..., min_length=1, description="Judges whose uncertainty orders every annotator's queue: `align reward` "
        "output dirs (or module:function); several make an ensemble."
    )
    strategy: Literal["margin", "ensemble"] = Field(
        "margin", description="margin: the smallest gap between an item's response scores (the mean score over "
        "several models) goes first; ensemble: the largest disagreement between models, the std of their score "
        "differences, goes first (needs 2+ models)."
    )
    refresh_every: int = Field(
        0, ge=0, description="The server re-scores every item after this many new labels, when a reward model on "
        "disk changed since the last scoring (a module:function judge is always re-scored); 0: never."
    )
    batch_size: int = Field(32, gt=0, description="Pairs per forward pass of a reward model.")

    @field_validator("reward_model", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ensemble_size(self) -> ActiveSettings:
        if self.strategy == "ensemble" and len(self.reward_model) < 2:
            raise ValueError(f"active.strategy=ensemble needs 2 or more reward models; active.reward_model="
                             f"{self.reward_model} has {len(self.reward_model)}")
        return self


class ProjectConfig(Section):
    task: Literal["compare", "thumbs"] = Field(
        "compare", description="compare: rank an item's responses; thumbs: one response, good or bad (import splits "
        "a row with several responses into one item per response, ids ID#1, ID#2, ...)."
    )
    labels_per_item: int = Field(3, gt=0, description="K: labels each item needs, from K distinct annotators.")
    lease_seconds: int = Field(
        1800, gt=0, description="An item handed to an annotator is held for them this long before others may take it."
    )
    guidelines: str | None = Field(None, description="Markdown shown in the guidelines panel (default: per task).")
    shuffle: bool = Field(True, description="Show responses in an order drawn per item and annotator.")
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    flags: list[str] = Field(default_factory=lambda: ["unsafe", "nonsense"], description="Flags an annotator may set.")
    skip_reasons: list[str] = Field(
        default_factory=lambda: ["cannot judge", "prompt unclear", "responses too long", "other"],
        min_length=1,
        description="Reasons offered when skipping an item.",
    )
    session_hours: float = Field(
        12.0, gt=0, allow_inf_nan=False, description="A login stays valid this long, across server restarts."
    )
    aspects: list[str] = Field(
        default_factory=list, description="Aspects each response is rated on, 1..aspect_scale (UltraFeedback: "
        "helpfulness, honesty, harmlessness, instruction_following); none by default."
    )
    aspect_scale: int = Field(5, ge=2, le=10, description="Aspect ratings run from 1 (worst) to this.")
    review_below: float = Field(
        0.75, ge=0, le=1, description="Items with 2+ labels whose agreement is lower go to the leads' review queue."
    )
    gold_rate: float = Field(
        0.0, ge=0, le=1, description="Share of an annotator's items drawn from the gold items (rows with a 'gold' "
        "answer: an order such as 'BA' or ranks [2, 1] in file order, or up/down for thumbs), while any are left "
        "for them. Every annotator may label every gold item, whatever K is."
    )
    active: ActiveSettings | None = Field(
        None, description="Link a reward model: queues serve the items it is least sure of first (none: file order)."
    )

    @field_validator("aspects")
    @classmethod
    def _distinct_aspects(cls, aspects: list[str]) -> list[str]:
        bad = [a for a in aspects if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", a)]
        if bad or len(set(aspects)) != len(aspects):
            raise ValueError(f"aspects {aspects}: distinct lower-case names (letters, digits, '_') expected")
        return aspects

    @property
    def guideline_text(self) -> str:
        if self.guidelines is not None:
            return self.guidelines
        return THUMBS_GUIDELINES if self.task == "thumbs" else DEFAULT_GUIDELINES

    @property
    def min_responses(self) -> int:
        """Responses an item needs: one to judge alone, two to compare."""
        return 1 if self.task == "thumbs" else 2


# --------------------------------------------------------------------------- names and stored text


def text_problem(text: str, max_length: int, *, controls: bool = False) -> str | None:
    """Why ``text`` cannot be stored as a name or id on both databases (None if it can).

    PostgreSQL refuses NUL bytes, lone surrogates (not UTF-8) and strings longer than the column;
    SQLite takes all three, so both are held to the stricter rule here. ``controls`` also refuses
    every control character (a newline in an id would break the lines it is shown in).
    """
    if len(text) > max_length:
        return f"{len(text)} characters, at most {max_length} allowed"
    bad = (_CONTROLS if controls else _UNSTORABLE).search(text)
    if bad:
        return f"contains the character U+{ord(bad.group()):04X} at position {bad.start()}"
    return None


def check_project_name(name: str) -> str:
    """``name`` if it is a safe slug for a new project; LabelError otherwise."""
    if not PROJECT_NAME.fullmatch(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise LabelError(
            f"project name {shown!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(it becomes part of file names)"
        )
    return name


def storable(value: Any, where: str, field: str) -> None:
    """Refuse, naming the field, what a JSON column cannot hold on PostgreSQL: NaN/Infinity, lone surrogates."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(where, f"{value} is not a finite number (JSON has no NaN or Infinity)", field)
    if isinstance(value, str) and (problem := text_problem(value, len(value))):
        raise DataError(where, f"not valid text: {problem}", field)
    if isinstance(value, dict):
        for key, inner in value.items():
            storable(str(key), where, field)
            storable(inner, where, f"{field}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            storable(inner, where, f"{field}[{i}]")


class PromptForms(FormChecker):
    """One prompt form per project (all strings or all message lists), as its exports need."""

    def __init__(self) -> None:
        super().__init__("prompt")

    def check_prompt(self, prompt: Any, where: str) -> None:
        self.check({"prompt": prompt}, where)


# --------------------------------------------------------------------------- candidates


def parse_candidate(row: Any, where: str) -> dict[str, Any]:
    """One candidates-file row -> ``{key, prompt, responses: [{text, model}], meta}``; DataError names the field.

    A response is ``{"text": ..., "model": ...}`` or a bare string (model unknown). Keys other than
    id, prompt and responses are kept in ``meta``, and so are a response's keys other than text and model.
    """
    if not isinstance(row, dict):
        raise DataError(where, f"expected an object (one candidate item), got {describe(row)}")
    if "id" not in row:
        raise DataError(where, f"missing (row has: {', '.join(sorted(row)) or 'nothing'})", "id")
    key = row["id"]
    if isinstance(key, bool) or not isinstance(key, (str, int)) or not str(key).strip():
        raise DataError(where, f"expected a non-empty string or integer, got {describe(key)}", "id")
    if problem := text_problem(str(key), MAX_ITEM_ID, controls=True):
        raise DataError(where, problem, "id")
    prompt = validate_row("prompt", row, where)["prompt"]
    responses = row.get("responses")
    if not isinstance(responses, list) or not responses:
        raise DataError(where, f"expected a list of responses {{text, model}}, got {describe(responses)}", "responses")
    parsed = []
    for i, resp in enumerate(responses):
        if isinstance(resp, str):
            resp = {"text": resp}
        if not isinstance(resp, dict):
            raise DataError(where, f"expected {{text, model}} or a string, got {describe(resp)}", f"responses[{i}]")
        text, model = resp.get("text"), resp.get("model")
        if not isinstance(text, str):
            raise DataError(where, f"expected a string, got {describe(text)}", f"responses[{i}].text")
        if model is not None and not isinstance(model, str):
            raise DataError(where, f"expected a string or null, got {describe(model)}", f"responses[{i}].model")
        extra = {k: v for k, v in resp.items() if k not in ("text", "model")}
        parsed.append({"text": text, "model": model, **({"meta": extra} if extra else {})})
    meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "responses")}
    for name, value in (("prompt", prompt), ("responses", parsed), ("meta", meta)):
        storable(value, where, name)
    return {"key": str(key), "prompt": prompt, "responses": parsed, "meta": meta}


def labelable_responses(responses: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int]:
    """Drop empty texts and merge identical ones (models joined by '+'): (kept, n_empty, n_merged).

    An empty response cannot be a dataset-layer completion, and two identical texts cannot get
    different ranks, so neither is worth an annotator's time.
    """
    kept: list[dict[str, Any]] = []
    by_text: dict[str, dict[str, Any]] = {}
    n_empty = n_merged = 0
    for resp in responses:
        if not resp["text"].strip():
            n_empty += 1
            continue
        same = by_text.get(resp["text"])
        if same is not None:
            n_merged += 1
            models = (same["model"] or "?").split("+")
            if (resp["model"] or "?") not in models:
                same["model"] = "+".join(models + [resp["model"] or "?"])
            continue
        copy = dict(resp)
        by_text[resp["text"]] = copy
        kept.append(copy)
    return kept, n_empty, n_merged


# --------------------------------------------------------------------------- votes


class Vote(Section):
    """One annotator action on one item, in the order the responses were shown.

    Exactly one of ``choice`` (a|b|tie|both_bad for two responses, up|down for the thumbs task),
    ``ranks`` (rank per shown response, 1 best, equal numbers tie) or ``skip_reason`` is set.
    ``aspects`` maps an aspect to a rating (1..aspect_scale, or None) per shown response.
    """

    item: str = Field(..., min_length=1, description="Item id (the candidates file's id).")
    choice: Choice | None = None
    ranks: list[int] | None = None
    aspects: dict[str, list[int | None]] | None = None
    scores: list[float | None] | None = Field(None, description="Score per shown response, or None where not given.")
    flags: list[str] = Field(default_factory=list)
    skip_reason: str | None = None

    @field_validator("item")
    @classmethod
    def _storable_id(cls, item: str) -> str:
        if problem := text_problem(item, MAX_ITEM_ID):
            raise ValueError(problem)
        return item

    @field_validator("skip_reason")
    @classmethod
    def _storable_reason(cls, reason: str | None) -> str | None:
        if reason is not None and (problem := text_problem(reason, MAX_SKIP_REASON, controls=True)):
            raise ValueError(problem)
        return reason

    @model_validator(mode="after")
    def _one_action(self) -> Vote:
        given = [name for name in ("choice", "ranks", "skip_reason") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a vote needs exactly one of choice, ranks or skip_reason; got {given or 'none'}")
        return self

    def aspect_ratings(self, n_responses: int) -> dict[str, list[int | None]]:
        """The aspects with at least one rating, each as exactly one entry per response (shown order)."""
        out = {}
        for aspect, ratings in (self.aspects or {}).items():
            fitted = (list(ratings) + [None] * n_responses)[:n_responses]
            if any(r is not None for r in fitted):
                out[aspect] = fitted
        return out

    @property
    def status(self) -> str:
        return "skipped" if self.skip_reason is not None else "done"

    def check(self, n_responses: int, config: ProjectConfig) -> None:
        """Raise ValueError if this vote does not fit an item of ``n_responses`` under ``config``."""
        thumbs = config.task == "thumbs"
        if self.choice in THUMB_CHOICES and not thumbs:
            raise ValueError(f"'{self.choice}' is a thumbs choice; this project compares responses")
        if thumbs and (self.ranks is not None or self.choice in PAIR_CHOICES):
            raise ValueError("this project is a thumbs task: vote up or down")
        if self.choice in PAIR_CHOICES and n_responses != 2:
            raise ValueError(f"a pairwise choice needs 2 responses; item {self.item} has {n_responses}: rank them")
        if self.ranks is not None:
            if len(self.ranks) != n_responses:
                raise ValueError(
                    f"{len(self.ranks)} rank(s) given, item {self.item} has {n_responses} responses: rank every response"
                )
            bad = [r for r in self.ranks if not 1 <= r <= n_responses]
            if bad:
                raise ValueError(f"ranks must lie in 1..{n_responses}, got {bad}")
        if self.skip_reason is not None and not self.skip_reason.strip():
            raise ValueError("a skip needs a reason")
        unknown = sorted(set(self.flags) - set(config.flags))
        if unknown:
            raise ValueError(f"unknown flag(s) {unknown}; this project's flags: {config.flags}")
        if self.scores is not None:
            if len(self.scores) != n_responses:
                raise ValueError(f"scores has {len(self.scores)} entries, item {self.item} has {n_responses} responses")
            lo, hi = config.score.minimum, config.score.maximum
            bad_scores = [s for s in self.scores if s is not None and not lo <= s <= hi]
            if bad_scores:
                raise ValueError(f"scores must lie in [{lo}, {hi}], got {bad_scores}")
        for aspect, ratings in (self.aspects or {}).items():
            if aspect not in config.aspects:
                raise ValueError(f"unknown aspect '{aspect}'; this project's aspects: {config.aspects}")
            extra = ratings[n_responses:]  # the app sends a value per slot; slots past the item's responses are empty
            if any(r is not None for r in extra) or any(r is not None and not 1 <= r <= config.aspect_scale
                                                        for r in ratings):
                raise ValueError(f"aspect '{aspect}': one rating in 1..{config.aspect_scale} (or null) per response "
                                 f"of {n_responses}, got {ratings}")
        wants_all = config.score.enabled and config.score.required and self.status == "done"
        if wants_all and (self.scores is None or any(s is None for s in self.scores)):
            raise ValueError("this project requires a score for every response")


def response_name(index: int) -> str:
    """A, B, ..., Z, AA, AB, ... (as spreadsheet columns): every response has a name, however many there are."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def ranks_from_order(order: str, n: int) -> list[int]:
    """Ranks per shown response (1 best) from a typed order, best first: ``"BAC"`` -> ``[2, 1, 3]``.

    ``=`` joins tied responses (``"B=A C"`` -> ``[1, 1, 2]``); spaces, commas and ``>`` separate.
    Up to 26 responses each letter is a response, so ``"BAC"`` needs no separators; past that,
    names (``AA``) are separated. Every response must appear exactly once: a ValueError names
    the unknown, repeated or missing ones.
    """
    names = [response_name(i) for i in range(n)]
    tokens = re.findall(r"[A-Z]+|=", order.upper())
    if n <= 26:
        tokens = [part for token in tokens for part in (token if token != "=" else [token])]
    groups: list[list[str]] = []
    joined = False
    for token in tokens:
        if token == "=":
            joined = bool(groups)
            continue
        if joined:
            groups[-1].append(token)
        else:
            groups.append([token])
        joined = False
    given = [name for group in groups for name in group]
    unknown = sorted(set(given) - set(names))
    repeated = sorted({name for name in given if given.count(name) > 1})
    missing = [name for name in names if name not in given]
    problems = [f"{what}: {', '.join(which)}" for what, which in
                (("unknown", unknown), ("given twice", repeated), ("missing", missing)) if which]
    if problems:
        raise ValueError(f"order {order.strip()!r} ({'; '.join(problems)}): give each of {names[0]}-{names[-1]} once, "
                         "best first")
    rank_of = {name: rank for rank, group in enumerate(groups, 1) for name in group}
    return [rank_of[name] for name in names]


def gold_answer(value: Any, n_responses: int, task: str, where: str) -> list[int] | str:
    """A candidates row's ``gold``: ranks per response in file order (from ``[2, 1]`` or an order ``"BA"``),
    or ``"up"``/``"down"`` for the thumbs task; DataError naming the field otherwise."""
    if task == "thumbs":
        if value not in THUMB_CHOICES:
            raise DataError(where, f"a thumbs task's gold answer is 'up' or 'down', got {describe(value)}", "gold")
        return value
    try:
        if isinstance(value, str):
            return ranks_from_order(value, n_responses)
        if (isinstance(value, list) and len(value) == n_responses
                and all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= n_responses for r in value)):
            return list(value)
    except ValueError as err:
        raise DataError(where, str(err), "gold") from None
    raise DataError(where, f"expected an order such as 'BA' or {n_responses} ranks in 1..{n_responses}, "
                    f"got {describe(value)}", "gold")


def dense_ranks(values: list[float]) -> list[int]:
    """Rank 1 for the smallest value, equal values share a rank, no gaps: [2.5, 1, 2.5] -> [2, 1, 2]."""
    order = {v: i + 1 for i, v in enumerate(sorted(set(values)))}
    return [order[v] for v in values]
