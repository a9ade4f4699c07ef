"""Agreement metrics on small examples with known answers (worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest

from labeling_ui.agreement import (
    cohen_kappa,
    item_agreement,
    krippendorff_alpha,
    pair_category,
    pairwise_kappas,
    project_agreement,
)


def test_cohen_kappa_textbook_example() -> None:
    # 50 items, yes/no. Both yes 20, A yes B no 5, A no B yes 10, both no 15.
    # p_o = (20 + 15) / 50 = 0.7; A says yes 25/50, B 30/50: p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5.
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    # Opposite answers on balanced data: p_o = 0, p_e = 0.5, kappa = -1.
    assert cohen_kappa(["y", "n"], ["n", "y"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["y", "y"], ["y", "y"]))  # p_e = 1: undefined
    with pytest.raises(ValueError, match="one category per item"):
        cohen_kappa(["y"], ["y", "n"])


def test_krippendorff_alpha_published_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 coders x 12 units with
    # missing values; the paper gives alpha = 0.743 (nominal), 0.815 (ordinal), 0.849 (interval).
    n = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = {u: [c[u] for c in coders if c[u] is not None] for u in range(12)}
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_krippendorff_alpha_by_hand() -> None:
    # Nominal, units (a, a), (a, b), (b, b): coincidences o_aa = 2, o_ab = o_ba = 1, o_bb = 2;
    # n_a = n_b = 3, n = 6. alpha = 1 - (n - 1) * (o_ab + o_ba) / (2 n_a n_b) = 1 - 5 * 2 / 18 = 4/9.
    assert krippendorff_alpha({1: "aa", 2: "ab", 3: "bb"}, "nominal") == pytest.approx(4 / 9)
    # Interval, units (1, 2), (3, 3): o_12 = o_21 = 1, o_33 = 2; n_1 = n_2 = 1, n_3 = 2, n = 4.
    # observed sum o * d = 2 * (1 - 2)^2 = 2; expected sum n_c n_k d = 2 * (1*1*1 + 1*2*4 + 1*2*1) = 22.
    # alpha = 1 - 3 * 2 / 22 = 8/11.
    assert krippendorff_alpha({1: [1, 2], 2: [3, 3]}, "interval") == pytest.approx(8 / 11)
    # A unit coded once pairs with nothing and changes nothing.
    assert krippendorff_alpha({1: [1, 2], 2: [3, 3], 3: [7]}, "interval") == pytest.approx(8 / 11)
    assert math.isnan(krippendorff_alpha({1: [2, 2], 2: [2, 2]}, "nominal"))  # no variation: undefined
    with pytest.raises(ValueError, match="level must be"):
        krippendorff_alpha({}, "ratio")  # type: ignore[arg-type]


def test_item_agreement_and_pair_categories() -> None:
    # Three annotators rank three responses. Pairs (0,1) and (0,2): all agree (1.0 each);
    # pair (1,2): two say 1 before 2, one says the reverse (2/3). Mean = (1 + 1 + 2/3) / 3 = 8/9.
    assert item_agreement([[1, 2, 3], [1, 3, 2], [1, 2, 3]]) == pytest.approx(8 / 9)
    assert item_agreement([[2, 1]]) == 1.0
    assert pair_category([1, 2], "a") == "0" and pair_category([2, 1], "a") == "1"
    assert pair_category([1, 1], "tie") == "tie" and pair_category(None, "both_bad") == "both_bad"


def _rec(item: str, who: str, ranks, choice=None, n=2, scores=None) -> dict:
    return {"item": item, "annotator": who, "status": "done", "ranks": ranks, "choice": choice,
            "responses": [{"text": str(i)} for i in range(n)], "scores": scores}


def test_project_agreement_matches_items_by_id() -> None:
    # Two raters on four pairwise items; categories (stored-order winner):
    #   x: 0/0, y: 1/1, z: 0/1, w: tie/tie -> p_o = 3/4.
    # u categories 0,1,0,tie; v 0,1,1,tie -> p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16.
    # kappa = (3/4 - 5/16) / (11/16) = 7/11.
    records = [
        _rec("x", "u", [1, 2]), _rec("x", "v", [1, 2]),
        _rec("y", "u", [2, 1]), _rec("y", "v", [2, 1]),
        _rec("z", "u", [1, 2]), _rec("z", "v", [2, 1]),
        _rec("w", "v", [1, 1], "tie"), _rec("w", "u", [1, 1], "tie"),
        {**_rec("s", "u", [1, 2]), "status": "skipped"},  # skips are not labels
    ]
    got = project_agreement(records)
    assert got["pairwise"]["kappa"] == [{"a": "u", "b": "v", "items": 4, "kappa": pytest.approx(7 / 11)}]
    assert got["pairwise"]["items"] == 4
    assert pairwise_kappas({"u": {"x": "0"}, "v": {"y": "0"}}) == []  # no shared item: no kappa for the pair
    assert got["ranking"]["items"] == 4 and got["scores"]["items"] == 0 and math.isnan(got["scores"]["alpha_interval"])
