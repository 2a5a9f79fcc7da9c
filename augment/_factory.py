"""The one place that turns a backend's kind into a backend. The caller (the CLI, the flows) reads its settings and
passes plain values here; nothing in this module reads settings or the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from augment._backend import Backend
from augment._http import HttpBackend
from augment._llamacpp import LlamaCppBackend
from augment._local import LocalBackend, Precision
from catalog import ConfigError

BackendKind = Literal["llamacpp", "local", "http"]
_KINDS: tuple[str, ...] = ("llamacpp", "local", "http")


def make_backend(
    kind: BackendKind,
    *,
    cache_dir: Path,
    batch_size: int = 16,
    threads: int | None = None,
    precision: Precision = "fp32",
    base_url: str = "http://localhost:8000/v1",
    model: str = "",
    api_key: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    concurrency: int = 4,
    allow_insecure: bool = False,
) -> Backend:
    """The backend of this `kind`: the local SmolLM2 run by llama.cpp ("llamacpp", F16 weights) or by transformers
    ("local", at `precision`), each made in `cache_dir` on first use, or an OpenAI-compatible server ("http", at
    `base_url` serving `model`). Options that another kind does not use are ignored."""
    if kind == "http":
        return HttpBackend(
            base_url,
            model,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            concurrency=concurrency,
            allow_insecure=allow_insecure,
        )
    if kind == "llamacpp":
        return LlamaCppBackend.smollm2(cache_dir, batch_size=batch_size, threads=threads)
    if kind == "local":
        return LocalBackend.smollm2(cache_dir, batch_size=batch_size, threads=threads, precision=precision)
    raise ConfigError(f"unknown LLM backend {kind!r}; choose one of {', '.join(_KINDS)}.")
