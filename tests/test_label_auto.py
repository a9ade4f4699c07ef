"""``align label auto``: judge labels from simulated annotators, through the store, exported like human labels.

``count_good`` is the judge these tests name as ``test_label_auto:count_good``. Disagreement: with
Gaussian noise of scale sigma on each score, a pair whose scores differ by d is flipped with
probability Phi(-d / (sigma sqrt 2)), and two annotators disagree on it with probability 2p(1-p).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from align.cli import main as cli_main
from labeling_ui.auto import annotator_generator, auto_label, perturb, ranks_of, slider_scores
from labeling_ui.export import ExportOptions, build_rows
from labeling_ui.schemas import ProjectConfig, parse_candidate
from labeling_ui.store import LabelStore


def count_good(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(r.count("good")) for r in responses]


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# --------------------------------------------------------------------------- the noise model


def test_gaussian_and_gumbel_flip_rates_match_their_formulas() -> None:
    n, gap, noise = 20000, 1.0, 1.0
    scores = torch.tensor([[gap, 0.0]]).repeat(n, 1)  # (n, 2): response 0 is better by `gap`
    gaussian = perturb(scores, noise, "gaussian", torch.Generator().manual_seed(0))
    gumbel = perturb(scores, noise, "gumbel", torch.Generator().manual_seed(0))
    # Flip: the worse response ends up ahead. SE of a rate near 0.25 over 20000 draws is 0.003.
    expected_gaussian = _phi(-gap / (noise * math.sqrt(2)))  # 0.2398
    expected_gumbel = 1.0 / (1.0 + math.exp(gap / noise))  # Bradley-Terry: sigmoid(-1) = 0.2689
    assert abs((gaussian[:, 1] > gaussian[:, 0]).double().mean().item() - expected_gaussian) < 0.012
    assert abs((gumbel[:, 1] > gumbel[:, 0]).double().mean().item() - expected_gumbel) < 0.012
    torch.testing.assert_close(perturb(scores[:3], 0.0, "gaussian", torch.Generator()), scores[:3].double())


def test_draws_depend_on_seed_annotator_and_item_only() -> None:
    s = torch.tensor([0.0, 0.0, 0.0])
    a = perturb(s, 1.0, "gaussian", annotator_generator(0, "judge-0", "p1"))
    torch.testing.assert_close(a, perturb(s, 1.0, "gaussian", annotator_generator(0, "judge-0", "p1")))
    assert not torch.equal(a, perturb(s, 1.0, "gaussian", annotator_generator(0, "judge-1", "p1")))
    assert not torch.equal(a, perturb(s, 1.0, "gaussian", annotator_generator(1, "judge-0", "p1")))


def test_ranks_and_slider_scores() -> None:
    assert ranks_of([0.2, 0.9, 0.2]) == [2, 1, 2]
    # sigmoid(0) = 0.5 -> middle of [1, 7]; sigmoid(+-50) -> the ends.
    assert slider_scores([0.0, 50.0, -50.0], 1.0, 7.0, 0.5) == [4.0, 7.0, 1.0]


# --------------------------------------------------------------------------- through the store


def _project(tmp_path: Path, items: int, labels_per_item: int, responses: list[str], **config) -> LabelStore:  # noqa: ANN003
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    store.create_project("demo", ProjectConfig(labels_per_item=labels_per_item, **config))
    rows = [parse_candidate({"id": f"p{i:03d}", "prompt": f"Question {i}?", "responses": responses}, f"c.jsonl:{i + 1}")
            for i in range(items)]
    store.import_items("demo", [(f"c.jsonl:{i + 1}", row) for i, row in enumerate(rows)])
    return store


def test_noisy_annotators_disagree_at_the_expected_rate(tmp_path: Path) -> None:
    from align.judges import load_judge

    items, k, sigma = 150, 3, 1.0
    store = _project(tmp_path, items, k, ["good good answer", "good answer"])  # gap d = 1
    report = auto_label(store, "demo", load_judge("test_label_auto:count_good"), annotators=k, noise=sigma, seed=7)
    assert report.labels == {"judge-0": items, "judge-1": items, "judge-2": items} and report.items_scored == items

    records = store.label_records("demo")
    # The stored ranks are in stored order: response 0 is the better one.
    flipped = [rec["ranks"] == [2, 1] for rec in records]
    p = _phi(-1.0 / (sigma * math.sqrt(2)))  # 0.2398
    # 450 labels: SE 0.020; 4 SE tolerance.
    assert abs(sum(flipped) / len(flipped) - p) < 0.08
    by_item: dict[str, list[bool]] = {}
    for rec, flip in zip(records, flipped):
        by_item.setdefault(rec["item"], []).append(flip)
    pairs = [(a, b) for votes in by_item.values() for i, a in enumerate(votes) for b in votes[i + 1:]]
    # Two annotators disagree with probability 2p(1-p) = 0.365; 450 pairs (3 per item), SE about 0.03.
    assert abs(sum(a != b for a, b in pairs) / len(pairs) - 2 * p * (1 - p)) < 0.1

    rows = build_rows(records, ExportOptions(kind="preference")).rows  # the human export path
    assert {row["annotator"] for row in rows} == {"judge-0", "judge-1", "judge-2"}
    assert sum(row["chosen"] == "good good answer" for row in rows) == len(rows) - sum(flipped)


def test_reward_model_judge_without_noise_follows_its_scores(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from reward_models import RewardModel, RewardScorer

    torch.manual_seed(0)
    RewardModel.from_encoder(tiny_bert_dir, max_length=64).save_pretrained(tmp_path / "rm")
    responses = ["Paris is the capital.", "yes", "no maybe please", "The quick brown fox."]
    store = _project(tmp_path, 4, 1, responses, score={"enabled": True, "required": True})
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    assert cli_main(["label", "auto", "--db", db, "--project", "demo", "--judge", str(tmp_path / "rm"),
                     "--annotators", "2"]) == 0  # K = 1: judge-1 finds nothing left

    scores = RewardScorer.from_pretrained(tmp_path / "rm").score(["Question 0?"] * 4, responses).tolist()
    records = store.label_records("demo")
    assert len(records) == 4 and {rec["annotator"] for rec in records} == {"judge-0"}
    assert records[0]["ranks"] == ranks_of(scores)  # stored order, 1 = highest score
    assert all(1.0 <= s <= 7.0 for rec in records for s in rec["scores"])
    out = tmp_path / "ranking.jsonl"
    assert cli_main(["label", "export", "--db", db, "--project", "demo", "--kind", "ranking", "--out", str(out)]) == 0
    assert json.loads(out.read_text().splitlines()[0])["annotator"] == "judge-0"


def test_unknown_project_and_bad_judge_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    assert cli_main(["label", "auto", "--db", db, "--project", "nope", "--judge", "test_label_auto:count_good"]) == 2
    assert "no labeling project 'nope'" in capsys.readouterr().err
    assert cli_main(["label", "auto", "--db", db, "--project", "nope", "--judge", "no/such/dir"]) == 2
    assert "reward judge 'no/such/dir'" in capsys.readouterr().err
