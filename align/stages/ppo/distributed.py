"""Accelerate / DeepSpeed set-up for a hand-written training loop.

    deepspeed --num_gpus 8 --module align.cli ppo recipes/ppo.yaml training.deepspeed=ds_configs/zero2.json

The ds_configs/ files leave batch sizes, clipping and precision as ``"auto"``: HF ``Trainer``
fills those from its arguments, but a raw ``accelerate.utils.DeepSpeedPlugin`` does not (and
accelerate's own filling needs a prepared dataloader, which PPO has none of), so
``fill_deepspeed_config`` does it from the recipe.
"""

from __future__ import annotations

import copy
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger("align.ppo")


def fill_deepspeed_config(
    config: dict[str, Any],
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    max_grad_norm: float,
    bf16: bool,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """A copy of a DeepSpeed config with every ``"auto"`` replaced; explicit values are kept.

    ``train_batch_size``, when asked for, is ``micro_batch_size * gradient_accumulation_steps * world_size``. The
    ZeRO bucket sizes follow HF's rule (``hidden_size**2``, 0.9 of it for the ZeRO-3 prefetch,
    ``10 * hidden_size`` persistence) when ``hidden_size`` is known, else DeepSpeed's defaults.
    """
    out = copy.deepcopy(config)
    top = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": max_grad_norm,
    }
    for key, value in top.items():
        if out.get(key, "auto") == "auto":
            out[key] = value
    if out.get("train_batch_size") == "auto":  # else DeepSpeed derives it from the two above
        out["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * world_size
    for key, enabled in (("bf16", bf16), ("fp16", False)):
        section = out.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = enabled
    zero = out.setdefault("zero_optimization", {})
    buckets = {
        "reduce_bucket_size": hidden_size * hidden_size if hidden_size else 5e8,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size) if hidden_size else 5e7,
        "stage3_param_persistence_threshold": 10 * hidden_size if hidden_size else 1e5,
    }
    for key, value in buckets.items():
        if zero.get(key) == "auto":
            zero[key] = value
    left = [key for key, value in _walk(out) if value == "auto"]
    if left:
        raise ValueError(f"DeepSpeed config: cannot fill 'auto' for {', '.join(left)}; give explicit values")
    return out


def _walk(config: dict[str, Any], prefix: str = ""):  # noqa: ANN202
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def make_accelerator(
    *,
    deepspeed_config: str | None,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    max_grad_norm: float,
    bf16: bool,
    hidden_size: int | None,
    log_with: list[str],
    project_dir: Path,
):  # noqa: ANN201 - accelerate.Accelerator
    """An ``Accelerator``: plain (CPU, one GPU, DDP) or with a DeepSpeed plugin from ``deepspeed_config``."""
    import os

    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    from align.distributed import route_cpu_deepspeed_to_gloo

    plugin = None
    if deepspeed_config:
        path = Path(deepspeed_config)
        if not path.is_file():
            raise FileNotFoundError(f"training.deepspeed: {path} not found")
        config = fill_deepspeed_config(
            json.loads(path.read_text()),
            micro_batch_size=micro_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            max_grad_norm=max_grad_norm,
            bf16=bf16,
            hidden_size=hidden_size,
        )
        plugin = DeepSpeedPlugin(hf_ds_config=config)
        # Without a GPU accelerate would see one process per rank while DeepSpeed runs them all.
        route_cpu_deepspeed_to_gloo()
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision="bf16" if bf16 else "no",
        deepspeed_plugin=plugin,
        # Each process trains on its own rollouts: step the LR schedule once per optimizer step,
        # not num_processes times as accelerate does for a split dataloader.
        step_scheduler_with_optimizer=False,
        log_with=log_with or None,
        project_dir=str(project_dir),
    )
    return accelerator


def is_zero3(accelerator) -> bool:  # noqa: ANN001
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


@contextmanager
def unwrapped_for_generation(module, accelerator) -> Iterator:  # noqa: ANN001
    """The bare ``PolicyAndValue`` for ``generate``, parameters gathered once under ZeRO-3.

    Without the gather, ZeRO-3 fetches every layer's shards on every decoding step. The
    engine's fetch hooks are taken off while the full weights are present (TRL's
    ``remove_hooks`` / ``add_hooks``), and gradient checkpointing, which disables the KV
    cache, is switched off for the rollout.
    """
    unwrapped = accelerator.unwrap_model(module)
    policy = unwrapped.policy
    checkpointing = getattr(policy, "is_activation_checkpointing", None)  # transformers 5 name
    if checkpointing is None:
        checkpointing = getattr(policy, "is_gradient_checkpointing", False)
    if checkpointing:
        policy.gradient_checkpointing_disable()
    try:
        if is_zero3(accelerator):
            import deepspeed
            from trl.models.utils import add_hooks, remove_hooks

            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                remove_hooks(module)
                try:
                    yield unwrapped
                finally:
                    add_hooks(module)
        else:
            yield unwrapped
    finally:
        if checkpointing:
            policy.gradient_checkpointing_enable()
