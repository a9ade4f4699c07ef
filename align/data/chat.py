"""Prompts and completions as plain text: what a text judge (a reward model, a function) reads.

A policy's view of a prompt (chat template, BOS) is ``align.sampling.render_prompt``; a judge
never sees the policy's template, so the same judge scores every policy alike. PPO, GRPO, eval,
the simulated annotators and the reward model's own encoder all render through here.
"""

from __future__ import annotations

from typing import Any


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """A prompt as plain text: a string unchanged, messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def response_text(completion: str | list[dict[str, Any]]) -> str:
    """A completion as text: a string as is, messages as their assistant contents joined by newlines.

    Messages without a role count as assistant turns.
    """
    if isinstance(completion, str):
        return completion
    return "\n".join(str(m["content"]) for m in completion if m.get("role", "assistant") == "assistant")
