"""The user stand-in builder on hand-made attributes: how attributes become features, that the stand-ins follow the
attributes the collaborative vectors follow, and the save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from training import AttributeEncoding, UserStandInBuilder, blend_with_fold_in
from training._user_standins import parse_attributes


def _attributes(rows: list[dict[str, str] | None]) -> pl.Series:
    return pl.Series("attributes", [json.dumps(row) if row is not None else None for row in rows], dtype=pl.String)


def test_numbers_are_standardised_and_levels_held_by_few_users_are_left_out() -> None:
    rows = parse_attributes(_attributes([{"age": "20", "job": "a"}] * 5 + [{"age": "40", "job": "b"}] * 5 + [None]))
    rows[-1] = {"job": "rare"}
    encoding = AttributeEncoding.fit(rows, min_level_users=5)
    assert encoding.numeric == {"age": (30.0, 10.0)} and encoding.categorical == {"job": ["a", "b"]}
    features = encoding.transform([{"age": "20", "job": "b"}, {"job": "rare"}, {"age": "not a number"}])
    assert features.tolist() == [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_stand_ins_follow_attributes_and_survive_a_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, dim = 200, 4
    group = rng.integers(2, size=n)
    # Users of each group share a direction in the collaborative space; their text profiles are noise.
    user_cf = np.c_[np.where(group[:, None] == 1, 1.0, -1.0) * np.ones((n, dim)) + rng.normal(0, 0.1, (n, dim)),
                    np.ones(n)].astype(np.float32)  # fmt: skip
    attributes = _attributes([{"group": f"g{g}"} for g in group])
    profiles = rng.normal(size=(n, 8)).astype(np.float32)
    warm = np.arange(150)
    builder = UserStandInBuilder()
    standins = builder.fit_out_of_fold(attributes, profiles, user_cf, warm)
    assert (standins[:, -1] == 1).all()
    # Out-of-fold or not, a user's stand-in points where their group's users are.
    agreement = np.sign(standins[:, 0]) == np.where(group == 1, 1.0, -1.0)
    assert agreement.all()
    cold = builder.transform(_attributes([{"group": "g1"}, {"group": "g0"}]), np.zeros((2, 8), np.float32))
    assert cold[0, 0] > 0.5 and cold[1, 0] < -0.5

    builder.save(tmp_path)
    loaded = UserStandInBuilder.load(tmp_path)
    again = loaded.transform(_attributes([{"group": "g1"}, {"group": "g0"}]), np.zeros((2, 8), np.float32))
    assert np.allclose(again, cold)


def test_the_blend_moves_from_the_stand_in_to_fold_in_with_each_interaction() -> None:
    folded, standin = np.ones((3, 2), np.float32), np.c_[np.zeros((3, 2)), np.ones(3)].astype(np.float32)
    blended = blend_with_fold_in(folded, standin, np.array([0.0, 1.0, 3.0]))
    assert blended[:, 0].tolist() == [0.0, 0.5, 0.75] and (blended[:, -1] == 1).all()
