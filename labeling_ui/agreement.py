"""Inter-annotator agreement: Cohen's kappa for pairs of raters, Krippendorff's alpha for many.

Pure functions over plain Python values, matched by item id. Pairwise items (two responses)
give one nominal category per label: which stored response won ("0" or "1"), "tie" or
"both_bad". Rankings give one ordinal value per (item, response): its rank. Scores give one
interval value per (item, response).

- Cohen (1960): ``kappa = (p_o - p_e) / (1 - p_e)``, ``p_o`` the share of items both raters
  put in the same category, ``p_e = sum_k p_a(k) p_b(k)`` the share expected by chance.
- Krippendorff (2011, "Computing Krippendorff's Alpha-Reliability"):
  ``alpha = 1 - (n - 1) * sum_ck o_ck d_ck / sum_ck n_c n_k d_ck`` over the coincidence matrix
  ``o`` of values paired within a unit (each unit with m >= 2 values adds ``1 / (m - 1)`` per
  ordered pair), ``n_c`` its margins, ``n`` the number of pairable values, and ``d`` the
  metric's squared difference (nominal, ordinal, interval).

Both are undefined (NaN) when chance agreement is total, e.g. every value the same.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any, Literal

Level = Literal["nominal", "ordinal", "interval"]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Kappa of two raters' categories on the same items (``a[i]`` and ``b[i]`` rate item i)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs one category per item from each rater; got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if p_e == 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def krippendorff_alpha(units: Mapping[Hashable, Iterable[Any]], level: Level = "nominal") -> float:
    """Alpha over ``units``: unit id -> the values coders gave it (missing values left out)."""
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"level must be nominal, ordinal or interval, got {level!r}")
    coincidence: dict[tuple[Any, Any], float] = defaultdict(float)
    for values in units.values():
        values = list(values)
        m = len(values)
        if m < 2:
            continue  # a unit coded once pairs with nothing
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            coincidence[(values[i], values[j])] += 1.0 / (m - 1)
    margins: dict[Any, float] = defaultdict(float)
    for (c, _), count in coincidence.items():
        margins[c] += count
    n = sum(margins.values())
    if n <= 1:
        return math.nan
    distance = _distance(level, margins)
    observed = sum(count * distance(c, k) for (c, k), count in coincidence.items())
    expected = sum(margins[c] * margins[k] * distance(c, k) for c in margins for k in margins)
    if expected == 0.0:
        return math.nan
    return 1.0 - (n - 1) * observed / expected


def _distance(level: Level, margins: Mapping[Any, float]):
    if level == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if level == "interval":
        return lambda c, k: (float(c) - float(k)) ** 2
    # ordinal: the mass of values from c to k, less half of each end, squared
    ranked = sorted(margins)
    cumulative = {}
    total = 0.0
    for value in ranked:
        cumulative[value] = total
        total += margins[value]

    def ordinal(c: Any, k: Any) -> float:
        lo, hi = (c, k) if c <= k else (k, c)
        between = cumulative[hi] + margins[hi] - cumulative[lo]
        return (between - (margins[lo] + margins[hi]) / 2.0) ** 2

    return ordinal


def pairwise_kappas(categories: Mapping[str, Mapping[Hashable, Hashable]], min_items: int = 1) -> list[dict[str, Any]]:
    """Kappa for every pair of raters on the items both rated: ``[{a, b, items, kappa}]``.

    ``categories``: rater -> {item id -> category}.
    """
    out = []
    for a, b in combinations(sorted(categories), 2):
        shared = sorted(set(categories[a]) & set(categories[b]), key=str)
        if len(shared) < min_items:
            continue
        kappa = cohen_kappa([categories[a][i] for i in shared], [categories[b][i] for i in shared])
        out.append({"a": a, "b": b, "items": len(shared), "kappa": kappa})
    return out


# --------------------------------------------------------------------------- from labels


def pair_category(ranks: Sequence[int] | None, choice: str | None) -> str:
    """Nominal category of a two-response label in stored order: "0"/"1" (the winner), "tie", "both_bad";
    of a thumbs label: "up" or "down"."""
    if choice in ("up", "down"):
        return choice
    if choice == "both_bad" or ranks is None:
        return "both_bad"
    if ranks[0] == ranks[1]:
        return "tie"
    return "0" if ranks[0] < ranks[1] else "1"


def item_agreement(orderings: Sequence[Sequence[float]]) -> float:
    """Share of annotators agreeing with the majority on each response pair, averaged over pairs.

    ``orderings``: per annotator, a value per stored response, lower is better (ranks, or negated
    scores). Each pair (i, j) gets a direction per annotator (i better, j better, tie); its
    agreement is the largest direction's share. One annotator agrees with themself: 1.0.
    """
    if not orderings:
        return math.nan
    n = len(orderings[0])
    shares = []
    for i, j in combinations(range(n), 2):
        directions = Counter((o[i] > o[j]) - (o[i] < o[j]) for o in orderings)
        shares.append(max(directions.values()) / len(orderings))
    return sum(shares) / len(shares) if shares else 1.0


def labels_agreement(labels: Sequence[Mapping[str, Any]], kind: str = "ranking") -> float:
    """Agreement of one item's done labels: the share of the most common vote (thumbs, or two responses),
    else ``item_agreement`` of the ranks, or of the scores for ``kind="rating"`` (NaN without scores)."""
    if labels[0]["choice"] in ("up", "down"):
        return max(Counter(rec["choice"] for rec in labels).values()) / len(labels)
    if kind == "rating":
        scored = [[-s for s in rec["scores"]] for rec in labels if rec["scores"] and None not in rec["scores"]]
        return item_agreement(scored) if scored else float("nan")
    if len(labels[0]["responses"]) == 2:
        votes = Counter(pair_category(rec["ranks"], rec["choice"]) for rec in labels)
        return max(votes.values()) / len(labels)
    return item_agreement([rec["ranks"] for rec in labels if rec["ranks"] is not None])


def project_agreement(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of a project's done labels (``LabelStore.label_records``), by item id.

    ``pairwise``: Cohen's kappa per pair of annotators and their mean, and nominal alpha, over
    two-response items and thumbs items (up/down); ``ranking``: ordinal alpha of ranks per (item, response), over all items
    (both-bad votes have no ranks and are left out); ``scores``: interval alpha of scores per
    (item, response).
    """
    categories: dict[str, dict[str, str]] = defaultdict(dict)
    nominal: dict[str, list[str]] = defaultdict(list)
    ordinal: dict[tuple[str, int], list[int]] = defaultdict(list)
    interval: dict[tuple[str, int], list[float]] = defaultdict(list)
    for rec in records:
        if rec["status"] != "done":
            continue
        item = rec["item"]
        if len(rec["responses"]) <= 2:  # a pair, or one response judged up or down
            category = pair_category(rec["ranks"], rec["choice"])
            categories[rec["annotator"]][item] = category
            nominal[item].append(category)
        for index, rank in enumerate(rec["ranks"] or []):
            ordinal[(item, index)].append(rank)
        for index, score in enumerate(rec["scores"] or []):
            if score is not None:
                interval[(item, index)].append(score)
    kappas = pairwise_kappas(categories)
    defined = [k["kappa"] for k in kappas if not math.isnan(k["kappa"])]
    return {
        "pairwise": {
            "items": sum(len(v) >= 2 for v in nominal.values()),
            "alpha_nominal": krippendorff_alpha(nominal, "nominal"),
            "mean_kappa": sum(defined) / len(defined) if defined else math.nan,
            "kappa": kappas,
        },
        "ranking": {
            "items": len({item for (item, _), v in ordinal.items() if len(v) >= 2}),
            "alpha_ordinal": krippendorff_alpha(ordinal, "ordinal"),
        },
        "scores": {
            "items": len({item for (item, _), v in interval.items() if len(v) >= 2}),
            "alpha_interval": krippendorff_alpha(interval, "interval"),
        },
    }


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def format_summary(counts: dict[str, int], agreement: dict[str, Any], k: int) -> str:
    """Item progress and agreement as Markdown bullets (the admin view and `align label status`)."""
    pair = agreement["pairwise"]
    lines = [
        (f"- **Items:** {counts['complete']} complete (K={k}), {counts['started']} started, "
         f"{counts['untouched']} untouched, of {counts['total']}"),
        (f"- **Pairwise** ({pair['items']} items with 2+ labels): Krippendorff's alpha (nominal) "
         f"{_fmt(pair['alpha_nominal'])}, mean Cohen's kappa {_fmt(pair['mean_kappa'])}"),
        f"- **Rankings** ({agreement['ranking']['items']} items): alpha (ordinal) {_fmt(agreement['ranking']['alpha_ordinal'])}",
        f"- **Scores** ({agreement['scores']['items']} items): alpha (interval) {_fmt(agreement['scores']['alpha_interval'])}",
    ]
    if pair["kappa"]:
        lines += ["", "| annotators | shared items | kappa |", "|---|---|---|"]
        lines += [f"| {k_['a']} / {k_['b']} | {k_['items']} | {_fmt(k_['kappa'])} |" for k_ in pair["kappa"]]
    return "\n".join(lines)
