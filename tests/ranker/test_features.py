"""Candidate generation and pair features on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ranker.features import FEATURE_NAMES, RankerInputs, generate_candidates, pair_features

F = {name: j for j, name in enumerate(FEATURE_NAMES)}


def tiny_inputs() -> RankerInputs:
    # 2 users, 4 items; items 0, 1 warm (user 0 saw 0, user 1 saw 0 and 1); items 2, 3 cold.
    history = sp.csr_array(np.array([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=np.float32))
    text = np.array([[1, 0], [0, 1], [0.6, 0.8], [1, 0]], dtype=np.float32)
    item_cf = np.array([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [9.0, 9.0]], dtype=np.float32)  # cold rows unused
    standin = np.array([[0.5, 0.0], [0.0, 0.5], [2.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    return RankerInputs(
        history=history,
        text=text,
        user_cf=np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32),
        item_cf=item_cf,
        item_standin=standin,
        popularity=np.array([2.0, 1.0, 0.0, 0.0]),
        title_words=np.array([3.0, 4.0, 5.0, 6.0], dtype=np.float32),
    )


def test_shapes_are_checked() -> None:
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match=r"RankerInputs.text has 3 rows; history implies 4"):
        RankerInputs(
            history=inputs.history,
            text=inputs.text[:3],
            user_cf=inputs.user_cf,
            item_cf=inputs.item_cf,
            item_standin=inputs.item_standin,
            popularity=inputs.popularity,
            title_words=inputs.title_words,
        )


def test_pair_features_by_hand() -> None:
    inputs = tiny_inputs()
    users = np.array([0, 0, 1])
    items = np.array([2, 1, 3])
    as_cold = np.array([False, True, False])
    x = pair_features(inputs, users, items, as_cold)
    # cf: cold item 2 through its stand-in (2, 0): 1*2 = 2; warm item 1 presented cold: stand-in (0, .5) -> 1;
    # cold item 3 for user 1: (3, 0) . (0, 3) = 0.
    np.testing.assert_allclose(x[:, F["cf_score"]], [2.0, 1.0, 0.0])
    # User 0's profile is item 0's text (1, 0); user 1's is normalise((1, 1)).
    np.testing.assert_allclose(x[:, F["text_profile"]], [0.6, 0.0, 1 / np.sqrt(2)], rtol=1e-6)
    # text_max: best cosine to a history item; user 1 saw (1, 0) and (0, 1), item 3 is (1, 0).
    np.testing.assert_allclose(x[:, F["text_max"]], [0.6, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(x[:, F["text_top3"]], [0.6, 0.0, 0.5], rtol=1e-6)
    # Popularity only through the warm view; every cold pair is flagged.
    np.testing.assert_allclose(x[:, F["log_popularity"]], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(x[:, F["as_cold"]], [1, 1, 1])
    warm_view = pair_features(inputs, np.array([0]), np.array([1]), np.array([False]))
    assert warm_view[0, F["log_popularity"]] == pytest.approx(np.log1p(1.0))
    assert warm_view[0, F["cf_score"]] == pytest.approx(2.0)  # (1, 2) . (0, 1)
    np.testing.assert_allclose(x[:, F["user_activity"]], np.log1p([1, 1, 2]))


def test_candidates_skip_history_and_exclusions() -> None:
    inputs = tiny_inputs()
    exclude = sp.csr_array(np.array([[0, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32))
    users, items = generate_candidates(inputs, np.array([1, 0]), np.arange(4), per_source=4, exclude=exclude)
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))
    assert pairs == {(1, 3), (0, 1), (0, 2), (0, 3)}
    # Grouped by user in the order asked for.
    assert users.tolist() == sorted(users.tolist(), key=[1, 0].index)


def test_candidates_take_each_sources_top_n() -> None:
    inputs = tiny_inputs()
    _, items = generate_candidates(inputs, np.array([0]), np.array([2, 3]), per_source=1, views=(True,))
    # Cold view for user 0 (cf (1, 2)): stand-ins give item 2 -> 2, item 3 -> 6, so cf picks 3;
    # text profile (1, 0) gives item 2 -> 0.6, item 3 -> 1.0, so text picks 3 as well.
    assert items.tolist() == [3]
