"""Sampled responses against a reference, for ``align eval`` and DPO's end-of-run check: KL, prompts, table cells.

    from align.sampling import sample
    from align.eval.responses import response_kls
    kls = response_kls(policy, reference, sample(policy, tokenizer, ["Hi"], max_new_tokens=16, seed=0))

Sampling itself is ``align.sampling.sample``: both callers show the policy its prompts as training did.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import torch

from align.ops.logprobs import sequence_kl, sequence_log_ratio
from align.sampling import Prompt, Samples, response_logits


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


@torch.no_grad()
def response_logits_of(model: Any, samples: Samples) -> torch.Tensor:
    """Logits ``(B, T, V)``, float32, of ``model`` at the positions that predict each sampled response token."""
    device = next(model.parameters()).device
    logits, _ = response_logits(model, samples.sequences.to(device), samples.attention_mask.to(device),
                                samples.response_ids.shape[1])
    return logits.float()


@torch.no_grad()
def response_kl(policy: Any, reference_scope: Callable[[], contextlib.AbstractContextManager], reference: Any,
                samples: Samples) -> torch.Tensor:
    """KL(policy || reference) of each response, ``(N,)``, exact per token (``align.ops.logprobs.sequence_kl``)."""
    return response_kls(policy, reference, samples, reference_scope)["kl_full_vocab"]


@torch.no_grad()
def response_kls(policy: Any, reference: Any, samples: Samples,
                 reference_scope: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict[str, torch.Tensor]:
    """Two estimates of each response's KL(policy || reference), ``(N,)`` each, on CPU.

    ``kl``: ``sum_t log pi(y_t) - log pi_ref(y_t)`` over the sampled response tokens (k1);
    ``kl_full_vocab``: the exact per-token KL over the vocabulary, summed along the response (lower
    variance, same expectation when ``samples`` were drawn from ``policy`` at temperature 1).
    ``reference_scope()`` is entered around the reference's forward pass (e.g. disabling an adapter).
    """
    policy_logits = response_logits_of(policy, samples)
    with (reference_scope or no_scope)():
        reference_logits = response_logits_of(reference, samples).to(policy_logits.device)
    mask = samples.response_mask.to(policy_logits.device)
    targets = samples.response_ids.to(policy_logits.device)
    return {
        "kl": sequence_log_ratio(policy_logits, reference_logits, targets, mask).cpu(),
        "kl_full_vocab": sequence_kl(policy_logits, reference_logits, mask).cpu(),
    }


def markdown_cell(value: Prompt) -> str:
    """One markdown table cell: a chat prompt as its last message; pipes escaped, newlines as <br>."""
    text = value if isinstance(value, str) else (value[-1]["content"] if value else "")
    return text.replace("|", "\\|").replace("\n", "<br>")


@contextlib.contextmanager
def no_scope() -> Iterator[None]:
    yield
