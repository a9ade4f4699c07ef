"""Two CPU processes under the deepspeed launcher: PPO with ZeRO-2 runs, checkpoints and saves.

The launch line (DS_ACCELERATOR=cpu, gloo; ``--module`` runs a module):

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --master_port PORT \
        --module align.stages.ppo RECIPE.yaml training.deepspeed=ds_configs/zero2.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from launch import REPO, free_port

TESTS = Path(__file__).resolve().parent


def run_ppo_deepspeed(args: list[str], nprocs: int = 2, timeout: float = 400) -> subprocess.CompletedProcess:
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    if launcher is None:
        pytest.skip("the deepspeed launcher is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    command = [launcher, "--num_gpus", str(nprocs), "--master_port", str(free_port()),
               "--module", "align.stages.ppo", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_ppo_zero2_two_processes(tiny_llama_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["Say yes.", "Say no.", "Greet me.", "What is 2 + 3?", "Thank you!", "Be brief."]))
    recipe = tmp_path / "ppo.yaml"
    out = tmp_path / "out"
    recipe.write_text(f"""
stage: ppo
model: {{name_or_path: {tiny_llama_dir}, method: full}}
data: {{path: {prompts}}}
reward: {{judge: "test_ppo_judges:count_e"}}
generation: {{max_new_tokens: 8, batch_size: 8}}
ppo: {{rollouts_per_iteration: 8, epochs: 2}}
training: {{output_dir: {out}, max_steps: 3, per_device_batch_size: 4, learning_rate: 1.0e-3, report_to: none,
           save_steps: 2, deepspeed: ds_configs/zero2.json}}
""")
    proc = run_ppo_deepspeed([str(recipe)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Saving DeepSpeed Model and Optimizer" in proc.stdout + proc.stderr  # really through a DeepSpeed engine
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # rank 0 logs once, for both processes
    checkpoint = out / "checkpoint-2"
    assert {"random_states_0.pkl", "random_states_1.pkl", "ppo_state.json"} <= {p.name for p in checkpoint.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out)
    before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    assert not torch.equal(model.lm_head.weight, before.lm_head.weight)  # it trained
