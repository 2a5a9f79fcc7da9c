"""Serving's top k over candidate scores is `ranker.base.top_k`, element for element."""

from __future__ import annotations

import numpy as np
import pytest

from ranker.base import top_k
from serving._recommender import _top_k_of_candidates


@pytest.mark.parametrize("seed", range(5))
def test_the_top_k_of_candidates_is_the_rankers_top_k(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for trial in range(300):
        n_rows, n = int(rng.integers(1, 6)), int(rng.integers(1, 60))
        scores = np.full((n_rows, n), -np.inf, dtype=np.float32)
        candidates = rng.random((n_rows, n)) < rng.random()
        scores[candidates] = rng.integers(0, 4, candidates.sum())  # many ties
        scores[rng.random((n_rows, n)) < 0.05] = np.nan
        scores[rng.random((n_rows, n)) < 0.03] = np.inf
        pool = np.arange(n) if trial % 2 else rng.permutation(n)
        k = int(rng.integers(1, 30))
        for expected, got in zip(top_k(scores, pool, k), _top_k_of_candidates(scores, pool, k), strict=True):
            np.testing.assert_array_equal(got, expected)
