"""Shared fixtures: tiny random models saved once per session, offline mode forced."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny_bert, save_tiny_llama  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():  # noqa: ANN201
    """Tiny models gain nothing from threads, and on a shared CPU OpenMP's spin-waits make them ~50x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer, 32-wide Llama with a ChatML byte-level BPE tokenizer, saved as an HF directory."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT encoder with a WordPiece tokenizer that adds [CLS]/[SEP]."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
