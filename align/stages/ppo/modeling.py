"""The module PPO trains: the policy and its value model, wrapped as one ``nn.Module``.

One module means one optimizer and one ``accelerator.prepare`` (one DeepSpeed engine under
ZeRO), as DeepSpeed trains a single engine per optimizer. The value model is either

- ``head``: a linear value head on the policy's last hidden state (shared trunk), or
- ``separate``: its own transformer trunk (loaded like the policy, from the policy's weights
  or ``value.init_from``) plus a linear head.

Forward passes take the full sequence (left-padded prompt + response) and return only the
response positions, counted from the right so that soft-prompt tokens in front (prompt
tuning) do not shift anything.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

from align.sampling import position_ids, response_logits


class ValueHead(nn.Module):
    """``hidden (B, T, H) -> values (B, T)``, float32, initialised to output 0 everywhere."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class PolicyAndValue(nn.Module):
    """Policy (a causal LM, maybe a PEFT model) + value head, + a separate critic trunk if given."""

    def __init__(self, policy: nn.Module, hidden_size: int, critic: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic  # a transformer trunk (returns last_hidden_state), or None: head on the policy
        self.value_head = ValueHead(hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        temperature: float = 1.0,
        with_values: bool = True,
        detach_trunk: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and values at the positions that predict the response tokens.

        input_ids, attention_mask: (B, L), prompt left-padded, response right-padded, L = P + T
        with T = ``response_length``. Returns ``logits`` (B, T, V) divided by ``temperature``
        (the distribution the tokens were sampled from) and ``values`` (B, T) or None.
        Position t holds the logits and value of the state before response token t (sequence
        position P + t - 1): logits ``[:, :-1]`` pair with ids ``[:, 1:]``. ``detach_trunk``: the
        value head reads a shared trunk's hidden states without sending gradient into them (value
        warm-up trains the head alone).
        """
        want_hidden = with_values and self.critic is None
        logits, hidden = response_logits(self.policy, input_ids, attention_mask, response_length, want_hidden)
        values = None
        if with_values:
            if self.critic is not None:
                out = self.critic(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids(attention_mask))
                hidden = out.last_hidden_state[:, -(response_length + 1) : -1]  # (B, T, H)
            values = self.value_head(hidden.detach() if detach_trunk and self.critic is None else hidden)
        return logits / temperature, values

    def value_parameters(self) -> list[nn.Parameter]:
        """The value model's own parameters: the head, and the critic's trunk when there is one."""
        own = list(self.value_head.parameters())
        return own + (list(self.critic.parameters()) if self.critic is not None else [])


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """``with model.disable_adapter():`` for a PEFT model: the base weights are the reference."""
    with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
        yield


def transformer_trunk(causal_lm: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (``model.model`` for Llama), through a PEFT wrapper.

    LoRA layers are injected into the trunk's own modules, so they come along.
    """
    base = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    return getattr(base, base.base_model_prefix)
