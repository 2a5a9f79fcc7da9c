"""A version's serving inputs round-trip through serving.npz / serving.json, and a broken save refuses to load."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from catalog import Columns, DataError
from ranker.features import RankerInputs
from ranker.temporal import time_features
from serving import SERVING_ARRAYS, SERVING_MANIFEST, load_serving_inputs, save_serving_inputs


def _inputs(rng: np.random.Generator, *, with_sparse: bool) -> RankerInputs:
    history = sp.csr_array(np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=np.float32))
    return RankerInputs(
        history=history,
        text=rng.normal(size=(4, 6)).astype(np.float32),
        user_cf=rng.normal(size=(3, 5)).astype(np.float32),
        item_cf=rng.normal(size=(4, 5)).astype(np.float32),
        item_standin=rng.normal(size=(4, 5)).astype(np.float32),
        popularity=np.asarray(history.sum(axis=0)).ravel(),
        title_words=np.array([1, 2, 3, 4], dtype=np.float32),
        tfidf=sp.csr_array(rng.random((4, 7)) > 0.5, dtype=np.float32) if with_sparse else None,
        categories=sp.csr_array(np.eye(4, 2), dtype=np.float32) if with_sparse else None,
        user_attributes=np.array([[0.5, 1, 0], [-1.0, 0, 1], [0.0, 0, 0]], dtype=np.float32) if with_sparse else None,
        item_given=np.array([0, 0, 4, 0], dtype=np.float32) if with_sparse else None,
    )


USERS = pl.Series(["u1", "u2", "u3"])
ITEMS = pl.Series(["i1", "i2", "i3", "i4"])


@pytest.mark.parametrize("with_sparse", [True, False])
def test_round_trip_restores_every_array_and_the_ids(tmp_path: Path, with_sparse: bool) -> None:
    inputs = _inputs(np.random.default_rng(0), with_sparse=with_sparse)
    manifest = save_serving_inputs(tmp_path, inputs, USERS, ITEMS)
    loaded = load_serving_inputs(tmp_path)
    assert loaded.manifest == manifest and manifest["n_users"] == 3 and manifest["n_items"] == 4
    assert loaded.user_ids.to_list() == USERS.to_list() and loaded.item_ids.to_list() == ITEMS.to_list()
    names = ("text", "user_cf", "item_cf", "item_standin", "popularity", "title_words", "text_profiles")
    for name in (*names, "user_standin", "user_attributes"):
        np.testing.assert_allclose(getattr(loaded.inputs, name), getattr(inputs, name), rtol=1e-5, atol=1e-6)
    assert (loaded.inputs.history != inputs.history).nnz == 0
    assert (inputs.item_given is None) == (loaded.inputs.item_given is None)
    if inputs.item_given is not None:
        np.testing.assert_array_equal(loaded.inputs.item_given, inputs.item_given)
    for name in ("tfidf", "categories"):
        before, after = getattr(inputs, name), getattr(loaded.inputs, name)
        assert (before is None) == (after is None)
        if before is not None:
            np.testing.assert_allclose(after.toarray(), before.toarray(), rtol=1e-5, atol=1e-6)


def test_a_time_ordered_logs_recency_arrays_are_saved_with_the_version(tmp_path: Path) -> None:
    # The ranker trained on them: a version served without them would score with those features at zero.
    inputs = _inputs(np.random.default_rng(0), with_sparse=False)
    now = datetime(1998, 3, 7, 2, 21, 12, 345678, tzinfo=UTC)
    log = pl.DataFrame(
        {Columns.user: ["u1", "u3"], Columns.item: ["i1", "i2"], Columns.ts: [now - timedelta(days=2)] * 2}
    )
    released = pl.Series([now - timedelta(days=900), None, now, None], dtype=pl.Datetime("us", "UTC"))
    timed = dataclasses.replace(inputs, time=time_features(log, USERS, ITEMS, now=now, released=released))
    save_serving_inputs(tmp_path, timed, USERS, ITEMS)
    loaded = load_serving_inputs(tmp_path).inputs.time
    assert loaded is not None and loaded.now == now
    for name in ("recent", "age_days", "user_recent", "release_age_days"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(timed.time, name))


def test_a_version_without_serving_inputs_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="warmstart refresh"):
        load_serving_inputs(tmp_path)


def test_a_changed_arrays_file_fails_the_digest(tmp_path: Path) -> None:
    save_serving_inputs(tmp_path, _inputs(np.random.default_rng(0), with_sparse=True), USERS, ITEMS)
    manifest = (tmp_path / SERVING_MANIFEST).read_text()
    # Another save's arrays under the first save's manifest: a mixed write.
    save_serving_inputs(tmp_path, _inputs(np.random.default_rng(1), with_sparse=True), USERS, ITEMS)
    (tmp_path / SERVING_MANIFEST).write_text(manifest)
    with pytest.raises(DataError, match="digest"):
        load_serving_inputs(tmp_path)
    assert (tmp_path / SERVING_ARRAYS).is_file()


def test_ids_that_do_not_match_the_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="do not match"):
        save_serving_inputs(tmp_path, _inputs(np.random.default_rng(0), with_sparse=False), USERS.head(2), ITEMS)
    assert not (tmp_path / SERVING_MANIFEST).exists()
