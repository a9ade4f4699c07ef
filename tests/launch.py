"""Launch ``align`` under the real ``deepspeed`` launcher with CPU processes, for multi-process tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_deepspeed(align_args: list[str], nprocs: int = 2, timeout: float = 400) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus N --module align.cli ARGS`` on CPU; returns the finished process (output captured)."""
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    assert launcher, "the deepspeed launcher is not installed"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [launcher, "--num_gpus", str(nprocs), "--master_port", str(free_port()), "--module", "align.cli", *align_args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
