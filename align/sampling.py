"""What a policy sees and says: prompt -> ids, EOS, seeded batched sampling, masks, texts.

    python -c "from align.sampling import sample; help(sample)"

Every stage that shows a prompt to a causal LM or samples from one comes here, so training,
``align generate``, PPO rollouts, GRPO, DPO's end-of-run check and ``align eval`` agree on

- **the prompt**: with a chat template, a string prompt is one user message and the template
  is applied with the generation prompt (its special tokens come from the template, none are
  added); without one, the string itself with the tokenizer's special tokens (BOS). Training
  data goes through ``conversational`` so TRL's trainers render it by the same rule;
- **the end of a response**: every EOS id of the generation config and the tokenizer; a response
  keeps its tokens up to and including the first of them;
- **the random stream**: batch ``k`` (prompts ``start .. start + batch_size``) is sampled after
  ``torch.manual_seed(seed + start)``, so the same model, prompts, batch size and seed give the
  same tokens, and two models given the same seed share their random numbers.

``sample`` is the only caller of ``model.generate`` in ``align``. Torch and transformers only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from align.data.chat import prompt_text

Prompt = str | list[dict[str, str]]


# --------------------------------------------------------------------------- prompt -> ids


def uses_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The text a causal LM continues to answer ``prompt``.

    With a chat template: the template applied with ``add_generation_prompt=True`` (a string is one
    user message). Without one: the string itself, or the messages as ``role: content`` lines.
    """
    if uses_chat_template(tokenizer):
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    return prompt_text(prompt)


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids the policy continues: ``render_prompt``, plus BOS only when no chat template wrote it.

    Identical to what TRL's SFT, DPO and GRPO trainers feed the model for the same prompt after
    ``conversational`` (``apply_chat_template(..., tokenize=True)`` adds no special tokens either).
    """
    add_special = not uses_chat_template(tokenizer)
    return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=add_special)["input_ids"]


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A string prompt as one user message; a message list unchanged."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def conversational(dataset: Any, tokenizer: Any, completion_fields: Sequence[str]) -> Any:
    """Training rows in the form TRL renders as ``prompt_ids`` does: messages when there is a chat template.

    ``dataset`` (a ``datasets.Dataset``, or None) has a ``prompt`` column and the completion columns
    named (``completion``, or ``chosen`` and ``rejected``). With a chat template, a string prompt
    becomes one user message and a string completion one assistant message, so TRL applies the
    template (without it TRL tokenizes raw text, and training and sampling would see different
    prompts). Without a template, or when every field is already messages, rows pass unchanged.
    """
    if dataset is None or len(dataset) == 0 or not uses_chat_template(tokenizer):
        return dataset
    fields = ["prompt", *completion_fields]
    if all(not isinstance(dataset[0][name], str) for name in fields if name in dataset.column_names):
        return dataset

    def to_messages(row: dict[str, Any]) -> dict[str, Any]:
        out = {"prompt": as_messages(row["prompt"])}
        for name in completion_fields:
            value = row[name]
            out[name] = [{"role": "assistant", "content": value}] if isinstance(value, str) else value
        return out

    return dataset.map(to_messages)


# --------------------------------------------------------------------------- where a response ends


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a response: the generation config's (an int or a list), then the tokenizer's."""
    found: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in found:
            found.append(int(value))
    if not found:
        raise ValueError("the model and tokenizer declare no EOS token; sampling could not stop before max_new_tokens")
    return found


def response_mask(response_ids: torch.Tensor, eos_ids: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Action mask and "finished" flags of generated responses.

    response_ids: (B, T) the generated tokens only (the prompt cut off); after EOS, ``generate``
    fills with the pad token, which may equal EOS. Returns ``mask`` (B, T) float, 1 up to and
    including the first EOS (every token when there is none), and ``finished`` (B,) bool.

    Example, EOS = 2, pad = 0::

        [[5, 6, 2, 0],      ->  mask [[1, 1, 1, 0],   finished [True,
         [5, 6, 7, 8]]               [1, 1, 1, 1]]             False]
    """
    eos = torch.as_tensor(list(eos_ids) if not isinstance(eos_ids, int) else [eos_ids], device=response_ids.device)
    is_eos = torch.isin(response_ids, eos)  # (B, T)
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # (B, T): > 0 strictly after the first EOS
    return (eos_before == 0).float(), is_eos.any(dim=1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` numbers them: ``cumsum(mask) - 1``, clamped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def used_columns(attention_mask: torch.Tensor, response_length: int) -> tuple[int, int]:
    """``(first, T)``: a (B, P + T') left/right-padded batch uses columns ``first : P + T`` only.

    Outside them every row is padding (prompts left-padded, responses right-padded), so a forward
    on ``[:, first : P + T]`` gives the real positions the same outputs, at less cost, when rows
    of similar length share a batch. ``T`` is the longest response in the batch.
    """
    prompt_length = attention_mask.shape[1] - response_length
    used = attention_mask.bool().any(0)
    prompt_used = used[:prompt_length].nonzero()
    first = int(prompt_used[0]) if len(prompt_used) else prompt_length
    response_used = used[prompt_length:].nonzero()
    return first, int(response_used[-1]) + 1 if len(response_used) else 0


def left_pad(ids: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[[5, 6, 7], [8]]`` -> ids ``[[5, 6, 7], [p, p, 8]]`` and mask ``[[1, 1, 1], [0, 0, 1]]``."""
    width = max(len(x) for x in ids) if width is None else width
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + list(x) for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return input_ids, mask


# --------------------------------------------------------------------------- sampling


@dataclass
class Samples:
    """One response per row. Row ``i * n + j`` is prompt i's j-th sample.

    query_ids, query_mask: (B, P) left-padded prompts; response_ids: (B, T) right-padded with the
    pad token after EOS; response_mask: (B, T) float, 1 up to and including the first EOS;
    finished: (B,) whether an EOS was sampled; texts: the responses before EOS, special tokens
    dropped.
    """

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    finished: torch.Tensor
    texts: list[str]

    @property
    def sequences(self) -> torch.Tensor:
        """(B, P + T) prompt and response ids."""
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + T): the prompt's mask, then the response's up to its EOS."""
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) response tokens, EOS included."""
        return self.response_mask.sum(-1)


@torch.no_grad()
def sample(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 8,
    n: int = 1,
    seed: int | None = None,
    eos_ids: Sequence[int] | None = None,
) -> Samples:
    """``n`` responses per prompt from ``model`` (greedy when ``temperature`` is 0), in batches of prompts.

    ``seed``: batch ``start`` is sampled after ``torch.manual_seed(seed + start)``; None draws from
    the current random stream. ``eos_ids`` default to ``eos_token_ids(model, tokenizer)``. The model
    is put in eval mode while sampling and given back in the mode it had. Results are on the
    model's device.
    """
    device = next(model.parameters()).device
    eos = list(eos_ids) if eos_ids is not None else eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(x) for x in ids)
    decoding = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
                if temperature > 0 else {"do_sample": False})
    queries, masks, responses = [], [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ids), batch_size):
            batch_ids, batch_mask = left_pad(ids[start : start + batch_size], pad_id)
            if seed is not None:
                torch.manual_seed(seed + start)
            out = model.generate(
                input_ids=batch_ids.to(device), attention_mask=batch_mask.to(device), max_new_tokens=max_new_tokens,
                num_return_sequences=n, eos_token_id=eos, pad_token_id=pad_id, use_cache=True, **decoding,
            )
            responses.append(out[:, batch_ids.shape[1] :])  # (b * n, t): the prompt cut off
            # Each prompt once per sample, padded on to the widest prompt of all, so the batches concatenate.
            extra = (width - batch_ids.shape[1], 0)
            queries.append(nn.functional.pad(batch_ids.repeat_interleave(n, dim=0), extra, value=pad_id))
            masks.append(nn.functional.pad(batch_mask.repeat_interleave(n, dim=0), extra, value=0))
    finally:
        model.train(was_training)
    longest = max(r.shape[1] for r in responses)
    response_ids = torch.cat([nn.functional.pad(r, (0, longest - r.shape[1]), value=pad_id) for r in responses])
    mask, finished = response_mask(response_ids, eos)
    kept = (mask.sum(-1) - finished.float()).long().tolist()  # tokens before the EOS
    texts = [tokenizer.decode(row[:k], skip_special_tokens=True) for row, k in zip(response_ids.tolist(), kept)]
    return Samples(torch.cat(queries).to(device), torch.cat(masks).to(device), response_ids, mask, finished, texts)


# --------------------------------------------------------------------------- scoring what was sampled


def response_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
    want_hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal-LM logits (B, T, V) at the positions that predict the last T tokens, and the last hidden state.

    input_ids, attention_mask: (B, P + T), prompt left-padded, response right-padded. Position t
    holds the distribution of response token t. ``logits_to_keep = T + 1`` keeps the lm-head matmul
    to the response; positions are counted from the right, so soft-prompt tokens in front (prompt
    tuning) shift nothing. Positions skip the left padding, as in ``generate``.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=response_length + 1,
        output_hidden_states=want_hidden,
        use_cache=False,
    )
    logits = out.logits[:, -(response_length + 1) : -1]  # (B, T, V)
    hidden = out.hidden_states[-1][:, -(response_length + 1) : -1] if want_hidden else None  # (B, T, H)
    return logits, hidden
