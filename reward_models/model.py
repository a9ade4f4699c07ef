"""The reward model: an ``AutoModel`` encoder, a pooling, and a linear head giving one float.

A saved reward model is one directory::

    config.json, model.safetensors     the encoder (LoRA already merged), loadable by AutoModel
    tokenizer.json, ...                the encoder's tokenizer
    reward_head.safetensors            the head: weight (1, H), bias (1,)
    reward_config.json                 pooling, max_length, normalisation (mean, std, clip)

Raw scores live on the Bradley-Terry logit scale the losses train; ``normalize`` maps them
to ``clip((raw - mean) / std)``, with mean and std measured on the training set's
responses after training.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reward_models.pooling import pool

logger = logging.getLogger("reward_models")

CONFIG_FILE = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"


@dataclass
class RewardConfig:
    """What a reward model needs besides its encoder weights; saved as reward_config.json."""

    pooling: str = "mean"
    max_length: int = 512
    head_dropout: float = 0.1
    mean: float = 0.0
    std: float = 1.0
    clip: float | None = None
    normalized: bool = False  # True once mean/std were measured

    def save(self, directory: Path) -> None:
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "RewardConfig":
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved reward model: no {CONFIG_FILE}")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)


class RewardModel(nn.Module):
    """``score = head(pool(encoder(input_ids)))``: (B, T) token ids -> (B,) float32 raw scores."""

    main_input_name = "input_ids"

    def __init__(self, encoder: nn.Module, config: RewardConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.reward_config = config
        self.tokenizer = tokenizer
        hidden = encoder.config.hidden_size
        # Segment ids only reach encoders that learned them (BERT, MiniLM: 2 types; RoBERTa has 1).
        self.uses_token_types = getattr(encoder.config, "type_vocab_size", 0) > 1
        self.dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(hidden, 1)
        # Small init so the first scores are near 0 and the pair loss starts near log 2.
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)
        self._features: dict[tuple[int, ...], torch.Tensor] | None = None  # see cache_features

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """input_ids, attention_mask, token_type_ids: (B, T) -> raw scores (B,), float32."""
        if self._features is None:
            pooled = self._encode(input_ids, attention_mask, token_type_ids)
        else:
            pooled = self._cached_features(input_ids, attention_mask, token_type_ids)
        return self.head(self.dropout(pooled)).squeeze(-1)  # (B,)

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Pooled encoder features (B, H), float32."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None and self.uses_token_types else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pool(hidden, attention_mask, self.reward_config.pooling).float()  # (B, H)

    def cache_features(self) -> None:
        """Feature extraction: freeze the encoder and keep each input's pooled features once computed.

        Only the head trains, so after an input's first pass its features come from the cache and a
        step costs one head pass. Features are computed with the encoder in eval mode (no dropout),
        so the cached value is the one the saved model gives when scoring.
        """
        self.encoder.requires_grad_(False)
        self._features = {}

    def _cached_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         token_type_ids: torch.Tensor | None) -> torch.Tensor:
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        keys = [tuple((ids[mask.bool()] * 4 + kinds[mask.bool()]).tolist())  # ids and segments in one key
                for ids, kinds, mask in zip(input_ids, types, attention_mask)]
        missing = [i for i, key in enumerate(keys) if key not in self._features]
        if missing:
            rows = torch.tensor(missing, device=input_ids.device)
            was_training = self.encoder.training
            self.encoder.eval()
            with torch.no_grad():
                fresh = self._encode(input_ids[rows], attention_mask[rows],
                                     token_type_ids[rows] if token_type_ids is not None else None)
            self.encoder.train(was_training)
            for i, features in zip(missing, fresh):
                self._features[keys[i]] = features
        return torch.stack([self._features[key] for key in keys])  # (B, H)

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's token embedding layer (what embedding-space adversarial training perturbs)."""
        return self.encoder.get_input_embeddings()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Delegate to the encoder (HF Trainer calls this when ``gradient_checkpointing`` is on)."""
        self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """``(raw - mean) / std``, then clamped to ``[-clip, clip]`` when clip is set. (N,) -> (N,)."""
        out = (raw - self.reward_config.mean) / self.reward_config.std
        if self.reward_config.clip is not None:
            out = out.clamp(-self.reward_config.clip, self.reward_config.clip)
        return out

    def set_normalization(self, raw_scores: torch.Tensor, clip: float | None = None) -> None:
        """Store mean and std of ``raw_scores`` (N,) so normalised scores have mean 0, std 1 on them.

        A std below 1e-6 (a constant model) is stored as 1, so normalising never divides by ~0.
        """
        raw = raw_scores.double()
        std = float(raw.std(unbiased=False)) if raw.numel() > 1 else 1.0
        self.reward_config.mean = float(raw.mean())
        self.reward_config.std = std if std > 1e-6 else 1.0
        self.reward_config.clip = clip
        self.reward_config.normalized = True

    # ------------------------------------------------------------------ build / save / load

    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | Path,
        pooling: str = "mean",
        max_length: int = 512,
        head_dropout: float = 0.1,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> "RewardModel":
        """A fresh reward model on a pretrained encoder (any ``AutoModel``: BERT, MiniLM, RoBERTa, DeBERTa)."""
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        encoder = AutoModel.from_pretrained(str(name_or_path), dtype=dtype, trust_remote_code=trust_remote_code)
        limit = _position_limit(encoder.config, tokenizer)
        if limit is not None and max_length > limit:
            logger.warning("max_length %d exceeds what %s can read (%d); using %d", max_length, name_or_path, limit, limit)
            max_length = limit
        config = RewardConfig(pooling=pooling, max_length=max_length, head_dropout=head_dropout)
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1), pooling)  # unknown pooling fails here, not mid-training
        return cls(encoder, config, tokenizer)

    def merge_lora(self) -> None:
        """Fold LoRA adapters into the encoder weights (in place); a no-op for a plain encoder."""
        if hasattr(self.encoder, "merge_and_unload"):
            self.encoder = self.encoder.merge_and_unload()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write encoder, tokenizer, head and reward_config.json to ``directory``; merges LoRA first (in place)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.merge_lora()
        self.encoder.save_pretrained(str(directory))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        head = {name: tensor.detach().float().cpu().contiguous() for name, tensor in self.head.state_dict().items()}
        save_file(head, str(directory / HEAD_FILE))
        self.reward_config.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> "RewardModel":
        """Load what ``save_pretrained`` wrote; eval mode, on ``device`` (default CPU)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        config = RewardConfig.load(directory)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        encoder = AutoModel.from_pretrained(str(directory))
        model = cls(encoder, config, tokenizer)
        model.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        return model.to(device or "cpu").eval()


def _position_limit(encoder_config: Any, tokenizer: Any) -> int | None:
    """Longest input the encoder reads: its tokenizer's model_max_length when that is a real number."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 1_000_000:
        limits.append(tok_max)
    positions = getattr(encoder_config, "max_position_embeddings", None)
    if isinstance(positions, int):
        # RoBERTa-style position ids start after the padding index.
        offset = (encoder_config.pad_token_id or 0) + 1 if encoder_config.model_type in ("roberta", "xlm-roberta") else 0
        limits.append(positions - offset)
    return min(limits) if limits else None
