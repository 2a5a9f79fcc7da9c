"""The LightGBM ranker on a small real slice of CiteULike: it learns, it serves cold items, it round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalog import Columns, Dataset, NotFittedError
from ranker.evaluate import EvalIndex
from ranker.features import RankerInputs
from ranker.lightgbm_ranker import LightGBMRanker, LightGBMRankerConfig, RankingTask

CONFIG = LightGBMRankerConfig(per_source=20, n_estimators=60, early_stopping_rounds=20, min_child_samples=20)


@pytest.fixture(scope="module")
def slice_inputs(citeulike: Dataset, cache_dir: Path) -> tuple[RankerInputs, dict[str, object]]:
    """300 users with cold positives in both cold splits; their items; real MiniLM text and BPR-MF."""
    from encoders import BPRConfig, MapperConfig
    from flows.pipeline import encode_inputs
    from ranker.evaluate import interaction_matrix

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
        mapper_config=MapperConfig(kind="ridge", alpha=10.0),
        folds=3,
    )
    matrices = {name: interaction_matrix(frame, index) for name, frame in parts.items()}
    return encoded.inputs, matrices


def tasks(inputs: RankerInputs, m: dict) -> tuple[RankingTask, RankingTask, RankingTask]:
    warm_items = np.flatnonzero(inputs.popularity > 0)
    cold_items = np.flatnonzero(inputs.popularity == 0)
    everyone = np.arange(inputs.n_users)
    train = RankingTask(everyone, warm_items, positives=m["warm_val"])
    valid = RankingTask(everyone, cold_items, positives=m["cold_item_val"], exclude=m["cold_item_test"])
    test = RankingTask(everyone, cold_items, positives=m["cold_item_test"], exclude=m["cold_item_val"])
    return train, valid, test


def cold_recall(ranker: LightGBMRanker, inputs: RankerInputs, test: RankingTask, k: int = 20) -> float:
    users, items, _ = ranker.recommend(inputs, test.users, k, pool=test.pool, exclude=test.exclude)
    assert test.positives is not None and test.exclude is not None
    assert not np.asarray(test.exclude[users, items]).any(), "excluded pairs are never recommended"
    hits = np.bincount(users, weights=np.asarray(test.positives[users, items]).ravel(), minlength=inputs.n_users)
    positives = np.asarray(test.positives.sum(axis=1)).ravel()
    return float(np.mean(hits[positives > 0] / positives[positives > 0]))


def test_not_fitted_is_a_clear_error(slice_inputs: tuple) -> None:
    inputs, _ = slice_inputs
    with pytest.raises(NotFittedError, match="call fit"):
        LightGBMRanker().recommend(inputs, np.array([0]), 5)


def test_ranker_serves_cold_items_far_above_random(slice_inputs: tuple, tmp_path: Path) -> None:
    inputs, m = slice_inputs
    train, valid, test = tasks(inputs, m)
    ranker = LightGBMRanker(CONFIG).fit(inputs, train, valid)
    assert ranker.is_fitted
    assert ranker.metadata["train_groups"] > 50
    recall = cold_recall(ranker, inputs, test)
    # Random ranking of the cold items would hit about 20 / (number of cold candidates) of them.
    random_recall = 20 / test.pool.size
    assert recall > 3 * random_recall, (recall, random_recall)

    # Saved and loaded, it scores exactly the same; a second fit with the same seed is identical.
    loaded = LightGBMRanker.load(ranker.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.score_task(inputs, test)[2], ranker.score_task(inputs, test)[2])
    assert (tmp_path / "model" / "model.txt").read_text().startswith("tree")
    again = LightGBMRanker(CONFIG).fit(inputs, train, valid)
    np.testing.assert_array_equal(again.score_task(inputs, test)[2], ranker.score_task(inputs, test)[2])


def test_scorer_gives_minus_inf_outside_candidates(slice_inputs: tuple) -> None:
    inputs, m = slice_inputs
    train, valid, test = tasks(inputs, m)
    ranker = LightGBMRanker(CONFIG.model_copy(update={"per_source": 5})).fit(inputs, train, valid)
    matrix = ranker.scorer(inputs, exclude=m["cold_item_val"])(np.array([3, 1]), test.pool)
    assert matrix.shape == (2, test.pool.size)
    finite = np.isfinite(matrix)
    assert finite.any(axis=1).all()
    assert (finite.sum(axis=1) <= 5 * 4).all()  # at most per_source x (sources x views) candidates


def test_users_shown_as_cold_teach_item_only_ranking(slice_inputs: tuple) -> None:
    # Every training user shown without history: the model cannot learn from user features, so two users
    # get the same score for the same item (items presented warm, to keep the item features fixed).
    inputs, m = slice_inputs
    train, valid, _ = tasks(inputs, m)
    config = CONFIG.model_copy(update={"cold_user_share": 1.0, "cold_share": 0.0})
    ranker = LightGBMRanker(config).fit(inputs, train, valid)
    users, items, scores = ranker.score_task(inputs, RankingTask(np.array([0, 1]), train.pool))
    first = dict(zip(items[users == 0].tolist(), scores[users == 0].tolist(), strict=True))
    second = dict(zip(items[users == 1].tolist(), scores[users == 1].tolist(), strict=True))
    shared = sorted(set(first) & set(second))
    assert shared
    np.testing.assert_allclose([first[i] for i in shared], [second[i] for i in shared])
    # Without it, the same two users' scores differ.
    plain = LightGBMRanker(CONFIG.model_copy(update={"cold_share": 0.0})).fit(inputs, train, valid)
    users, items, scores = plain.score_task(inputs, RankingTask(np.array([0, 1]), train.pool))
    first = dict(zip(items[users == 0].tolist(), scores[users == 0].tolist(), strict=True))
    second = dict(zip(items[users == 1].tolist(), scores[users == 1].tolist(), strict=True))
    shared = sorted(set(first) & set(second))
    assert not np.allclose([first[i] for i in shared], [second[i] for i in shared])
