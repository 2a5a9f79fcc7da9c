"""A refresh audits the workspace's LLM user profiles: on a real MovieLens-100K workspace whose held-out users with
the fewest training events have real SmolLM2 profiles (written from their training events, as the profile step
writes them), the run records a `profiles` audit row and the next run's decision follows it. (MovieLens-100K's
temporal split holds out one user with 1-5 training events: the row is one user's, the plumbing is what this checks.)"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import training
from augment import LlamaCppBackend, profile_users
from catalog import Columns, Tables, Workspace
from flows import stages
from flows.augmentation import generation_cache
from flows.refresh import refresh
from monitor import MetricsStore
from training.defaults import PROFILED_ITEMS, PROFILES


@pytest.fixture
def workspace(ml100k_workspace: Path) -> Path:
    return ml100k_workspace


def _profile_held_out_users(root: Path, cache_dir: Path, users: int = 6) -> pl.DataFrame:
    """Real profiles of the refresh split's held-out users with the fewest training events (the newcomer model's
    users), from those events' titles, most recent first; one more written from a held-out event. Written as the
    workspace's `user_profiles` table; returns it."""
    space = Workspace(root)
    split = training.dataset_plan(stages.workspace_dataset(space), "temporal").split
    train = split.train.join(split.truth.select(Columns.user).unique(), on=Columns.user, how="semi")
    fewest = train.group_by(Columns.user).len().sort("len", Columns.user).head(users)
    histories = (
        train.join(fewest.select(Columns.user), on=Columns.user, how="semi")
        .join(space.read(Tables.items).select(Columns.item, Columns.title), on=Columns.item, how="left")
        .sort([Columns.user, Columns.ts, Columns.item], descending=[False, True, False])
        .group_by(Columns.user, maintain_order=True)
        .agg(pl.col(Columns.title).alias("titles"), pl.col(Columns.item).head(10).alias(PROFILED_ITEMS))
    )
    leaky = split.truth.join(histories.select(Columns.user), on=Columns.user, how="anti").row(0, named=True)
    histories = pl.concat([histories, pl.DataFrame({Columns.user: [leaky[Columns.user]], "titles": [["Fargo (1996)"]],
                                                    PROFILED_ITEMS: [[leaky[Columns.item]]]})])  # fmt: skip
    backend = LlamaCppBackend.smollm2(cache_dir, batch_size=8, threads=1)
    frame, _ = profile_users(histories, backend, generation_cache(cache_dir), show_progress=False)
    table = frame.join(histories.select(Columns.user, PROFILED_ITEMS), on=Columns.user)
    space.write(Tables.user_profiles, table, run_id="test", source="tests: profiles of held-out users")
    return table


def test_a_refresh_audits_profiles_and_the_next_one_follows(prefect_api: str, workspace: Path, cache_dir: Path) -> None:
    profiles = _profile_held_out_users(workspace, cache_dir)
    # (augment_limit 0: the run's own profile step would profile no one here, every MovieLens user has 20 events)
    run = refresh(max_epochs=3, augment_limit=0, simulate=False, choose_timed=False)
    store = MetricsStore.for_workspace(workspace, read_only=True)
    row = store.augmentation_audit(run.run_id).filter(pl.col("output") == PROFILES).row(0, named=True)
    # The profiles measured are those of users the newcomer route serves (here the one held-out user with 1-5
    # training events), never the one written from a held-out event (tests/training/test_profiles.py checks both).
    assert 1 <= row["entities"] < profiles.height and 0 < row["users"] <= row["entities"]
    assert row["metric"] == "profiled_users/ndcg@20" and row["delta"] is not None
    assert row["low"] <= row["delta"] <= row["high"]
    assert row["used"] is False
    assert row["reason"] == "off: audited only (the served model has no place for it); no earlier audit measured it"
    # What the next refresh decides from it (flows.refresh reads the last completed refresh's rows the same way).
    last = store.last_completed_run(flow="refresh", dataset="ml-100k")
    following = training.use_outputs(store.augmentation_audit(last))[PROFILES]
    shown = f"{row['metric']} {row['delta']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] in the audit before"
    assert not following.used and following.reason.endswith(shown)
