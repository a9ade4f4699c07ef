"""Sample responses from a causal LM and score them against a reference: shared by ``align eval`` and DPO's end-of-run check.

    from align.eval.sampling import generate, prompt_ids
    gen = generate(model, tokenizer, [prompt_ids(tokenizer, "Hi")], max_new_tokens=16, temperature=1.0, seed=0)

A batch of prompts is left-padded so that every response starts at the same column; ``generate``
seeds torch before sampling, so two models given the same seed draw from the same random stream
(common random numbers: their differences are less noisy than with independent draws).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from align.dpo_metrics import sequence_kl
from align.eval.metrics import sequence_log_ratio

Prompt = str | list[dict[str, str]]


@dataclass
class Generations:
    """Left-padded ``prompt + response`` ids ``(N, P + R)``, the attention mask, and which tokens are response."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    texts: list[str]


def held_out_prompts(rows: Any, limit: int) -> list[Prompt]:
    """The first ``limit`` distinct prompts of ``rows["prompt"]`` (rankings expand to several pairs per prompt)."""
    seen: set[str] = set()
    prompts: list[Prompt] = []
    for prompt in rows["prompt"]:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
        if len(prompts) == limit:
            break
    return prompts


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids the policy continues, rendered as TRL's DPOTrainer renders them in training."""
    if isinstance(prompt, str):
        return tokenizer(text=prompt)["input_ids"]
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[[5, 6, 7], [8]]`` -> ids ``[[5, 6, 7], [p, p, 8]]`` and mask ``[[1, 1, 1], [0, 0, 1]]``."""
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    return input_ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` computes them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_p: float = 1.0,
    top_k: int = 0,
) -> Generations:
    """Sample one response per prompt (greedy when ``temperature`` is 0).

    ``response_mask`` covers each response up to and including its EOS; texts are decoded without
    special tokens.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention_mask = left_pad(prompts, pad_id)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    torch.manual_seed(seed)  # the same random stream for every model given this seed
    sequences = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **(sampling if temperature > 0 else {"do_sample": False}),
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
def next_token_logits(model: Any, gen: Generations) -> torch.Tensor:
    """Logits ``(N, L - 1, V)`` (float32) at positions ``0 .. L-2`` of ``gen.sequences``: row t predicts token t+1."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=gen.sequences.to(device),
        attention_mask=gen.attention_mask.to(device),
        position_ids=positions(gen.attention_mask).to(device),
        use_cache=False,
    ).logits
    # A soft prompt (prompt tuning) prepends virtual tokens: keep the positions of the real ones.
    return logits[:, -gen.sequences.size(1) : -1].float()


@torch.no_grad()
def response_kl(policy: Any, reference_scope: Callable[[], contextlib.AbstractContextManager], reference: Any,
                gen: Generations) -> torch.Tensor:
    """KL(policy || reference) of each response, ``(N,)``, exact per token (``align.dpo_metrics.sequence_kl``)."""
    return response_kls(policy, reference, gen, reference_scope)["kl_full_vocab"]


@torch.no_grad()
def response_kls(policy: Any, reference: Any, gen: Generations,
                 reference_scope: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict[str, torch.Tensor]:
    """Two estimates of each response's KL(policy || reference), ``(N,)`` each, on CPU.

    ``kl``: ``sum_t log pi(y_t) - log pi_ref(y_t)`` over the sampled response tokens (k1);
    ``kl_full_vocab``: the exact per-token KL over the vocabulary, summed along the response (lower
    variance, same expectation when ``gen`` was sampled from ``policy`` at temperature 1).
    ``reference_scope()`` is entered around the reference's forward pass (e.g. disabling an adapter).
    """
    policy_logits = next_token_logits(policy, gen)
    with (reference_scope or no_scope)():
        reference_logits = next_token_logits(reference, gen)
    device = policy_logits.device
    mask = gen.response_mask[:, 1:].to(device)  # (N, L-1): position t's next token is response
    targets = gen.sequences[:, 1:].to(device)
    return {
        "kl": sequence_log_ratio(policy_logits, reference_logits.to(device), targets, mask).cpu(),
        "kl_full_vocab": sequence_kl(policy_logits, reference_logits.to(device), mask).cpu(),
    }


def markdown_cell(value: Prompt) -> str:
    """One markdown table cell: a chat prompt as its last message; pipes escaped, newlines as <br>."""
    text = value if isinstance(value, str) else (value[-1]["content"] if value else "")
    return text.replace("|", "\\|").replace("\n", "<br>")


@contextlib.contextmanager
def no_scope() -> Iterator[None]:
    yield
