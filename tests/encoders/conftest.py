"""The warm CiteULike slice the collaborative models learn from in their tests."""

from __future__ import annotations

import polars as pl
import pytest

from catalog import Columns, Dataset

N_USERS = 300


@pytest.fixture(scope="module")
def warm_slice(citeulike: Dataset) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, held-out): warm_emb and warm_val pairs of 300 seeded-random users; held-out items seen in train."""
    users = citeulike.splits["warm_emb"][Columns.user].unique().sort().sample(N_USERS, seed=3)
    train = citeulike.splits["warm_emb"].filter(pl.col(Columns.user).is_in(users.implode()))
    held_out = citeulike.splits["warm_val"].filter(
        pl.col(Columns.user).is_in(users.implode()) & pl.col(Columns.item).is_in(train[Columns.item].implode())
    )
    assert held_out.height > 100
    return train, held_out
