"""An Ollama ``Modelfile`` for an exported GGUF: FROM, TEMPLATE (ChatML), SYSTEM, PARAMETER stop.

    ollama create my-model -f runs/export/gguf/Modelfile && ollama run my-model

The chat template is translated only when rendering it shows ChatML (``<|im_start|>role\\n ...
<|im_end|>\\n``, SmolLM2 and Qwen use it): ``chatml_system`` renders test conversations with the
tokenizer's own template and compares them with ChatML, so a template that merely mentions the
tokens is not mistaken for it. A default system prompt the template inserts (SmolLM2: "You are a
helpful AI assistant named SmolLM ...") becomes the Modelfile's SYSTEM, which Ollama uses when a
chat has no system message. Other templates get no TEMPLATE line (Ollama then falls back to its
own detection from the GGUF's ``tokenizer.chat_template``) and a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("align.export")

START, END = "<|im_start|>", "<|im_end|>"

# Go text/template for Ollama. System messages reach the template as .System (the chat's, or the
# Modelfile's SYSTEM); the range renders user and assistant turns and opens the assistant's turn
# after each user message, exactly as the HF ChatML template does with add_generation_prompt.
CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}"
    '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
    '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n{{ end }}'
    "{{ end }}"
)


@dataclass
class ChatFormat:
    """What the Modelfile needs from a chat template: ChatML or not, and its default system prompt."""

    chatml: bool
    default_system: str | None = None


def _chatml(messages: list[dict[str, str]]) -> str:
    body = "".join(f"{START}{m['role']}\n{m['content']}{END}\n" for m in messages)
    return body + f"{START}assistant\n"


def chatml_system(tokenizer: Any) -> ChatFormat:
    """Render test chats with ``tokenizer``'s template; ChatML if they match, with the default system prompt if any."""
    if not getattr(tokenizer, "chat_template", None):
        return ChatFormat(chatml=False)
    with_system = [
        {"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
    ]
    only_user = [{"role": "user", "content": "U1"}]
    try:
        full = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
        short = tokenizer.apply_chat_template(only_user, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # noqa: BLE001 - any template error means "not ChatML"
        logger.warning("chat template failed on a test conversation (%s); no Ollama TEMPLATE written", err)
        return ChatFormat(chatml=False)
    expected_short = _chatml(only_user)
    if full != _chatml(with_system) or not short.endswith(expected_short):
        return ChatFormat(chatml=False)
    prefix = short[: len(short) - len(expected_short)]
    if not prefix:
        return ChatFormat(chatml=True)
    head = f"{START}system\n"
    if prefix.startswith(head) and prefix.endswith(f"{END}\n") and prefix.count(START) == 1:
        return ChatFormat(chatml=True, default_system=prefix[len(head) : -len(f"{END}\n")])
    return ChatFormat(chatml=False)


def stop_tokens(tokenizer: Any, chat: ChatFormat) -> list[str]:
    """Strings that end a reply: ChatML's turn markers, and the tokenizer's EOS."""
    stops = [START, END] if chat.chatml else []
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ValueError(f'{what} contains """, which an Ollama Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(gguf_name: str, tokenizer: Any, *, system: str | None = None,
              parameters: dict[str, Any] | None = None, title: str = "") -> tuple[str, ChatFormat]:
    """The Modelfile text for ``./gguf_name`` beside it, and what was read from the chat template."""
    chat = chatml_system(tokenizer)
    lines = [f"# Ollama Modelfile for {title or gguf_name}, written by `align export`.",
             "#   ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}"]
    if chat.chatml:
        lines.append(f"TEMPLATE {_quoted(CHATML_TEMPLATE, 'the template')}")
    else:
        logger.warning("the chat template is not ChatML: the Modelfile has no TEMPLATE (Ollama guesses one from "
                       "the GGUF's tokenizer.chat_template)")
    system = system if system is not None else chat.default_system
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'the system prompt')}")
    for stop in stop_tokens(tokenizer, chat):
        lines.append(f'PARAMETER stop "{stop}"')
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n", chat
