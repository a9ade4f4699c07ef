"""``python -m align.stages.ppo RECIPE.yaml key=value ...``: the PPO stage without the CLI registry.

    deepspeed --num_gpus 2 --module align.stages.ppo recipes/ppo.yaml training.deepspeed=ds_configs/zero2.json

Same as ``align ppo``; handy under launchers and in tests.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from align.config import PPORecipe
    from align.recipe import load_recipe
    from align.stages.ppo import run
    from align.distributed import destroy_process_group
    from align.run import setup_logging

    args = sys.argv[1:] if argv is None else argv
    args = [a for a in args if not a.startswith(("--local_rank", "--local-rank"))]  # the launcher's; ranks read env
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    setup_logging(logging.INFO)
    try:
        result = run(load_recipe(PPORecipe, args[0], args[1:]))
    finally:
        destroy_process_group()
    logging.getLogger("align.ppo").info("done -> %s", result.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
