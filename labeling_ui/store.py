"""The labeling store: every read and write is one short transaction, and nothing here knows Gradio.

    from labeling_ui.store import LabelStore
    store = LabelStore("sqlite:///labels.db")
    task = store.next_task("demo", "alice")          # lease an item (or resume the one held)
    store.submit("demo", "alice", Vote(item=task.item, choice="a"))

Assignment. Each item needs ``labels_per_item`` (K) labels from distinct annotators. An item is
handed to annotator u only if u has no label on it (done or skipped) and its done labels plus the
live leases of other annotators number fewer than K; the lease holds for ``lease_seconds``. An
annotator holds one lease per project: asking again returns the same item (a browser refresh or
a server restart resumes it, draft clicks included). Leasing is serialised per project (a
``FOR UPDATE`` lock on the project row on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two
annotators asking at once cannot push an item past K.

Users. A password change ends the user's logins; ``disable_user`` ends them and refuses the
user from the next request on (``add_user(..., update=True)`` enables them again);
``remove_user`` does the same for good, and keeps the row so their labels stay attributed.

Labels are keyed by (item, annotator): a second vote on the same item revises the label (its
``revision`` goes up), it never adds a row. A vote needs the annotator's lease on the item or an
earlier label of theirs (a revision); an expired lease still counts, so late work is kept even
if it takes an item past K. Skips count against nobody's K but keep the item from that annotator.

Order. An annotator is offered items already under way first (most labels done or leased), then
in import order. A project linked to a reward model (``active`` in its config) puts the items
the model is least sure of before that: each item's ``priority`` (``labeling_ui.active``), highest
first, items not yet scored last. Gold items and K work as without it.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from align.data import DataError
from labeling_ui.db import (
    Item,
    Label,
    Lease,
    LoginSession,
    Project,
    Setting,
    User,
    make_engine,
    normalize_url,
)
from labeling_ui.errors import LabelError, NotAllowed, UnknownProject
from labeling_ui.passwords import (
    DUMMY_HASH,
    check_strength,
    hash_password,
    verify_password,
)
from labeling_ui.schemas import (
    MAX_ITEM_ID,
    MAX_PROJECT_NAME,
    ProjectConfig,
    PromptForms,
    Vote,
    check_project_name,
    gold_answer,
    labelable_responses,
    text_problem,
)

T = TypeVar("T")
ROLES = ("annotator", "admin")
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
RETRIES = 5
PACE_WINDOW = 20  # labels the time-left estimate looks back over
PACE_BREAK = 600.0  # a longer gap between two labels is a break, not work


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: str
    status: str | None = None  # None while active, else "disabled" or "removed"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass
class Task:
    """An item as one annotator sees it: responses in their shown order, and what they already chose.

    ``label`` is set when the annotator revises an earlier label of theirs (choice, ranks, scores
    and flags in shown order); ``draft`` holds clicks saved before a vote.
    """

    project: str
    item: str
    prompt: Any
    responses: list[str]
    order: list[int]
    draft: dict[str, Any] = field(default_factory=dict)
    label: dict[str, Any] | None = None
    expires_at: float | None = None


@dataclass
class ImportReport:
    added: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: why"
    empty_responses: int = 0
    merged_responses: int = 0


def shown_order(project: str, item: str, user: str, n: int, shuffle: bool = True) -> list[int]:
    """The order annotator ``user`` sees item ``item``'s ``n`` responses in: stable, different per annotator."""
    order = list(range(n))
    if shuffle:
        seed = hashlib.sha256(f"{project}\0{item}\0{user}".encode()).digest()
        random.Random(seed).shuffle(order)
    return order


def to_stored(values: list[Any] | None, order: list[int]) -> list[Any] | None:
    """Shown order -> stored order: ``values[j]`` belongs to response ``order[j]``."""
    if values is None:
        return None
    out: list[Any] = [None] * len(order)
    for position, index in enumerate(order):
        out[index] = values[position]
    return out


def to_shown(values: list[Any] | None, order: list[int]) -> list[Any] | None:
    return None if values is None else [values[index] for index in order]


def choice_ranks(choice: str) -> list[int] | None:
    """Ranks of the shown responses for a choice; None for both_bad and thumbs up/down (no order between responses)."""
    return {"a": [1, 2], "b": [2, 1], "tie": [1, 1]}.get(choice)


class LabelStore:
    """All database work of the labeling tool. Thread-safe; one instance per process and database."""

    def __init__(self, db: str) -> None:
        self.url = normalize_url(db)
        self.engine = self._engine_with_retry()
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # Every write transaction takes SQLite's write lock at BEGIN; PostgreSQL uses row locks instead.
        self._write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE") if self.is_sqlite else self.engine

    def _engine_with_retry(self):
        # Two processes creating the tables at once on PostgreSQL: the loser sees a duplicate; the tables exist.
        for attempt in range(3):
            try:
                return make_engine(self.url)
            except (IntegrityError, DBAPIError):
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()

    # ----------------------------------------------------------------------- transactions

    @contextmanager
    def _session(self, write: bool) -> Iterator[Session]:
        with Session(self._write_engine if write else self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def _transact(self, work: Callable[[Session], T], write: bool = True) -> T:
        """Run ``work`` in one transaction; retry when a concurrent writer won a unique-key race."""
        for attempt in range(RETRIES):
            try:
                with self._session(write) as session:
                    return work(session)
            except IntegrityError:
                if attempt == RETRIES - 1:
                    raise
            except DBAPIError as err:  # PostgreSQL deadlock / serialization failure: retry
                if attempt == RETRIES - 1 or getattr(err.orig, "sqlstate", None) not in ("40001", "40P01"):
                    raise
            time.sleep(0.01 * (attempt + 1) * random.random())
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------------- lookups

    @staticmethod
    def _find_project(session: Session, name: str, lock: bool = False) -> Project | None:
        if text_problem(name, MAX_PROJECT_NAME) is not None:  # no such project can exist, and PostgreSQL would raise
            return None
        query = select(Project).where(Project.name == name)
        return session.scalars(query.with_for_update() if lock else query).first()

    def _project(self, session: Session, name: str, lock: bool = False) -> Project:
        project = self._find_project(session, name, lock)
        if project is None:
            known = session.scalars(select(Project.name).order_by(Project.name)).all()
            listing = ", ".join(known) if known else "none yet"
            raise UnknownProject(
                f"no labeling project '{name}' in {self.url} (projects: {listing}); "
                "create one with `align label import CANDIDATES.jsonl --project NAME`"
            )
        return project

    def _user(self, session: Session, name: str, *, active: bool = True) -> User:
        """The user called ``name``; with ``active``, refused once disabled or removed."""
        user = session.scalars(select(User).where(User.name == name)).first() if USER_NAME.fullmatch(name) else None
        if user is None:
            raise NotAllowed(f"unknown user '{name[:80]}'")
        if active and user.status is not None:
            raise NotAllowed(f"user '{name}' is {user.status}")
        return user

    def _item(self, session: Session, project: Project, key: str) -> Item:
        item = None
        if text_problem(key, MAX_ITEM_ID) is None:
            item = session.scalars(select(Item).where(Item.project_id == project.id, Item.key == key)).first()
        if item is None:
            raise LabelError(f"no item '{key[:80]}' in project '{project.name}'")
        return item

    # ----------------------------------------------------------------------- projects

    def create_project(self, name: str, config: ProjectConfig | None = None, *, update: bool = False) -> ProjectConfig:
        """Create project ``name`` (or, with ``update``, replace an existing project's config); return its config."""

        def work(session: Session) -> ProjectConfig:
            return ProjectConfig.model_validate(self._upsert_project(session, name, config, update).config)

        return self._transact(work)

    def _upsert_project(self, session: Session, name: str, config: ProjectConfig | None, update: bool) -> Project:
        """Project ``name``, created (a safe slug only) if missing; ``config`` replaces its config when ``update``.

        Only a new name must be a slug: a project made by an older version keeps working under its name.
        """
        project = self._find_project(session, name)
        if project is None:
            project = Project(name=check_project_name(name), config=(config or ProjectConfig()).model_dump(mode="json"),
                              created_at=time.time())
            session.add(project)
            session.flush()
        elif update and config is not None:
            project.config = config.model_dump(mode="json")
        return project

    def project_config(self, name: str) -> ProjectConfig:
        return self._transact(lambda s: ProjectConfig.model_validate(self._project(s, name).config), write=False)

    def projects(self) -> list[str]:
        return self._transact(lambda s: list(s.scalars(select(Project.name).order_by(Project.name))), write=False)

    def max_responses(self, project: str) -> int:
        def work(session: Session) -> int:
            proj = self._project(session, project)
            lengths = [len(r) for r in session.scalars(select(Item.responses).where(Item.project_id == proj.id))]
            return max([2, *lengths])

        return self._transact(work, write=False)

    def import_items(self, project: str, rows: list[tuple[str, dict[str, Any]]], config: ProjectConfig | None = None,
                     *, create: bool = False) -> ImportReport:
        """Add parsed candidate rows ``(where, row)`` in one transaction: all of the file or none of it.

        With ``create`` a missing project is created, and ``config`` (if given) becomes the project's
        config, in the same transaction: a failed import changes no setting and leaves no empty
        project behind. A row whose id is already in the project with the same prompt and responses
        is left alone (importing a file twice is harmless); with different content it is an error
        naming the line, so labels already given are never silently attached to other text. Every
        prompt must have the form (string or messages) of the project's first one, or the project
        could not be exported.
        """

        def work(session: Session) -> ImportReport:
            if create:
                proj = self._upsert_project(session, project, config, update=True)
            else:
                proj = self._project(session, project)
            cfg = ProjectConfig.model_validate(proj.config)
            report = ImportReport()
            existing = {item.key: item for item in session.scalars(
                select(Item).where(Item.project_id == proj.id).order_by(Item.id))}
            forms = PromptForms()
            for item in list(existing.values())[:1]:
                forms.check_prompt(item.prompt, item.source)
            seen: dict[str, str] = {}
            now = time.time()
            for where, row in (split_for_thumbs(rows) if cfg.task == "thumbs" else rows):
                key = row["key"]
                if key in seen:
                    raise DataError(where, f"id '{key}' appears twice in the file (first at {seen[key]})", "id")
                seen[key] = where
                responses, n_empty, n_merged = labelable_responses(row["responses"])
                report.empty_responses += n_empty
                report.merged_responses += n_merged
                old = existing.get(key)
                if old is not None:
                    if old.prompt != row["prompt"] or old.responses != responses:
                        raise DataError(
                            where,
                            f"id '{key}' is already in project '{project}' (from {old.source}) with a different "
                            "prompt or responses; give the new item its own id",
                            "id",
                        )
                    report.unchanged += 1
                    continue
                if len(responses) < cfg.min_responses:
                    why = f"{len(responses)} labelable response(s) after dropping {n_empty} empty and merging {n_merged} identical"
                    report.skipped.append(f"{where}: id '{key}': {why}; nothing to {'judge' if cfg.task == 'thumbs' else 'compare'}")
                    continue
                forms.check_prompt(row["prompt"], where)
                meta = {k: v for k, v in row["meta"].items() if k != "gold"}
                gold = None
                if "gold" in row["meta"]:
                    if n_empty or n_merged:  # the answer's positions would no longer match the responses
                        raise DataError(where, "a gold item's responses must be distinct and non-empty", "gold")
                    gold = gold_answer(row["meta"]["gold"], len(responses), cfg.task, where)
                session.add(
                    Item(project_id=proj.id, key=key, prompt=row["prompt"], responses=responses, meta=meta,
                         source=where, created_at=now, gold=gold)
                )
                report.added += 1
            if not existing and not report.added:
                raise LabelError(f"project '{project}': no item in the file can be labeled "
                                 f"({len(report.skipped)} left out), so nothing was imported")
            return report

        return self._transact(work)

    # ----------------------------------------------------------------------- priorities (active labeling)

    def items_to_score(self, project: str, *, only_unscored: bool = False) -> list[tuple[str, Any, list[str]]]:
        """(item id, prompt, response texts in stored order) of every item, or only of those without a priority."""

        def work(session: Session) -> list[tuple[str, Any, list[str]]]:
            proj = self._project(session, project)
            query = select(Item.key, Item.prompt, Item.responses).where(Item.project_id == proj.id).order_by(Item.id)
            if only_unscored:
                query = query.where(Item.priority.is_(None))
            return [(key, prompt, [r["text"] for r in responses]) for key, prompt, responses in session.execute(query)]

        return self._transact(work, write=False)

    def set_priorities(self, project: str, priorities: dict[str, float], state: dict[str, Any]) -> int:
        """Write items' priorities (higher: served sooner) and the scoring's ``state``; the number of items set."""

        def work(session: Session) -> int:
            proj = self._project(session, project, lock=True)  # the same lock leasing takes: no lease sees half
            ids = dict(session.execute(select(Item.key, Item.id).where(Item.project_id == proj.id)).all())
            rows = [{"id": ids[key], "priority": float(value)} for key, value in priorities.items() if key in ids]
            if rows:
                session.execute(update(Item), rows)
            proj.priority_state = state
            return len(rows)

        return self._transact(work)

    def priorities(self, project: str) -> dict[str, float | None]:
        """Item id -> priority (None where unscored), in import order."""

        def work(session: Session) -> dict[str, float | None]:
            proj = self._project(session, project)
            return dict(session.execute(select(Item.key, Item.priority).where(Item.project_id == proj.id)
                                        .order_by(Item.id)).all())

        return self._transact(work, write=False)

    def priority_state(self, project: str) -> dict[str, Any] | None:
        """What ``set_priorities`` last recorded (models, strategy, labels done then, time); None if never scored."""
        return self._transact(lambda s: self._project(s, project).priority_state, write=False)

    def done_labels(self, project: str) -> int:
        def work(session: Session) -> int:
            proj = self._project(session, project)
            return session.scalar(select(func.count(Label.id)).where(Label.project_id == proj.id,
                                                                      Label.status == "done"))

        return self._transact(work, write=False)

    # ----------------------------------------------------------------------- users and logins

    def add_user(self, name: str, role: str, password: str, *, update: bool = False) -> UserInfo:
        if not USER_NAME.fullmatch(name):
            raise LabelError(f"user name '{name}': use 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
        if role not in ROLES:
            raise LabelError(f"role '{role}': expected one of {', '.join(ROLES)}")
        try:
            check_strength(password)
        except ValueError as err:
            raise LabelError(f"user '{name}': {err}") from None
        hashed = hash_password(password)  # slow on purpose: outside the transaction

        def work(session: Session) -> UserInfo:
            user = session.scalars(select(User).where(User.name == name)).first()
            if user is not None and user.status == "removed":
                raise LabelError(f"user '{name}' was removed and their labels keep that name; choose another name")
            if user is not None and not update:
                raise LabelError(f"user '{name}' exists; pass --update to change their password or role")
            if user is None:
                user = User(name=name, role=role, password_hash=hashed, created_at=time.time())
                session.add(user)
                session.flush()
            else:  # a new password (or role) ends every login made with the old one
                user.role, user.password_hash, user.status = role, hashed, None
                session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
            return _info(user)

        return self._transact(work)

    def disable_user(self, name: str) -> UserInfo:
        """End ``name``'s logins and leases and refuse them from now on; ``add_user(..., update=True)`` undoes it."""
        return self._end_user(name, "disabled")

    def remove_user(self, name: str) -> UserInfo:
        """Like ``disable_user``, for good: the password is wiped, the name never reused (labels stay attributed)."""
        return self._end_user(name, "removed")

    def _end_user(self, name: str, status: str) -> UserInfo:
        def work(session: Session) -> UserInfo:
            user = self._user(session, name, active=False)
            if user.status == "removed":
                raise LabelError(f"user '{name}' was already removed")
            user.status = status
            if status == "removed":
                user.password_hash = "removed"  # matches no password
            session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
            session.execute(delete(Lease).where(Lease.user_id == user.id))  # their held items go back to the pool
            return _info(user)

        return self._transact(work)

    def authenticate(self, name: str, password: str) -> bool:
        """True for the right password of an active user; any other name costs the same time as a wrong password."""
        stored = None
        if USER_NAME.fullmatch(name):
            stored = self._transact(lambda s: s.scalars(
                select(User.password_hash).where(User.name == name, User.status.is_(None))).first(), write=False)
        ok = verify_password(password, stored or DUMMY_HASH)
        return ok and stored is not None

    def user(self, name: str) -> UserInfo:
        """An active user; NotAllowed for an unknown, disabled or removed one."""
        return self._transact(lambda s: _info(self._user(s, name)), write=False)

    def users(self) -> list[UserInfo]:
        rows = self._transact(lambda s: list(s.scalars(select(User).order_by(User.name))), write=False)
        return [_info(u) for u in rows]

    def setting(self, key: str, default: Callable[[], str]) -> str:
        """A value kept in the database, created from ``default()`` on first use."""

        def work(session: Session) -> str:
            row = session.get(Setting, key)
            if row is None:
                row = Setting(key=key, value=default())
                session.add(row)
            return row.value

        return self._transact(work)

    def create_session(self, token: str, name: str, hours: float) -> None:
        def work(session: Session) -> None:
            user = self._user(session, name)
            now = time.time()
            session.execute(delete(LoginSession).where(LoginSession.expires_at < now))
            session.add(LoginSession(token_hash=_digest(token), user_id=user.id, created_at=now, expires_at=now + hours * 3600))

        self._transact(work)

    def session_user(self, token: str) -> str | None:
        def work(session: Session) -> str | None:
            query = (
                select(User.name)
                .join(LoginSession, LoginSession.user_id == User.id)
                .where(LoginSession.token_hash == _digest(token), LoginSession.expires_at > time.time(),
                       User.status.is_(None))
            )
            return session.scalars(query).first()

        return self._transact(work, write=False)

    def drop_session(self, token: str) -> None:
        self._transact(lambda s: s.execute(delete(LoginSession).where(LoginSession.token_hash == _digest(token))))

    # ----------------------------------------------------------------------- leasing

    def next_task(self, project: str, user: str) -> Task | None:
        """The item this annotator should label now: the one they hold, else a newly leased one; None when done."""

        def work(session: Session) -> Task | None:
            proj = self._project(session, project, lock=True)
            cfg = ProjectConfig.model_validate(proj.config)
            person = self._user(session, user)
            now = time.time()
            held = session.scalars(
                select(Lease).join(Item, Item.id == Lease.item_id).where(Lease.user_id == person.id, Item.project_id == proj.id)
            ).all()
            for lease in held:
                if lease.expires_at > now or self._wanted(session, lease.item_id, person.id, cfg, now):
                    lease.expires_at = now + cfg.lease_seconds
                    return self._task(session, proj, lease.item_id, lease.order, draft=lease.draft, expires=lease.expires_at)
                session.delete(lease)
            item_id = self._pick(session, proj, person, cfg, now)
            if item_id is None:
                return None
            item = session.get(Item, item_id)
            order = shown_order(proj.name, item.key, person.name, len(item.responses), cfg.shuffle)
            lease = Lease(item_id=item_id, user_id=person.id, order=order, draft={}, leased_at=now,
                          expires_at=now + cfg.lease_seconds)
            session.add(lease)
            return self._task(session, proj, item_id, order, draft={}, expires=lease.expires_at)

        return self._transact(work)

    @staticmethod
    def _load(item_id: Any, user_id: int, now: float) -> Any:
        """Done labels plus other annotators' live leases on an item (a SQL expression)."""
        done = select(func.count(Label.id)).where(Label.item_id == item_id, Label.status == "done").scalar_subquery()
        leased = (
            select(func.count(Lease.id))
            .where(Lease.item_id == item_id, Lease.user_id != user_id, Lease.expires_at > now)
            .scalar_subquery()
        )
        return done + leased

    def _pick(self, session: Session, proj: Project, person: User, cfg: ProjectConfig, now: float) -> int | None:
        """The next item for ``person``: a gold item at the project's gold rate (while one is left for them), else
        an item still short of K; None when no ordinary item is left (gold items alone never keep anyone busy)."""
        ordinary = session.scalars(self._available(proj.id, person.id, cfg, now).limit(1)).first()
        if ordinary is None or cfg.gold_rate <= 0:
            return ordinary
        given = session.scalar(select(func.count(Label.id)).where(Label.project_id == proj.id,
                                                                  Label.user_id == person.id))
        draw = random.Random(f"{proj.name}\0{person.name}\0{given}").random()  # the same after a restart
        if draw >= cfg.gold_rate:
            return ordinary
        mine = exists().where(Label.item_id == Item.id, Label.user_id == person.id)
        gold = session.scalars(select(Item.id).where(Item.project_id == proj.id, ~mine, Item.gold.is_not(None),
                                                     Item.adjudicated_by.is_(None)).order_by(Item.id).limit(1)).first()
        return gold if gold is not None else ordinary

    def _available(self, project_id: int, user_id: int, cfg: ProjectConfig, now: float):
        load = self._load(Item.id, user_id, now)
        mine = exists().where(Label.item_id == Item.id, Label.user_id == user_id)
        served_gold = and_(Item.gold.is_not(None), Item.adjudicated_by.is_(None))  # handed out by _pick only
        # Items already under way first, so finished items (K labels) accumulate steadily; with a linked reward
        # model, the items it is least sure of come before that (unscored ones after every scored one).
        uncertain_first = (Item.priority.is_(None), Item.priority.desc()) if cfg.active is not None else ()
        return (
            select(Item.id)
            .where(Item.project_id == project_id, ~mine, ~served_gold, load < cfg.labels_per_item)
            .order_by(*uncertain_first, load.desc(), Item.id)
        )

    def _wanted(self, session: Session, item_id: int, user_id: int, cfg: ProjectConfig, now: float) -> bool:
        mine = session.scalars(select(Label.id).where(Label.item_id == item_id, Label.user_id == user_id)).first()
        return mine is None and session.scalar(select(self._load(item_id, user_id, now))) < cfg.labels_per_item

    def _task(
        self, session: Session, project: Project, item_id: int, order: list[int], *, draft: dict[str, Any],
        expires: float | None = None, label: Label | None = None,
    ) -> Task:
        item = session.get(Item, item_id)
        shown = None
        if label is not None:
            shown = {
                "id": label.id,
                "status": label.status,
                "choice": label.choice,
                "ranks": to_shown(label.ranks, order),
                "scores": to_shown(label.scores, order),
                "aspects": {a: to_shown(r, order) for a, r in (label.aspects or {}).items()},
                "flags": list(label.flags),
                "skip_reason": label.skip_reason,
                "revision": label.revision,
            }
        return Task(
            project=project.name,
            item=item.key,
            prompt=item.prompt,
            responses=[item.responses[i]["text"] for i in order],
            order=list(order),
            draft=dict(draft),
            label=shown,
            expires_at=expires,
        )

    def save_draft(self, project: str, user: str, item: str, draft: dict[str, Any]) -> bool:
        """Keep clicks made before a vote (flags, ranks, scores in shown order) on the lease; False if none is held."""

        def work(session: Session) -> bool:
            proj = self._project(session, project)
            person = self._user(session, user)
            target = self._item(session, proj, item)
            lease = session.scalars(select(Lease).where(Lease.item_id == target.id, Lease.user_id == person.id)).first()
            if lease is None:
                return False
            lease.draft = _kept_draft(draft, len(target.responses), ProjectConfig.model_validate(proj.config))
            return True

        return self._transact(work)

    # ----------------------------------------------------------------------- votes

    def submit(self, project: str, user: str, vote: Vote) -> dict[str, Any]:
        """Write one vote (or skip) as the label of (item, user): insert, or revise the existing label."""

        def work(session: Session) -> dict[str, Any]:
            proj = self._project(session, project)
            cfg = ProjectConfig.model_validate(proj.config)
            person = self._user(session, user)
            item = self._item(session, proj, vote.item)
            label = session.scalars(select(Label).where(Label.item_id == item.id, Label.user_id == person.id)).first()
            lease = session.scalars(select(Lease).where(Lease.item_id == item.id, Lease.user_id == person.id)).first()
            if label is None and lease is None:
                raise NotAllowed(f"item '{vote.item}' is not assigned to '{user}'; ask for the next item")
            try:
                vote.check(len(item.responses), cfg)
            except ValueError as err:
                raise LabelError(f"item '{vote.item}': {err}") from None
            order = label.order if label is not None else lease.order
            ranks = choice_ranks(vote.choice) if vote.choice is not None else vote.ranks
            values = {
                "status": vote.status,
                "choice": vote.choice if vote.choice is not None else ("ranked" if vote.ranks is not None else None),
                "ranks": to_stored(ranks, order),
                "scores": to_stored(vote.scores, order) if vote.scores is not None and any(
                    s is not None for s in vote.scores) else None,
                "aspects": {aspect: to_stored(ratings, order)
                            for aspect, ratings in vote.aspect_ratings(len(order)).items()} or None,
                "flags": sorted(set(vote.flags)),
                "skip_reason": vote.skip_reason,
            }
            now = time.time()
            if label is None:
                label = Label(project_id=proj.id, item_id=item.id, user_id=person.id, order=list(order), revision=1,
                              created_at=now, updated_at=now, **values)
                session.add(label)
            else:
                for key, value in values.items():
                    setattr(label, key, value)
                label.revision += 1
                label.updated_at = now
            if lease is not None:
                session.delete(lease)
            session.flush()
            return {"id": label.id, "item": item.key, "revision": label.revision, **values}

        return self._transact(work)

    def previous_task(self, project: str, user: str, current: str | None) -> Task | None:
        """This annotator's label before the one on item ``current`` (their latest if ``current`` has none), as a Task."""

        def work(session: Session) -> Task | None:
            proj = self._project(session, project)
            person = self._user(session, user)
            query = select(Label).where(Label.project_id == proj.id, Label.user_id == person.id)
            if current:
                here = session.scalars(
                    select(Label.id).join(Item, Item.id == Label.item_id)
                    .where(Item.project_id == proj.id, Item.key == current, Label.user_id == person.id)
                ).first()
                if here is not None:
                    query = query.where(Label.id < here)
            label = session.scalars(query.order_by(Label.id.desc()).limit(1)).first()
            if label is None:
                return None
            return self._task(session, proj, label.item_id, label.order, draft={}, label=label)

        return self._transact(work, write=False)

    def own_task(self, project: str, user: str, item: str) -> Task:
        """Item ``item`` as ``user`` sees it, with their label; refused unless they labeled or hold it."""

        def work(session: Session) -> Task:
            proj = self._project(session, project)
            person = self._user(session, user)
            target = self._item(session, proj, item)
            label = session.scalars(select(Label).where(Label.item_id == target.id, Label.user_id == person.id)).first()
            if label is not None:
                return self._task(session, proj, target.id, label.order, draft={}, label=label)
            lease = session.scalars(select(Lease).where(Lease.item_id == target.id, Lease.user_id == person.id)).first()
            if lease is None:
                raise NotAllowed(f"'{user}' has no label on item '{item}'; annotators see only their own labels")
            return self._task(session, proj, target.id, lease.order, draft=lease.draft, expires=lease.expires_at)

        return self._transact(work, write=False)

    # ----------------------------------------------------------------------- reading labels

    def my_labels(self, project: str, user: str) -> list[dict[str, Any]]:
        """This annotator's labels, newest first (never anyone else's)."""

        def work(session: Session) -> list[dict[str, Any]]:
            proj = self._project(session, project)
            person = self._user(session, user)
            rows = session.execute(
                select(Label, Item.key)
                .join(Item, Item.id == Label.item_id)
                .where(Label.project_id == proj.id, Label.user_id == person.id)
                .order_by(Label.id.desc())
            ).all()
            return [
                {"item": key, "status": label.status, "choice": label.choice, "ranks_shown": to_shown(label.ranks, label.order),
                 "flags": list(label.flags), "skip_reason": label.skip_reason, "revision": label.revision,
                 "updated_at": label.updated_at}
                for label, key in rows
            ]

        return self._transact(work, write=False)

    def progress(self, project: str, user: str) -> dict[str, Any]:
        """``mine``: items this annotator labeled or skipped; ``items``; ``labels`` done of ``needed`` (items x K);
        ``left_for_me``: items still open to them; ``seconds_per_label``: their recent pace (None before 3 labels)."""

        def work(session: Session) -> dict[str, Any]:
            proj = self._project(session, project)
            cfg = ProjectConfig.model_validate(proj.config)
            person = self._user(session, user)
            n_items = session.scalar(select(func.count(Item.id)).where(Item.project_id == proj.id))
            mine = session.scalar(
                select(func.count(Label.id)).where(Label.project_id == proj.id, Label.user_id == person.id)
            )
            done = session.scalar(
                select(func.count(Label.id)).where(Label.project_id == proj.id, Label.status == "done")
            )
            done_on_item = select(func.count(Label.id)).where(Label.item_id == Item.id, Label.status == "done")
            open_to_me = session.scalar(select(func.count(Item.id)).where(
                Item.project_id == proj.id, done_on_item.scalar_subquery() < cfg.labels_per_item,
                ~exists().where(Label.item_id == Item.id, Label.user_id == person.id)))
            recent = session.scalars(
                select(Label.created_at).where(Label.project_id == proj.id, Label.user_id == person.id)
                .order_by(Label.created_at.desc()).limit(PACE_WINDOW + 1)
            ).all()
            return {"mine": mine, "items": n_items, "labels": done, "needed": n_items * cfg.labels_per_item,
                    "left_for_me": open_to_me, "seconds_per_label": pace(recent)}

        return self._transact(work, write=False)

    def annotator_progress(self, project: str) -> list[dict[str, Any]]:
        """Per annotator: labels done, skipped, flagged, revised, last activity (admin view)."""

        def work(session: Session) -> list[dict[str, Any]]:
            proj = self._project(session, project)
            rows = session.execute(
                select(User.name, Label.status, Label.flags, Label.revision, Label.updated_at)
                .join(User, User.id == Label.user_id)
                .where(Label.project_id == proj.id)
            ).all()
            out: dict[str, dict[str, Any]] = {}
            for name, status, flags, revision, updated in rows:
                entry = out.setdefault(name, {"annotator": name, "done": 0, "skipped": 0, "flagged": 0, "revised": 0,
                                              "last_activity": 0.0})
                entry["done" if status == "done" else "skipped"] += 1
                entry["flagged"] += bool(flags)
                entry["revised"] += revision > 1
                entry["last_activity"] = max(entry["last_activity"], updated)
            return sorted(out.values(), key=lambda e: e["annotator"])

        return self._transact(work, write=False)

    def live_leases(self, project: str) -> dict[str, int]:
        """Annotator -> items they hold now (unexpired leases): who is at work."""

        def work(session: Session) -> dict[str, int]:
            proj = self._project(session, project)
            rows = session.execute(
                select(User.name, func.count(Lease.id)).join(Lease, Lease.user_id == User.id)
                .join(Item, Item.id == Lease.item_id)
                .where(Item.project_id == proj.id, Lease.expires_at > time.time()).group_by(User.name)
            ).all()
            return dict(rows)

        return self._transact(work, write=False)

    def item_counts(self, project: str) -> dict[str, int]:
        """Items by number of done labels vs K: ``complete`` (>= K), ``started``, ``untouched``, ``total``."""

        def work(session: Session) -> dict[str, int]:
            proj = self._project(session, project)
            cfg = ProjectConfig.model_validate(proj.config)
            done = (
                select(Item.id, func.count(Label.id).label("n"))
                .outerjoin(Label, and_(Label.item_id == Item.id, Label.status == "done"))
                .where(Item.project_id == proj.id)
                .group_by(Item.id)
            )
            counts = [n for _, n in session.execute(done).all()]
            return {
                "total": len(counts),
                "complete": sum(n >= cfg.labels_per_item for n in counts),
                "started": sum(0 < n < cfg.labels_per_item for n in counts),
                "untouched": sum(n == 0 for n in counts),
            }

        return self._transact(work, write=False)

    def label_records(self, project: str) -> list[dict[str, Any]]:
        """Every label of the project with its item and annotator (admin: export and agreement)."""

        def work(session: Session) -> list[dict[str, Any]]:
            proj = self._project(session, project)
            rows = session.execute(
                select(Label, Item, User.name)
                .join(Item, Item.id == Label.item_id)
                .join(User, User.id == Label.user_id)
                .where(Label.project_id == proj.id)
                .order_by(Item.id, Label.id)
            ).all()
            return [
                {
                    "item": item.key, "prompt": item.prompt, "responses": item.responses, "meta": item.meta,
                    "gold": item.gold, "gold_item": item.gold is not None and item.adjudicated_by is None,
                    "adjudicated_by": item.adjudicated_by,
                    "annotator": name, "status": label.status, "choice": label.choice, "ranks": label.ranks,
                    "scores": label.scores, "aspects": label.aspects, "order": label.order, "flags": list(label.flags),
                    "skip_reason": label.skip_reason, "revision": label.revision,
                    "created_at": label.created_at, "updated_at": label.updated_at,
                }
                for label, item, name in rows
            ]

        return self._transact(work, write=False)

    def adjudicate(self, project: str, lead: str, item: str, order: str) -> list[int] | str:
        """A lead's final answer on ``item``, in stored order: ranks from an order (``"BA"``) or up/down.

        It takes the item off the review queue and wins over the annotators' majority in exports.
        Admins only.
        """

        def work(session: Session) -> list[int] | str:
            proj = self._project(session, project)
            cfg = ProjectConfig.model_validate(proj.config)
            person = self._user(session, lead)
            if person.role != "admin":
                raise NotAllowed(f"adjudication is for admins: '{lead}' is an {person.role}")
            target = self._item(session, proj, item)
            try:
                target.gold = gold_answer(order.strip().lower() if cfg.task == "thumbs" else order,
                                          len(target.responses), cfg.task, f"item {item}")
            except DataError as err:
                raise LabelError(str(err)) from None
            target.adjudicated_by = person.name
            return target.gold

        return self._transact(work)

    def count_labels(self, project: str) -> dict[str, int]:
        """Rows and distinct (item, annotator) keys in ``labels``: equal unless something duplicated."""

        def work(session: Session) -> dict[str, int]:
            proj = self._project(session, project)
            rows = session.scalar(select(func.count(Label.id)).where(Label.project_id == proj.id))
            pairs = session.scalar(
                select(func.count()).select_from(
                    select(Label.item_id, Label.user_id).where(Label.project_id == proj.id).distinct().subquery()
                )
            )
            return {"rows": rows, "distinct": pairs}

        return self._transact(work, write=False)


def pace(times: list[float]) -> float | None:
    """Median seconds between consecutive labels, breaks (gaps over ``PACE_BREAK``) left out; None under 2 gaps."""
    gaps = sorted(abs(a - b) for a, b in zip(times, times[1:]) if abs(a - b) <= PACE_BREAK)
    return statistics.median(gaps) if len(gaps) >= 2 else None


def split_for_thumbs(rows: list[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One single-response row per response (ids ``ID#1``, ``ID#2``, ...) for the thumbs task; one-response rows stay."""
    for where, row in rows:
        if len(row["responses"]) == 1:
            yield where, row
            continue
        for j, response in enumerate(row["responses"], 1):
            key = f"{row['key']}#{j}"
            if problem := text_problem(key, MAX_ITEM_ID):
                raise DataError(where, f"id '{key[:80]}' of response {j}: {problem}", "id")
            meta = dict(row["meta"])
            if isinstance(meta.get("gold"), list):  # thumbs gold per response: ["up", "down", ...]
                answers = meta.pop("gold")
                if j <= len(answers):
                    meta["gold"] = answers[j - 1]
            yield where, {**row, "key": key, "responses": [response], "meta": meta}


def parse_vote(**fields: Any) -> Vote:
    """A Vote from callback or API fields; a LabelError with every problem on one line."""
    try:
        return Vote(**fields)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'vote'}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
        )
        raise LabelError(f"invalid vote: {problems}") from None


def _kept_draft(draft: dict[str, Any], n: int, config: ProjectConfig) -> dict[str, Any]:
    """The clicks worth keeping: known flags, at most ``n`` ranks in 1..n and ``n`` finite scores (else None).

    Drafts come unchecked from the browser; this keeps junk (and NaN, which PostgreSQL's JSON
    refuses) out of the database.
    """
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    return {
        "flags": [f for f in draft.get("flags") or [] if f in config.flags],
        "ranks": [int(r) if number(r) and r == int(r) and 1 <= r <= n else None
                  for r in (draft.get("ranks") or [])[:n]],
        "scores": [v if number(v) else None for v in (draft.get("scores") or [])[:n]],
    }


def _info(user: User) -> UserInfo:
    return UserInfo(user.id, user.name, user.role, user.status)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
