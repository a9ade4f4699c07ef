"""Word-level edits for robustness: dropout, neighbour swaps, synonyms from a small built-in table.

    python -c "import random; from align.augment.edits import synonym_swap; print(synonym_swap('A quick answer, please.', 1.0, random.Random(0)))"

Each edit works line by line on whitespace-separated words (a line's inner spacing becomes single
spaces; line breaks stay), so chats and lists keep their shape. Punctuation stays attached to its
word. Every function takes its ``random.Random``, so callers decide the seeding.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from align.data.errors import DataError

# Small on purpose: common words of instructions and answers whose swap keeps the meaning.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "big": ("large", "huge"), "large": ("big",), "small": ("little", "tiny"), "little": ("small",),
    "quick": ("fast", "rapid"), "fast": ("quick",), "good": ("fine", "great"), "great": ("good",),
    "bad": ("poor",), "happy": ("glad",), "easy": ("simple",), "simple": ("easy",), "hard": ("difficult",),
    "difficult": ("hard",), "begin": ("start",), "start": ("begin",), "finish": ("end", "complete"),
    "help": ("assist",), "make": ("create",), "create": ("make",), "explain": ("describe",),
    "describe": ("explain",), "answer": ("reply", "response"), "question": ("query",), "give": ("provide",),
    "provide": ("give",), "need": ("require",), "choose": ("pick", "select"), "pick": ("choose",),
    "important": ("essential", "key"), "often": ("frequently",), "maybe": ("perhaps",), "perhaps": ("maybe",),
    "many": ("numerous",), "method": ("approach", "way"), "tip": ("hint", "pointer"), "tips": ("hints", "pointers"),
    "example": ("instance",), "correct": ("right", "accurate"), "wrong": ("incorrect",), "smart": ("clever",),
    "fix": ("repair",), "build": ("construct",), "find": ("locate",), "buy": ("purchase",), "car": ("automobile",),
    "kids": ("children",), "children": ("kids",), "job": ("occupation",), "briefly": ("concisely",),
    "brief": ("short", "concise"), "short": ("brief",), "improve": ("enhance",), "speak": ("talk",),
}

_WORD = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)  # leading punctuation, the word, trailing punctuation


def load_synonyms(path: str) -> dict[str, tuple[str, ...]]:
    """A JSON file ``{word: [synonym, ...]}``; keys are matched lower-case. Errors name the file and the key."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot read a synonym table: {err}") from None
    if not isinstance(raw, dict):
        raise DataError(path, "a synonym table is a JSON object {word: [synonyms, ...]}")
    table = {}
    for word, options in raw.items():
        if not isinstance(options, list) or not options or not all(isinstance(o, str) and o.strip() for o in options):
            raise DataError(path, "expected a non-empty list of non-empty strings", word)
        table[word.lower()] = tuple(options)
    return table


def _by_line(text: str, edit: Callable[[list[str]], list[str]]) -> str:
    return "\n".join(" ".join(edit(line.split())) if line.strip() else line for line in text.split("\n"))


def word_dropout(text: str, p: float, rng: random.Random) -> str:
    """Drop each word with probability ``p``; a line keeps at least one of its words."""

    def drop(words: list[str]) -> list[str]:
        kept = [w for w in words if rng.random() >= p]
        return kept or [rng.choice(words)]

    return _by_line(text, drop)


def word_swap(text: str, p: float, rng: random.Random) -> str:
    """Swap each word with the next with probability ``p``; a swapped pair is not swapped again."""

    def swap(words: list[str]) -> list[str]:
        words, i = list(words), 0
        while i < len(words) - 1:
            if rng.random() < p:
                words[i], words[i + 1] = words[i + 1], words[i]
                i += 1
            i += 1
        return words

    return _by_line(text, swap)


def synonym_swap(text: str, p: float, rng: random.Random, table: Mapping[str, Sequence[str]] = SYNONYMS) -> str:
    """Replace each word found in ``table`` (lower-case keys) with probability ``p``; capitals and punctuation kept."""

    def replace(word: str) -> str:
        lead, core, trail = _WORD.match(word).groups()  # type: ignore[union-attr] - the pattern matches any string
        options = table.get(core.lower())
        if not options or rng.random() >= p:
            return word
        new = rng.choice(list(options))
        return lead + (new[:1].upper() + new[1:] if core[:1].isupper() else new) + trail

    return _by_line(text, lambda words: [replace(w) for w in words])
