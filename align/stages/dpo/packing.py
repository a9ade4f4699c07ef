"""Padding-free preference batches: chosen and rejected sequences packed into rows without pad tokens.

    python -c "from align.stages.dpo.packing import pack_preference; print(pack_preference([[1, 2]], [[3]], [[4, 5]], 0))"

Preference data has uneven lengths, so a padded batch of ``2B`` rows spends most of its
compute on pad tokens. Here every sequence ``prompt + completion`` is laid end to end in
one row (or a few, see ``row_tokens``) and ``position_ids`` restart at 0 at each sequence.

Attention must not cross sequence boundaries. The model gets ``position_ids``, the sequence
boundaries ``cu_seq_lens`` and **no** ``attention_mask``: flash-attention's varlen kernels and
``align.models.packed_attention`` (what our models run on sdpa) attend within each sequence
at the cost of its own length squared; on eager attention transformers (>= 4.56, checked on
5.x) finds the sequence starts where the positions stop increasing by one
(``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask over
the whole row. ``tests/test_dpo_packing.py`` checks that packed and padded batches give the
same loss and gradients on a Llama; the DPO trainer also compares the two on the first
batch's first two sequences and stops if they differ (a model whose forward ignores the
boundaries would otherwise train with attention leaking between sequences).

Torch only; no transformers import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sequence indices, longest first, each holding at most ``capacity`` tokens.

    A sequence longer than ``capacity`` gets a bin of its own. ``[5, 3, 4, 2]`` with
    capacity 7 -> ``[[0, 3], [2, 1]]`` (5+2, 4+3).
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return bins


def pack_preference(
    prompt_ids: list[list[int]],
    chosen_ids: list[list[int]],
    rejected_ids: list[list[int]],
    pad_token_id: int,
    max_length: int | None = None,
    row_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pack ``B`` pairs into rows: sequence ``i`` is ``prompt_i + chosen_i``, sequence ``B + i`` is ``prompt_i + rejected_i``.

    Each sequence is truncated to ``max_length`` (keep the start, like TRL's padded collator).
    With ``row_tokens=None`` all ``2B`` sequences go into one row of ``N`` tokens; else they are
    binned first-fit-decreasing into rows of at most ``row_tokens`` tokens (at least the longest
    sequence), and shorter rows end with a pad run whose positions restart at 0, so it forms a
    block of its own that no real token attends to.

    Returns (``R`` rows of ``T`` tokens):

    - ``input_ids``, ``position_ids``, ``completion_mask``: ``(R, T)``
    - ``sequence_index``: ``(R, T)`` which sequence each token belongs to (``-1`` in a pad run)
    - ``cu_seq_lens``: int32, where each sequence and each pad run starts in the flattened ``R * T``
      tokens, then ``R * T``: the boundaries varlen attention kernels take
    - ``attention_mask``: ``(R, T)`` 1 on real tokens. For token counting only: it must not be
      given to the model, which would then stop reading sequence boundaries from the positions.

    Two pairs, one row::

        >>> batch = pack_preference([[1, 2], [7]], [[3, 4], [8]], [[5], [9, 9]], pad_token_id=0)
        >>> batch["input_ids"]
        tensor([[1, 2, 3, 4, 7, 8, 1, 2, 5, 7, 9, 9]])
        >>> batch["position_ids"]
        tensor([[0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2]])
        >>> batch["completion_mask"]
        tensor([[0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1]])
        >>> batch["sequence_index"]
        tensor([[0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3]])
        >>> batch["cu_seq_lens"]
        tensor([ 0,  4,  6,  9, 12], dtype=torch.int32)
    """
    if not (len(prompt_ids) == len(chosen_ids) == len(rejected_ids)) or not prompt_ids:
        raise ValueError(
            f"need one prompt, chosen and rejected per pair, got {len(prompt_ids)}, {len(chosen_ids)}, {len(rejected_ids)}"
        )
    sequences: list[list[int]] = []
    masks: list[list[int]] = []
    for completions in (chosen_ids, rejected_ids):
        for prompt, completion in zip(prompt_ids, completions):
            ids = list(prompt) + list(completion)
            mask = [0] * len(prompt) + [1] * len(completion)
            if max_length is not None:
                ids, mask = ids[:max_length], mask[:max_length]
            sequences.append(ids)
            masks.append(mask)

    lengths = [len(ids) for ids in sequences]
    if row_tokens is None:
        rows = [list(range(len(sequences)))]
    else:
        rows = first_fit_decreasing(lengths, max(row_tokens, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)

    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    completion_mask = torch.zeros(shape, dtype=torch.long)
    sequence_index = torch.full(shape, -1, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    starts: list[int] = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            starts.append(r * width + start)
            end = start + lengths[i]
            input_ids[r, start:end] = torch.tensor(sequences[i], dtype=torch.long)
            position_ids[r, start:end] = torch.arange(lengths[i])
            completion_mask[r, start:end] = torch.tensor(masks[i], dtype=torch.long)
            sequence_index[r, start:end] = i
            attention_mask[r, start:end] = 1
            start = end
        position_ids[r, start:] = torch.arange(width - start)  # the pad run: its own block
        if start < width:
            starts.append(r * width + start)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "completion_mask": completion_mask,
        "sequence_index": sequence_index,
        "attention_mask": attention_mask,
        "cu_seq_lens": torch.tensor(starts + [len(rows) * width], dtype=torch.int32),
    }


def scored_token_mask(completion_mask: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(R, T-1)`` bool: the next-token log-prob at position ``t`` scores token ``t+1`` and counts if that token
    is a completion token, and (packed rows) not the first token of a sequence, which no earlier token of its own
    sequence predicts. A padded batch never scores its first token either, so both layouts score the same tokens."""
    mask = completion_mask[:, 1:].bool()
    if position_ids is not None:
        mask = mask & (position_ids[:, 1:] > 0)
    return mask


def sequence_sums(per_token: torch.Tensor, sequence_index: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Sum per-token values of a packed batch by sequence.

    per_token: ``(R, T-1)``, position ``t`` holding the value for token ``t+1`` (zero where not scored);
    sequence_index: ``(R, T)``. Returns ``(num_sequences,)``; the gradient flows to ``per_token``.
    """
    index = sequence_index[:, 1:].reshape(-1)
    values = per_token.reshape(-1)
    keep = index >= 0
    out = per_token.new_zeros(num_sequences)
    return out.index_add(0, index[keep], values[keep])


def leading_sequences(batch: dict[str, torch.Tensor], count: int = 2) -> dict[str, torch.Tensor]:
    """The first ``count`` sequences of a packed batch's first row, as a packed batch of their own.

    Enough to catch attention leaking from one sequence into the next at a fraction of the batch's
    cost; the batch itself when its first row holds fewer sequences (a pad run counts as none).
    """
    bounds = batch["cu_seq_lens"].tolist()
    width = batch["input_ids"].size(1)
    if len(bounds) <= count or bounds[count] > width or int(batch["sequence_index"][0, bounds[count] - 1]) < 0:
        return batch
    end = bounds[count]
    out = {key: batch[key][:1, :end] for key in ("input_ids", "position_ids", "completion_mask", "attention_mask")}
    index = batch["sequence_index"][:1, :end]
    out["sequence_index"] = torch.unique_consecutive(index, return_inverse=True)[1]
    out["cu_seq_lens"] = batch["cu_seq_lens"][: count + 1]
    return out


def unpack_to_padded(batch: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The packed batch's sequences as a right-padded batch in sequence order (TRL's padded layout):
    ``input_ids``, ``attention_mask``, ``completion_mask`` ``(2B, L)``. Used to check packing against padding."""
    index = batch["sequence_index"]
    sequences = [(index == s).nonzero(as_tuple=True) for s in range(int(index.max()) + 1)]
    width = max(rows.numel() for rows, _ in sequences)
    out = {
        "input_ids": torch.full((len(sequences), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(sequences), width), dtype=torch.long),
        "completion_mask": torch.zeros((len(sequences), width), dtype=torch.long),
    }
    for s, where in enumerate(sequences):  # nonzero is row-major, so tokens come back in order
        n = where[0].numel()
        out["input_ids"][s, :n] = batch["input_ids"][where]
        out["attention_mask"][s, :n] = 1
        out["completion_mask"][s, :n] = batch["completion_mask"][where]
    return {key: value.to(index.device) for key, value in out.items()}


@dataclass
class DataCollatorForPackedPreference:
    """Collate tokenized pairs (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) into a packed batch.

    Same inputs as TRL's ``DataCollatorForPreference``; see ``pack_preference`` for the output,
    plus ``ref_chosen_logps`` / ``ref_rejected_logps`` ``(B,)`` when the examples carry them.
    """

    pad_token_id: int
    max_length: int | None = None
    row_tokens: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pack_preference(
            [e["prompt_ids"] for e in examples],
            [e["chosen_ids"] for e in examples],
            [e["rejected_ids"] for e in examples],
            self.pad_token_id,
            self.max_length,
            self.row_tokens,
        )
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
        return batch
