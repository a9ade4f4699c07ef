"""End-of-run check of a DPO policy against its reference on held-out prompts.

For each prompt both models sample one response (same seed). Reported: mean KL(policy || reference)
over the policy's responses, their mean length, and, with a reward model, the policy's win rate and
both mean scores. Every row goes to ``samples.jsonl`` and a markdown table ``samples.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from align.config import DPOEvalSettings
from align.dpo_metrics import sequence_kl, win_rate

logger = logging.getLogger("align.dpo")

Prompt = str | list[dict[str, str]]


@dataclass
class Generations:
    """Left-padded ``prompt + response`` ids ``(N, P + R)``, the attention mask, and which tokens are response."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    texts: list[str]


def held_out_prompts(eval_rows: Any, limit: int) -> list[Prompt]:
    """The first ``limit`` distinct prompts of the eval split (rankings expand to several pairs per prompt)."""
    seen: set[str] = set()
    prompts: list[Prompt] = []
    for prompt in eval_rows["prompt"]:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
        if len(prompts) == limit:
            break
    return prompts


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids the policy continues, rendered as TRL's DPOTrainer rendered them in training."""
    if isinstance(prompt, str):
        return tokenizer(text=prompt)["input_ids"]
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


def _left_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    return input_ids, mask


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` computes them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[int]], settings: DPOEvalSettings, seed: int) -> Generations:
    """Sample one response per prompt; ``response_mask`` covers the response up to and including its EOS."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention_mask = _left_pad(prompts, pad_id)
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": 1.0, "top_k": 0}
    torch.manual_seed(seed)  # the same random stream for policy and reference
    sequences = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **(sampling if settings.temperature > 0 else {"do_sample": False}),
    ).cpu()
    response = sequences[:, input_ids.size(1) :]  # (N, R)
    # Real response tokens: everything up to the first EOS, inclusive (generate pads after it).
    is_eos = response == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    response_mask = torch.cat([torch.zeros_like(input_ids), (~after_eos).long()], dim=1)
    full_mask = torch.cat([attention_mask, (~after_eos).long()], dim=1)
    texts = [tokenizer.decode(row[~cut], skip_special_tokens=True).strip() for row, cut in zip(response, after_eos)]
    return Generations(sequences, full_mask, response_mask, texts)


@torch.no_grad()
def response_kl(policy: Any, reference_scope: Callable[[], contextlib.AbstractContextManager], reference: Any,
                gen: Generations) -> torch.Tensor:
    """KL(policy || reference) of each response, ``(N,)`` (see ``align.dpo_metrics.sequence_kl``)."""
    device = next(policy.parameters()).device
    inputs = {
        "input_ids": gen.sequences.to(device),
        "attention_mask": gen.attention_mask.to(device),
        "position_ids": _positions(gen.attention_mask).to(device),
        "use_cache": False,
    }
    policy_logits = policy(**inputs).logits[:, -gen.sequences.size(1) :]
    with reference_scope():
        reference_logits = reference(**inputs).logits[:, -gen.sequences.size(1) :]
    # Logits at position t predict token t+1: pair logits[:, :-1] with the response mask shifted by one.
    return sequence_kl(policy_logits[:, :-1], reference_logits[:, :-1], gen.response_mask[:, 1:].to(device)).cpu()


def evaluate_against_reference(
    policy: Any,
    reference: Any,
    reference_scope: Callable[[], contextlib.AbstractContextManager],
    tokenizer: Any,
    prompts: list[Prompt],
    settings: DPOEvalSettings,
    out: Path,
    seed: int,
) -> dict[str, float]:
    """Metrics ``eval/kl_to_reference``, ``eval/response_tokens`` (+ ``eval/win_rate``, ``eval/reward_policy``,
    ``eval/reward_reference`` with a reward model); writes ``samples.jsonl`` and ``samples.md`` into ``out``.

    ``reference`` is the frozen reference model, or the policy itself with ``reference_scope`` disabling its
    adapter; ``reference_scope()`` is entered around every reference call.
    """
    rows: list[dict[str, Any]] = []
    kls: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, len(prompts), settings.batch_size):
            batch = prompts[start : start + settings.batch_size]
            ids = [prompt_ids(tokenizer, p) for p in batch]
            ours = generate(policy, tokenizer, ids, settings, seed + start)
            with reference_scope():
                theirs = generate(reference, tokenizer, ids, settings, seed + start)
            kl = response_kl(policy, reference_scope, reference, ours)
            kls.append(kl)
            lengths.append(ours.response_mask.sum(-1).float())
            for i, prompt in enumerate(batch):
                rows.append({"prompt": prompt, "policy": ours.texts[i], "reference": theirs.texts[i],
                             "kl": round(kl[i].item(), 4)})
    finally:
        policy.train(was_training)

    metrics = {"eval/kl_to_reference": torch.cat(kls).mean().item(), "eval/response_tokens": torch.cat(lengths).mean().item()}
    if settings.reward_model:
        metrics.update(_judge(settings.reward_model, rows))
    _write_samples(out, rows)
    logger.info("policy vs reference on %d held-out prompts: %s", len(rows), metrics)
    return metrics


def _judge(reward_dir: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    from reward_models import RewardScorer

    scorer = RewardScorer.from_pretrained(reward_dir)
    prompts = [row["prompt"] for row in rows]
    ours = scorer.score(prompts, [row["policy"] for row in rows])
    theirs = scorer.score(prompts, [row["reference"] for row in rows])
    for row, a, b in zip(rows, ours.tolist(), theirs.tolist()):
        row.update(reward_policy=round(a, 4), reward_reference=round(b, 4))
    return {
        "eval/win_rate": win_rate(ours, theirs),
        "eval/reward_policy": ours.mean().item(),
        "eval/reward_reference": theirs.mean().item(),
    }


def _write_samples(out: Path, rows: list[dict[str, Any]]) -> None:
    with (out / "samples.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    scored = "reward_policy" in rows[0] if rows else False
    head = ["prompt", "policy", "reference", "KL"] + (["reward policy", "reward reference"] if scored else [])
    lines = ["# Policy vs reference on held-out prompts", "", "| " + " | ".join(head) + " |",
             "|" + " --- |" * len(head)]
    for row in rows:
        cells = [_cell(row["prompt"]), _cell(row["policy"]), _cell(row["reference"]), f"{row['kl']:.3f}"]
        if scored:
            cells += [f"{row['reward_policy']:.3f}", f"{row['reward_reference']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "samples.md").write_text("\n".join(lines) + "\n")


def _cell(value: Prompt) -> str:
    """One markdown table cell: a chat prompt as its last message; pipes escaped, newlines as <br>."""
    text = value if isinstance(value, str) else (value[-1]["content"] if value else "")
    return text.replace("|", "\\|").replace("\n", "<br>")


@contextlib.contextmanager
def no_scope() -> Iterator[None]:
    yield
