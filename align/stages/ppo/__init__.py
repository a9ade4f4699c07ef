"""PPO-RLHF, our own implementation (TRL 1.x has no PPO trainer), on accelerate.

    align ppo recipes/ppo.yaml training.max_steps=20

- the math is ``align.ops.ppo`` (KL estimators k1/k2/k3, per-token rewards, GAE, clipped losses,
  adaptive KL), torch only: tests import it without loading the stage;
- ``rollout``: which prompts each iteration samples from, and its seed (sampling is ``align.sampling``);
- ``modeling``: policy + value head / separate critic as one module;
- ``distributed``: accelerate / DeepSpeed set-up, ``"auto"`` values of ds_configs/ filled;
- ``trainer``: the loop, logging, checkpoints and resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from align.config import PPORecipe
    from align.run import StageResult


def run(recipe: PPORecipe) -> StageResult:
    """Run the PPO stage (imports the trainer on use, so the registry and ``python -m`` start fast)."""
    from align.stages.ppo.trainer import run as run_ppo

    return run_ppo(recipe)
