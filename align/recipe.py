"""Read a YAML recipe, apply ``key.sub=value`` overrides, validate it against a stage schema.

Errors name the recipe file and the full dotted key, so a typo in a 40-line recipe is
found in one look.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Schema = TypeVar("Schema", bound=BaseModel)
_UNKNOWN_KEY = re.compile(r"unknown key '([^']+)'(.*)", re.S)
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class RecipeError(ValueError):
    """A recipe that cannot be read or does not fit its schema."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.max_steps=20`` -> (["training", "max_steps"], 20); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override '{text}' must look like key.sub=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.sub=value`` set, creating sections as needed.

    A number indexes into a list: ``data.1.path=ratings.jsonl``.
    """
    out = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = out
        for depth, key in enumerate(keys):
            prefix = ".".join(keys[: depth + 1])
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise RecipeError(f"override '{text}': '{prefix}': index out of range for a list of {len(node)}")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                parent = ".".join(keys[:depth])
                raise RecipeError(f"override '{text}': '{parent}' is {node!r}, not a section")
    return out


def validate(schema: type[Schema], data: dict[str, Any], source: str | Path = "<recipe>") -> Schema:
    """Validate ``data`` as ``schema``; every problem is listed as ``source: dotted.key: message``."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            loc = [str(part) for part in problem["loc"]]
            message = problem["msg"].removeprefix("Value error, ")
            unknown = _UNKNOWN_KEY.match(message)
            if unknown:  # put the offending key into the path: training.lerning_rate
                loc.append(unknown.group(1))
                message = "unknown key" + unknown.group(2)
            key = ".".join(loc) or "(top level)"
            lines.append(f"  {key}: {message}")
        raise RecipeError(f"{source}: invalid recipe\n" + "\n".join(lines)) from None


def load_recipe(schema: type[Schema], path: str | Path, overrides: list[str] | None = None) -> Schema:
    return validate(schema, apply_overrides(read_yaml(path), overrides or []), source=path)


def dump_recipe(recipe: BaseModel, path: Path) -> None:
    """Write the fully resolved recipe (defaults included) so a run can be reproduced from it."""
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data
