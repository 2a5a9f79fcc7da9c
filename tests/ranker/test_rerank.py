"""Calibrated tail re-ranking on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ranker.evaluate import _top_k
from ranker.rerank import tail_quota_rerank, tail_rerank_scorer, tail_share_targets

# Items 0-2 head, 3-5 tail.
TAIL = np.array([False, False, False, True, True, True])


def test_targets_follow_each_users_history_shrunk_toward_the_population() -> None:
    history = sp.csr_array(np.array([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32))
    # Population: 1 tail of 4 interactions = 0.25.
    np.testing.assert_allclose(tail_share_targets(history, TAIL, prior_weight=0.0)[:2], [1 / 3, 0.0])
    shrunk = tail_share_targets(history, TAIL, prior_weight=2.0)
    np.testing.assert_allclose(shrunk, [(1 + 0.5) / 5, (0 + 0.5) / 3, 0.25], rtol=1e-6)
    with pytest.raises(ValueError, match="is_tail"):
        tail_share_targets(history, TAIL[:5])


def test_quota_lifts_the_best_tail_items_in_place_of_the_worst_head_items() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, -np.inf], [0.1, 0.2, 0.3, 0.9, 0.8, 0.7]], dtype=np.float32)
    targets = np.array([0.5, 0.5], dtype=np.float32)
    out = tail_quota_rerank(scores, TAIL, targets, k=4, strength=1.0)
    rows, cols, _ = _top_k(out, 4)
    # User 0: quota 2 tail; top 4 held one (item 3): item 4 replaces head item 2; item 5 (-inf) is never eligible.
    assert cols[rows == 0].tolist() == [0, 1, 3, 4]
    assert out[0, 5] == -np.inf
    # User 1 already has 3 tail items in the top 4: left as scored.
    np.testing.assert_array_equal(out[1], scores[1])
    # Strength 0 is the scorer itself; half strength gives a quota of 1, already met.
    np.testing.assert_array_equal(tail_quota_rerank(scores, TAIL, targets, k=4, strength=0.0), scores)
    np.testing.assert_array_equal(tail_quota_rerank(scores, TAIL, targets, k=4, strength=0.5), scores)
    with pytest.raises(ValueError, match="strength"):
        tail_quota_rerank(scores, TAIL, targets, k=4, strength=1.5)


def test_scorer_masks_excluded_pairs_before_filling_the_quota() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]], dtype=np.float32)
    exclude = sp.csr_array(np.array([[0, 0, 0, 0, 1, 0]], dtype=np.float32))

    def scorer(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return scores[users][:, items]

    wrapped = tail_rerank_scorer(scorer, TAIL, np.array([1.0]), k=3, strength=1.0, exclude=exclude)
    _, cols, _ = _top_k(wrapped(np.array([0]), np.arange(6)), 3)
    # Quota 3, but item 4 is masked: the two other tail items replace the two worst head items.
    assert cols.tolist() == [0, 3, 5]


def test_a_top_k_above_its_quota_is_left_as_scored() -> None:
    # Top 3 of [5, 4, 3, 2, 1, 0] holds two tail items (0 and 2) and the quota is 1: nothing moves.
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]], dtype=np.float32)
    is_tail = np.array([True, False, True, True, True, True])
    out = tail_quota_rerank(scores, is_tail, np.array([1 / 3]), k=3, strength=1.0)
    np.testing.assert_array_equal(out, scores)


def test_protected_items_are_never_displaced() -> None:
    # Item 2 (head, say a cold item the ranker placed on purpose) is protected: only items 0 and 1 can make room.
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]], dtype=np.float32)
    protect = np.array([False, False, True, False, False, False])
    out = tail_quota_rerank(scores, TAIL, np.array([1.0]), k=3, strength=1.0, protect=protect)
    _, cols, _ = _top_k(out, 3)
    assert cols.tolist() == [2, 3, 4]  # quota 3, but only two replaceable: item 2 stays, tail 3 and 4 come in
    # Nothing replaceable at all: the top k stays as scored.
    everything = np.ones(6, dtype=bool)
    np.testing.assert_array_equal(
        tail_quota_rerank(scores, TAIL, np.array([1.0]), k=3, strength=1.0, protect=everything), scores
    )


def _rerank_sorting_every_row(scores: np.ndarray, is_tail: np.ndarray, quotas: np.ndarray, k: int) -> np.ndarray:
    """tail_quota_rerank written plainly (every finite score of a row sorted): what the partitioned one must equal."""
    out = np.array(scores, dtype=np.float32)
    for row in np.flatnonzero(quotas > 0):
        values = out[row]
        finite = np.flatnonzero(np.isfinite(values))
        ranked = finite[np.lexsort((finite, -values[finite]))]
        top, rest = ranked[:k], ranked[k:]
        lifted = rest[is_tail[rest]][: max(quotas[row] - int(is_tail[top].sum()), 0)]
        dropped = top[~is_tail[top]][::-1][: lifted.size]
        lifted = lifted[: dropped.size]
        if lifted.size:
            chosen = np.r_[top[~np.isin(top, dropped)], lifted]
            values[chosen] = float(values[finite].max()) + np.arange(chosen.size, 0, -1, dtype=np.float32)
    return out


def test_the_partitioned_rerank_equals_sorting_every_row() -> None:
    # Rows dense with finite scores (a newcomer's, every warm item scored) and sparse ones (a ranker's candidates),
    # many ties (scores on a coarse grid), -inf entries, quotas from none to the whole top k.
    rng = np.random.default_rng(9)
    scores = np.round(rng.normal(size=(40, 3000)), 1).astype(np.float32)
    scores[20:][rng.random((20, 3000)) < 0.95] = -np.inf
    is_tail = rng.random(3000) < 0.6
    targets = rng.uniform(0, 1, 40)
    for k in (1, 5, 20):
        expected = _rerank_sorting_every_row(scores, is_tail, np.rint(np.clip(targets, 0, 1) * k).astype(int), k)
        np.testing.assert_array_equal(tail_quota_rerank(scores, is_tail, targets, k, strength=1.0), expected)
