"""LLM user profiles on a MovieLens-100K slice held out as the sparse-user protocol (n = 3): real SmolLM2 profiles
(llama.cpp, from the held-out users' kept titles, as the profile step writes them), the real encoders and LightGBM
ranker, the newcomer model serving the held-out users. The audit row is computed, stored and obeyed; a profile
changes its user's stand-in and nobody else's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import training
from augment import LlamaCppBackend, profile_users
from catalog import Columns, Dataset
from flows.augmentation import generation_cache
from monitor import MetricsStore, RunRecord
from ranker.evaluate import SPARSE_USERS
from ranker.evaluate import evaluate as evaluate_split
from training import PROFILES, AuditRow, FittedRanker, use_outputs
from training._audit import audit_profiles, auditable_profiles
from training.defaults import AUDITED_OUTPUTS, PROFILE_WEIGHT, PROFILED_ITEMS

K = 10


@pytest.fixture(scope="module")
def plan(ml100k: Dataset) -> training.EvaluationPlan:
    users = ml100k.users.sort(Columns.user).head(80)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi")
    items = ml100k.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi")
    sliced = Dataset(name="ml-100k", interactions=log, items=items, users=users)
    return training.user_plan(sliced, SPARSE_USERS, history_n=3, seed=0)


@pytest.fixture(scope="module")
def fitted(plan: training.EvaluationPlan, cache_dir: Path) -> FittedRanker:
    fitted = training.fit_ranker(plan, cache_dir=cache_dir, settings=training.ModelSettings.capped(0, 20))
    assert fitted.ranker.newcomers is not None and fitted.ranker.newcomers.max_events >= 3  # the route serves them
    return fitted


@pytest.fixture(scope="module")
def profiles(plan: training.EvaluationPlan, cache_dir: Path) -> pl.DataFrame:
    """The held-out users' profiles, written by the real model from their kept events' titles (most recent first),
    with the ids of the items each was written from (as flows.augmentation.profile_step stores them)."""
    split = plan.split
    histories = (
        split.train.join(split.truth.select(Columns.user).unique(), on=Columns.user, how="semi")
        .join(plan.source.items.select(Columns.item, Columns.title), on=Columns.item, how="left")
        .sort([Columns.user, Columns.ts, Columns.item], descending=[False, True, False])
        .group_by(Columns.user, maintain_order=True)
        .agg(pl.col(Columns.title).alias("titles"), pl.col(Columns.item).alias(PROFILED_ITEMS))
    )
    backend = LlamaCppBackend.smollm2(cache_dir, batch_size=8, threads=1)
    frame, _ = profile_users(histories, backend, generation_cache(cache_dir), show_progress=False)
    assert frame.height == histories.height and frame["profile"].str.len_chars().min() > 0
    return frame.join(histories.select(Columns.user, PROFILED_ITEMS), on=Columns.user)


def test_the_profiles_audit_row_is_computed_stored_and_obeyed(
    plan: training.EvaluationPlan, fitted: FittedRanker, profiles: pl.DataFrame, cache_dir: Path, tmp_path: Path
) -> None:
    split = plan.split
    # One user's profile is said to have been written from one of their held-out events: it saw the truth, so the
    # audit leaves that user out (as it leaves out a table that does not say what its profiles saw).
    leaky = profiles[Columns.user][0]
    held_out = split.truth.filter(pl.col(Columns.user) == leaky)[Columns.item][0]
    profiles = profiles.with_columns(
        pl.when(pl.col(Columns.user) == leaky)
        .then(pl.col(PROFILED_ITEMS).list.concat(pl.lit([held_out])))
        .otherwise(pl.col(PROFILED_ITEMS))
        .alias(PROFILED_ITEMS)
    )
    kept = auditable_profiles(split, profiles)
    assert kept is not None and leaky not in kept[Columns.user].to_list() and kept.height == profiles.height - 1
    assert auditable_profiles(split, profiles.drop(PROFILED_ITEMS)) is None

    use = use_outputs(None)[PROFILES]
    audited_only = "off: audited only (the served model has no place for it); "
    assert not use.used and use.reason == audited_only + "no earlier audit measured it"
    row = audit_profiles(fitted, split, profiles, k=K, cache_dir=cache_dir, use=use)
    assert isinstance(row, AuditRow) and row.output == PROFILES and row.metric == f"profiled_users/ndcg@{K}"
    assert row.entities == kept.height and 0 < row.users <= row.entities and not row.used
    assert row.delta is not None and row.low is not None and row.high is not None
    assert row.low <= row.delta <= row.high
    # The profiles reach the lists the row measures: some profiled user's top k changes at the audit's weight.
    vectors = training.profile_vectors(kept, split.index.user_ids, cache_dir=cache_dir)
    with_profiles = evaluate_split(split, training.profiled_scorer(fitted, split, vectors, PROFILE_WEIGHT), k=K).recs
    without = fitted.evaluate(split, K).recs
    assert with_profiles.join(without, on=[Columns.user, Columns.item, Columns.rank], how="anti").height > 0
    # No profile of a held-out user: no row.
    assert audit_profiles(fitted, split, None, k=K, cache_dir=cache_dir, use=use) is None
    others = profiles.with_columns(pl.lit("not-a-held-out-user").alias(Columns.user))
    assert audit_profiles(fitted, split, others, k=K, cache_dir=cache_dir, use=use) is None

    # Stored with its run, read back, and what the next refresh decides from it.
    store = MetricsStore.for_workspace(tmp_path)
    when = datetime(2026, 12, 7, tzinfo=UTC)
    store.start_run("r1", flow="refresh", dataset="ml-100k", parameters={}, window_end=when)
    store.finish_run("r1", RunRecord(as_of=when, audit=[row.as_dict() | {"tokens": 321, "seconds": 4.5}]))
    stored = store.augmentation_audit("r1").filter(pl.col("output") == PROFILES)
    assert stored.select("delta", "users", "entities", "tokens").row(0) == (row.delta, row.users, row.entities, 321)
    shown = f"{row.metric} {row.delta:+.4f} [{row.low:+.4f}, {row.high:+.4f}] in the audit before"
    following = use_outputs(stored)[PROFILES]
    assert not following.used and following.reason.endswith(shown) and "audited only" in following.reason
    # The rule is the other outputs': where the product could use profiles, the stored interval alone decides.
    could = use_outputs(stored, usable=AUDITED_OUTPUTS)[PROFILES]
    assert could.used is (row.low > 0) and could.reason == f"{'used' if row.low > 0 else 'off'}: {shown}"
    helping = stored.with_columns(pl.lit(0.01).alias("low"), pl.lit(0.02).alias("delta"))
    assert use_outputs(helping, usable=AUDITED_OUTPUTS)[PROFILES].used
    assert not use_outputs(helping)[PROFILES].used
    store.close()


def test_a_profile_changes_its_users_stand_in_and_no_one_elses(
    plan: training.EvaluationPlan, fitted: FittedRanker, profiles: pl.DataFrame, cache_dir: Path
) -> None:
    inputs, builder = fitted.served.inputs, fitted.served.user_standins
    assert builder is not None
    ids = plan.split.index.user_ids
    vectors = training.profile_vectors(profiles, ids, cache_dir=cache_dir)
    profiled = np.flatnonzero(training.has_profile(vectors))
    assert profiled.size == profiles.height
    attributes = training.user_attributes(plan.users, ids)
    text = training.text_profiles(inputs.history, inputs.text)
    plain = builder.transform(attributes, text)
    with_profile = training.profiled_standins(builder, attributes, text, vectors)
    moved = np.abs(with_profile - plain).max(axis=1) > 1e-6
    assert moved[profiled].all() and not moved[np.setdiff1d(np.arange(ids.len()), profiled)].any()
    # The same user alone, without a profile and with it (one row through the mapper: float32 rounding apart).
    one = profiled[:1]
    alone = training.profiled_standins(builder, attributes.gather(one), text[one], np.zeros_like(vectors[one]))
    profiled_alone = training.profiled_standins(builder, attributes.gather(one), text[one], vectors[one])
    assert np.abs(alone - plain[one]).max() < 1e-5 and np.abs(profiled_alone - with_profile[one]).max() < 1e-5
    assert np.abs(profiled_alone - alone).max() > 1e-2
