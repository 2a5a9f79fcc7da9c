"""The stand-in builder: an estimator that learns content -> collaborative rows on warm entities, gives
out-of-fold stand-ins to the warm ones, and round-trips with a model version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import NotFittedError
from encoders import MapperConfig
from training import StandInBuilder, StandInConfig


def _linear(rng: np.random.Generator, n: int = 60, d: int = 8, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets ([vector | bias]) that a linear map explains exactly."""
    features = rng.normal(size=(n, d)).astype(np.float32)
    weights = rng.normal(size=(d, k + 1)).astype(np.float32)
    return features, features @ weights + 0.5


def test_the_default_is_what_the_product_measured() -> None:
    config = StandInBuilder().config
    assert (config.mapper.kind, config.mapper.alpha, config.folds) == ("ridge", 10.0, 5)


def test_fit_then_transform_recovers_a_linear_map_for_unseen_entities() -> None:
    features, targets = _linear(np.random.default_rng(0))
    builder = StandInBuilder(StandInConfig(mapper=MapperConfig(kind="ridge", alpha=1e-4)))
    builder.fit(features[:50], targets[:50])
    assert builder.is_fitted and builder.mapper_ is not None
    np.testing.assert_allclose(builder.transform(features[50:]), targets[50:], atol=1e-2)


def test_transform_before_fit_says_what_to_call() -> None:
    with pytest.raises(NotFittedError, match="call fit"):
        StandInBuilder().transform(np.zeros((1, 4), dtype=np.float32))


def test_out_of_fold_stand_ins_never_saw_their_own_entity() -> None:
    rng = np.random.default_rng(1)
    features, targets = _linear(rng)
    targets[3] += 100.0  # a warm entity no linear map of its content explains
    warm = np.arange(50)
    builder = StandInBuilder(StandInConfig(mapper=MapperConfig(kind="ridge", alpha=1e-4), folds=5))
    standins = builder.fit_out_of_fold(features, targets, warm)
    # Cold entities get the mapper fitted on every warm one; the outlier pulls that mapper a little.
    np.testing.assert_array_equal(standins[50:], builder.transform(features[50:]))
    # Its own out-of-fold stand-in comes from mappers that never saw it: it stays far from its target.
    assert np.abs(standins[3] - targets[3]).max() > 90
    # The same seed gives the same folds.
    again = StandInBuilder(builder.config).fit_out_of_fold(features, targets, warm)
    np.testing.assert_array_equal(standins, again)


def test_save_and_load_give_the_same_stand_ins(tmp_path: Path) -> None:
    features, targets = _linear(np.random.default_rng(2))
    config = StandInConfig(mapper=MapperConfig(kind="ridge", alpha=0.5), folds=3, seed=4)
    builder = StandInBuilder(config).fit(features, targets)
    assert not StandInBuilder.saved_in(tmp_path)
    builder.save(tmp_path)
    assert StandInBuilder.saved_in(tmp_path)
    loaded = StandInBuilder.load(tmp_path)
    assert loaded.config == config
    np.testing.assert_array_equal(loaded.transform(features), builder.transform(features))
    with pytest.raises(NotFittedError):
        StandInBuilder().save(tmp_path / "other")
