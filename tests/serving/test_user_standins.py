"""Users too: on a copy of the served MovieLens slice, users added by `warmstart add-users` are served from stand-ins
made from their attributes, and a user's interactions appended later are folded in without a retrain."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from catalog import Columns, Workspace
from flows.cli import app
from flows.settings import WarmstartSettings
from serving import PRECOMPUTED_K, Recommender, create_app

runner = CliRunner()


@pytest.fixture
def workspace(served_copy: Path) -> Path:
    return served_copy


def _cli(workspace: Path, cache_dir: Path, *args: str) -> None:
    done = runner.invoke(app, [*args, "-w", str(workspace)], env={"WARMSTART_CACHE_DIR": str(cache_dir)})
    assert done.exit_code == 0, done.output


def test_cold_users_with_different_attributes_get_different_lists(
    workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    users = tmp_path / "users.csv"
    users.write_text("user_id,age,gender,occupation\nyoung,25,F,student\nretired,60,M,retired\n")
    _cli(workspace, cache_dir, "add-users", str(users))
    recommender = Recommender.load(workspace, cache_dir=cache_dir)
    assert recommender.user_standins is not None, "the version saved its user stand-in builder"
    frame = recommender.recommend(["young", "retired"], k=8)
    lists = {user: group.sort(Columns.rank)[Columns.item].to_list() for (user,), group in frame.group_by(Columns.user)}
    assert set(frame["user_segment"]) == {"cold"} and len(lists["young"]) == len(lists["retired"]) == 8
    assert lists["young"] != lists["retired"]


def test_two_appended_interactions_move_an_added_users_list_without_a_retrain(
    workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    users = tmp_path / "users.csv"
    users.write_text("user_id,age,gender,occupation\nfan,30,M,engineer\n")
    _cli(workspace, cache_dir, "add-users", str(users))
    before = Recommender.load(workspace, cache_dir=cache_dir)
    version = before.version
    taken = ["176", "183"]  # Aliens, Alien
    first = before.recommend(["fan"], k=20)[Columns.item].to_list()

    events = tmp_path / "events.parquet"
    when = datetime(1998, 4, 30, tzinfo=UTC)
    pl.DataFrame(
        {Columns.user: ["fan", "fan"], Columns.item: taken, Columns.ts: [when, when], Columns.value: [5.0, 5.0]}
    ).write_parquet(events)
    _cli(workspace, cache_dir, "ingest", "--append", "--interactions", str(events))
    after = Recommender.load(workspace, cache_dir=cache_dir)
    assert after.version == version == Workspace(workspace).models.current("lightgbm")  # not retrained
    frame = after.recommend(["fan"], k=20)
    second = frame[Columns.item].to_list()
    assert set(frame["user_segment"]) == {"new"} and not set(second) & set(taken)
    assert second != first
    # The ranking follows what they took: the items the version's users who took those two took far more often than
    # everyone did (the highest lift, among items 20 users took) move up.
    history = after.inputs.history[: after.n_version_users].toarray()
    fans = history[:, [after.item_ids.index_of(i) for i in taken]].sum(axis=1) > 0
    takers = history.sum(axis=0)
    lift = np.where(takers >= 20, history[fans].mean(axis=0) / np.maximum(takers / history.shape[0], 1e-9), 0)
    lift[[after.item_ids.index_of(i) for i in taken]] = 0
    liked = after.item_ids.gather(np.argsort(-lift)[:10]).to_list()

    def mean_rank(recommender: Recommender) -> float:
        ranking = recommender.recommend(["fan"], k=recommender.inputs.n_items)
        return float(ranking.filter(pl.col(Columns.item).is_in(liked))[Columns.rank].mean())

    assert mean_rank(after) < 0.75 * mean_rank(before), (mean_rank(before), mean_rank(after))


def test_precomputed_lists_belong_to_their_recommender_not_to_the_one_made_from_it(served_slice: Path) -> None:
    """An addition makes a new Recommender: it must not answer from the table its parent precomputed (a user
    added after the table was made is past its rows; a list would be stale)."""
    recommender = Recommender.load(served_slice)
    assert recommender.precompute(k=20) == recommender.inputs.n_users == recommender.precomputed_users
    extended = recommender.add_users(["newcomer"])
    assert extended.precomputed_users == 0
    users = [*recommender.user_ids.to_list()[:3], "newcomer"]
    frame = extended.recommend(users, k=5)
    assert frame.height == 20 and frame.filter(pl.col(Columns.user) == "newcomer")["user_segment"][0] == "cold"
    assert frame.filter(pl.col(Columns.user) != "newcomer").equals(recommender.recommend(users[:3], k=5))


def test_with_precompute_k_0_the_api_scores_every_request_live(served_slice: Path) -> None:
    """WARMSTART_API_PRECOMPUTE_K=0: no table is ranked in the background; each answer is scored live."""
    assert WarmstartSettings(_env_file=None).api_precompute_k == PRECOMPUTED_K  # the default depth is serving's
    settings = WarmstartSettings(_env_file=None, **{"api_precompute_k": 0})
    live, control = Recommender.load(served_slice), Recommender.load(served_slice)
    user = live.user_ids[0]
    with (
        TestClient(create_app(live, precompute_k=settings.api_precompute_k)) as client,
        TestClient(create_app(control, precompute_k=PRECOMPUTED_K)),
    ):
        rows = client.get("/recommend", params={"user_id": user, "k": 5}).json()["recommendations"]
        deadline = time.monotonic() + 120
        while control.precomputed_users < control.inputs.n_users:  # the same app with a depth ranks them all
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert live.precomputed_users == 0 and client.get("/health").json()["precomputed_users"] == 0
    assert [row["item_id"] for row in rows] == live.recommend([user], k=5)[Columns.item].to_list()
