"""The evaluation plans and model settings of flows.pipeline, on hand-made frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from catalog import Columns
from flows.pipeline import ModelSettings, holdout_plan
from ranker.evaluate import frames_split

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_seeded_settings_keep_the_defaults_and_seed_every_model() -> None:
    seeded, defaults = ModelSettings.seeded(7), ModelSettings()
    assert (seeded.cf.seed, seeded.mapper.seed, seeded.ranker.seed, seeded.seed) == (7, 7, 7, 7)
    assert seeded.cf.model_copy(update={"seed": 0}) == defaults.cf
    assert seeded.ranker.model_copy(update={"seed": 0}) == defaults.ranker


def test_holdout_plan_holds_out_each_users_latest_interactions() -> None:
    # u1 has 5 events (the last one is held out: 5 * 0.8 = 4 kept), u2 has 1 (too few to hold any out).
    train = pl.DataFrame(
        {
            Columns.user: ["u1"] * 5 + ["u2"],
            Columns.item: ["a", "b", "c", "d", "e", "a"],
            Columns.ts: [T0 + timedelta(days=d) for d in (4, 0, 1, 2, 3, 0)],
        }
    )
    test = pl.DataFrame({Columns.user: ["u2"], Columns.item: ["b"]})
    items = pl.DataFrame({Columns.item: list("abcde"), Columns.title: list("ABCDE")})
    split = frames_split(train, test, items, protocol="hybrid")
    plan = holdout_plan(split, share=0.2, seed=0)
    held = pl.concat([plan.fit_labels, plan.valid_labels]).sort(Columns.user)
    assert held.rows() == [("u1", "a")]  # u1's latest event (day 4) is item a
    assert plan.fit_history.select(Columns.user, Columns.item).sort(Columns.user, Columns.item).rows() == [
        ("u1", "b"), ("u1", "c"), ("u1", "d"), ("u1", "e"), ("u2", "a")
    ]  # fmt: skip
    assert plan.refit_for_serving
    assert plan.valid_pool.tolist() == list(range(5))


def test_holdout_plan_with_validation_pairs_keeps_the_history_whole() -> None:
    train = pl.DataFrame({Columns.user: ["u1", "u2"], Columns.item: ["a", "b"]})
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
