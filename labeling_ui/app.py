"""The Gradio Blocks app: callbacks read the request, validate, call the store and return updates.

    align label serve --project demo --port 7860

Who acts comes from the login (``request.username``), never from a form field; the user is
looked up on every request, so a disabled user or a changed password takes effect at once. Every click
that changes something is one store transaction: a vote or skip writes the label of (item,
annotator); flags, ranks and scores clicked before the vote are kept on the lease as a draft,
so a browser refresh or a server restart resumes the same item with the same clicks. Logins
are kept in the database too (``StoredLogins``), so a restart does not log anyone out.

API endpoints (all need a login; gradio_client: ``Client(url, auth=(name, password))``):

- ``/load``: the annotator's current item; ``/vote`` (item, choice a|b|tie|both_bad or up|down for
  the thumbs task, flags, scores as a JSON list in shown order, then one rating per slot and aspect
  when the project has aspects); ``/rank`` (item, flags, scores, rank per slot, aspect ratings);
  ``/rank_order`` (item, flags, scores, typed order best first such as ``BAC``, aspect ratings);
  ``/skip`` (item, reason, flags); ``/previous`` (item): the annotator's label before this one;
  ``/current``: back to the held item; ``/open_item`` (item): one of the annotator's own labels;
  ``/my_labels``; ``/draft``; ``/diff`` (item, show): a word-level diff of responses A and B.
- admin only: ``/admin_refresh`` (progress per annotator, agreement), ``/admin_items`` (per-item
  agreement table), ``/admin_export``.

Text from users and candidate files (item ids, skip reasons) is escaped wherever it reaches
Markdown or an error toast (which Gradio renders as HTML), so an id cannot become a link or an
image; prompts and responses go through ``labeling_ui.render`` (Markdown without raw HTML,
images or script links). Failed logins are throttled (``labeling_ui.logins``).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from labeling_ui.active import Refresher
from labeling_ui.agreement import format_summary, project_agreement
from labeling_ui.errors import LabelError, NotAllowed
from labeling_ui.export import ExportOptions, export_project
from labeling_ui.logins import LoginGuard, LoginThrottle
from labeling_ui.browser import CSS, SCORE_MARKS_JS, SCRIPT, key_hint
from labeling_ui.render import diff_html, prompt_html, response_html
from labeling_ui.schemas import PAIR_CHOICES, THUMB_CHOICES, ProjectConfig, ranks_from_order, response_name
from labeling_ui.quality import annotator_agreement, answer, gold_accuracy, item_agreement_table, review_queue
from labeling_ui.store import PACE_WINDOW, LabelStore, Task, UserInfo, new_token, pace, parse_vote

logger = logging.getLogger("labeling_ui")

EXPORT_FORMATS = ("jsonl", "json", "parquet")  # what gr.File can hand over: one file
DASHBOARD_SECONDS = 5.0  # the admin dashboard refreshes itself this often
ITEM_ROWS = 500  # rows of the per-item agreement table (least agreement first)
CHOICE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad", "up": "Good",
                 "down": "Bad"}
CHOICE_IDS = {choice: f"{'thumb' if choice in THUMB_CHOICES else 'vote'}-{choice.replace('_', '-')}"
              for choice in CHOICE_LABELS}
BUTTON_LABELS = {choice: f"{label}  {key_hint(CHOICE_IDS[choice])}" for choice, label in CHOICE_LABELS.items()}
# A button sends its own label as the choice; API callers may send the choice itself or a plain label.
BUTTON_CHOICE = {**{label: c for c, label in CHOICE_LABELS.items()}, **{label: c for c, label in BUTTON_LABELS.items()}}


def md_text(text: str) -> str:
    """``text`` shown as itself in Markdown: line breaks flattened, every ASCII punctuation backslash-escaped.

    CommonMark lets any ASCII punctuation be escaped, so no backtick, bracket, ``<`` or ``:`` can
    start a code span, link, autolink or HTML tag. A code span is no shelter: an id holding a
    backtick closes it.
    """
    flat = re.sub(r"[\x00-\x1f\x7f-\x9f]+", " ", text)
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", flat)


def _error(message: str) -> gr.Error:
    """An error toast; Gradio renders its message as HTML, so the message is escaped."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


class StoredLogins(MutableMapping):
    """Gradio's login tokens (token -> user name), kept hashed in the database so logins survive a restart.

    Every lookup asks the database (no cache), so a revoked login ends on its next request.
    """

    def __init__(self, store: LabelStore, hours: float) -> None:
        self.store, self.hours = store, hours
        self.local: set[str] = set()  # tokens seen by this process, for iteration

    def __getitem__(self, token: str) -> str:
        if not isinstance(token, str):
            raise KeyError(token)
        name = self.store.session_user(token)
        if name is None:
            self.local.discard(token)
            raise KeyError(token)
        return name

    def __setitem__(self, token: str, name: str) -> None:
        self.store.create_session(token, name, self.hours)
        self.local.add(token)

    def __delitem__(self, token: str) -> None:
        self.store.drop_session(token)
        self.local.discard(token)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.local))

    def __len__(self) -> int:
        return len(self.local)


# --------------------------------------------------------------------------- view


class View:
    """Turns store results into component updates, in the fixed order of ``outputs``.

    Per item: item id, progress, prompt, the pairwise / ranking / thumbs rows, flags, skip reason,
    message, the hidden scores field, the typed-order box; then per response slot its column, its
    rendered text, rank dropdown, score slider and one rating per aspect.
    """

    def __init__(self, config: ProjectConfig, slots: int) -> None:
        self.config, self.slots = config, slots

    def task(self, task: Task | None, progress: dict[str, Any], message: str = "") -> list[Any]:
        head = (f"**You:** {progress['mine']} of {progress['items']} items · "
                f"**project:** {progress['labels']} of {progress['needed']} labels{_time_left(progress)}")
        if task is None:
            done = "All done: no item needs your label now. Thank you!"
            return [
                "", head, gr.update(value="", visible=False), *[gr.update(visible=False)] * 3,
                gr.update(value=[]), gr.update(value=None), message or done, "[]", "",
                *[update for _ in range(self.slots) for update in self._slot(None, None, None, {}, visible=False)],
            ]
        n = len(task.responses)
        chosen = task.label or task.draft
        ranks = chosen.get("ranks") or [None] * n
        scores = chosen.get("scores") or [None] * n
        aspects = chosen.get("aspects") or {}
        thumbs = self.config.task == "thumbs"
        out = [
            task.item,
            f"{head} · item {md_text(task.item)}",
            gr.update(value=prompt_html(task.prompt), visible=True),
            gr.update(visible=not thumbs and n == 2),
            gr.update(visible=not thumbs and n > 2),
            gr.update(visible=thumbs),
            gr.update(value=list(chosen.get("flags") or [])),
            gr.update(value=None),
            message or self._note(task),
            json.dumps(scores),
            "",
        ]
        for i in range(self.slots):
            if i < n:
                given = {aspect: ratings[i] for aspect, ratings in aspects.items()}
                out += self._slot(task.responses[i], ranks[i], scores[i], given, visible=True, n=n, index=i)
            else:
                out += self._slot(None, None, None, {}, visible=False)
        return out

    def _slot(self, text: str | None, rank: int | None, score: float | None, aspects: dict[str, int | None], *,
              visible: bool, n: int = 0, index: int = 0) -> list[Any]:
        score_cfg = self.config.score
        mid = (score_cfg.minimum + score_cfg.maximum) / 2  # a slider needs a number; "unscored" hides it
        name = response_name(index)
        return [
            gr.update(visible=visible),
            gr.update(value=response_html(text, name) if text is not None else "", label=f"Response {name}"),
            gr.update(visible=visible and n > 2, choices=list(range(1, max(n, 2) + 1)), value=rank),
            gr.update(visible=visible and score_cfg.enabled, value=mid if score is None else score),
            *[gr.update(visible=visible, value=aspects.get(aspect)) for aspect in self.config.aspects],
        ]

    @staticmethod
    def _note(task: Task) -> str:
        if task.label is None:
            return ""
        if task.label["status"] == "skipped":
            what = f"you skipped it ({md_text(task.label['skip_reason'] or '')})"
        elif task.label["choice"] == "ranked":
            what = "your ranks are filled in below"
        else:
            what = f"you chose **{CHOICE_LABELS[task.label['choice']]}**"
        return (f"Revising your label on item {md_text(task.item)} (revision {task.label['revision']}): {what}. "
                "Vote again to change it, or go back to your current item.")


def _time_left(progress: dict[str, Any]) -> str:
    """" · about N min left", from the annotator's recent pace; "" before there is a pace to go by."""
    pace, left = progress.get("seconds_per_label"), progress.get("left_for_me", 0)
    if not pace or not left:
        return ""
    return f" · about {max(1, round(left * pace / 60))} min left at your pace"


def _scores(raw: str | None, n_max: int) -> list[float | None] | None:
    """Scores from the hidden JSON field (shown order, null where the slider was never moved)."""
    if not raw:
        return None
    try:
        values = json.loads(raw)
    except json.JSONDecodeError:
        raise LabelError(f"scores must be a JSON list of numbers or nulls, got {raw[:80]!r}") from None
    if values is None:
        return None
    if not isinstance(values, list) or len(values) > n_max or any(
        v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v))
        for v in values
    ):
        raise LabelError(f"scores must be a JSON list of numbers or nulls, got {raw[:80]!r}")
    return values if any(v is not None for v in values) else None


class ExportFolder:
    """Where admin exports are written for Gradio to hand out: one folder per server, removed at shutdown.

    Gradio copies a returned file into its own cache before it answers, so each export's folder
    is needed only briefly; folders older than ``KEEP_SECONDS`` go at the next export.
    """

    KEEP_SECONDS = 600.0

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="align-export-"))

    def path(self, project: str, kind: str, fmt: str) -> Path:
        """A new file path for one export, inside this folder whatever the project is called."""
        if fmt not in EXPORT_FORMATS:
            raise LabelError(f"format '{fmt}': expected one of {', '.join(EXPORT_FORMATS)}")
        self._prune()
        folder = Path(tempfile.mkdtemp(dir=self.root)).resolve()
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", project).strip(".-")[:64] or "project"  # names from older versions
        out = (folder / f"{stem}-{kind}.{fmt}").resolve()
        if out.parent != folder:
            raise LabelError(f"project '{project}': cannot build a safe export file name")
        return out

    def _prune(self) -> None:
        cutoff = time.time() - self.KEEP_SECONDS
        for folder in self.root.iterdir():
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- callbacks


class Handlers:
    """One method per event: who (from the login), validate, one store call, then the view."""

    def __init__(self, store: LabelStore, project: str, slots: int, exports: ExportFolder) -> None:
        self.store, self.project, self.exports = store, project, exports
        self.config = store.project_config(project)
        self.view = View(self.config, slots)
        self.slots = slots
        active = self.config.active
        self.refresher = Refresher(store, project, active) if active is not None and active.refresh_every else None

    def _who(self, request: gr.Request) -> UserInfo:
        name = getattr(request, "username", None)
        if not name:
            raise _error("Log in first.")
        try:
            return self.store.user(name)
        except NotAllowed as err:
            raise _error(str(err)) from None

    def _admin(self, request: gr.Request) -> UserInfo:
        user = self._who(request)
        if not user.is_admin:
            raise _error(f"admin only: '{user.name}' is an {user.role}")
        return user

    def _show(self, user: UserInfo, task: Task | None, message: str = "") -> list[Any]:
        if task is not None and len(task.responses) > self.slots:
            raise _error(f"item '{task.item}' has {len(task.responses)} responses, more than the {self.slots} this "
                         "server was started with (items imported since?): restart `align label serve`")
        return self.view.task(task, self.store.progress(self.project, user.name), message)

    def _current(self, user: UserInfo, message: str = "") -> list[Any]:
        return self._show(user, self.store.next_task(self.project, user.name), message)

    def _guard(self, action: Any) -> Any:
        try:
            return action()
        except LabelError as err:
            raise _error(str(err)) from None

    def load(self, request: gr.Request) -> list[Any]:
        user = self._who(request)
        role = "admin" if user.is_admin else "annotator"
        who = f"Logged in as **{md_text(user.name)}** ({role}) · project **{md_text(self.project)}**"
        return [*self._current(user), who, gr.update(visible=user.is_admin), gr.Timer(active=user.is_admin)]

    def current(self, request: gr.Request) -> list[Any]:
        return self._current(self._who(request))

    def vote(self, request: gr.Request, item: str, choice: str, flags: list[str] | None, scores: str,
             *aspects: Any) -> list[Any]:
        user = self._who(request)
        choice = BUTTON_CHOICE.get(choice, choice)
        if choice not in CHOICE_LABELS:
            raise _error(f"choice must be one of {', '.join(CHOICE_LABELS)}, got {choice!r}")
        saved = self._submit(user, item=item, choice=choice, flags=flags, scores=scores, aspects=aspects)
        return self._current(user, f"Saved item {md_text(saved['item'])}: {CHOICE_LABELS[choice]}.")

    def rank(self, request: gr.Request, item: str, flags: list[str] | None, scores: str, *values: Any) -> list[Any]:
        """Ranks from the dropdowns (one value per slot), then the aspect ratings."""
        user = self._who(request)
        ranks = [int(r) for r in values[:self.slots] if r not in (None, "")]  # hidden slots hold no rank
        saved = self._submit(user, item=item, ranks=ranks, flags=flags, scores=scores, aspects=values[self.slots:])
        return self._current(user, f"Saved ranking of item {md_text(saved['item'])}.")

    def rank_order(self, request: gr.Request, item: str, flags: list[str] | None, scores: str, order: str,
                   *aspects: Any) -> list[Any]:
        """Ranks from a typed order, best first (``BAC``, ``B=A C``)."""
        user = self._who(request)
        n = len(self._guard(lambda: self.store.own_task(self.project, user.name, item)).responses)
        try:
            ranks = ranks_from_order(order or "", n)
        except ValueError as err:
            raise _error(str(err)) from None
        saved = self._submit(user, item=item, ranks=ranks, flags=flags, scores=scores, aspects=aspects)
        return self._current(user, f"Saved ranking of item {md_text(saved['item'])}: {_order_text(ranks)}.")

    def _submit(self, user: UserInfo, *, flags: list[str] | None, scores: str, aspects: tuple[Any, ...],
                **fields: Any) -> dict[str, Any]:
        """Parse one vote (choice or ranks in ``fields``) and write it: one store transaction."""

        def act() -> dict[str, Any]:
            vote = parse_vote(**fields, flags=flags or [], scores=_scores(scores, self.slots),
                              aspects=self._aspects(aspects))
            return self.store.submit(self.project, user.name, vote)

        saved = self._guard(act)
        if self.refresher is not None:
            self.refresher.after_label()  # re-scores in the background when due
        return saved

    def _aspects(self, values: tuple[Any, ...]) -> dict[str, list[int | None]] | None:
        """Aspect ratings as laid out (per slot, per aspect) -> aspect -> rating per slot; None without aspects."""
        names = self.config.aspects
        if not names or not values:
            return None
        if len(values) != self.slots * len(names):
            raise _error(f"expected {self.slots * len(names)} aspect ratings ({self.slots} slots x {names}), "
                         f"got {len(values)}")
        return {name: [None if v in (None, "") else int(v) for v in values[j::len(names)]]
                for j, name in enumerate(names)}

    def skip(self, item: str, reason: str | None, flags: list[str] | None, request: gr.Request) -> list[Any]:
        user = self._who(request)
        if not reason:
            raise _error("Choose a reason to skip.")
        saved = self._guard(lambda: self.store.submit(
            self.project, user.name, parse_vote(item=item, skip_reason=reason, flags=flags or [])))
        return self._current(user, f"Skipped item {md_text(saved['item'])} ({md_text(reason)}).")

    def previous(self, item: str, request: gr.Request) -> list[Any]:
        user = self._who(request)
        task = self._guard(lambda: self.store.previous_task(self.project, user.name, item or None))
        if task is None:
            raise _error("No earlier label of yours to revise.")
        return self._show(user, task)

    def open_item(self, item: str, request: gr.Request) -> list[Any]:
        user = self._who(request)
        return self._show(user, self._guard(lambda: self.store.own_task(self.project, user.name, item.strip())))

    def draft(self, request: gr.Request, item: str, flags: list[str] | None, scores: str, *ranks: Any) -> None:
        user = self._who(request)
        if not item:
            return
        values = [None if r in (None, "") else int(r) for r in ranks]
        self._guard(lambda: self.store.save_draft(
            self.project, user.name, item, {"flags": flags or [], "ranks": values, "scores": _scores(scores, self.slots)}))

    def diff(self, item: str, show: bool, request: gr.Request) -> Any:
        """A word-level diff of responses A and B of the item on screen, when the annotator asks for it."""
        user = self._who(request)
        if not show or not item:
            return gr.update(value="", visible=False)
        task = self._guard(lambda: self.store.own_task(self.project, user.name, item))
        if len(task.responses) < 2:
            return gr.update(value="", visible=False)
        return gr.update(value=diff_html(task.responses[0], task.responses[1]), visible=True)

    def my_labels(self, request: gr.Request) -> list[list[Any]]:
        user = self._who(request)
        return [
            [row["item"], row["status"], row["choice"] or "", json.dumps(row["ranks_shown"]), ", ".join(row["flags"]),
             row["skip_reason"] or "", row["revision"], _when(row["updated_at"])]
            for row in self.store.my_labels(self.project, user.name)
        ]

    def admin_refresh(self, request: gr.Request) -> tuple[list[list[Any]], str, list[list[Any]]]:
        """The lead's dashboard: per annotator (every active one, labels or not), item progress and agreement,
        and the review queue. A gr.Timer calls it, so it updates without a click."""
        self._admin(request)
        records = self.store.label_records(self.project)
        return (self._people(records),
                format_summary(self.store.item_counts(self.project), project_agreement(records),
                               self.config.labels_per_item) + self._queue_order(),
                [[row["item"], row["labels"], round(row["agreement"], 3)]
                 for row in review_queue(records, self.config.review_below)])

    def _queue_order(self) -> str:
        """A line on how queues are ordered: by the linked reward model's uncertainty, or file order."""
        active = self.config.active
        if active is None:
            return ""
        state = self.store.priority_state(self.project)
        models = md_text(", ".join(active.reward_model))
        if not state:
            return f"\n\nQueue order: linked to {models} ({active.strategy}), not scored yet: file order."
        return (f"\n\nQueue order: least certain first by {models} ({active.strategy}); {state.get('items', 0)} "
                f"items scored at {state.get('labels', 0)} labels, {_when(state.get('scored_at', 0))}.")

    def _people(self, records: list[dict[str, Any]]) -> list[list[Any]]:
        progress = {p["annotator"]: p for p in self.store.annotator_progress(self.project)}
        holding = self.store.live_leases(self.project)
        gold, agree = gold_accuracy(records), annotator_agreement(records)
        times: dict[str, list[float]] = {}
        for rec in records:
            times.setdefault(rec["annotator"], []).append(rec["created_at"])
        names = sorted({u.name for u in self.store.users() if u.status is None and not u.is_admin} | set(progress))
        rows = []
        for name in names:
            p = progress.get(name, {"done": 0, "skipped": 0, "flagged": 0, "last_activity": 0.0})
            seconds = pace(sorted(times.get(name, []), reverse=True)[:PACE_WINDOW + 1])
            n_gold, accuracy = gold.get(name, (0, None))
            rows.append([name, p["done"], p["skipped"], p["flagged"], holding.get(name, 0),
                         round(60 / seconds, 1) if seconds else None, n_gold,
                         None if accuracy is None else round(accuracy, 3),
                         None if name not in agree else round(agree[name][1], 3), _when(p["last_activity"])])
        return rows

    def admin_items(self, request: gr.Request) -> list[list[Any]]:
        """Per item: done labels of K, agreement, the most common answer (stored order) and its votes, state;
        and, in a project linked to a reward model, its priority. Least agreement first, ``ITEM_ROWS`` at most."""
        self._admin(request)
        records = self.store.label_records(self.project)
        rows = item_agreement_table(records, self.config.labels_per_item, self.config.review_below)[:ITEM_ROWS]
        priority = self.store.priorities(self.project) if self.config.active is not None else {}
        return [[r["item"], f"{r['labels']}/{self.config.labels_per_item}",
                 None if r["agreement"] is None else round(r["agreement"], 3), r["answer"], r["votes"], r["state"],
                 None if priority.get(r["item"]) is None else round(priority[r["item"]], 4)] for r in rows]

    def review_item(self, item: str, request: gr.Request) -> str:
        """One item for a lead: responses in stored order (A, B, ... as the adjudication order reads) and each vote."""
        self._admin(request)
        labels = [r for r in self.store.label_records(self.project) if r["item"] == item.strip()]
        if not labels:
            raise _error(f"no labels on item '{item.strip()}' in this project")
        votes = "".join(f"<li>{html.escape(r['annotator'])}: {html.escape(_answer_text(r))}</li>"
                        for r in labels if r["status"] == "done")
        texts = "".join(response_html(resp["text"], response_name(i)) for i, resp in enumerate(labels[0]["responses"]))
        return f"{prompt_html(labels[0]['prompt'])}<ul>{votes}</ul><div class='review'>{texts}</div>"

    def adjudicate(self, item: str, order: str, request: gr.Request) -> str:
        lead = self._admin(request)
        final = self._guard(lambda: self.store.adjudicate(self.project, lead.name, item.strip(), order))
        shown = final if isinstance(final, str) else _order_text(final)
        return f"Item {md_text(item.strip())} settled by {md_text(lead.name)}: {md_text(shown)}."

    def manage_user(self, action: str, name: str, role: str, password: str, request: gr.Request) -> str:
        """Add a user, reset a password (which ends their logins), or disable a user: admins only."""
        admin = self._admin(request)
        name = (name or "").strip()
        if action == "disable":
            if name == admin.name:
                raise _error("you cannot disable yourself")
            self._guard(lambda: self.store.disable_user(name))
            done = "disabled (logged out now)"
        elif action in ("add", "reset password"):
            self._guard(lambda: self.store.add_user(name, role, password or "", update=action != "add"))
            done = "added" if action == "add" else "given a new password (logged out now)"
        else:
            raise _error(f"action must be add, reset password or disable, got {action!r}")
        logger.info("%s: user '%s' %s", admin.name, name, done)
        return f"User {md_text(name)} {done}."

    def admin_export(self, kind: str, ties: str, aggregate: str, min_labels: float, min_agreement: float,
                     fmt: str, request: gr.Request) -> tuple[str, str]:
        admin = self._admin(request)
        opts = self._guard(lambda: ExportOptions(kind=kind, ties=ties, aggregate=aggregate,  # type: ignore[arg-type]
                                                 min_labels=int(min_labels), min_agreement=float(min_agreement)))
        out = self._guard(lambda: self.exports.path(self.project, opts.kind, fmt))
        stats = self._guard(lambda: export_project(self.store, self.project, out, opts, fmt))
        logger.info("%s exported %s", admin.name, stats)
        return str(out), f"Exported {stats['rows']} rows; left out: {stats['left_out'] or 'nothing'}"


def _order_text(ranks: list[int]) -> str:
    """Ranks per response -> ``B > A=C``."""
    return " > ".join("=".join(response_name(i) for i, r in enumerate(ranks) if r == rank) for rank in sorted(set(ranks)))


def _answer_text(record: dict[str, Any]) -> str:
    found = answer(record)
    return found if isinstance(found, str) else _order_text(list(found))


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


# --------------------------------------------------------------------------- layout


def build_app(store: LabelStore, project: str, exports: ExportFolder) -> gr.Blocks:
    slots = store.max_responses(project)
    h = Handlers(store, project, slots, exports)
    cfg = h.config
    with gr.Blocks(title=f"align labeling: {project}") as demo:
        with gr.Row():
            who = gr.Markdown(latex_delimiters=[])
            gr.Button("Log out", link="/logout", size="sm", scale=0)
        with gr.Tab("Label"):
            with gr.Accordion("Guidelines", open=False):
                gr.Markdown(cfg.guideline_text)
            progress = gr.Markdown(elem_id="progress", latex_delimiters=[])  # ids are shown as text, never as math
            item_ref = gr.Textbox(visible=False, label="item")
            scores_json = gr.Textbox(visible=False, label="scores")
            prompt = gr.HTML(label="Prompt", elem_id="prompt")
            columns, texts, rank_boxes, sliders, ratings = [], [], [], [], []
            with gr.Row(equal_height=False):
                for i in range(slots):
                    with gr.Column(min_width=280) as column:
                        columns.append(column)
                        name = response_name(i)
                        texts.append(gr.HTML(label=f"Response {name}", elem_id=f"response-{name.lower()}"))
                        rank_boxes.append(gr.Dropdown(choices=list(range(1, slots + 1)), label="Rank (1 = best)",
                                                      value=None, elem_id=f"rank-{name.lower()}"))
                        sliders.append(gr.Slider(cfg.score.minimum, cfg.score.maximum, step=cfg.score.step,
                                                 label="Score", info="no score until you move it",
                                                 visible=cfg.score.enabled, elem_classes=["score-slider", "unscored"]))
                        ratings.append([gr.Radio(list(range(1, cfg.aspect_scale + 1)), label=aspect.replace("_", " "),
                                                 value=None, elem_classes=["aspect"]) for aspect in cfg.aspects])
            with gr.Row() as pair_row:
                buttons = {c: gr.Button(BUTTON_LABELS[c], elem_id=CHOICE_IDS[c],
                                        variant="primary" if c in ("a", "b") else "secondary") for c in PAIR_CHOICES}
            with gr.Row(visible=False) as thumbs_row:
                buttons |= {c: gr.Button(BUTTON_LABELS[c], elem_id=CHOICE_IDS[c], variant="primary")
                            for c in THUMB_CHOICES}
            with gr.Row(visible=False) as rank_row:
                order_box = gr.Textbox(label="Order, best first: type the letters and press Enter", scale=3,
                                       placeholder="e.g. BAC (= for a tie: B=A C)", elem_id="rank-order")
                submit_rank = gr.Button("Submit ranking (dropdowns)", variant="secondary", elem_id="submit-ranking")
            flags = gr.CheckboxGroup(cfg.flags, label="Flags [f]", elem_id="flags")
            with gr.Row():
                skip_reason = gr.Dropdown(cfg.skip_reasons, label="Skip reason", value=None, scale=2,
                                          elem_id="skip-reason")
                skip_button = gr.Button("Skip [s]", elem_id="skip")
                previous_button = gr.Button(f"Previous (revise) {key_hint('previous')}", elem_id="previous")
                current_button = gr.Button(f"Back to current item {key_hint('current')}", elem_id="current")
            message = gr.Markdown(elem_id="message", latex_delimiters=[])
            show_diff = gr.Checkbox(False, label="Show word differences between A and B", elem_id="show-diff")
            diff_view = gr.HTML(visible=False, elem_id="diff")
        with gr.Tab("My labels") as mine_tab:
            mine = gr.Dataframe(headers=["item", "status", "choice", "ranks (as shown)", "flags", "skip reason",
                                         "revision", "updated"], interactive=False)
            with gr.Row():
                refresh_mine = gr.Button("Refresh")
                open_id = gr.Textbox(label="Item id", scale=2)
                open_button = gr.Button("Open to revise")
        with gr.Tab("Admin", visible=False) as admin_tab:
            timer = gr.Timer(DASHBOARD_SECONDS, active=False)  # switched on for admins at load
            people = gr.Dataframe(headers=["annotator", "done", "skipped", "flagged", "holding", "labels/min",
                                           "gold items", "gold accuracy", "agreement", "last activity"],
                                  interactive=False, elem_id="people")
            summary = gr.Markdown(elem_id="summary")
            refresh_admin = gr.Button("Refresh now")
            gr.Markdown(f"**Review queue**: items whose agreement is below {cfg.review_below}")
            queue = gr.Dataframe(headers=["item", "labels", "agreement"], interactive=False, elem_id="review-queue")
            with gr.Row():
                review_id = gr.Textbox(label="Item id", scale=2)
                review_button = gr.Button("Show item")
                final_order = gr.Textbox(label="Final answer: order best first (BA), or up/down", scale=2)
                adjudicate_button = gr.Button("Settle item", variant="primary")
            review_note = gr.Markdown(latex_delimiters=[])
            review_view = gr.HTML()
            gr.Markdown("**Items**: labels, agreement and the most common answer (responses in file order), "
                        "least agreement first")
            items_table = gr.Dataframe(headers=["item", "labels", "agreement", "answer", "votes", "state", "priority"],
                                       interactive=False, elem_id="items")
            gr.Markdown("**Users**")
            with gr.Row():
                user_action = gr.Radio(["add", "reset password", "disable"], value="add", label="Action")
                user_name = gr.Textbox(label="User name")
                user_role = gr.Radio(["annotator", "admin"], value="annotator", label="Role")
                user_password = gr.Textbox(label="Password", type="password")
                user_button = gr.Button("Apply")
            user_note = gr.Markdown(latex_delimiters=[])
            with gr.Row():
                kind = gr.Radio(["preference", "ranking", "rating"], value="preference", label="Export kind")
                ties = gr.Radio(["drop", "keep"], value="drop", label="Ties")
                aggregate = gr.Radio(["none", "majority"], value="none", label="Aggregate")
            with gr.Row():
                min_labels = gr.Number(1, precision=0, minimum=1, label="Min labels per item")
                min_agreement = gr.Slider(0, 1, value=0, step=0.05, label="Min agreement")
                fmt = gr.Radio(list(EXPORT_FORMATS), value="jsonl", label="Format")
            export_button = gr.Button("Export")
            export_file = gr.File(label="Exported file")
            export_note = gr.Markdown()

        outputs = [item_ref, progress, prompt, pair_row, rank_row, thumbs_row, flags, skip_reason, message,
                   scores_json, order_box]
        for i in range(slots):
            outputs += [columns[i], texts[i], rank_boxes[i], sliders[i], *ratings[i]]
        aspect_inputs = [radio for slot in ratings for radio in slot]

        demo.load(h.load, None, [*outputs, who, admin_tab, timer], api_name="load")
        for choice, button in buttons.items():
            # One handler for every choice button: the button's own label is the choice.
            button.click(h.vote, [item_ref, button, flags, scores_json, *aspect_inputs], outputs,
                         api_name="vote" if choice == "a" else None,
                         api_visibility="public" if choice == "a" else "undocumented")
        submit_rank.click(h.rank, [item_ref, flags, scores_json, *rank_boxes, *aspect_inputs], outputs, api_name="rank")
        order_box.submit(h.rank_order, [item_ref, flags, scores_json, order_box, *aspect_inputs], outputs,
                         api_name="rank_order")
        skip_button.click(h.skip, [item_ref, skip_reason, flags], outputs, api_name="skip")
        previous_button.click(h.previous, [item_ref], outputs, api_name="previous")
        current_button.click(h.current, None, outputs, api_name="current")
        open_button.click(h.open_item, [open_id], outputs, api_name="open_item")
        refresh_mine.click(h.my_labels, None, mine, api_name="my_labels")
        mine_tab.select(h.my_labels, None, mine, api_visibility="private")
        draft_inputs = [item_ref, flags, scores_json, *rank_boxes]
        gr.on([flags.input, *[box.input for box in rank_boxes]], h.draft, draft_inputs, None,
              api_name="draft", trigger_mode="always_last", show_progress="hidden")
        for i, slider in enumerate(sliders):
            # The browser records which sliders were moved (an untouched one is no score, null); a release saves the draft.
            slider.input(None, [slider, scores_json], scores_json, queue=False, api_visibility="private",
                         js=f"(v, s) => {{ let a = []; try {{ a = JSON.parse(s) || []; }} catch (e) {{}} "
                            f"while (a.length < {i + 1}) a.push(null); a[{i}] = v; return JSON.stringify(a); }}")
            slider.release(h.draft, draft_inputs, None, api_visibility="private", show_progress="hidden")
        scores_json.change(None, scores_json, None, js=SCORE_MARKS_JS, queue=False, api_visibility="private")
        refresh_admin.click(h.admin_refresh, None, [people, summary, queue], api_name="admin_refresh")
        timer.tick(h.admin_refresh, None, [people, summary, queue], api_visibility="private", show_progress="hidden")
        refresh_admin.click(h.admin_items, None, items_table, api_name="admin_items")
        timer.tick(h.admin_items, None, items_table, api_visibility="private", show_progress="hidden")
        gr.on([show_diff.change, item_ref.change], h.diff, [item_ref, show_diff], diff_view, api_name="diff",
              show_progress="hidden")
        review_button.click(h.review_item, [review_id], review_view, api_name="review_item")
        adjudicate_button.click(h.adjudicate, [review_id, final_order], review_note, api_name="adjudicate").then(
            h.admin_refresh, None, [people, summary, queue], api_visibility="private").then(
            h.admin_items, None, items_table, api_visibility="private")
        user_button.click(h.manage_user, [user_action, user_name, user_role, user_password], user_note,
                          api_name="manage_user")
        export_button.click(h.admin_export, [kind, ties, aggregate, min_labels, min_agreement, fmt],
                            [export_file, export_note], api_name="admin_export")
    return demo


def serve(db: str, project: str, *, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True,
          concurrency: int = 8, quiet: bool = False, throttle: LoginThrottle | None = None) -> gr.Blocks:
    """Start the app for ``project``; with ``block=False`` return the running Blocks (``demo.close()`` stops it)."""
    store = LabelStore(db)
    config = store.project_config(project)  # unknown project: refused before anything starts
    _warn_if_nobody_can_log_in(store)
    exports = ExportFolder()
    demo = build_app(store, project, exports)
    demo.queue(default_concurrency_limit=concurrency)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        _keep_logins(app, store, config.session_hours)  # at startup, before the first request is accepted
        try:
            yield
        finally:
            exports.close()

    demo.launch(
        auth=store.authenticate,
        auth_message=f"align labeling · project {html.escape(project)}: log in with the name and password your admin "
                     "gave you. After several wrong passwords, wait a minute before the next try.",
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=quiet,
        ssr_mode=False,
        show_error=True,
        head=SCRIPT,
        css=CSS,
        app_kwargs={"lifespan": lifespan, "middleware": [Middleware(LoginGuard, throttle=throttle or LoginThrottle())]},
    )
    logger.info("labeling project '%s' at %s (database %s)", project, demo.local_url, store.url)
    if block:
        demo.block_thread()
    return demo


def _warn_if_nobody_can_log_in(store: LabelStore) -> None:
    if not any(user.status is None for user in store.users()):
        logger.warning("no users in %s: nobody can log in; add one with "
                       "`align label add-user NAME --role admin --db %s`", store.url, store.url)


def _keep_logins(app: Any, store: LabelStore, hours: float) -> None:
    """Back Gradio's in-memory login tokens with the database, under a cookie name that outlives the process."""
    if not hasattr(app, "tokens") or not hasattr(app, "cookie_id"):
        logger.warning("this Gradio version keeps logins in memory only: a restart logs annotators out (no labels are lost)")
        return
    app.cookie_id = store.setting("cookie_id", new_token)
    app.tokens = StoredLogins(store, hours)
