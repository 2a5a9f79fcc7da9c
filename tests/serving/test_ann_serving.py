"""Serving with ANN candidates (ranker.ann) on the MovieLens slice's promoted version, the threshold lowered so
that its ~1,400 items get an index; the default threshold leaves it exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalog import Columns
from serving import Recommender


@pytest.fixture(scope="module")
def exact(served_slice: Path, cache_dir: Path) -> Recommender:
    return Recommender.load(served_slice, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def indexed(served_slice: Path, cache_dir: Path) -> Recommender:
    return Recommender.load(served_slice, cache_dir=cache_dir, ann_min_items=1)


def test_a_small_catalogue_is_served_exactly(exact: Recommender) -> None:
    assert exact.inputs.candidates is None  # below ANN_MIN_ITEMS: brute force, as before


def test_ann_serving_matches_the_exact_lists_and_never_repeats_seen_items(
    exact: Recommender, indexed: Recommender
) -> None:
    assert indexed.inputs.candidates is not None
    users = exact.user_ids.to_list()
    ann, brute = indexed.recommend(users, k=10), exact.recommend(users, k=10)
    assert ann.group_by(Columns.user).len()["len"].min() == 10
    shared = ann.join(brute, on=[Columns.user, Columns.item], how="semi").height
    # The slice's lists are built from IVF over ~35 lists searching 24: nearly exhaustive, nearly the same lists.
    assert shared / brute.height >= 0.95
    seen = indexed.seen[
        np.fromiter((indexed._user_rows[u] for u in ann[Columns.user]), np.int64),
        np.fromiter((indexed._item_rows[i] for i in ann[Columns.item]), np.int64),
    ]
    assert not np.asarray(seen).any()


def test_items_added_while_serving_keep_the_index(indexed: Recommender) -> None:
    item = pl.DataFrame({Columns.item: ["ann-new"], Columns.title: ["Star Wars (1977)"]})
    grown = indexed.add_items(item)
    assert grown.inputs.candidates is indexed.inputs.candidates  # built once; the new item is scored beside it
    frame = grown.recommend(grown.user_ids.to_list()[:20], k=10)
    assert frame.height == 200
