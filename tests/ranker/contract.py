"""One contract every learned ranker keeps (as LensKit's scorer tests and scikit-learn's check_estimator do):
a ranker's test module subclasses `RankerContract` and provides the `make` and `fitted` fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from catalog import DataError, NotFittedError
from ranker.base import RankerBase
from ranker.features import RankerInputs, RankingTask
from ranker.registry import RANKERS, load_ranker


class RankerContract:
    """Round trip, same seed same scores, not fitted, bad input, cold items scored through stand-ins."""

    make: Callable[[], RankerBase]  # overridden by a fixture of the subclass

    def test_registered_under_its_kind(self, make: Callable[[], RankerBase]) -> None:
        ranker = make()
        assert RANKERS[ranker.kind] is type(ranker)

    def test_not_fitted_is_one_clear_error(
        self, make: Callable[[], RankerBase], slice_inputs: tuple, tmp_path: Path
    ) -> None:
        inputs, _ = slice_inputs
        ranker = make()
        assert not ranker.is_fitted
        for call in (
            lambda: ranker.scorer(inputs),
            lambda: ranker.recommend(inputs, np.array([0]), 5),
            lambda: ranker.save(tmp_path / "model"),
        ):
            with pytest.raises(NotFittedError, match="call fit"):
                call()
        assert not (tmp_path / "model").exists()

    def test_bad_task_indices_are_a_data_error(
        self, make: Callable[[], RankerBase], fitted: RankerBase, slice_inputs: tuple, tasks: tuple
    ) -> None:
        inputs, _ = slice_inputs
        train, valid, _ = tasks
        outside = RankingTask(np.array([inputs.n_users]), train.pool, positives=train.positives)
        with pytest.raises(DataError, match="must be integers"):
            make().fit(inputs, outside, valid)
        with pytest.raises(DataError, match="no positives"):
            make().fit(inputs, RankingTask(train.users, train.pool), valid)
        with pytest.raises(DataError, match="must be integers"):
            fitted.recommend(inputs, np.array([-1]), 5)

    def test_round_trip_scores_the_same_and_checks_its_digest(
        self, fitted: RankerBase, slice_inputs: tuple, tasks: tuple, tmp_path: Path
    ) -> None:
        inputs, _ = slice_inputs
        _, _, test = tasks
        directory = fitted.save(tmp_path / "version")
        loaded = load_ranker(directory)
        assert type(loaded) is type(fitted)
        users = test.users[:40]
        np.testing.assert_array_equal(
            loaded.scorer(inputs, test.exclude)(users, test.pool), fitted.scorer(inputs, test.exclude)(users, test.pool)
        )
        metadata = json.loads((directory / "metadata.json").read_text())
        assert metadata["kind"] == fitted.kind and len(metadata["model_sha256"]) == 64
        model = directory / fitted.model_file
        model.write_bytes(model.read_bytes() + b" ")
        with pytest.raises(DataError, match="digest"):
            load_ranker(directory)

    def test_same_seed_same_scores(
        self, make: Callable[[], RankerBase], fitted: RankerBase, slice_inputs: tuple, tasks: tuple
    ) -> None:
        inputs, _ = slice_inputs
        train, valid, test = tasks
        again = make().fit(inputs, train, valid)
        users = test.users[:40]
        np.testing.assert_array_equal(again.scorer(inputs)(users, test.pool), fitted.scorer(inputs)(users, test.pool))

    def test_cold_items_are_scored_and_recommended(self, fitted: RankerBase, slice_inputs: tuple, tasks: tuple) -> None:
        inputs: RankerInputs = slice_inputs[0]
        _, _, test = tasks
        assert (inputs.popularity[test.pool] == 0).all(), "the test pool holds cold items only"
        users, items, ranks = fitted.recommend(inputs, test.users, 10, pool=test.pool, exclude=test.exclude)
        assert np.isin(items, test.pool).all() and users.size > 0
        # Ranks run 1..k per user, each user's items distinct.
        for user in np.unique(users)[:20]:
            mine = ranks[users == user]
            assert mine.tolist() == list(range(1, mine.size + 1))
            assert np.unique(items[users == user]).size == mine.size

    def test_a_refit_trains_as_long_as_the_fit_chose_and_chooses_nothing(
        self, fitted: RankerBase, slice_inputs: tuple, tasks: tuple
    ) -> None:
        """A served version is refit on the whole log with its evaluated fit's length fixed: the refit's own
        configuration for a further refit is the same (no early stopping chose anything on its validation)."""
        inputs, _ = slice_inputs
        train, valid, _ = tasks
        fixed = fitted.refit_config()
        refit = type(fitted)(fixed).fit(inputs, train, valid)  # type: ignore[call-arg]
        assert refit.refit_config() == fixed
        assert fixed.model_dump() != fitted.config_dict  # the length was fixed and early stopping turned off
