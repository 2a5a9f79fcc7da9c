"""The fast top n of dense score rows: the same as a full stable sort, ties and -inf included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ranker.topk import kth_largest, top_mask

# Few distinct values, so rows are full of ties; -inf marks items never to be chosen.
_VALUES = st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 2.0])


def _by_full_sort(scores: np.ndarray, n: int) -> np.ndarray:
    """Each row's first n finite entries of a stable sort by descending score: equal scores to the lower column."""
    mask = np.zeros(scores.shape, dtype=bool)
    for row, values in enumerate(scores):
        order = np.argsort(-values, kind="stable")[:n]
        mask[row, order[np.isfinite(values[order])]] = True
    return mask


@settings(deadline=None)  # the first call imports torch
@given(
    arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=_VALUES),
    st.integers(1, 14),
)
def test_top_mask_is_the_full_stable_sorts_first_n(scores: np.ndarray, n: int) -> None:
    np.testing.assert_array_equal(top_mask(scores, n), _by_full_sort(scores, n))


@settings(deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=_VALUES), st.data())
def test_kth_largest_is_numpys_partition(scores: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, scores.shape[1]))
    expected = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k]
    np.testing.assert_array_equal(kth_largest(scores, k), expected)


def test_top_mask_on_real_valued_rows_matches_a_partition() -> None:
    scores = np.random.default_rng(0).normal(size=(40, 5_000)).astype(np.float32)
    expected = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(expected, np.argpartition(-scores, 99, axis=1)[:, :100], True, axis=1)
    np.testing.assert_array_equal(top_mask(scores, 100), expected)


def test_kth_largest_refuses_a_k_outside_the_row() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        kth_largest(np.zeros((2, 3), dtype=np.float32), 4)
