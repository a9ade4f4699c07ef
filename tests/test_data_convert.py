"""Dataset layer: kind conversions, dedup, train/eval split, leakage check, chat rendering."""

from __future__ import annotations

import logging

import pytest

from align.data import (
    check_leakage,
    dedup,
    preference_to_sft,
    ranking_to_preference,
    rating_to_preference,
    prompt_text,
    response_text,
    split_train_eval,
    to_kind,
)
from tiny_models import build_causal_tokenizer

USER_X = [{"role": "user", "content": "x"}]


def pair(prompt, chosen, rejected, margin):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin}


# --------------------------------------------------------------------------- conversions


def test_ranking_with_tie_gives_exact_pairs() -> None:
    # ranks [2, 1, 2]: B is best; A and C tie. Pairs in (i, j) order: (A,B) -> B>A by 1, (A,C) tie, (B,C) -> B>C by 1.
    rows = [{"prompt": "p", "responses": ["A", "B", "C"], "ranks": [2, 1, 2]}]
    assert ranking_to_preference(rows, "drop") == [pair("p", "B", "A", 1.0), pair("p", "B", "C", 1.0)]
    assert ranking_to_preference(rows, "keep") == [
        pair("p", "B", "A", 1.0),
        pair("p", "A", "C", 0.0),
        pair("p", "B", "C", 1.0),
    ]


def test_ranking_margin_is_rank_difference() -> None:
    rows = [{"prompt": "p", "responses": ["worst", "best"], "ranks": [4, 1]}]
    assert ranking_to_preference(rows) == [pair("p", "best", "worst", 3.0)]


def test_ranking_with_message_prompt_gives_assistant_messages() -> None:
    rows = [{"prompt": USER_X, "responses": ["good", "bad"], "ranks": [1, 2]}]
    assert ranking_to_preference(rows) == [
        pair(USER_X, [{"role": "assistant", "content": "good"}], [{"role": "assistant", "content": "bad"}], 1.0)
    ]


def test_rating_pairs_by_prompt_with_score_margin() -> None:
    rows = [
        {"prompt": "p", "response": "a", "score": 4.0},
        {"prompt": "q", "response": "x", "score": 1.0},
        {"prompt": "p", "response": "b", "score": 1.5},
        {"prompt": "p", "response": "c", "score": 4.0},
        {"prompt": "p", "response": "b", "score": 2.5},  # b rated twice: mean 2.0
        {"prompt": "q", "response": "y", "score": 0.25},
    ]
    # p: a(4) b(2) c(4) -> a>b 2.0, a=c tie, c>b 2.0; q: x(1) y(0.25) -> x>y 0.75
    assert rating_to_preference(rows, "drop") == [
        pair("p", "a", "b", 2.0),
        pair("p", "c", "b", 2.0),
        pair("q", "x", "y", 0.75),
    ]
    assert pair("p", "a", "c", 0.0) in rating_to_preference(rows, "keep")


def test_rating_groups_message_prompts_by_content() -> None:
    rows = [
        {"prompt": [{"role": "user", "content": "x"}], "response": "lo", "score": 1.0},
        {"prompt": [{"content": "x", "role": "user"}], "response": "hi", "score": 3.0},  # same prompt, keys reordered
    ]
    assert rating_to_preference(rows) == [
        pair(USER_X, [{"role": "assistant", "content": "hi"}], [{"role": "assistant", "content": "lo"}], 2.0)
    ]


def test_preference_to_sft_keeps_chosen() -> None:
    assert preference_to_sft([pair("p", "good", "bad", 1.0)]) == [{"prompt": "p", "completion": "good"}]


def test_to_kind_dataset_in_dataset_out() -> None:
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": USER_X, "responses": ["a", "b"], "ranks": [2, 1]}])
    out = to_kind(ds, "ranking", "preference")
    assert isinstance(out, datasets.Dataset)
    assert out.to_list() == [
        pair(USER_X, [{"role": "assistant", "content": "b"}], [{"role": "assistant", "content": "a"}], 1.0)
    ]
    sft = to_kind(out, "preference", "sft")
    assert sft.column_names == ["prompt", "completion"]


def test_to_kind_prompt_keeps_distinct_prompts() -> None:
    prefs = [pair("p", "a", "b", 1.0), pair("p", "a", "c", 2.0), pair("q", "a", "b", 0.0)]
    assert to_kind(prefs, "preference", "prompt") == [{"prompt": "p"}, {"prompt": "q"}]
    chat = [{"role": "system", "content": "s"}, *USER_X, {"role": "assistant", "content": "y"}]
    assert to_kind([{"messages": chat}], "sft", "prompt") == [{"prompt": chat[:2]}]
    with pytest.raises(ValueError, match="'text' form have no prompt"):
        to_kind([{"text": "t"}], "sft", "prompt")


def test_to_kind_identity_and_unsupported() -> None:
    rows = [{"prompt": "p"}]
    assert to_kind(rows, "prompt", "prompt") is rows
    with pytest.raises(ValueError) as info:
        to_kind([], "rating", "sft")
    assert str(info.value) == (
        "cannot convert rating records to sft; supported: ranking -> preference, rating -> preference, "
        "preference -> sft, any kind -> prompt, a kind -> itself"
    )
    with pytest.raises(ValueError, match="tie_policy must be 'drop' or 'keep', got 'maybe'"):
        to_kind([], "ranking", "preference", tie_policy="maybe")


# --------------------------------------------------------------------------- dedup, split, leakage


def test_dedup_counts_exact_duplicates() -> None:
    import datasets

    rows = [{"prompt": "a", "x": 1}, {"prompt": "b", "x": 1}, {"x": 1, "prompt": "a"}, {"prompt": "a", "x": 2}]
    kept, dropped = dedup(rows)
    assert (kept, dropped) == ([rows[0], rows[1], rows[3]], 1)
    kept_ds, dropped_ds = dedup(datasets.Dataset.from_list(rows))
    assert (kept_ds.to_list(), dropped_ds) == ([rows[0], rows[1], rows[3]], 1)


def _rows() -> list[dict]:
    # 20 prompts; q0..q4 have two rows each (e.g. two pairs from one ranking)
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(20)]
    return rows + [{"prompt": f"q{i}", "chosen": "a", "rejected": "c"} for i in range(5)]


def test_split_is_deterministic_disjoint_and_keeps_prompts_together() -> None:
    import datasets

    rows = _rows()
    train, evals = split_train_eval(rows, 0.25, seed=0)
    again_train, again_eval = split_train_eval(rows, 0.25, seed=0)
    assert (train, evals) == (again_train, again_eval)
    eval_prompts = {r["prompt"] for r in evals}
    assert len(eval_prompts) == 5  # round(0.25 x 20 prompts)
    assert eval_prompts.isdisjoint({r["prompt"] for r in train})
    assert len(train) + len(evals) == 25
    assert {r["prompt"] for r in split_train_eval(rows, 0.25, seed=1)[1]} != eval_prompts
    ds_train, ds_eval = split_train_eval(datasets.Dataset.from_list(rows), 0.25, seed=0)
    assert (ds_train.to_list(), ds_eval.to_list()) == (train, evals)
    assert split_train_eval(rows, 0.0, seed=0) == (rows, None)


def test_check_leakage_warns_with_count_and_example(caplog: pytest.LogCaptureFixture) -> None:
    train = [{"prompt": "a"}, {"prompt": "b"}]
    with caplog.at_level(logging.WARNING, logger="align.data"):
        assert check_leakage(train, [{"prompt": "b"}, {"prompt": "c"}, {"prompt": "b"}]) == 2
    [record] = [r for r in caplog.records if r.name == "align.data"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("2 of 3 eval rows have a prompt that also appears in train (e.g. 'b')")
    caplog.clear()
    assert check_leakage(train, [{"prompt": "c"}]) == 0
    assert not caplog.records


# --------------------------------------------------------------------------- chat rendering


def test_prompt_text_is_what_a_judge_reads() -> None:
    assert prompt_text("Hello") == "Hello"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompt_text(msgs) == "system: Be brief.\nuser: Hi"


def test_response_text() -> None:
    assert response_text("plain") == "plain"
    assert response_text([{"role": "assistant", "content": "one"}, {"role": "assistant", "content": "two"}]) == "one\ntwo"
    assert response_text([{"role": "user", "content": "no"}, {"content": "yes"}]) == "yes"  # no role: an assistant turn


def test_chat_to_prompt_completion_splits_at_last_answer() -> None:
    from align.data import chat_to_prompt_completion

    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    rows = chat_to_prompt_completion([{"messages": chat}, {"prompt": "p", "completion": "c"}])
    assert rows == [
        {"prompt": chat[:4], "completion": [{"role": "assistant", "content": "Goodbye."}]},
        {"prompt": "p", "completion": "c"},
    ]
