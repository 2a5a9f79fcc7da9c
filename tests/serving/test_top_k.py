"""Serving's top k over candidate scores is `ranker.base.top_k`, element for element."""

from __future__ import annotations

import numpy as np
import pytest

from ranker.base import top_k
from serving._recommender import TopLists, _first_k, _top_k_of_candidates


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


@pytest.mark.parametrize("seed", range(3))
def test_a_deeper_precomputed_table_answers_every_shallower_k_as_the_live_top_k(seed: int) -> None:
    """`Recommender.precompute` keeps each user's first K places; a request for k <= K must get exactly the live
    top k, also where an inf takes a place and is dropped, and where a row has fewer candidates than k."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        n_rows, n = int(rng.integers(1, 6)), int(rng.integers(1, 60))
        scores = np.full((n_rows, n), -np.inf, dtype=np.float32)
        candidates = rng.random((n_rows, n)) < rng.random()
        scores[candidates] = rng.integers(0, 4, candidates.sum())
        scores[rng.random((n_rows, n)) < 0.05] = np.nan
        scores[rng.random((n_rows, n)) < 0.05] = np.inf
        pool = rng.permutation(n)
        depth = int(rng.integers(1, 40))
        table = TopLists.empty(n_rows, depth)
        rows, items, kept = _first_k(scores, pool, depth)
        positions = np.arange(rows.size) - np.searchsorted(rows, rows, side="left")
        table.items[rows, positions], table.kept[rows, positions] = items, kept
        table.scores[rows, positions] = scores[rows, np.argsort(pool)[items]]
        table.ready[:] = True
        k = int(rng.integers(1, depth + 1))
        users = rng.permutation(n_rows)
        got_users, got_items, got_ranks, got_scores = table.take(users, k)
        live_rows, live_items = _top_k_of_candidates(scores[users], pool, k)
        np.testing.assert_array_equal(got_users, users[live_rows])
        np.testing.assert_array_equal(got_items, live_items)
        np.testing.assert_array_equal(got_ranks, np.arange(live_rows.size) - np.searchsorted(live_rows, live_rows) + 1)
        np.testing.assert_array_equal(got_scores, scores[users[live_rows], np.argsort(pool)[live_items]])
