"""The one place that turns a backend's kind into a backend. The caller (the CLI, the flows) reads its settings and
passes plain values here; nothing in this module reads settings or the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from augment._backend import Backend
from augment._http import HttpBackend
from augment._llamacpp import LlamaCppBackend, Weights
from augment._local import LocalBackend, Precision
from augment._models import DEFAULT_LOCAL_MODEL, local_model
from catalog import ConfigError

BackendKind = Literal["llamacpp", "local", "http"]
_KINDS: tuple[str, ...] = ("llamacpp", "local", "http")


def make_backend(
    kind: BackendKind,
    *,
    cache_dir: Path,
    local_model_name: str = DEFAULT_LOCAL_MODEL,
    batch_size: int = 16,
    threads: int | None = None,
    precision: Precision = "fp32",
    llamacpp_weights: Weights = "f16",
    base_url: str = "http://localhost:8000/v1",
    model: str = "",
    api_key: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    concurrency: int = 4,
    allow_insecure: bool = False,
) -> Backend:
    """The backend of this `kind`: the local model `local_model_name` (SmolLM2-135M by default, or Gemma 3 270M)
    run by llama.cpp ("llamacpp", F16 weights, or `llamacpp_weights` where WARMSTART_LLM_BACKEND=auto chose BF16) or
    SmolLM2 by transformers ("local", at `precision`), each made in
    `cache_dir` on first use, or an OpenAI-compatible server ("http", at `base_url` serving `model`). Options that
    another kind does not use are ignored."""
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
    local_model(local_model_name)  # (an unknown name is refused whatever the kind)
    if kind == "llamacpp":
        return LlamaCppBackend.for_model(
            local_model_name, cache_dir, weights=llamacpp_weights, batch_size=batch_size, threads=threads
        )
    if kind == "local":
        if local_model_name != DEFAULT_LOCAL_MODEL:
            raise ConfigError(
                f"the transformers backend runs {DEFAULT_LOCAL_MODEL} only; run {local_model_name} with "
                "WARMSTART_LLM_BACKEND=llamacpp."
            )
        return LocalBackend.smollm2(cache_dir, batch_size=batch_size, threads=threads, precision=precision)
    raise ConfigError(f"unknown LLM backend {kind!r}; choose one of {', '.join(_KINDS)}.")
