"""The text encoder and its embedding cache, against the real all-MiniLM-L6-v2 model (no mocks)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog import ConfigError, DataError
from encoders import EMBEDDING_DIM, MODEL_NAME, EmbeddingCache, encode_texts, item_text, load_text_model, text_hash

TEXTS = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "GoldenEye (1995). Genres: Action, Adventure, Thriller",
    "The metabolic world of Escherichia coli is not small",
    "Reverse Engineering of Biological Complexity",
    "Exploring complex networks",
    "Collective dynamics of small-world networks",
    "Emergence of scaling in random networks",
    "A tutorial on hidden Markov models and selected applications in speech recognition",
    "Latent Dirichlet allocation",
    "Matrix factorization techniques for recommender systems",
    "Deep learning",
    "Gradient-based learning applied to document recognition",
    "",
    "Naïve café prices in Zürich — 3 € each",
    "数据挖掘与推荐系统",
    "Exploring complex networks",  # a duplicate on purpose
    "   leading and trailing spaces   ",
    "x" * 2000,  # longer than the model's 256-token window: truncated, not an error
]


@pytest.fixture(scope="module")
def model():
    return load_text_model()


@pytest.fixture
def encode_calls(model, monkeypatch) -> list[int]:
    """Route the real model's encode through a counter; the list holds the number of texts of each call."""
    calls: list[int] = []
    real_encode = model.encode

    def counting_encode(texts, *args, **kwargs):
        calls.append(len(texts))
        return real_encode(texts, *args, **kwargs)

    monkeypatch.setattr(model, "encode", counting_encode)
    return calls


def test_text_hash_is_sha256_of_utf8() -> None:
    assert text_hash("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert text_hash("café") == hashlib.sha256("café".encode()).hexdigest()
    assert text_hash("a") != text_hash("a ")


@pytest.mark.slow
def test_embeddings_are_float32_unit_rows_in_input_order(model) -> None:
    embeddings = encode_texts(TEXTS, model=model, show_progress=False)

    assert embeddings.shape == (len(TEXTS), EMBEDDING_DIM)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embeddings[4], embeddings[15])  # identical texts, identical rows
    # Row i is the embedding of text i, whatever order the texts are batched in.
    single = encode_texts([TEXTS[7]], model=model, show_progress=False)
    np.testing.assert_allclose(embeddings[7], single[0], atol=1e-5)


@pytest.mark.slow
def test_identical_texts_are_encoded_once(model, encode_calls) -> None:
    encode_texts(["same", "same", "other", "same"], model=model, show_progress=False)
    assert encode_calls == [2]


@pytest.mark.slow
def test_cached_results_equal_uncached_and_second_call_encodes_nothing(model, encode_calls, tmp_path) -> None:
    uncached = encode_texts(TEXTS, model=model, show_progress=False)
    cache = EmbeddingCache(tmp_path)
    first = encode_texts(TEXTS, model=model, cache=cache, show_progress=False)
    second = encode_texts(TEXTS, model=model, cache=cache, show_progress=False)

    unique = len(set(TEXTS))
    assert encode_calls == [unique, unique]  # the uncached call, then the cold-cache call; the warm one: none
    assert (cache.hits, cache.misses) == (unique, unique)
    assert len(cache) == unique
    np.testing.assert_allclose(first, uncached, atol=1e-6)
    np.testing.assert_array_equal(second, first)


@pytest.mark.slow
def test_only_new_texts_are_encoded(model, encode_calls, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    encode_texts(TEXTS[:5], model=model, cache=cache, show_progress=False)
    mixed = encode_texts(TEXTS[3:8], model=model, cache=cache, show_progress=False)

    assert encode_calls == [5, 3]
    np.testing.assert_allclose(mixed, encode_texts(TEXTS[3:8], model=model, show_progress=False), atol=1e-6)


@pytest.mark.slow
def test_cache_persists_across_instances(model, encode_calls, tmp_path) -> None:
    first = encode_texts(TEXTS, model=model, cache=EmbeddingCache(tmp_path), show_progress=False)
    reopened = EmbeddingCache(tmp_path)
    again = encode_texts(TEXTS, model=model, cache=reopened, show_progress=False)

    assert len(encode_calls) == 1
    assert reopened.misses == 0
    np.testing.assert_array_equal(again, first)


@pytest.mark.slow
def test_fully_cached_texts_need_no_model(model, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    expected = encode_texts(TEXTS[:3], model=model, cache=cache, show_progress=False)
    load_text_model.cache_clear()
    try:
        got = encode_texts(TEXTS[:3], cache=EmbeddingCache(tmp_path), show_progress=False)
        assert load_text_model.cache_info().misses == 0
    finally:
        load_text_model.cache_clear()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_another_model_name_is_a_cache_miss(model, encode_calls, tmp_path) -> None:
    encode_texts(TEXTS[:4], model=model, cache=EmbeddingCache(tmp_path, MODEL_NAME), show_progress=False)
    other = EmbeddingCache(tmp_path, "sentence-transformers/other-model")
    found, _ = other.get_many([text_hash(t) for t in TEXTS[:4]])

    assert not found.any()
    encode_texts(TEXTS[:4], model=model, cache=other, show_progress=False)
    assert encode_calls == [4, 4]
    assert other.directory != EmbeddingCache(tmp_path, MODEL_NAME).directory
    assert other.directory.parent == tmp_path


@pytest.mark.slow
def test_semantic_sanity(model) -> None:
    query, near, far = encode_texts(
        [
            "deep learning for image recognition",
            "convolutional neural networks for vision",
            "medieval french poetry",
        ],
        model=model,
        show_progress=False,
    )
    assert query @ near > query @ far + 0.2


def test_empty_input_needs_no_model() -> None:
    embeddings = encode_texts([], show_progress=False)
    assert embeddings.shape == (0, EMBEDDING_DIM)
    assert embeddings.dtype == np.float32


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["ok", None], "position 1"),
        (None, "got None"),
        ("a single string", "single string"),
        (["ok", 3.0], "position 1"),
    ],
)
def test_bad_texts_raise_a_clear_value_error(texts, message) -> None:
    with pytest.raises(ValueError, match=message):
        encode_texts(texts, show_progress=False)


def test_polars_series_of_texts_is_accepted(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path, dim=3)
    cache.put_many([text_hash("a"), text_hash("b")], np.eye(3, dtype=np.float32)[:2])
    got = encode_texts(pl.Series(["b", "a", "b"]), cache=cache, show_progress=False)
    np.testing.assert_array_equal(got, np.eye(3, dtype=np.float32)[[1, 0, 1]])


def test_cache_of_another_dimension_is_a_config_error(model, tmp_path) -> None:
    with pytest.raises(ConfigError, match="384-d"):
        encode_texts(["a"], model=model, cache=EmbeddingCache(tmp_path, dim=8), show_progress=False)


# The cache on its own, with small random vectors.


def vectors(n: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_get_many_returns_a_mask_and_zeros_for_misses(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path, dim=4)
    keys = [text_hash(str(i)) for i in range(5)]
    matrix = vectors(5)
    assert cache.put_many(keys[:3], matrix[:3]) == 3
    assert cache.put_many(keys, matrix) == 2  # only the new ones are written

    found, got = cache.get_many([keys[4], text_hash("absent"), keys[0]])
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_array_equal(got, np.stack([matrix[4], np.zeros(4, np.float32), matrix[0]]))
    assert (cache.hits, cache.misses) == (2, 1)


def test_put_many_checks_its_inputs(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path, dim=4)
    with pytest.raises(DataError, match="shape"):
        cache.put_many([text_hash("a")], vectors(2))
    with pytest.raises(DataError, match="SHA-256"):
        cache.put_many(["not-a-hash"], vectors(1))
    with pytest.raises(DataError, match="NaN"):
        cache.put_many([text_hash("a")], np.full((1, 4), np.nan, dtype=np.float32))
    assert len(cache) == 0


def test_stray_temporary_file_is_ignored(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path, dim=4)
    cache.put_many([text_hash("a")], vectors(1))
    # What a crash between creating the temporary file and renaming it leaves behind: half a file.
    (cache.directory / ".20990101T000000000000Z-deadbeef.parquet.1234.tmp").write_bytes(b"PAR1\x00\x01half")

    reopened = EmbeddingCache(tmp_path, dim=4)
    found, got = reopened.get_many([text_hash("a")])
    assert found.all()
    np.testing.assert_array_equal(got, vectors(1))


def test_crash_before_rename_leaves_the_cache_as_it_was(tmp_path, monkeypatch) -> None:
    cache = EmbeddingCache(tmp_path, dim=4)
    cache.put_many([text_hash("old")], vectors(1))
    before = sorted(p.name for p in cache.directory.iterdir())

    def crash(*_args: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        cache.put_many([text_hash("new")], vectors(1, seed=1))
    monkeypatch.undo()

    assert sorted(p.name for p in cache.directory.iterdir()) == before  # no temporary file left either
    reopened = EmbeddingCache(tmp_path, dim=4)
    found, got = reopened.get_many([text_hash("old"), text_hash("new")])
    np.testing.assert_array_equal(found, [True, False])
    np.testing.assert_array_equal(got[0], vectors(1)[0])
    assert reopened.put_many([text_hash("new")], vectors(1, seed=1)) == 1  # and it still takes writes


def test_unreadable_shard_is_skipped_with_one_warning_and_kept(tmp_path, caplog) -> None:
    cache = EmbeddingCache(tmp_path, dim=4)
    cache.put_many([text_hash("a")], vectors(1))
    corrupt = cache.directory / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet")

    reopened = EmbeddingCache(tmp_path, dim=4)
    with caplog.at_level(logging.WARNING):
        found, _ = reopened.get_many([text_hash("a")])
        reopened.put_many([text_hash("b")], vectors(1))
        reopened.compact()
    assert found.all()
    assert caplog.text.count("corrupt.parquet") == 1
    assert corrupt.is_file()  # compaction replaces only the shards it read
    assert EmbeddingCache(tmp_path, dim=4).get_many([text_hash("a"), text_hash("b")])[0].all()


def test_shard_of_another_dimension_is_a_data_error(tmp_path) -> None:
    EmbeddingCache(tmp_path, "m", dim=4).put_many([text_hash("a")], vectors(1))
    with pytest.raises(DataError, match="another model or dimension"):
        EmbeddingCache(tmp_path, "m", dim=8).get_many([text_hash("a")])


def test_compaction_keeps_every_entry(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path, dim=4, max_shards=3)
    keys = [text_hash(str(i)) for i in range(10)]
    matrix = vectors(10)
    for i in range(10):
        cache.put_many([keys[i]], matrix[i : i + 1])
        assert len(list(cache.directory.glob("*.parquet"))) <= 3

    cache.compact()
    assert len(list(cache.directory.glob("*.parquet"))) == 1
    found, got = EmbeddingCache(tmp_path, dim=4).get_many(keys)
    assert found.all()
    np.testing.assert_array_equal(got, matrix)


def test_shards_written_by_another_instance_are_picked_up(tmp_path) -> None:
    reader = EmbeddingCache(tmp_path, dim=4)
    assert not reader.get_many([text_hash("late")])[0].any()
    EmbeddingCache(tmp_path, dim=4).put_many([text_hash("late")], vectors(1))
    assert reader.get_many([text_hash("late")])[0].all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=8), max_size=30), split=st.integers(0, 30))
def test_put_then_get_round_trips_in_any_order(tmp_path_factory, texts: list[str], split: int) -> None:
    root: Path = tmp_path_factory.mktemp("cache")
    unique = list(dict.fromkeys(texts))
    matrix = vectors(len(unique), seed=len(unique))
    cache = EmbeddingCache(root, dim=4)
    keys = [text_hash(t) for t in unique]
    cache.put_many(keys[:split], matrix[:split])
    cache.put_many(keys[split:], matrix[split:])

    found, got = EmbeddingCache(root, dim=4).get_many([text_hash(t) for t in texts])
    assert found.all()
    np.testing.assert_array_equal(got, matrix[[unique.index(t) for t in texts]].reshape(-1, 4))


# item_text


def test_item_text_joins_title_text_and_categories() -> None:
    items = pl.DataFrame(
        {
            "item_id": ["1", "2", "3", "4", "5"],
            "title": ["Toy Story (1995)", "Why?", None, "  ", "Heat"],
            "text": [None, "A film about questions.", "Only text", "", "  "],
            "categories": [["Animation", "Comedy"], [], None, [" ", ""], None],
        },
        schema={"item_id": pl.String, "title": pl.String, "text": pl.String, "categories": pl.List(pl.String)},
    )
    assert item_text(items).to_list() == [
        "Toy Story (1995). Genres: Animation, Comedy",
        "Why? A film about questions.",
        "Only text",
        "",
        "Heat",
    ]


def test_item_text_without_optional_columns_and_with_another_label() -> None:
    items = pl.DataFrame({"item_id": ["1"], "title": ["Paper"], "categories": [["ml", "ir"]]})
    assert item_text(items, categories_label="Tags").to_list() == ["Paper. Tags: ml, ir"]
    assert item_text(items.drop("categories")).to_list() == ["Paper"]


def test_item_text_needs_a_title_column() -> None:
    with pytest.raises(DataError, match="'title'"):
        item_text(pl.DataFrame({"item_id": ["1"], "text": ["x"]}))
