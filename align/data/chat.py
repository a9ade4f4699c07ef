"""Prompts to model input text, completions to plain text.

Generation, PPO rollouts and the reward scorer all need the same prompt string the
policy saw in training, so they render it here, through the tokenizer's own chat
template when it has one.
"""

from __future__ import annotations

from typing import Any


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """The text a causal LM continues to answer ``prompt``.

    With a chat template: the template applied with ``add_generation_prompt=True``
    (a plain string becomes one user message). Without one: the string itself, or
    the messages as ``role: content`` lines.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def response_text(completion: str | list[dict[str, str]]) -> str:
    """A completion as text: a string as is, a message list as its assistant contents joined by newlines."""
    if isinstance(completion, str):
        return completion
    return "\n".join(m["content"] for m in completion if m.get("role") == "assistant")
