"""Per-sequence attention for packed rows and the LM head that projects only scored tokens.

Both replace something that already gives the right answer (masked attention over the whole row,
the full logits), so each test compares against that slower path: same values, same gradients.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from align.config import ModelConfig
from align.models import load_policy
from align.models import packed_attention
from align.models.logprob_head import add_scored_logprob_head
from align.models.packed_attention import NAME, use_packed_attention
from align.ops.logprobs import linear_token_logprobs, token_logprobs

LENGTHS = (7, 3, 12)


def packed_row(lengths: tuple[int, ...], vocab: int, seed: int = 0) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    sequences = [torch.randint(5, vocab, (n,), generator=generator) for n in lengths]
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    inputs = {
        "input_ids": torch.cat(sequences)[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
        "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds,
        "max_length_q": max(lengths), "max_length_k": max(lengths),
    }
    return sequences, inputs


@pytest.fixture()
def policy(tiny_llama_dir: Path):  # noqa: ANN201
    model, _ = load_policy(ModelConfig(name_or_path=str(tiny_llama_dir)))
    return model


def test_loaded_models_get_packed_attention_and_save_plain_configs(policy, tmp_path: Path) -> None:  # noqa: ANN001
    assert policy.config._attn_implementation == NAME
    assert not use_packed_attention(policy)  # already switched; eager or flash models are left alone too
    policy.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"


def test_each_packed_sequence_attends_only_to_itself(policy, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    sequences, inputs = packed_row(LENGTHS, policy.config.vocab_size)
    alone = torch.cat([policy(input_ids=s[None], use_cache=False).logits[0] for s in sequences])
    with monkeypatch.context() as patch:  # the packed row must not take the masked whole-row path
        patch.setattr(packed_attention, "sdpa_attention_forward", lambda *a, **k: pytest.fail("masked path taken"))
        packed = policy(**inputs, use_cache=False).logits[0]
    assert_close(packed, alone, atol=1e-5, rtol=1e-4)
    # Without the boundaries the row is one sequence: later sequences see earlier ones (the control).
    leaked = policy(input_ids=inputs["input_ids"], use_cache=False).logits[0]
    assert (leaked[LENGTHS[0]:] - alone[LENGTHS[0]:]).abs().max() > 1e-2


def test_packed_gradients_match_the_masked_row(policy) -> None:  # noqa: ANN001
    """Same loss and gradients as transformers' block-diagonal mask (sdpa, positions only), rows of two layouts."""
    _, inputs = packed_row(LENGTHS, policy.config.vocab_size, seed=1)
    two_rows = {  # sequences 7 + 3 (+ a pad run of 2) and 12, flattened boundaries across both rows
        "input_ids": torch.stack([torch.cat([inputs["input_ids"][0, :10], torch.zeros(2, dtype=torch.long)]),
                                  inputs["input_ids"][0, 10:]]),
        "position_ids": torch.stack([torch.cat([torch.arange(7), torch.arange(3), torch.arange(2)]), torch.arange(12)]),
        "cu_seq_lens_q": torch.tensor([0, 7, 10, 12, 24], dtype=torch.int32),
    }
    two_rows["cu_seq_lens_k"], two_rows["max_length_q"], two_rows["max_length_k"] = two_rows["cu_seq_lens_q"], 12, 12

    def loss_and_grads(batch: dict, real: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        policy.zero_grad()
        logits = policy(**batch, use_cache=False).logits
        loss = (logits.reshape(-1, logits.size(-1))[real] ** 2).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in policy.parameters()]

    real_one_row = torch.ones(22, dtype=torch.bool)
    real_two_rows = torch.tensor([True] * 10 + [False] * 2 + [True] * 12)
    packed = loss_and_grads(inputs, real_one_row)
    rows = loss_and_grads(two_rows, real_two_rows)
    policy.set_attn_implementation("sdpa")
    masked = loss_and_grads({k: inputs[k] for k in ("input_ids", "position_ids")}, real_one_row)
    for got in (packed, rows):
        assert_close(got[0], masked[0], atol=1e-5, rtol=1e-4)
        for a, b in zip(got[1], masked[1]):
            assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_generation_is_unchanged_by_packed_attention(policy) -> None:  # noqa: ANN001
    prompt = torch.tensor([[5, 9, 13, 4, 30]])
    ours = policy.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    policy.set_attn_implementation("sdpa")
    plain = policy.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert torch.equal(ours, plain)


@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_head_matches_full_logits_values_and_gradients(with_bias: bool) -> None:
    torch.manual_seed(0)
    tokens, hidden_size, vocab = 37, 16, 50
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True) if with_bias else None
    targets = torch.randint(0, vocab, (tokens,))
    upstream = torch.randn(tokens)

    def grads(values: torch.Tensor) -> list[torch.Tensor]:
        params = [hidden, weight] + ([bias] if with_bias else [])
        return list(torch.autograd.grad((values * upstream).sum(), params))

    logits = hidden @ weight.t() + (bias if with_bias else 0)
    expected = token_logprobs(logits[None], targets[None])[0]
    got = linear_token_logprobs(hidden, weight, targets, bias, chunk_elements=8 * vocab)  # 5 chunks, the last short
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(got), grads(expected)):
        assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_chunked_head_under_bf16_autocast_stays_close_and_float32() -> None:
    torch.manual_seed(0)
    hidden, weight = torch.randn(20, 32), torch.randn(64, 32) * 0.1
    targets = torch.randint(0, 64, (20,))
    exact = linear_token_logprobs(hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = linear_token_logprobs(hidden, weight, targets)
    assert reduced.dtype == torch.float32
    assert_close(reduced, exact, atol=5e-2, rtol=0)


def test_scored_head_returns_log_probs_of_labelled_tokens_only(policy) -> None:  # noqa: ANN001
    ids = torch.randint(5, policy.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    labels[1, 7:] = -100  # padding
    full = policy(input_ids=ids, use_cache=False).logits
    expected = token_logprobs(full[:, :-1], ids[:, 1:]) * (labels[:, 1:] != -100)
    assert add_scored_logprob_head(policy)
    out = policy(input_ids=ids, labels=labels, fused_lm_head=True)
    assert_close(out.log_probs, expected, atol=1e-5, rtol=1e-4)
    assert out.log_probs[:, :3].abs().max() == 0 and out.log_probs[1, 6:].abs().max() == 0
    plain = policy(input_ids=ids, use_cache=False)  # calls without the flag are the model's own forward
    assert_close(plain.logits, full)
    policy.config.final_logit_softcapping = 30.0
    assert not add_scored_logprob_head(policy)  # a head it cannot reproduce is left to TRL


def saved_activation_bytes(model, ids: torch.Tensor) -> tuple[int, torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
    """Bytes autograd saves for one forward (parameters excluded), the loss, and the gradients."""
    params = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in params:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    model.eval()  # no dropout: both models must see the same arithmetic
    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = (model(input_ids=ids, use_cache=False).logits ** 2).mean()
    loss.backward()
    return sum(saved.values()), loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_lean_activations_save_less_for_the_same_values_and_gradients(tiny_llama_dir: Path, method: str) -> None:
    from align.models.loading import _load_causal_lm, _lora

    cfg = ModelConfig(name_or_path=str(tiny_llama_dir), method=method)
    lean = _load_causal_lm(cfg, str(tiny_llama_dir), quantize_4bit=False)  # what load_policy starts from
    stock = _load_causal_lm(cfg, str(tiny_llama_dir), quantize_4bit=False)
    for module in stock.modules():
        module.__dict__.pop("forward", None)  # back to the class's own forward
    if method == "lora":  # adapters on every projection: the down projection is no longer a plain Linear
        lean, stock = _lora(lean, cfg, str(tiny_llama_dir)), _lora(stock, cfg, str(tiny_llama_dir))
        stock.load_state_dict(lean.state_dict())
    ids = torch.randint(5, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    lean_bytes, lean_loss, lean_grads = saved_activation_bytes(lean, ids)
    stock_bytes, stock_loss, stock_grads = saved_activation_bytes(stock, ids)
    assert_close(lean_loss, stock_loss, atol=0, rtol=1e-6)
    assert len(lean_grads) == len(stock_grads) > 0
    for a, b in zip(lean_grads, stock_grads):
        assert_close(a, b, atol=1e-6, rtol=1e-4)
    # Measured: 0.70 of the stock bytes with full weights; 0.91 under LoRA, whose wrapped down projection
    # keeps the MLP product (and whose adapters save their own inputs).
    assert lean_bytes < (0.93 if method == "lora" else 0.75) * stock_bytes, (lean_bytes, stock_bytes)


@pytest.mark.parametrize("extra", [{"sliding_window": 4}, {"softcap": 30.0}, {"position_bias": torch.zeros(1)},
                                   {"is_causal": False}, {}])
def test_what_per_sequence_attention_cannot_honour_goes_to_sdpa(extra: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window shorter than a sequence, a softcap, a position bias or a non-causal call: sdpa's mask decides."""
    monkeypatch.setattr(packed_attention, "sdpa_attention_forward", lambda *args, **kwargs: ("sdpa", None))
    q, k = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8)
    bounds = torch.tensor([0, 6, 10], dtype=torch.int32)
    module = torch.nn.Module()
    out, _ = packed_attention.packed_sdpa(module, q, k, k.clone(), None, cu_seq_lens_q=bounds, max_length_q=6, **extra)
    assert isinstance(out, str) == bool(extra)  # the sdpa stand-in returns a string
    if not extra:
        assert out.shape == (1, 10, 4, 8)
