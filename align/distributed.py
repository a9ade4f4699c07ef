"""Launcher-related helpers shared by every stage that trains.

DeepSpeed on a machine without accelerators (CI, laptops) is how the multi-process
path is tested here. accelerate picks no process-group backend in that case, so each
rank believes it is alone while DeepSpeed sees the whole world: batch sizes and
gathers then disagree. ``route_cpu_deepspeed_to_gloo`` makes accelerate use gloo, the
backend DeepSpeed's CPU accelerator uses too. On GPUs it does nothing.
"""

from __future__ import annotations

import os


def launched_with_deepspeed_on_cpu() -> bool:
    import torch

    return int(os.environ.get("LOCAL_RANK", "-1")) != -1 and not torch.cuda.is_available()


def route_cpu_deepspeed_to_gloo() -> None:
    """Patch accelerate's backend choice once per process (no-op with CUDA or without a launcher)."""
    if not launched_with_deepspeed_on_cpu():
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend
    if getattr(original, "_routes_cpu_deepspeed", False):
        return

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):  # noqa: ANN001, ANN202
        chosen, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if chosen is None and not cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            return "gloo", DistributedType.MULTI_CPU
        return chosen, distributed_type

    _prepare_backend._routes_cpu_deepspeed = True  # type: ignore[attr-defined]
    PartialState._prepare_backend = _prepare_backend


def destroy_process_group() -> None:
    """Tear the process group down before exit: ZeRO-3 runs abort at interpreter teardown otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
