"""Turn (prompt, response) pairs into encoder inputs, the same way for training and scoring.

Each pair is tokenized as the encoder's own sentence pair, ``[CLS] prompt [SEP] response
[SEP]`` for BERT/MiniLM (``<s> prompt </s></s> response </s>`` for RoBERTa), with the
special tokens placed by the tokenizer's own post-processor. When the pair is longer than
``max_length`` the *prompt* loses tokens from the left (its start, keeping the turn nearest
the response); the response is cut (from the right) only when it alone exceeds the budget,
and then the prompt is left empty.

Prompts and completions may be chat message lists; they are rendered as plain text by
``align.data.chat`` (``prompt_text``: one ``role: content`` line per message;
``response_text``: the assistant contents), as every judge call renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from align.data.chat import prompt_text, response_text

Text = str | list[dict[str, Any]]


@dataclass
class EncodedPair:
    input_ids: list[int]
    token_type_ids: list[int]


class PairEncoder:
    """Tokenize (prompt, response) pairs with prompt-first truncation and pad them into a batch.

    Works on the tokenizer's Rust backend (``tokenizers.Tokenizer``), copied with its own
    truncation and padding switched off so that this class alone decides what is cut.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"{type(tokenizer).__name__} has no fast (Rust) backend; the reward model needs a fast tokenizer"
            )
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        processor = self.backend.post_processor
        self.processor = processor
        self.num_special = processor.num_special_tokens_to_add(True) if processor is not None else 0
        if max_length <= self.num_special:
            raise ValueError(f"max_length={max_length} leaves no room next to {self.num_special} special tokens")
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[EncodedPair]:
        """One ``EncodedPair`` per (prompt, response), special tokens included, at most max_length ids."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        prompt_encs = self.backend.encode_batch([prompt_text(p) for p in prompts], add_special_tokens=False)
        response_encs = self.backend.encode_batch([response_text(r) for r in responses], add_special_tokens=False)
        budget = self.max_length - self.num_special
        out = []
        for p, r in zip(prompt_encs, response_encs):
            if len(r) >= budget:
                r.truncate(budget, direction="right")
                p = self.backend.encode("", add_special_tokens=False)
            elif len(p) + len(r) > budget:
                p.truncate(budget - len(r), direction="left")
            if self.processor is not None:
                enc = self.processor.process(p, r, add_special_tokens=True)
                out.append(EncodedPair(list(enc.ids), list(enc.type_ids)))
            else:
                out.append(EncodedPair(list(p.ids) + list(r.ids), [0] * len(p) + [1] * len(r)))
        return out

    def pad(self, pairs: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        """Right-pad to the longest pair: ``input_ids``, ``attention_mask``, ``token_type_ids``, each (B, T).

        Two pairs of 4 and 2 ids give ``input_ids [[a, b, c, d], [e, f, PAD, PAD]]`` and
        ``attention_mask [[1, 1, 1, 1], [1, 1, 0, 0]]``; token types pad with 0.
        """
        longest = max((len(p.input_ids) for p in pairs), default=0)
        ids = torch.full((len(pairs), longest), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(pairs), longest), dtype=torch.long)
        mask = torch.zeros((len(pairs), longest), dtype=torch.long)
        for row, pair in enumerate(pairs):
            n = len(pair.input_ids)
            ids[row, :n] = torch.tensor(pair.input_ids, dtype=torch.long)
            types[row, :n] = torch.tensor(pair.token_type_ids, dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def __call__(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, torch.Tensor]:
        return self.pad(self.encode(prompts, responses))
