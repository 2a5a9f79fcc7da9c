"""The inner-product IVF indexes (encoders._ann) that candidate indexes and the embedding simulator build."""

from __future__ import annotations

import numpy as np
import pytest

import encoders._ann as ann


def test_an_index_added_a_block_at_a_time_is_the_index_added_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantised vectors are padded to the SIMD width a block at a time (a padded copy of every vector was half a
    gigabyte at 500k items): each vector is listed and encoded on its own, so the blocks build the very index one
    add builds, byte for byte, with ALS's odd width (256 factors and a bias) padded."""
    faiss = ann.faiss_module()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5_000, 257)).astype(np.float32)
    queries = rng.normal(size=(20, 257)).astype(np.float32)
    monkeypatch.setattr(ann, "ADD_BLOCK", 700)  # eight blocks, the last one short
    in_blocks = ann.inner_product_ivf(vectors, quantised=True)
    monkeypatch.setattr(ann, "ADD_BLOCK", 10**9)
    at_once = ann.inner_product_ivf(vectors, quantised=True)
    assert in_blocks.d == 272 and in_blocks.ntotal == 5_000
    assert np.array_equal(faiss.serialize_index(in_blocks), faiss.serialize_index(at_once))
    labels, scores = ann.search_ivf(in_blocks, queries, 10, in_blocks.nlist)  # every list: only 8-bit codes err
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recalled = np.mean([len(set(found) & set(best)) / 10 for found, best in zip(labels, exact, strict=True)])
    assert recalled >= 0.8, recalled  # an index that answers, not only two equal ones
    assert np.isfinite(scores).all()
