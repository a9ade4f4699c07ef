"""``align label`` subcommands: import, prioritize, serve, add-user, disable-user, remove-user, export, status.

    align label add-user alice --role annotator            # password from a prompt
    ALIGN_LABEL_PASSWORD=... align label add-user bob --role admin
    align label disable-user alice                         # logged out now; `add-user alice --update` enables again
    align label remove-user alice                          # for good; alice's labels stay, under her name
    align label import candidates.jsonl labels_per_item=2 score.enabled=true --project demo
    align label import candidates.jsonl --project demo --reward-model runs/reward   # least certain items first
    align label prioritize --project demo --reward-model runs/reward-v2             # a newer model re-orders
    align label serve --project demo --port 7860
    align label status --project demo
    align label export --project demo --kind preference --out prefs.jsonl --aggregate majority

The database is ``--db URL`` (a path means SQLite), else ``$ALIGN_LABEL_DB``, else
``sqlite:///labels.db``. Each command is also a function (``main(args)`` takes the parsed
namespace), so tests run them without a subprocess. Only argparse is imported at module top,
so ``align --help`` stays fast.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

PASSWORD_ENV = "ALIGN_LABEL_PASSWORD"
DB_ENV = "ALIGN_LABEL_DB"


def default_db() -> str:
    return os.environ.get(DB_ENV, "sqlite:///labels.db")


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``label`` subcommands, added to ``parser`` (the ``align label`` subparser)."""
    commands = parser.add_subparsers(dest="label_command", metavar="SUBCOMMAND", required=True)

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        p.add_argument("--db", default=None, help=f"database URL or SQLite path (default: ${DB_ENV} or sqlite:///labels.db)")
        return p

    imp = sub("import", "load a candidates file (align generate's output) into a labeling project")
    imp.add_argument("candidates", help="candidates JSONL (id, prompt, responses: [{text, model}])")
    imp.add_argument("--project", required=True)
    imp.add_argument("--config", default=None, help="project config YAML (labels_per_item, guidelines, score, ...)")
    imp.add_argument("--format", default="auto", help="candidates file format (default: from the extension)")
    imp.add_argument("overrides", nargs="*", help="project config key=value, right after the file: labels_per_item=3 score.enabled=true")
    _active_arguments(imp)

    prio = sub("prioritize", "score every item with the linked (or a newer) reward model: queues serve the least "
               "certain items first")
    prio.add_argument("--project", required=True)
    _active_arguments(prio)

    serve = sub("serve", "start the labeling app (Gradio) for one project")
    serve.add_argument("--project", required=True)
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--concurrency", type=int, default=8, help="requests each callback handles at once")

    user = sub("add-user", "create a user (or change their password/role with --update)")
    user.add_argument("name")
    user.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    user.add_argument("--password-file", default=None, help=f"read the password from this file (else ${PASSWORD_ENV}, else a prompt)")
    user.add_argument("--update", action="store_true",
                      help="change an existing user's password and role (ends their logins; enables a disabled user)")

    disable = sub("disable-user", "log a user out and refuse them from their next request on (labels stay)")
    disable.add_argument("name")

    remove = sub("remove-user", "like disable-user, for good: the name is kept only to attribute their labels")
    remove.add_argument("name")

    export = sub("export", "write labels as preference pairs, rankings or ratings")
    export.add_argument("--project", required=True)
    export.add_argument("--kind", required=True, choices=["preference", "ranking", "rating"])
    export.add_argument("--out", required=True, help="FILE.jsonl / .json / .parquet, or a directory (save_to_disk)")
    export.add_argument("--format", default="auto", choices=["auto", "jsonl", "json", "parquet", "disk"])
    export.add_argument("--ties", default="drop", choices=["drop", "keep"], help="tied pairs: drop, or keep with margin 0")
    export.add_argument("--aggregate", default="none", choices=["none", "majority"],
                        help="none: one row per label; majority: one row per item (vote / mean rank / mean score)")
    export.add_argument("--min-labels", type=int, default=1, help="leave out items with fewer labels")
    export.add_argument("--min-agreement", type=float, default=0.0, help="leave out items whose agreement is lower (0-1)")
    export.add_argument("--drop-flagged", action="store_true", help="leave out labels that carry a flag")
    export.add_argument("--min-gold-accuracy", type=float, default=0.0,
                        help="leave out the labels of annotators whose accuracy on gold items is lower (0-1)")
    export.add_argument("--aspect", default=None, help="kind rating: export this aspect's ratings instead of scores")

    status = sub("status", "progress and agreement of a project (or list projects and users)")
    status.add_argument("--project", default=None)


def _active_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reward-model", nargs="+", default=None, metavar="DIR",
                        help="link reward model(s) (`align reward` dirs or module:function): each annotator's queue "
                             "serves the items they are least sure of first (sets active.reward_model)")
    parser.add_argument("--strategy", choices=["margin", "ensemble"], default=None,
                        help="margin: smallest score gap first; ensemble: most disagreement between 2+ models first")
    parser.add_argument("--refresh-every", type=int, default=None, metavar="N",
                        help="the server re-scores after every N new labels when the model on disk changed")


def main(args: argparse.Namespace) -> int:
    """Run one ``align label`` subcommand; a refused request prints ``align: error: ...`` and returns 2."""
    import logging

    from align.data import DataError
    from align.recipe import RecipeError
    from labeling_ui.errors import LabelError

    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return _COMMANDS[args.label_command](args)
    except (LabelError, DataError, RecipeError) as err:
        print(f"align: error: {err}", file=sys.stderr)
        return 2


def _store(args: argparse.Namespace):
    from labeling_ui.store import LabelStore

    return LabelStore(args.db or default_db())


def _import(args: argparse.Namespace) -> int:
    from labeling_ui.candidates import read_candidates

    rows = read_candidates(args.candidates, args.format)  # every row checked before the database is touched
    store = _store(args)
    config = _project_config(store, args.project, args.config, args.overrides + _active_overrides(args))
    report = store.import_items(args.project, rows, config, create=True)  # config and items: all or nothing
    cfg = store.project_config(args.project)
    print(f"project '{args.project}': {report.added} items added, {report.unchanged} already there, "
          f"{len(report.skipped)} left out; K={cfg.labels_per_item} labels per item")
    if cfg.active is not None:
        from labeling_ui.active import score_items

        scored = score_items(store, args.project, only_unscored=True)
        print(f"  {scored} items scored by {', '.join(cfg.active.reward_model)}: queues serve the least "
              f"certain first ({cfg.active.strategy})")
    if report.empty_responses or report.merged_responses:
        print(f"  dropped {report.empty_responses} empty responses, merged {report.merged_responses} identical ones")
    for line in report.skipped[:20]:
        print(f"  left out {line}")
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more")
    return 0


def _project_config(store: Any, project: str, path: str | None, overrides: list[str]):
    """The config to set: the existing (or default) one, then the YAML file, then key=value; None if neither is given."""
    if path is None and not overrides:
        return None
    from align.recipe import apply_overrides, read_yaml, validate
    from labeling_ui.errors import UnknownProject
    from labeling_ui.schemas import ProjectConfig

    try:
        base = store.project_config(project).model_dump(mode="json", exclude_none=True)
    except UnknownProject:
        base = {}
    data = {**base, **(read_yaml(path) if path else {})}
    return validate(ProjectConfig, apply_overrides(data, overrides), source=path or "project config")


def _active_overrides(args: argparse.Namespace) -> list[str]:
    """``active.*=value`` overrides from --reward-model, --strategy and --refresh-every."""
    out = []
    if args.reward_model:
        out.append(f"active.reward_model={json.dumps(args.reward_model)}")
    if args.strategy:
        out.append(f"active.strategy={args.strategy}")
    if args.refresh_every is not None:
        out.append(f"active.refresh_every={args.refresh_every}")
    return out


def _prioritize(args: argparse.Namespace) -> int:
    from labeling_ui.active import score_items
    from labeling_ui.errors import LabelError

    store = _store(args)
    overrides = _active_overrides(args)
    if overrides:
        store.create_project(args.project, _project_config(store, args.project, None, overrides), update=True)
    cfg = store.project_config(args.project)
    if cfg.active is None:
        raise LabelError(f"project '{args.project}' is linked to no reward model: pass --reward-model DIR")
    scored = score_items(store, args.project)
    print(f"project '{args.project}': {scored} items scored by {', '.join(cfg.active.reward_model)} "
          f"({cfg.active.strategy}); queues serve the least certain first")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from labeling_ui.app import serve

    serve(args.db or default_db(), args.project, host=args.host, port=args.port, concurrency=args.concurrency)
    return 0


def read_password(password_file: str | None, name: str) -> str:
    """From ``password_file``, else ``$ALIGN_LABEL_PASSWORD``, else typed twice at a prompt (never a command-line argument)."""
    if password_file:
        path = Path(password_file)
        if not path.is_file():
            from labeling_ui.errors import LabelError

            raise LabelError(f"{password_file}: password file not found")
        return path.read_text().rstrip("\r\n")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        from labeling_ui.errors import LabelError

        raise LabelError("the two passwords differ")
    return first


def _add_user(args: argparse.Namespace) -> int:
    password = read_password(args.password_file, args.name)
    user = _store(args).add_user(args.name, args.role, password, update=args.update)
    print(f"user '{user.name}' ({user.role}) {'updated' if args.update else 'created'}")
    return 0


def _disable_user(args: argparse.Namespace) -> int:
    _store(args).disable_user(args.name)
    print(f"user '{args.name}' disabled: logged out, and refused until `align label add-user {args.name} --update`")
    return 0


def _remove_user(args: argparse.Namespace) -> int:
    _store(args).remove_user(args.name)
    print(f"user '{args.name}' removed: logged out for good; their labels stay under that name")
    return 0


def _export(args: argparse.Namespace) -> int:
    from labeling_ui.export import ExportOptions, export_project

    opts = ExportOptions(kind=args.kind, ties=args.ties, aggregate=args.aggregate, min_labels=args.min_labels,
                         min_agreement=args.min_agreement, drop_flagged=args.drop_flagged, aspect=args.aspect,
                         min_gold_accuracy=args.min_gold_accuracy)
    stats = export_project(_store(args), args.project, args.out, opts, args.format)
    print(f"wrote {stats['rows']} {args.kind} rows to {stats['out']} "
          f"(from {stats['items_with_labels']} labeled items; left out: {json.dumps(stats['left_out']) if stats['left_out'] else 'nothing'})")
    return 0


def _status(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.project is None:
        print("projects:", ", ".join(store.projects()) or "none")
        print("users:", ", ".join(f"{u.name} ({u.role}{', ' + u.status if u.status else ''})"
                                  for u in store.users()) or "none")
        return 0
    from labeling_ui.agreement import format_summary, project_agreement

    cfg = store.project_config(args.project)
    print(format_summary(store.item_counts(args.project), project_agreement(store.label_records(args.project)),
                         cfg.labels_per_item))
    for row in store.annotator_progress(args.project):
        print(f"  {row['annotator']}: {row['done']} done, {row['skipped']} skipped, {row['flagged']} flagged, "
              f"{row['revised']} revised")
    return 0


_COMMANDS = {"import": _import, "prioritize": _prioritize, "serve": _serve, "add-user": _add_user, "disable-user": _disable_user,
             "remove-user": _remove_user, "export": _export, "status": _status}
