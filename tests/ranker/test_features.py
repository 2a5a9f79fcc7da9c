"""Candidate generation and pair features on hand-made arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from ranker.features import (
    FEATURE_NAMES,
    RankerInputs,
    _pair_dots,
    _tfidf_max,
    generate_candidates,
    pair_features,
)

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


def test_given_pairs_show_only_through_the_cold_view() -> None:
    # Item 1 (warm) and item 2 (cold) were warmed from 3 and 5 given pairs.
    inputs = dataclasses.replace(tiny_inputs(), item_given=np.array([0, 3, 5, 0], dtype=np.float32))
    x = pair_features(inputs, np.array([0, 0, 0, 1]), np.array([1, 1, 2, 3]), np.array([True, False, False, False]))
    np.testing.assert_allclose(x[:, F["given_pairs"]], np.log1p([3, 0, 5, 0]))
    assert not pair_features(tiny_inputs(), np.array([0]), np.array([2]), np.array([True]))[0, F["given_pairs"]]


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


def random_inputs(n_users: int = 30, n_items: int = 200, seed: int = 0) -> RankerInputs:
    """Continuous random arrays (no ties) with TF-IDF; about a third of the items cold."""
    rng = np.random.default_rng(seed)
    warm = np.arange(n_items) >= n_items // 3  # the first third of the items cold
    history = sp.csr_array(sp.random_array((n_users, n_items), density=0.05, rng=rng, format="csr").multiply(warm))
    popularity = np.asarray((history > 0).sum(axis=0)).ravel().astype(np.float64)
    return RankerInputs(
        history=history,
        text=rng.normal(size=(n_items, 8)).astype(np.float32),
        user_cf=rng.normal(size=(n_users, 5)).astype(np.float32),
        item_cf=rng.normal(size=(n_items, 5)).astype(np.float32),
        item_standin=rng.normal(size=(n_items, 5)).astype(np.float32),
        popularity=popularity + rng.random(n_items) * (popularity > 0),
        title_words=rng.integers(1, 9, n_items).astype(np.float32),
        tfidf=sp.random_array((n_items, 40), density=0.2, rng=rng, format="csr"),
    )


@pytest.mark.parametrize("as_cold", [False, True])
def test_the_whole_catalog_scores_as_any_pool_of_its_items(as_cold: bool) -> None:
    # Serving's pool (every item, in order) reads arrays computed once per inputs; another order of the same items
    # indexes them per call. Same scores, same candidates.
    inputs = random_inputs()
    users, everything = np.arange(inputs.n_users), np.arange(inputs.n_items)
    shuffled = np.random.default_rng(1).permutation(everything)
    assert inputs.is_full(everything) and not inputs.is_full(shuffled) and not inputs.is_full(everything[:-1])
    full, mixed = inputs.source_scores(users, everything, as_cold), inputs.source_scores(users, shuffled, as_cold)
    assert full.keys() == mixed.keys() and "tfidf" in full
    for source, scores in full.items():
        # Equal to float32 rounding: BLAS kernels may sum in another order on another CPU (seen: 4e-8 apart).
        np.testing.assert_allclose(scores[:, shuffled], mixed[source], rtol=1e-5, atol=1e-7, err_msg=source)
    exclude = sp.random_array((inputs.n_users, inputs.n_items), density=0.05, rng=2, format="csr")
    pairs = [
        set(zip(*generate_candidates(inputs, users, pool, per_source=7, exclude=exclude), strict=True))
        for pool in (everything, shuffled)
    ]
    assert pairs[0] == pairs[1]


def test_item_view_is_the_stand_in_where_cold_and_the_id_embedding_elsewhere() -> None:
    inputs = random_inputs()
    rng = np.random.default_rng(3)
    items, as_cold = rng.integers(0, inputs.n_items, 500), rng.random(500) < 0.3
    shown_cold = as_cold | inputs.is_cold[items]
    expected = np.where(shown_cold[:, None], inputs.item_standin[items], inputs.item_cf[items])
    np.testing.assert_array_equal(inputs.item_view(items, as_cold), expected)


def test_replaced_inputs_share_the_big_arrays_they_did_not_change() -> None:
    """What `replace` passes on (the text, TF-IDF, the stand-ins) is not copied again: at 500k items each copy is
    hundreds of megabytes. Text given unnormalised is still normalised; the catalogue's cold view is the stand-ins."""
    inputs = random_inputs()
    np.testing.assert_allclose(np.linalg.norm(inputs.text, axis=1), 1.0, rtol=1e-5)
    raw = dataclasses.replace(inputs, text=inputs.text * 3.0)
    np.testing.assert_allclose(raw.text, inputs.text, rtol=1e-5)  # normalised: not the array it was given
    shared = dataclasses.replace(inputs, item_given=np.ones(inputs.n_items, dtype=np.float32))
    assert shared.text is inputs.text and shared.tfidf is inputs.tfidf
    unnormalised = dataclasses.replace(inputs, tfidf=inputs.tfidf * 2.0)  # TF-IDF alike: normalised again
    np.testing.assert_allclose(unnormalised.tfidf.toarray(), inputs.tfidf.toarray(), rtol=1e-6)
    assert shared.catalog_views[True] is shared.item_standin
    np.testing.assert_array_equal(shared.catalog_views[True], inputs.item_view(np.arange(inputs.n_items), True))
    # Other stand-ins (the line without augmentation): the users' profiles carried over, equal to computing them.
    profiles = inputs.text_profiles, inputs.tfidf_profiles
    content = inputs.with_item_standins(inputs.item_standin * 2.0, None)
    assert content.text_profiles is profiles[0] and content.tfidf_profiles is profiles[1]
    fresh = dataclasses.replace(inputs, item_standin=inputs.item_standin * 2.0)
    np.testing.assert_array_equal(fresh.text_profiles, content.text_profiles)
    np.testing.assert_allclose(fresh.tfidf_profiles.toarray(), content.tfidf_profiles.toarray(), rtol=1e-6)
    np.testing.assert_array_equal(content.item_view(np.arange(5), True), inputs.item_standin[:5] * 2.0)


def test_tfidf_max_of_all_users_at_once_is_each_users_own_product() -> None:
    inputs = random_inputs(n_users=40)
    rng = np.random.default_rng(4)
    # Unsorted term indices within rows, as a fitted vectoriser may leave them.
    tfidf = sp.csr_array(inputs.tfidf)
    for row in range(tfidf.shape[0]):
        span = slice(tfidf.indptr[row], tfidf.indptr[row + 1])
        order = rng.permutation(span.stop - span.start)
        tfidf.indices[span], tfidf.data[span] = tfidf.indices[span][order], tfidf.data[span][order]
    history = sp.csr_array(inputs.history.multiply((np.arange(inputs.n_users) != 5)[:, None]))  # 5: no history
    history.eliminate_zeros()
    users = np.repeat(rng.permutation(inputs.n_users)[:25], rng.integers(1, 30, 25))
    users = np.r_[users, users[:7]]  # a user again, later: a group of its own
    items = rng.integers(0, inputs.n_items, users.size)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], users.size]
    expected = np.zeros(users.size, dtype=np.float32)
    for start, end in zip(starts, ends, strict=True):
        seen = history.indices[history.indptr[users[start]] : history.indptr[users[start] + 1]]
        if seen.size:
            expected[start:end] = (tfidf[seen] @ tfidf[items[start:end]].T).toarray().max(axis=0)
    for chunk_columns in (1, 100, 4_000_000):  # one user, a few, all per product
        got = _tfidf_max(tfidf, history, users, items, starts, ends, chunk_columns=chunk_columns)
        np.testing.assert_array_equal(got, expected)


def test_pair_dots_are_the_rows_products() -> None:
    # A pair's TF-IDF profile similarity is the dot product of the user's profile row and the item's row; users
    # without history (an empty profile) and items without terms give 0.
    inputs = random_inputs(n_users=40)
    rng = np.random.default_rng(5)
    profiles = sp.csr_array(inputs.tfidf_profiles.multiply((np.arange(inputs.n_users) != 3)[:, None]))
    profiles.eliminate_zeros()
    tfidf = sp.csr_array(inputs.tfidf.multiply((np.arange(inputs.n_items) != 7)[:, None]))
    tfidf.eliminate_zeros()
    users = np.repeat(rng.permutation(inputs.n_users)[:25], rng.integers(1, 30, 25))
    users = np.r_[users, 3, users[0]]  # a user without profile; a user with one, below with an item without terms
    items = np.r_[rng.integers(0, inputs.n_items, users.size - 2), 8, 7]
    expected = np.asarray(profiles[users].multiply(tfidf[items]).sum(axis=1)).ravel()
    got = _pair_dots(profiles, tfidf, users, items)
    assert got.dtype == np.float32 and np.count_nonzero(got) > users.size // 2
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got[-2] == got[-1] == 0 and profiles[[users[-1]]].nnz > 0  # no profile; an item without terms
    assert _pair_dots(profiles, tfidf, np.array([3]), np.array([8])).tolist() == [0.0]


def test_pair_features_built_in_chunks_equal_all_at_once() -> None:
    inputs = random_inputs(n_users=40)
    rng = np.random.default_rng(7)
    users = np.repeat(rng.permutation(inputs.n_users)[:25], rng.integers(1, 30, 25))
    items = rng.integers(0, inputs.n_items, users.size)
    as_cold = rng.random(users.size) < 0.3
    whole = pair_features(inputs, users, items, as_cold, chunk_pairs=users.size)
    assert np.count_nonzero(whole[:, F["text_rank"]]) > 0  # the group-wise features are exercised
    for chunk_pairs in (1, 17, 100):  # one group at a time; chunks ending inside a group (kept whole)
        np.testing.assert_array_equal(pair_features(inputs, users, items, as_cold, chunk_pairs=chunk_pairs), whole)
