"""Database tables and engine setup: SQLite in WAL mode by default, PostgreSQL (psycopg 3) by URL.

    sqlite:///labels.db                                   (a plain path means SQLite too)
    postgresql+psycopg://user:pass@host:5432/labels
    postgresql+psycopg://postgres@/labels?host=/run/postgresql&port=5432

Tables: ``users`` (``status`` NULL while active, else ``disabled`` or ``removed``: a removed
user's row stays so their labels stay attributed), ``projects``, ``items`` (one prompt and its responses, and the linked reward model's uncertainty on it), ``leases`` (an item
handed to one annotator, with an expiry and the draft of what they clicked), ``labels`` (one per
item and annotator: the vote, the shown order, scores, flags), ``sessions`` (logins that outlive
a server restart). Times are UNIX seconds (float), the same on both databases. A column added
since a database was created is added to it on open (nullable, so old rows stay valid).

A new SQLite file is created readable by its owner only (0600): it holds password and session
hashes. SQLite gives its -wal and -shm files the same mode.

SQLite: WAL lets readers run beside the one writer; ``synchronous=FULL`` makes a commit durable
before it is acknowledged, and every write transaction starts with ``BEGIN IMMEDIATE`` so two
writers queue on the lock instead of failing when a read lock is upgraded (pysqlite's own
transaction handling is switched off for that, as the SQLAlchemy docs describe).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DEFAULT_DB = "sqlite:///labels.db"
BUSY_TIMEOUT_MS = 60_000
logger = logging.getLogger("labeling_ui")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # annotator | admin
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # None (active) | disabled | removed


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    # The last scoring of its items by the linked reward model (labeling_ui.active): models, labels then, time.
    priority_state: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "key", name="uq_item_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))  # the candidates file's id
    prompt: Mapped[Any] = mapped_column(JSON)  # a string or a list of messages
    responses: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{text, model}]
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(Text)  # file:line it was imported from
    # The known answer (ranks per stored response, or "up"/"down"): from the candidates file (a gold item, mixed
    # into annotators' queues at the project's gold_rate) or from a lead's adjudication (``adjudicated_by`` set).
    gold: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    adjudicated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    # The linked reward model's uncertainty on this item (higher: served sooner); NULL until scored.
    priority: Mapped[float | None] = mapped_column(Float, nullable=True)


class Lease(Base):
    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("item_id", "user_id", name="uq_lease_item_user"), Index("ix_lease_user", "user_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    order: Mapped[list[int]] = mapped_column("shown_order", JSON)  # shown position -> stored response index
    draft: Mapped[dict[str, Any]] = mapped_column(JSON)  # flags / ranks / scores clicked but not yet submitted
    leased_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id", name="uq_label_item_user"),
        Index("ix_label_project_user", "project_id", "user_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # done | skipped
    choice: Mapped[str | None] = mapped_column(String(16))  # a | b | tie | both_bad (as shown) | None
    ranks: Mapped[list[int] | None] = mapped_column(JSON)  # per stored response, 1 best; None: both_bad / skipped
    scores: Mapped[list[float | None] | None] = mapped_column(JSON)  # per stored response
    aspects: Mapped[dict[str, list[int | None]] | None] = mapped_column(JSON, nullable=True)  # aspect -> per stored response
    order: Mapped[list[int]] = mapped_column("shown_order", JSON)  # shown position -> stored response index
    flags: Mapped[list[str]] = mapped_column(JSON)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer)  # 1 on the first vote, +1 on each revision
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class LoginSession(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def normalize_url(db: str | Path) -> str:
    """A URL as given, or ``sqlite:///PATH`` for a plain file path."""
    text = str(db)
    return text if "://" in text else f"sqlite:///{text}"


def make_engine(db: str | Path) -> Engine:
    url = normalize_url(db)
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        _sqlite_setup(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _private_sqlite_file(url: str) -> None:
    """Create the database file 0600 before SQLite makes it 0644; warn if an existing one is readable by others."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        fd = os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(database).st_mode)
        if mode & 0o077:
            logger.warning("%s is readable by other users (mode %o) and holds password hashes: chmod 600 %s",
                           database, mode, database)
        return
    os.close(fd)


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a database made by an older version lacks (``ALTER TABLE ... ADD COLUMN``)."""
    tables = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in tables.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        if not missing:
            continue
        with engine.begin() as conn:
            for column in missing:
                conn.exec_driver_sql(
                    f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}")


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see the module docstring)
        cursor = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", f"busy_timeout={BUSY_TIMEOUT_MS}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "DEFERRED"))
