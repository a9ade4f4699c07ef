"""Recipe schema, YAML loading and key.sub=value overrides: errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.config import SFTRecipe, TrainingConfig
from align.recipe import RecipeError, apply_overrides, load_recipe, parse_override

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_overrides_beat_recipe_beat_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {path: x.jsonl}\ntraining: {max_steps: 7, learning_rate: 1.0e-4}\n")
    recipe = load_recipe(SFTRecipe, path, ["training.max_steps=20", "model.lora.r=4", "sft.packing=true"])
    assert recipe.training.max_steps == 20  # override
    assert recipe.training.learning_rate == 1e-4  # recipe
    assert recipe.training.weight_decay == 0.0  # default
    assert recipe.model.lora.r == 4 and recipe.sft.packing is True


def test_override_values_are_parsed_as_yaml() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=1e-5") == (["a"], 1e-5)
    assert parse_override("a.b=[q, v]") == (["a", "b"], ["q", "v"])
    assert parse_override("a=null") == (["a"], None)
    with pytest.raises(RecipeError, match="key.sub=value"):
        parse_override("training.max_steps")


def test_override_cannot_descend_into_a_value() -> None:
    with pytest.raises(RecipeError, match="'training.max_steps' is 3, not a section"):
        apply_overrides({"training": {"max_steps": 3}}, ["training.max_steps.x=1"])


def test_unknown_key_names_full_path_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {path: x.jsonl}\ntraining: {lerning_rate: 0.1}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(SFTRecipe, path)
    message = str(err.value)
    assert str(path) in message
    assert "training.lerning_rate: unknown key; did you mean 'learning_rate'?" in message


def test_missing_required_key_and_bad_value_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {method: lorra}\ntraining: {max_steps: many}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(SFTRecipe, path)
    message = str(err.value)
    assert "data: Field required" in message
    assert "model.method:" in message and "'lora'" in message
    assert "training.max_steps:" in message


def test_conflicting_values_name_both() -> None:
    with pytest.raises(ValueError, match="early_stopping_patience=3 needs eval_steps.*eval_steps=None"):
        TrainingConfig(early_stopping_patience=3)


def test_effective_batch_size_is_derived() -> None:
    assert TrainingConfig(per_device_batch_size=4, gradient_accumulation_steps=8).effective_batch_size == 32


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="nope.yaml: recipe file not found"):
        load_recipe(SFTRecipe, tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(SFTRecipe, write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(SFTRecipe, write(tmp_path, "- a\n- b\n"))


def _placeholders(value):  # noqa: ANN001, ANN202 - ${stage.key} references only resolve while a pipeline runs
    if isinstance(value, dict):
        return {k: _placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v) for v in value]
    return "runs/placeholder" if isinstance(value, str) and "${" in value else value


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate_and_point_at_shipped_data(path: Path) -> None:
    from align.config import PipelineRecipe
    from align.recipe import read_yaml, validate
    from align.stages import STAGES

    raw = read_yaml(path)
    entries = validate(PipelineRecipe, raw, path).pipeline if "pipeline" in raw else [raw]
    for entry in entries:
        recipe = validate(STAGES[entry["stage"]].load_schema(), _placeholders(entry), path)
        data = getattr(recipe, "data", None)
        sources = data if isinstance(data, list) else [data] if data is not None else []
        for source in sources:
            made_by_an_earlier_stage = source.path.startswith("runs/placeholder")
            assert made_by_an_earlier_stage or (REPO / source.path).exists(), f"{path.name}: {source.path} is not shipped"


def test_override_indexes_into_lists() -> None:
    data = {"data": [{"path": "a.jsonl"}, {"path": "b.jsonl"}]}
    assert apply_overrides(data, ["data.1.path=c.jsonl"])["data"][1] == {"path": "c.jsonl"}
    assert data["data"][1] == {"path": "b.jsonl"}  # the input is not changed
    with pytest.raises(RecipeError, match="'data.2': index out of range for a list of 2"):
        apply_overrides(data, ["data.2.path=x"])
