"""The LightGBM ranker on a small real slice of CiteULike: it learns, it serves cold items, it round-trips."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from scipy.stats import spearmanr

from catalog import DataError, NotFittedError
from ranker.features import FEATURE_NAMES, RankerInputs, RankingTask
from ranker.lightgbm_ranker import LightGBMRanker, LightGBMRankerConfig, _groups
from ranker.temporal import TimeFeatures
from tests.ranker.contract import RankerContract

CONFIG = LightGBMRankerConfig(per_source=20, n_estimators=60, early_stopping_rounds=20, min_child_samples=20)


def cold_recall(ranker: LightGBMRanker, inputs: RankerInputs, test: RankingTask, recall_of: Callable) -> float:
    users, items, _ = ranker.recommend(inputs, test.users, 20, pool=test.pool, exclude=test.exclude)
    assert test.exclude is not None
    assert not np.asarray(test.exclude[users, items]).any(), "excluded pairs are never recommended"
    return recall_of(users, items, test, inputs.n_users)


def test_not_fitted_is_a_clear_error(slice_inputs: tuple) -> None:
    inputs, _ = slice_inputs
    with pytest.raises(NotFittedError, match="call fit"):
        LightGBMRanker().recommend(inputs, np.array([0]), 5)


def test_ranker_serves_cold_items_far_above_random(
    slice_inputs: tuple, tasks: tuple, recall_of: Callable, tmp_path: Path
) -> None:
    inputs, _ = slice_inputs
    train, valid, test = tasks
    ranker = LightGBMRanker(CONFIG).fit(inputs, train, valid)
    assert ranker.is_fitted
    assert ranker.metadata["train_groups"] > 50
    recall = cold_recall(ranker, inputs, test, recall_of)
    # Random ranking of the cold items would hit about 20 / (number of cold candidates) of them.
    random_recall = 20 / test.pool.size
    assert recall > 3 * random_recall, (recall, random_recall)

    # Saved and loaded, it scores exactly the same; a second fit with the same seed is identical.
    loaded = LightGBMRanker.load(ranker.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.score_task(inputs, test)[2], ranker.score_task(inputs, test)[2])
    assert (tmp_path / "model" / "model.txt").read_text().startswith("tree")
    again = LightGBMRanker(CONFIG).fit(inputs, train, valid)
    np.testing.assert_array_equal(again.score_task(inputs, test)[2], ranker.score_task(inputs, test)[2])


def test_scorer_gives_minus_inf_outside_candidates(slice_inputs: tuple, tasks: tuple) -> None:
    inputs, m = slice_inputs
    train, valid, test = tasks
    ranker = LightGBMRanker(CONFIG.model_copy(update={"per_source": 5})).fit(inputs, train, valid)
    matrix = ranker.scorer(inputs, exclude=m["cold_item_val"])(np.array([3, 1]), test.pool)
    assert matrix.shape == (2, test.pool.size)
    finite = np.isfinite(matrix)
    assert finite.any(axis=1).all()
    assert (finite.sum(axis=1) <= 5 * 4).all()  # at most per_source x (sources x views) candidates


def test_users_shown_as_cold_teach_ranking_through_their_stand_ins(slice_inputs: tuple, tasks: tuple) -> None:
    # Every training user shown without history: the model learns what it can know of such a user, their stand-in
    # (items presented warm, to keep the item features fixed). Two users without history score the same through
    # the same stand-in, and differently through different ones.
    inputs, _ = slice_inputs
    train, valid, _ = tasks
    config = CONFIG.model_copy(update={"cold_user_share": 1.0, "cold_share": 0.0})
    ranker = LightGBMRanker(config).fit(inputs, train, valid)
    history = inputs.history.tolil()
    history[[0, 1]] = 0
    standin = inputs.user_standin.copy()

    def scored_without_history() -> tuple[list[float], list[float]]:
        cold = dataclasses.replace(inputs, history=history.tocsr(), user_standin=standin)
        users, items, scores = ranker.score_task(cold, RankingTask(np.array([0, 1]), train.pool))
        first = dict(zip(items[users == 0].tolist(), scores[users == 0].tolist(), strict=True))
        second = dict(zip(items[users == 1].tolist(), scores[users == 1].tolist(), strict=True))
        shared = sorted(set(first) & set(second))
        assert shared
        return [first[i] for i in shared], [second[i] for i in shared]

    assert not np.allclose(*scored_without_history())
    standin[1] = standin[0]
    np.testing.assert_allclose(*scored_without_history())
    # Without it, the same two users' scores differ.
    plain = LightGBMRanker(CONFIG.model_copy(update={"cold_share": 0.0})).fit(inputs, train, valid)
    users, items, scores = plain.score_task(inputs, RankingTask(np.array([0, 1]), train.pool))
    first = dict(zip(items[users == 0].tolist(), scores[users == 0].tolist(), strict=True))
    second = dict(zip(items[users == 1].tolist(), scores[users == 1].tolist(), strict=True))
    shared = sorted(set(first) & set(second))
    assert not np.allclose([first[i] for i in shared], [second[i] for i in shared])


def test_users_shown_without_history_learn_every_item_they_took(slice_inputs: tuple, tasks: tuple) -> None:
    # A new user's history is still to come: shown without it, a training user's positives are the items they
    # took before the labels' cut as well as after, and their features read no history.
    inputs, _ = slice_inputs
    train, _, _ = tasks
    groups = _groups(inputs, train, 20, 0.0, np.random.default_rng(0), cold_user_share=1.0)
    taken_before = np.asarray(inputs.history[groups.users, groups.items]).ravel() > 0
    assert taken_before.any() and (groups.labels[taken_before] == 1).all()
    history_features = [FEATURE_NAMES.index(name) for name in ("user_activity", "text_profile", "text_max")]
    assert (groups.features[:, history_features] == 0).all()


def test_cold_slots_give_the_best_cold_items_places_in_the_top_k(slice_inputs: tuple, tasks: tuple) -> None:
    inputs, _ = slice_inputs
    train, valid, _ = tasks
    config = CONFIG.model_copy(update={"cold_share": 0.0, "eval_k": 10})
    plain = LightGBMRanker(config).fit(inputs, train, valid)
    slotted = LightGBMRanker(config.model_copy(update={"cold_slots": 3}))
    slotted._booster, slotted.metadata = plain.booster, plain.metadata
    users, items = np.arange(40), np.arange(inputs.n_items)
    before, after = plain.scorer(inputs)(users, items), slotted.scorer(inputs)(users, items)
    cold = inputs.is_cold
    for row in range(users.size):
        finite_cold = np.isfinite(before[row]) & cold
        top_before = set(np.argsort(-before[row], kind="stable")[:10].tolist())
        top_after = np.argsort(-after[row], kind="stable")[:10]
        assert cold[top_after].sum() >= min(3, finite_cold.sum())
        # Only cold items come in; the warm items kept are the best of those scored before.
        assert set(top_after[~cold[top_after]].tolist()) <= top_before
        if cold[list(top_before)].sum() >= 3:
            assert set(top_after.tolist()) == top_before


def _with_recent_shares(inputs: RankerInputs, rng: np.random.Generator) -> RankerInputs:
    """The slice as if it were a time-ordered log: random recent shares for the warm items (cold ones have none)."""
    recent = np.where(inputs.is_cold[:, None], 0.0, rng.gamma(1.0, 5.0, size=(inputs.n_items, 3))).astype(np.float32)
    time = TimeFeatures(
        now=datetime(2024, 1, 1, tzinfo=UTC),
        recent=recent,
        age_days=np.zeros(inputs.n_items, np.float32),
        user_recent=np.zeros(inputs.n_users, np.float32),
        release_age_days=np.full(inputs.n_items, np.nan, np.float32),
    )
    return dataclasses.replace(inputs, time=time)


def test_boosting_starts_from_recent_popularity(slice_inputs: tuple, tasks: tuple) -> None:
    # With a heavy prior and a single small step, the ranker orders every user's candidates nearly as their share
    # of the last 14 days does; without the prior, far from it.
    inputs = _with_recent_shares(slice_inputs[0], np.random.default_rng(0))
    train, valid, _ = tasks
    config = CONFIG.model_copy(update={"cold_share": 0.0, "n_estimators": 1, "learning_rate": 1e-4})
    task = RankingTask(np.arange(20), train.pool)
    agreement = {}
    for weight in (5.0, 0.0):
        ranker = LightGBMRanker(config.model_copy(update={"prior_weight": weight})).fit(inputs, train, valid)
        users, items, scores = ranker.score_task(inputs, task)
        share = inputs.time.recent[items, 1]
        agreement[weight] = np.mean([spearmanr(scores[users == u], share[users == u])[0] for u in np.unique(users)])
    assert agreement[5.0] > 0.9 and agreement[0.0] < 0.5, agreement


def test_a_ranker_learns_from_pairs_another_configuration_chose_as_from_its_own(
    slice_inputs: tuple, tasks: tuple
) -> None:
    """The timed alternatives train from the main ranker's pairs: a configuration that chooses pairs alike (PAIR_FIELDS)
    but learns otherwise (prior, cold places) gets the booster it gets from pairs it builds itself."""
    inputs = _with_recent_shares(slice_inputs[0], np.random.default_rng(0))
    train, valid, test = tasks
    main = LightGBMRanker(CONFIG)
    pairs = main.training_pairs(inputs, train, valid)
    main.fit_pairs(pairs)
    other = CONFIG.model_copy(update={"prior_weight": 2.0, "prior_days": 28, "cold_slots": 3})
    shared = LightGBMRanker(other).fit_pairs(pairs)
    alone = LightGBMRanker(other).fit(inputs, train, valid)
    assert shared.booster.model_to_string() == alone.booster.model_to_string()
    assert shared.booster.model_to_string() != main.booster.model_to_string()
    np.testing.assert_array_equal(shared.score_task(inputs, test)[2], alone.score_task(inputs, test)[2])
    with pytest.raises(ValueError, match="chosen by"):
        LightGBMRanker(CONFIG.model_copy(update={"per_source": 10})).fit_pairs(pairs)


def _leaf_values(ranker: LightGBMRanker) -> np.ndarray:
    """Every leaf output of the booster's trees (shrinkage applied)."""

    def leaves(node: dict) -> list[float]:
        if "leaf_value" in node:
            return [node["leaf_value"]]
        return leaves(node["left_child"]) + leaves(node["right_child"])

    return np.array([v for tree in ranker.booster.dump_model()["tree_info"] for v in leaves(tree["tree_structure"])])


def test_a_strong_prior_does_not_blow_up_the_trees(slice_inputs: tuple, tasks: tuple) -> None:
    # Items shown cold start the prior's full weight below warm ones; their misranked pairs have vanishing
    # hessians, and LambdaRank's Newton step (gradient over hessian) then jumps. The default cap bounds each leaf.
    inputs = _with_recent_shares(slice_inputs[0], np.random.default_rng(0))
    train, _, _ = tasks
    config = CONFIG.model_copy(update={"prior_weight": 8.0, "n_estimators": 20})
    # Scored on the warm training pairs, which the prior orders (cold validation items all start at 0).
    bound = config.learning_rate * config.max_delta_step
    fitted = {
        cap: LightGBMRanker(config.model_copy(update={"max_delta_step": cap})).fit(inputs, train, train)
        for cap in (0.0, config.max_delta_step)
    }
    uncapped, capped = (np.abs(_leaf_values(fitted[cap])).max() for cap in (0.0, config.max_delta_step))
    assert uncapped > 10 * bound, "the defect: without a cap, a leaf moves scores by far more than any prior step"
    assert capped <= bound + 1e-9
    ndcg = {cap: ranker.metadata["valid_ndcg@20"] for cap, ranker in fitted.items()}
    assert ndcg[config.max_delta_step] > ndcg[0.0] + 0.05, ndcg  # 0.32 against 0.17 here


def test_a_version_trained_on_other_features_refuses_to_load(fitted: LightGBMRanker, tmp_path: Path) -> None:
    directory = fitted.save(tmp_path / "model")
    metadata = json.loads((directory / "metadata.json").read_text())
    metadata["features"] = metadata["features"][1:]  # its trees would read each column as the one before
    (directory / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DataError, match="retrain"):
        LightGBMRanker.load(directory)


def test_a_version_trained_before_a_feature_was_added_scores_with_the_columns_it_knows(
    slice_inputs: tuple, tasks: tuple, tmp_path: Path
) -> None:
    inputs, _ = slice_inputs
    train, _, test = tasks
    # A booster trained on every feature but the last, as a version saved before `given_pairs` existed.
    known = len(FEATURE_NAMES) - 1
    groups = _groups(inputs, train, CONFIG.per_source, CONFIG.cold_share, np.random.default_rng(0), positive_only=True)
    data = lgb.Dataset(groups.features[:, :known], groups.labels, group=groups.sizes)
    booster = lgb.train({"objective": "lambdarank", "verbosity": -1, "num_threads": 1}, data, num_boost_round=10)
    old = LightGBMRanker(CONFIG.model_copy(update={"prior_weight": 0.0}))
    old._booster, old.metadata = booster, {"config": old.config.model_dump(), "features": list(FEATURE_NAMES[:known])}
    loaded = LightGBMRanker.load(old.save(tmp_path / "old"))
    *_, scores = loaded.score_task(inputs, test)
    expected = booster.predict(
        _groups(inputs, test, CONFIG.per_source, inputs.is_cold, np.random.default_rng(0)).features[:, :known]
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_a_task_with_more_users_than_max_groups_learns_from_a_seeded_sample(
    slice_inputs: tuple, tasks: tuple, fitted: LightGBMRanker
) -> None:
    inputs, _ = slice_inputs
    train, valid, test = tasks
    config = CONFIG.model_copy(update={"n_estimators": 20})
    assert train.users.size > 40 and valid.users.size > 40
    sampled = LightGBMRanker(config.model_copy(update={"max_groups": 40})).fit(inputs, train, valid)
    assert sampled.metadata["train_groups"] <= 40 and sampled.metadata["valid_groups"] <= 40
    assert fitted.metadata["train_groups"] > 40  # the same tasks without the limit
    again = LightGBMRanker(config.model_copy(update={"max_groups": 40})).fit(inputs, train, valid)
    np.testing.assert_array_equal(again.score_task(inputs, test)[2], sampled.score_task(inputs, test)[2])
    # Within the limit nothing is drawn: exactly the model trained without one.
    unlimited = LightGBMRanker(config.model_copy(update={"max_groups": None})).fit(inputs, train, valid)
    np.testing.assert_array_equal(unlimited.score_task(inputs, test)[2], fitted.score_task(inputs, test)[2])


@pytest.fixture(scope="module")
def fitted(slice_inputs: tuple, tasks: tuple) -> LightGBMRanker:
    inputs, _ = slice_inputs
    train, valid, _ = tasks
    return LightGBMRanker(CONFIG.model_copy(update={"n_estimators": 20})).fit(inputs, train, valid)


class TestLightGBMContract(RankerContract):
    @pytest.fixture
    def make(self) -> Callable[[], LightGBMRanker]:
        return lambda: LightGBMRanker(CONFIG.model_copy(update={"n_estimators": 20}))
