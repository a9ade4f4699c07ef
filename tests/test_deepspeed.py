"""Two CPU processes under the deepspeed launcher: ZeRO-2 SFT finishes and saves a loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from launch import run_deepspeed


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sft_zero2_two_processes(tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Say {w}.", "completion": w}) for w in
                              ["yes", "no", "good", "bad", "great", "maybe", "please", "thank you"]) + "\n")
    out = tmp_path / "out"
    proc = run_deepspeed([
        "sft", "recipes/sft.yaml",
        f"model.name_or_path={tiny_llama_dir}", "model.method=full", f"data.path={data}", "data.eval_fraction=0",
        f"training.output_dir={out}", "training.max_steps=3", "training.per_device_batch_size=2",
        "training.gradient_accumulation_steps=1", "training.eval_steps=null", "training.save_steps=null",
        "training.report_to=none", "training.deepspeed=ds_configs/zero2.json",
    ])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3
    model = AutoModelForCausalLM.from_pretrained(out)
    before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    assert not torch.equal(model.lm_head.weight, before.lm_head.weight)  # it trained
