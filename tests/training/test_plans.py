"""The evaluation plans and model settings of training, on hand-made frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from catalog import Columns, ConfigError, Dataset
from ranker.deepfm import DeepFMRanker
from ranker.evaluate import COLD_USERS, SPARSE_USERS, TEMPORAL, frames_split
from ranker.features import RankerInputs
from ranker.lightgbm_ranker import LightGBMRanker
from ranker.registry import ranker_class
from training import (
    EncodedSplit,
    EncoderReport,
    ModelSettings,
    StandInBuilder,
    category_matrix,
    dataset_plan,
    holdout_plan,
    user_plan,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_seeded_settings_keep_the_defaults_and_seed_every_model() -> None:
    seeded, defaults = ModelSettings.seeded(7), ModelSettings()
    standins = seeded.standins
    assert (seeded.cf.seed, standins.mapper.seed, standins.seed, seeded.ranker.seed, seeded.seed) == (7, 7, 7, 7, 7)
    assert seeded.cf.model_copy(update={"seed": 0}) == defaults.cf
    assert seeded.ranker.model_copy(update={"seed": 0}) == defaults.ranker
    assert seeded.deepfm.seed == 7 and seeded.deepfm.model_copy(update={"seed": 0}) == defaults.deepfm


def test_a_log_with_times_gets_the_choices_made_on_a_time_window() -> None:
    settings = ModelSettings.seeded(3)
    timed = settings.for_log(True)
    assert timed.ranker.prior_weight == 2.0 and timed.ranker.cold_slots == 1 and timed.ranker.seed == 3
    assert timed.warming is not None and timed.warming.simulate is False and timed.timed is None
    assert timed.for_log(True) == timed  # applied once
    assert settings.for_log(False) is settings and settings.ranker.prior_weight == 0.0
    assert settings.without_augmentation().for_log(True).warming is None  # the ablation stays an ablation


def test_settings_choose_the_ranker() -> None:
    assert ModelSettings().ranker_name == "lightgbm"
    assert isinstance(ModelSettings().new_ranker(), LightGBMRanker)
    deepfm = ModelSettings.seeded(3, "deepfm").new_ranker()
    assert isinstance(deepfm, DeepFMRanker) and deepfm.config.seed == 3
    with pytest.raises(ConfigError, match="unknown ranker 'xgboost'; choose one of lightgbm, deepfm"):
        ModelSettings(ranker_name="xgboost")
    with pytest.raises(ConfigError, match="unknown ranker"):
        ranker_class("xgboost")


def test_category_matrix_is_multi_hot_in_item_order() -> None:
    items = pl.DataFrame(
        {Columns.item: ["a", "b", "c"], Columns.categories: [["Drama", "Comedy"], [], ["Drama"]]},
        schema={Columns.item: pl.String, Columns.categories: pl.List(pl.String)},
    )
    matrix = category_matrix(items)
    assert matrix is not None
    assert matrix.toarray().tolist() == [[1, 1], [0, 0], [0, 1]]  # columns: Comedy, Drama
    assert category_matrix(items.with_columns(pl.lit([], pl.List(pl.String)).alias(Columns.categories))) is None
    assert category_matrix(items.drop(Columns.categories)) is None


def test_with_history_keeps_the_encoders_and_follows_the_new_history() -> None:
    rng = np.random.default_rng(0)
    old = sp.csr_array(np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    new = sp.csr_array(np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32))
    inputs = RankerInputs(
        history=old,
        text=rng.random((3, 4)),
        user_cf=rng.random((2, 5)),
        item_cf=rng.random((3, 5)),
        item_standin=rng.random((3, 5)),
        popularity=np.array([1, 1, 0]),
        title_words=np.ones(3),
    )
    encoded = EncodedSplit(inputs, EncoderReport(bprmf={}, text_cache_hits=0, text_cache_misses=0), StandInBuilder())
    served = encoded.with_history(new).inputs
    assert served.popularity.tolist() == [1, 1, 2]
    assert not served.is_cold.any()
    np.testing.assert_array_equal(served.item_standin, inputs.item_standin)
    np.testing.assert_array_equal(served.user_cf, inputs.user_cf)
    assert (served.history != new).nnz == 0


def test_holdout_plan_cuts_the_labels_at_one_time_for_every_user() -> None:
    # Nine events; the latest 30% (the three of day 4) are the labels. u3 first appears on day 4: a user without
    # history among the labels, as most users of a temporal test window are (issue 13: holding out each user's
    # own latest events never showed the ranker such a user, and u1, who has no event on day 4, gets no label).
    train = pl.DataFrame(
        {
            Columns.user: ["u1", "u1", "u2", "u1", "u2", "u1", "u3", "u2", "u3"],
            Columns.item: ["a", "b", "a", "c", "b", "d", "a", "e", "b"],
            Columns.ts: [T0 + timedelta(days=d) for d in (0, 0, 1, 1, 2, 2, 4, 4, 4)],
        }
    )
    test = pl.DataFrame({Columns.user: ["u2"], Columns.item: ["c"]})
    items = pl.DataFrame({Columns.item: list("abcde"), Columns.title: list("ABCDE")})
    split = frames_split(train, test, items, protocol="hybrid")
    plan = holdout_plan(split, share=0.3, seed=0)
    held = pl.concat([plan.fit_labels, plan.valid_labels]).sort(Columns.user, Columns.item)
    assert held.rows() == [("u2", "e"), ("u3", "a"), ("u3", "b")]
    assert plan.fit_history[Columns.ts].max() < T0 + timedelta(days=4)
    assert "u3" not in plan.fit_history[Columns.user].to_list()
    assert plan.refit_for_serving
    assert plan.valid_pool.tolist() == list(range(5))


def test_holdout_plan_without_times_holds_out_a_share_of_each_user() -> None:
    train = pl.DataFrame({Columns.user: ["u1"] * 5 + ["u2"], Columns.item: ["a", "b", "c", "d", "e", "a"]})
    test = pl.DataFrame({Columns.user: ["u2"], Columns.item: ["b"]})
    items = pl.DataFrame({Columns.item: list("abcde"), Columns.title: list("ABCDE")})
    plan = holdout_plan(frames_split(train, test, items, protocol="hybrid"), share=0.2, seed=0)
    held = pl.concat([plan.fit_labels, plan.valid_labels])
    assert held[Columns.user].to_list() == ["u1"]  # one of u1's five; u2 has too few to hold any out
    assert plan.fit_history.height == 5


def test_holdout_plan_with_validation_pairs_keeps_the_history_whole() -> None:
    # The validation pairs are of warm users and items (c is trained by u3): they are the labels.
    train = pl.DataFrame({Columns.user: ["u1", "u2", "u3"], Columns.item: ["a", "b", "c"]})
    valid = pl.DataFrame({Columns.user: ["u1", "u2"], Columns.item: ["c", "c"]})
    test = pl.DataFrame({Columns.user: ["u1"], Columns.item: ["d"]})
    items = pl.DataFrame({Columns.item: list("abcd"), Columns.title: list("ABCD")})
    split = frames_split(train, test, items, valid=valid)
    plan = holdout_plan(split, valid)
    assert not plan.refit_for_serving
    assert plan.fit_history.equals(split.train)
    labels = pl.concat([plan.fit_labels, plan.valid_labels]).sort(Columns.user)
    assert labels.rows() == [("u1", "c"), ("u2", "c")]
    assert plan.fit_labels.join(plan.valid_labels, on=Columns.user).height == 0  # stop users are apart


def test_every_public_name_of_training_loads() -> None:
    import training

    # Names load on first use (training.__getattr__): a name listed but gone would fail only when first used.
    assert all(getattr(training, name) is not None for name in training.__all__)


@pytest.mark.parametrize(("protocol", "history_n"), [(COLD_USERS, None), (SPARSE_USERS, 3)])
def test_user_plans_choose_on_training_users_only(ml100k: Dataset, protocol: str, history_n: int | None) -> None:
    plan = user_plan(ml100k, protocol, history_n=history_n)
    test_users = plan.split.truth.select(Columns.user).unique()
    validation = plan.user_validation
    assert validation is not None and validation.split.protocol == protocol == plan.split.protocol
    # No row of a test user reaches the split the ranker's handling of users without history is chosen on.
    for frame in (validation.split.train, validation.split.truth, validation.fit_history, validation.fit_labels):
        assert frame.join(test_users, on=Columns.user, how="semi").is_empty()
    valid_users = validation.split.truth.select(Columns.user).unique()
    assert valid_users.height == round(0.2 * (943 - test_users.height))
    assert plan.group_attributes == ("gender", "age")  # MovieLens-100K's groups for attribute-group popularity
    with pytest.raises(ConfigError, match="--history-n"):
        user_plan(ml100k, SPARSE_USERS)


def test_a_large_test_window_is_scored_for_a_named_seeded_sample_of_its_users(ml100k: Dataset) -> None:
    whole = dataset_plan(ml100k, TEMPORAL)
    population = whole.split.truth[Columns.user].n_unique()
    sampled = dataset_plan(ml100k, TEMPORAL, most_users=50)
    assert sampled.split.truth[Columns.user].n_unique() == 50 < population
    assert sampled.split.name == f"{whole.split.name}:users=50of{population}"
    assert sampled.split.exclude.join(sampled.split.truth, on=Columns.user, how="anti").is_empty()
    assert sampled.split.train.equals(whole.split.train)  # training is the same; only who is scored changes
    again = dataset_plan(ml100k, TEMPORAL, most_users=50)
    assert again.split.truth.equals(sampled.split.truth)
