"""The text encoder's backends (torch, ONNX Runtime fp32 and int8): their own caches, the choice by CPU, and
agreement with the torch reference on a handful of texts (the real model, exported here from the packaged weights)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from catalog import ConfigError
from encoders import (
    MODEL_NAME,
    TEXT_BACKENDS,
    EmbeddingCache,
    choose_text_backend,
    current_text_model,
    encode_texts,
    load_text_model,
    text_backend_of,
    text_model_name,
    use_text_backend,
)
from encoders._onnx import onnxruntime_available

TITLES = [
    "The metabolic world of Escherichia coli is not small",
    "Exploring complex networks",
    "Latent Dirichlet allocation",
    "Matrix factorization techniques for recommender systems",
    "A tutorial on hidden Markov models and selected applications in speech recognition",
    "",
    "Naïve café prices in Zürich",
    "x" * 2000,  # past the 256-token window: the exported graph takes any sequence length
]


@pytest.fixture
def process_backend() -> Iterator[None]:
    """Restore this process's backend choice after a test that sets it."""
    yield
    use_text_backend("torch")  # the default


def test_each_backend_has_its_own_cache(tmp_path: Path) -> None:
    names = [text_model_name(backend) for backend in TEXT_BACKENDS]
    assert names[0] == MODEL_NAME  # torch keeps the caches and versions written before the other backends
    assert len(set(names)) == len(TEXT_BACKENDS)
    assert [text_backend_of(name) for name in names] == list(TEXT_BACKENDS)
    directories = {EmbeddingCache.in_cache_dir(tmp_path, name).directory for name in names}
    assert len(directories) == len(TEXT_BACKENDS)
    with pytest.raises(ConfigError, match="names no text backend"):
        text_backend_of("sentence-transformers/other-model")


def test_auto_takes_int8_only_where_the_cpu_has_vnni() -> None:
    int8 = "onnx-int8" if onnxruntime_available() else "torch"
    assert choose_text_backend("auto", flags=frozenset({"avx2", "avx512f", "avx512_vnni"})) == int8
    assert choose_text_backend("auto", flags=frozenset({"avx2", "avx_vnni"})) == int8
    assert choose_text_backend("auto", flags=frozenset({"avx2", "avx512f"})) == "torch"
    assert choose_text_backend("torch", flags=frozenset({"avx512_vnni"})) == "torch"
    with pytest.raises(ConfigError, match="unknown text backend"):
        choose_text_backend("int4")


def test_the_process_backend_names_the_default_cache(tmp_path: Path, process_backend: None) -> None:
    use_text_backend("torch")
    assert current_text_model() == MODEL_NAME
    assert EmbeddingCache.in_cache_dir(tmp_path).model_name == MODEL_NAME
    if onnxruntime_available():
        use_text_backend("onnx-int8")
        assert EmbeddingCache.in_cache_dir(tmp_path).model_name == text_model_name("onnx-int8")
    with pytest.raises(ConfigError):
        use_text_backend("fastest")


class _Int8Stub:
    """Stands for a loaded int8 model: encode_texts must refuse it before encoding anything."""

    text_model = text_model_name("onnx-int8")

    def get_embedding_dimension(self) -> int:
        return 384

    def encode(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("a model of another backend must not fill this cache")


def test_a_model_of_another_backend_cannot_fill_a_cache(tmp_path: Path) -> None:
    torch_cache = EmbeddingCache.in_cache_dir(tmp_path, MODEL_NAME)
    with pytest.raises(ConfigError, match="open the cache for the model"):
        encode_texts(["a title"], model=_Int8Stub(), cache=torch_cache, show_progress=False)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime and onnx are not installed")
def test_onnx_backends_agree_with_torch(tmp_path: Path) -> None:
    reference = encode_texts(TITLES, model=load_text_model(), show_progress=False)
    # fp32 is the same arithmetic in another runtime. int8 (dynamic quantization) measured cosine 0.970 to 1.000,
    # mean 0.9925, on 16,980 CiteULike titles (docs/benchmarks.md); the empty text and the 256 tokens of "x" here
    # are further from any title, at 0.97-0.98.
    for backend, floor, mean in (("onnx", 0.9999, 0.9999), ("onnx-int8", 0.95, 0.985)):
        model = load_text_model(backend=backend, export_dir=tmp_path)
        assert model.text_model == text_model_name(backend)  # type: ignore[union-attr]
        got = encode_texts(TITLES, model=model, show_progress=False)
        assert got.shape == reference.shape and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cosine = (got * reference).sum(axis=1)
        assert cosine.min() >= floor and cosine.mean() >= mean, (backend, cosine)
    assert sorted(path.name for path in tmp_path.rglob("*.onnx")) == ["model-int8.onnx", "model.onnx"]
