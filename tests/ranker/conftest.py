"""A small real slice of CiteULike with real encoders, shared by the learned rankers' tests (built once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from catalog import Columns, Dataset
from ranker.evaluate import EvalIndex
from ranker.features import RankerInputs, RankingTask


@pytest.fixture(scope="session")
def slice_inputs(citeulike: Dataset, cache_dir: Path) -> tuple[RankerInputs, dict[str, sp.csr_array]]:
    """300 users with cold positives in both cold splits; their items; real MiniLM text and BPR-MF."""
    from encoders import BPRConfig, MapperConfig
    from ranker.evaluate import interaction_matrix
    from training import StandInConfig, encode_inputs

    splits = citeulike.splits
    both = (
        splits["cold_item_val"]
        .select(Columns.user)
        .unique()
        .join(splits["cold_item_test"].select(Columns.user).unique(), on=Columns.user)
    )
    users = both.sort(Columns.user).head(300)
    parts = {name: frame.join(users, on=Columns.user, how="semi") for name, frame in splits.items()}
    item_ids = pl.concat([frame.select(Columns.item) for frame in parts.values()]).unique().sort(Columns.item)
    items = citeulike.items.join(item_ids, on=Columns.item, how="semi").sort(Columns.item)
    index = EvalIndex(users[Columns.user], items[Columns.item])

    encoded = encode_inputs(
        index,
        items,
        parts["warm_emb"],
        cache_dir=cache_dir,
        cf_config=BPRConfig(dim=16, epochs=5),
        standin_config=StandInConfig(mapper=MapperConfig(kind="ridge", alpha=10.0), folds=3),
    )
    matrices = {name: interaction_matrix(frame, index) for name, frame in parts.items()}
    return encoded.inputs, matrices


@pytest.fixture(scope="session")
def tasks(slice_inputs: tuple) -> tuple[RankingTask, RankingTask, RankingTask]:
    """(train on warm_val among warm items, stop on cold_item_val, test on cold_item_test), ALDI-style."""
    inputs, m = slice_inputs
    warm_items = np.flatnonzero(inputs.popularity > 0)
    cold_items = np.flatnonzero(inputs.popularity == 0)
    everyone = np.arange(inputs.n_users)
    train = RankingTask(everyone, warm_items, positives=m["warm_val"])
    valid = RankingTask(everyone, cold_items, positives=m["cold_item_val"], exclude=m["cold_item_test"])
    test = RankingTask(everyone, cold_items, positives=m["cold_item_test"], exclude=m["cold_item_val"])
    return train, valid, test


def _recall(users: np.ndarray, items: np.ndarray, test: RankingTask, n_users: int) -> float:
    assert test.positives is not None
    hits = np.bincount(users, weights=np.asarray(test.positives[users, items]).ravel(), minlength=n_users)
    positives = np.asarray(test.positives.sum(axis=1)).ravel()
    return float(np.mean(hits[positives > 0] / positives[positives > 0]))


@pytest.fixture(scope="session")
def recall_of() -> Callable[[np.ndarray, np.ndarray, RankingTask, int], float]:
    """recall_of(users, items, task, n_users): mean Recall of recommended pairs over users with positives."""
    return _recall
