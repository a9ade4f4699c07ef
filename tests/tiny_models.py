"""Tiny random models and locally trained tokenizers for tests: no network, built in milliseconds."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alignment makes a language model helpful, honest and harmless.",
    "What is the capital of France? Paris is the capital of France.",
    "Answer the question politely and briefly. Thank you!",
    "user assistant system good bad great terrible yes no maybe please",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ? ! . , : ; ' \" ( ) [ ] { } < > | _",
]

# ChatML, with {% generation %} so TRL can build assistant-only masks.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_causal_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes) with ChatML specials; eos is <|im_end|> like SmolLM2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Wider than the usual 0.02 so a random model has peaked logits: adapters (LoRA, soft
        # prompts) on a frozen base can then move the loss within a dozen steps.
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config)


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    tokenizer = build_causal_tokenizer()
    model = build_tiny_llama(tokenizer, seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_bert_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """WordPiece with [CLS] x [SEP] y [SEP] post-processing, as BERT's own tokenizer does."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # WordPiece training breaks ties between equally frequent merges in hash order, which changes from process to
    # process (a different vocabulary each session): the vocabulary is the corpus's words plus every character,
    # alone and as a continuation, numbered in a fixed order.
    words = {w for text in CORPUS for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))}
    chars = {c for word in words for c in word}
    learned = sorted(words | chars | {"##" + c for c in chars})[: vocab_size - len(specials)]
    tok.model = models.WordPiece({t: i for i, t in enumerate(specials + learned)}, unk_token="[UNK]")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def save_tiny_bert(path: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    tokenizer = build_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
