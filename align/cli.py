"""Command line: ``align <stage> RECIPE.yaml key.sub=value ...`` and ``align run PIPELINE.yaml``.

    align sft recipes/sft.yaml training.max_steps=20
    align run recipes/quickstart.yaml --force sft
    align generate --model smollm2-135m-instruct --prompts examples/data/prompts_demo.jsonl --out candidates.jsonl
    align label serve --project demo

Each command is a plain function too (``run_stage``, ``align.pipeline.run_pipeline``), so
tests call them without a subprocess.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from align.recipe import RecipeError, load_recipe
from align.run import StageResult
from align.stages import STAGES

logger = logging.getLogger("align")


def run_stage(stage: str, recipe_path: str | Path, overrides: list[str] | None = None) -> StageResult:
    """Validate the recipe for ``stage`` and run it."""
    spec = STAGES[stage]
    raw_overrides = list(overrides or [])
    recipe = load_recipe(spec.load_schema(), recipe_path, raw_overrides)
    if getattr(recipe, "stage", stage) != stage:
        raise RecipeError(f"{recipe_path}: stage: the recipe is for '{recipe.stage}', not '{stage}'")
    return spec.load_runner()(recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align",
        description="Align a language model: SFT, reward model, DPO, PPO, with human labels.",
        epilog="Any recipe key can be overridden: align sft recipes/sft.yaml training.learning_rate=1e-5",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The deepspeed launcher passes --local_rank; the rank is read from the environment.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in STAGES.items():
        if not spec.cli:
            continue
        sub = commands.add_parser(name, help=spec.help, description=spec.help)
        sub.add_argument("recipe", help="YAML recipe")
        sub.add_argument("overrides", nargs="*", help="key.sub=value")
    run = commands.add_parser("run", help="run a pipeline recipe (several stages wired by name)")
    run.add_argument("recipe", help="pipeline YAML recipe")
    run.add_argument("overrides", nargs="*", help="stage.key.sub=value, e.g. sft.training.max_steps=5")
    run.add_argument("--force", default="", help="comma-separated stage names to re-run even if finished")
    prepare = commands.add_parser("prepare-models", help="convert and cache the offline demo models")
    prepare.add_argument("names", nargs="*", default=["smollm2-135m-instruct", "minilm-l6"], help="model aliases")
    from labeling_ui.commands import add_label_arguments

    generate = commands.add_parser("generate", help="sample N responses per prompt from one or more models for labeling")
    add_generate_arguments(generate)
    label = commands.add_parser("label", help="human labeling: users, import candidates, serve the app, export labels")
    add_label_arguments(label)
    from labeling_ui.auto import add_auto_command

    add_auto_command(label)
    return parser


GENERATE_FLAGS = {
    "prompts": "data.path",
    "n": "generation.n",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "max_new_tokens": "generation.max_new_tokens",
    "batch_size": "generation.batch_size",
    "seed": "generation.seed",
    "out": "output",
}


def add_generate_arguments(parser: Any) -> None:
    parser.add_argument("recipe", nargs="?", default=None, help="YAML recipe (optional: flags alone are enough)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    parser.add_argument("--model", action="append", default=None, help="model to sample from (repeat for several)")
    parser.add_argument("--prompts", help="prompt file, read with the dataset layer (kind prompt)")
    parser.add_argument("--n", type=int, help="responses per prompt from each model")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", dest="top_p", type=float)
    parser.add_argument("--top-k", dest="top_k", type=int)
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="prompts per generate call")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="candidates JSONL to write")


def generate_recipe_from_args(args: Any) -> Any:
    """``align generate``'s recipe: defaults < recipe < key=value overrides < flags."""
    from align.config import GenerateRecipe
    from align.recipe import apply_overrides, read_yaml, validate

    overrides = list(args.overrides or [])
    recipe_path = args.recipe
    if recipe_path is not None and "=" in recipe_path and not Path(recipe_path).exists():
        overrides.insert(0, recipe_path)  # `align generate key=value ...` without a recipe
        recipe_path = None
    data = apply_overrides(read_yaml(recipe_path) if recipe_path else {}, overrides)
    for flag, key in GENERATE_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data = _set(data, key, value)
    if args.model:
        data.pop("model", None)
        data["models"] = [{"name_or_path": name} for name in args.model]
    return validate(GenerateRecipe, data, source=recipe_path or "align generate")


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "label" and args.label_command == "auto":  # a judge needs torch; logs like a stage
        from align.run import setup_logging
        from labeling_ui.auto import main as auto_main

        setup_logging(logging.DEBUG if args.verbose else logging.INFO)
        return auto_main(args)
    if args.command == "label":  # imports neither torch nor transformers: starts in a second
        from labeling_ui.commands import main as label_main

        return label_main(args)
    from align.run import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    from align.data import DataError
    from align.distributed import destroy_process_group
    from align.models import ModelNotFoundError
    from align.pipeline import StageFailed, run_pipeline

    try:
        if args.command == "prepare-models":
            from align.models import resolve_model_source

            for name in args.names:
                logger.info("%s -> %s", name, resolve_model_source(name))
        elif args.command == "generate":
            from align.stages.generate import run as run_generate

            result = run_generate(generate_recipe_from_args(args))
            logger.info("done -> %s %s", result.metrics["candidates"], result.metrics)
        elif args.command == "run":
            force = {name for name in args.force.split(",") if name}
            results = run_pipeline(args.recipe, args.overrides, force=force)
            for name, result in results.items():
                logger.info("%s -> %s", name, result.output_dir)
        else:
            result = run_stage(args.command, args.recipe, args.overrides)
            logger.info("done -> %s %s", result.output_dir, result.metrics)
    except (RecipeError, DataError, ModelNotFoundError, StageFailed) as err:
        print(f"align: error: {err}", file=sys.stderr)
        return 2
    finally:
        destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
