"""Split a pair of whole conversations into (prompt, chosen, rejected).

HH-RLHF and TRL's implicit-prompt form store each side of a pair as the full
conversation, so the prompt is whatever both sides share; UltraFeedback-binarized
and others repeat the prompt's turns inside chosen and rejected. Canonical
preference rows hold the prompt once and only the answers in chosen/rejected, so
these helpers split the shared part off.
"""

from __future__ import annotations

import os
import re
from typing import Any

from align.data.errors import DataError
from align.data.records import Messages

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_WHITESPACE = re.compile(r"\s")


def is_hh_text(value: Any) -> bool:
    """True for an HH-RLHF transcript: ``Human: ...`` first, an ``Assistant:`` turn later."""
    return isinstance(value, str) and value.lstrip().startswith("Human:") and "\n\nAssistant:" in value


def parse_hh(text: str, where: str, field: str) -> Messages:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> user and assistant messages, contents stripped."""
    if not is_hh_text(text):
        detail = "expected an HH-RLHF transcript ('Human: ...' then '\\n\\nAssistant: ...')"
        raise DataError(where, detail, field)
    parts = HH_TURN.split("\n\n" + text.lstrip())  # ["", role, content, role, content, ...]
    return [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def _identical(where: str) -> DataError:
    return DataError(where, "is identical to 'chosen'", "rejected")


def split_turns(chosen: Messages, rejected: Messages, where: str) -> tuple[Messages, Messages, Messages]:
    """(shared leading turns, chosen's rest, rejected's rest); each rest must be assistant turns only."""
    if chosen == rejected:
        raise _identical(where)
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise DataError(where, "shares no leading turn with 'chosen', so there is no prompt to split off", "rejected")
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        if n == len(messages):
            raise DataError(where, f"has no turn after the {n} it shares with the other side", field)
        check_answers(messages, n, where, field, "after the turns both sides share")
    return chosen[:n], chosen[n:], rejected[n:]


def check_answers(messages: Messages, start: int, where: str, field: str, after: str) -> None:
    """Turns from ``start`` on must be assistant turns: a user turn there means the two sides are different chats."""
    for i in range(start, len(messages)):
        if messages[i]["role"] != "assistant":
            detail = f"turn {i} is a {messages[i]['role']} turn {after}; only assistant turns may follow the prompt"
            raise DataError(where, detail, f"{field}[{i}].role")


def split_text(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """(shared prefix, chosen's rest, rejected's rest), cut at the last whitespace both share.

    Cutting at whitespace keeps a word both answers start with ("blue"/"black")
    whole; the answers keep their leading space, as in TRL's standard form.
    """
    if chosen == rejected:
        raise _identical(where)
    shared = os.path.commonprefix([chosen, rejected])
    cut = max((m.start() for m in _WHITESPACE.finditer(shared)), default=0)
    if not shared[:cut].strip():
        raise DataError(where, "shares no leading words with 'chosen', so there is no prompt to split off", "rejected")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def strip_repeated_prompt(prompt: Messages, completion: Messages, where: str, field: str) -> Messages:
    """``completion`` without a leading copy of the prompt's turns (UltraFeedback-binarized repeats them)."""
    start = len(prompt) if completion[: len(prompt)] == prompt else 0
    if start == len(completion):
        raise DataError(where, "repeats 'prompt' but adds no answer", field)
    check_answers(completion, start, where, field, "that does not repeat 'prompt'")
    return completion[start:]
