"""The LightGBM ranker trained by lightgbm.dask.DaskLGBMRanker on a real LocalCluster of two worker processes, its
pairs built per partition of users on the workers: the same pairs and features as the single-node fit, close
but not equal trees (data-parallel histograms), served as the single-node booster is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from catalog import ConfigError
from ranker.lightgbm_dask import TRAINER, _candidates, _groups_of, fit_on_dask
from ranker.lightgbm_ranker import LightGBMRanker, _groups
from tests.ranker.test_lightgbm_ranker import CONFIG, cold_recall

FIXED = CONFIG.model_copy(update={"n_estimators": 40, "early_stopping_rounds": None})


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as connected,
    ):
        yield connected


def test_partitions_build_the_single_node_fits_pairs(slice_inputs: tuple, tasks: tuple) -> None:
    # Each partition starts the seeded stream of cold draws where the pairs before it end: together they are the
    # single-node fit's pairs, labels and features, bit for bit.
    inputs, _ = slice_inputs
    train, _, _ = tasks
    rng = np.random.default_rng(FIXED.seed)
    whole = _groups(inputs, train, FIXED.per_source, FIXED.cold_share, rng, positive_only=True)
    state = np.random.default_rng(FIXED.seed).bit_generator.state
    parts, offset = [], 0
    for users in np.array_split(train.users, 3):
        pairs = _candidates(inputs, users, train.pool, FIXED.per_source, train.exclude, FIXED.ann_min_items)
        parts.append(_groups_of(inputs, pairs, train.positives, state, offset, FIXED.cold_share))
        offset += pairs[0].size
    for name in ("users", "items", "features", "labels", "sizes"):
        np.testing.assert_array_equal(np.concatenate([getattr(part, name) for part in parts]), getattr(whole, name))


def test_dask_lgbm_ranker_learns_as_the_single_node_fit(
    slice_inputs: tuple, tasks: tuple, recall_of: Callable, client: object, tmp_path: Path
) -> None:
    inputs, _ = slice_inputs
    train, valid, test = tasks
    single = LightGBMRanker(FIXED).fit(inputs, train, valid)
    on_dask = fit_on_dask(LightGBMRanker(FIXED), inputs, train, client)  # type: ignore[arg-type]
    meta = on_dask.metadata
    assert meta["trainer"] == TRAINER and meta["dask_workers"] == 2 and meta["partitions"] == 2
    assert meta["best_iteration"] == FIXED.n_estimators
    for count in ("train_pairs", "train_groups"):  # the very pairs the single-node fit learns from
        assert meta[count] == single.metadata[count]
    single_recall, dask_recall = (cold_recall(r, inputs, test, recall_of) for r in (single, on_dask))
    # Data-parallel LightGBM sums each feature's histogram over the workers and bins each worker's data apart:
    # different trees, close quality.
    assert abs(dask_recall - single_recall) <= 0.03, (dask_recall, single_recall)
    assert dask_recall > 3 * 20 / test.pool.size
    # Saved and loaded, the booster serves as the single-node one does.
    loaded = LightGBMRanker.load(on_dask.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.score_task(inputs, test)[2], on_dask.score_task(inputs, test)[2])
    assert loaded.metadata["trainer"] == TRAINER


def test_what_dask_cannot_train_is_refused_with_the_fix(slice_inputs: tuple, tasks: tuple, client: object) -> None:
    inputs, _ = slice_inputs
    with pytest.raises(ConfigError, match="cannot stop early"):
        fit_on_dask(LightGBMRanker(CONFIG), inputs, tasks[0], client)  # type: ignore[arg-type]
    shown_new = FIXED.model_copy(update={"cold_user_share": 0.2})
    with pytest.raises(ConfigError, match="WARMSTART_TASK_RUNNER=threads"):
        fit_on_dask(LightGBMRanker(shown_new), inputs, tasks[0], client)  # type: ignore[arg-type]
