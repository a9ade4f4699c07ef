"""Labels -> preference, ranking or rating rows that the dataset layer loads unchanged.

    align label export --project demo --kind preference --out prefs.jsonl --aggregate majority --min-agreement 0.6

Rows carry the canonical columns of their kind plus ``id`` (the item), ``annotator`` (or
``annotators``), ``agreement``, ``labels`` and models; the dataset layer drops the extras on load.

- ``aggregate="none"``: one row per label, so a K-labeled item gives K rankings. Two annotators
  who agree give identical canonical rows, which the dataset layer's default ``dedup: true``
  collapses into one: read such a file with ``dedup: false`` to keep every vote, or export with
  ``aggregate="majority"``.
- ``aggregate="majority"``: one row per item. Two responses: the most common vote (A, B, tie or
  both bad; a tie for first place between votes drops the item). More: the mean rank of each
  response over annotators, ranked again (equal means tie, Borda-style). Ratings: the mean score.
- ``min_labels``: items with fewer done labels are left out. ``min_agreement``: items whose
  ``agreement.item_agreement`` (share agreeing with the majority, averaged over response pairs;
  for two responses the share of the most common vote) is lower are left out.
- Thumbs labels (the thumbs task) export as ``rating`` rows, score 1.0 for up and 0.0 for down
  (majority: the share of ups), which ``align kto`` reads as thumbs with its default threshold 0.5.
- ``min_gold_accuracy``: labels of annotators whose accuracy on gold items
  (``quality.gold_accuracy``) is lower are left out; annotators who labeled no gold item stay.
- An item a lead adjudicated exports the lead's answer under ``aggregate="majority"``.
- ``aspect``: a rating export of one per-aspect rating (1..aspect_scale) instead of the slider score.
- Preference pairs come from the rankings through the dataset layer's ``ranking_to_preference``:
  margin = rank difference, ties dropped or kept with margin 0 (``ties``). Both-bad votes carry no
  order and appear in no preference or ranking row; a ranking where every response ties is
  dropped unless ``ties="keep"``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from align.data import ranking_to_preference, response_text, validate_row
from align.data.readers import DISK_MARKERS
from align.data.records import FormChecker
from labeling_ui.agreement import labels_agreement, pair_category
from labeling_ui.errors import LabelError
from labeling_ui.quality import gold_accuracy
from labeling_ui.schemas import dense_ranks

ExportKind = Literal["preference", "ranking", "rating"]
EXPORT_KINDS = ("preference", "ranking", "rating")
OUT_FORMATS = ("auto", "jsonl", "json", "parquet", "disk")
THUMBS = {"up": 1.0, "down": 0.0}  # a thumbs label as a rating score


@dataclass
class ExportOptions:
    kind: ExportKind
    ties: Literal["drop", "keep"] = "drop"
    aggregate: Literal["none", "majority"] = "none"
    min_labels: int = 1
    min_agreement: float = 0.0
    drop_flagged: bool = False
    aspect: str | None = None
    min_gold_accuracy: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in EXPORT_KINDS:
            raise LabelError(f"export kind '{self.kind}': expected one of {', '.join(EXPORT_KINDS)}")
        if self.ties not in ("drop", "keep"):
            raise LabelError(f"ties '{self.ties}': expected drop or keep")
        if self.aggregate not in ("none", "majority"):
            raise LabelError(f"aggregate '{self.aggregate}': expected none or majority")
        if not 0.0 <= self.min_gold_accuracy <= 1.0:
            raise LabelError(f"min_gold_accuracy={self.min_gold_accuracy}: expected a share between 0 and 1")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise LabelError(f"min_agreement={self.min_agreement}: expected a share between 0 and 1")
        if self.min_labels < 1:
            raise LabelError(f"min_labels={self.min_labels}: expected at least 1")
        if self.aspect is not None and self.kind != "rating":
            raise LabelError(f"aspect '{self.aspect}': aspect ratings export as kind rating, not {self.kind}")


@dataclass
class ExportResult:
    rows: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def build_rows(records: list[dict[str, Any]], opts: ExportOptions) -> ExportResult:
    """Rows of ``opts.kind`` from ``LabelStore.label_records`` output, with counts of what was left out."""
    dropped: Counter[str] = Counter()
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    accuracy = gold_accuracy(records) if opts.min_gold_accuracy > 0 else {}
    below = {name for name, (_, share) in accuracy.items() if share < opts.min_gold_accuracy}
    for rec in records:
        if rec["status"] != "done":
            continue
        if rec["annotator"] in below:
            dropped["labels_of_annotators_below_gold_accuracy"] += 1
            continue
        if opts.drop_flagged and rec["flags"]:
            dropped["flagged_labels"] += 1
            continue
        if rec["choice"] in THUMBS and opts.kind != "rating":
            dropped["thumbs_labels"] += 1  # one response judged alone: no order to export
            continue
        if opts.kind == "rating":
            rec = {**rec, "scores": _rated(rec, opts.aspect)}
        by_item[rec["item"]].append(rec)
    rows: list[dict[str, Any]] = []
    for labels in by_item.values():
        if len(labels) < opts.min_labels:
            dropped["items_below_min_labels"] += 1
            continue
        agreement = labels_agreement(labels, opts.kind)
        if opts.min_agreement > 0 and not agreement >= opts.min_agreement:  # NaN (no scores) fails too
            dropped["items_below_min_agreement"] += 1
            continue
        builder = _rating_rows if opts.kind == "rating" else _ranking_rows
        rows.extend(builder(labels, opts, agreement, dropped))
    if opts.kind == "preference":
        rows = _to_pairs(rows, opts, dropped)
    left_out = {reason: count for reason, count in dropped.items() if count}
    return ExportResult(rows, {"items_with_labels": len(by_item), "rows": len(rows), "left_out": left_out})


def _base(rec: dict[str, Any], agreement: float, n_labels: int) -> dict[str, Any]:
    return {"id": rec["item"], "prompt": rec["prompt"], "agreement": round(agreement, 4), "labels": n_labels}


def _ranking_rows(labels: list[dict[str, Any]], opts: ExportOptions, agreement: float, dropped: Counter) -> list[dict]:
    first = labels[0]
    texts = [r["text"] for r in first["responses"]]
    models = [r.get("model") for r in first["responses"]]
    if opts.aggregate == "none":
        out = []
        for rec in labels:
            if rec["ranks"] is None:
                dropped["both_bad_labels"] += 1
                continue
            out.append({**_base(rec, agreement, len(labels)), "responses": texts, "ranks": list(rec["ranks"]),
                        "models": models, "annotator": rec["annotator"], "flags": rec["flags"]})
        return _drop_full_ties(out, opts, dropped)
    ranks = _majority_ranks(labels, dropped)
    if ranks is None:
        return []
    row = {**_base(first, agreement, len(labels)), "responses": texts, "ranks": ranks, "models": models,
           "annotators": [rec["annotator"] for rec in labels],
           "flags": sorted({flag for rec in labels for flag in rec["flags"]})}
    return _drop_full_ties([row], opts, dropped)


def _majority_ranks(labels: list[dict[str, Any]], dropped: Counter) -> list[int] | None:
    if labels[0].get("adjudicated_by") and isinstance(labels[0]["gold"], list):
        return list(labels[0]["gold"])  # a lead settled it
    if len(labels[0]["responses"]) == 2:
        votes = Counter(pair_category(rec["ranks"], rec["choice"]) for rec in labels).most_common()
        if len(votes) > 1 and votes[0][1] == votes[1][1]:
            dropped["items_without_majority"] += 1
            return None
        winner = votes[0][0]
        if winner == "both_bad":
            dropped["items_voted_both_bad"] += 1
            return None
        return {"tie": [1, 1], "0": [1, 2], "1": [2, 1]}[winner]
    rankings = [rec["ranks"] for rec in labels if rec["ranks"] is not None]
    means = [sum(r[i] for r in rankings) / len(rankings) for i in range(len(rankings[0]))]
    return dense_ranks(means)


def _drop_full_ties(rows: list[dict[str, Any]], opts: ExportOptions, dropped: Counter) -> list[dict[str, Any]]:
    if opts.ties == "keep" or opts.kind == "preference":  # preference: the pair conversion applies the policy
        return rows
    kept = [row for row in rows if len(set(row["ranks"])) > 1]
    dropped["all_tied_rankings"] += len(rows) - len(kept)
    return kept


def _rated(rec: dict[str, Any], aspect: str | None) -> list[float | None] | None:
    """What a rating row scores: thumbs 1.0 / 0.0, one aspect's ratings, or the slider scores (stored order)."""
    if rec["choice"] in THUMBS:
        return [THUMBS[rec["choice"]]]
    if aspect is not None:
        return (rec.get("aspects") or {}).get(aspect)
    return rec["scores"]


def _rating_rows(labels: list[dict[str, Any]], opts: ExportOptions, agreement: float, dropped: Counter) -> list[dict]:
    first = labels[0]
    responses = first["responses"]
    scored = [rec for rec in labels if rec["scores"] and any(s is not None for s in rec["scores"])]
    dropped["labels_without_scores"] += len(labels) - len(scored)
    out = []
    if opts.aggregate == "none":
        for rec in scored:
            for resp, score in zip(responses, rec["scores"]):
                if score is not None:
                    out.append({**_base(rec, agreement, len(labels)), "response": resp["text"], "score": float(score),
                                "model": resp.get("model"), "annotator": rec["annotator"], "flags": rec["flags"]})
        return out
    for index, resp in enumerate(responses):
        given = [(rec["annotator"], rec["scores"][index]) for rec in scored if rec["scores"][index] is not None]
        if given:
            out.append({**_base(first, agreement, len(labels)), "response": resp["text"],
                        "score": sum(s for _, s in given) / len(given), "model": resp.get("model"),
                        "annotators": [name for name, _ in given]})
    return out


def _to_pairs(rankings: list[dict[str, Any]], opts: ExportOptions, dropped: Counter) -> list[dict[str, Any]]:
    out = []
    for row in rankings:
        model_of = dict(zip(row["responses"], row["models"]))
        pairs = ranking_to_preference([row], tie_policy=opts.ties)
        n_pairs = len(row["responses"]) * (len(row["responses"]) - 1) // 2
        dropped["tied_pairs"] += n_pairs - len(pairs)
        extra = {k: v for k, v in row.items() if k not in ("prompt", "responses", "ranks", "models")}
        for pair in pairs:
            chosen, rejected = response_text(pair["chosen"]), response_text(pair["rejected"])
            out.append({"id": row["id"], **pair, **{k: v for k, v in extra.items() if k != "id"},
                        "chosen_model": model_of.get(chosen), "rejected_model": model_of.get(rejected)})
    return out


# --------------------------------------------------------------------------- writing


def out_format(out: str | Path, format: str = "auto") -> str:
    if format not in OUT_FORMATS:
        raise LabelError(f"format '{format}': expected one of {', '.join(OUT_FORMATS)}")
    if format != "auto":
        return format
    suffix = Path(out).suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", "": "disk"}
    if suffix not in formats:
        raise LabelError(f"{out}: cannot tell the format from '{suffix}'; use .jsonl, .json, .parquet, "
                         "a directory name (save_to_disk) or --format")
    return formats[suffix]


def check_rows(rows: list[dict[str, Any]], kind: str, out: str | Path, fmt: str) -> None:
    """Validate every row as the dataset layer will on load; a failure names the row (a bug, never the user's)."""
    checker = FormChecker(kind)  # type: ignore[arg-type]
    for i, row in enumerate(rows):
        where = f"{out}:{i + 1}" if fmt == "jsonl" else f"{out}:row {i}"
        checker.check(validate_row(kind, row, where), where)  # type: ignore[arg-type]


def write_rows(rows: list[dict[str, Any]], kind: str, out: str | Path, format: str = "auto") -> Path:
    """Write rows atomically (a temporary file or directory renamed into place) as JSONL, JSON, Parquet or save_to_disk."""
    out = Path(out)
    fmt = out_format(out, format)
    if not rows:
        raise LabelError(f"nothing to write to {out}: no {kind} rows passed the filters")
    check_rows(rows, kind, out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "disk":
        if out.exists() and not (out.is_dir() and any((out / m).exists() for m in DISK_MARKERS)):
            raise LabelError(f"{out} exists and is not a save_to_disk dataset directory; choose another --out")
        import datasets

        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        if fmt == "parquet":
            import datasets

            datasets.Dataset.from_list(rows).to_parquet(tmp_name)
        else:
            with open(tmp_name, "w", encoding="utf-8") as f:
                if fmt == "json":
                    json.dump(rows, f, ensure_ascii=False, indent=1)
                else:
                    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return out


def export_project(store: Any, project: str, out: str | Path, opts: ExportOptions, format: str = "auto") -> dict[str, Any]:
    """Build and write ``project``'s rows; return the stats (rows written, what was left out and why)."""
    result = build_rows(store.label_records(project), opts)
    if not result.rows:
        raise LabelError(
            f"project '{project}': no {opts.kind} rows to export ({json.dumps(result.stats)}); "
            "label more items or loosen --min-labels / --min-agreement"
        )
    path = write_rows(result.rows, opts.kind, out, format)
    return {**result.stats, "out": str(path), "kind": opts.kind}
