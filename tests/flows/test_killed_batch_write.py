"""A batch of recommendations killed (SIGKILL) half-way through its write leaves the previous one complete and
readable: `warmstart recommend --users F --out OUT` and the refresh's `recommendations` table; a refresh killed after
its run's record (promoting, or publishing) is completed by the next start, so the registry's current version and the
table agree again (issue 28, item 3). The real CLI runs in its own process, stopped inside a chosen write by
pause_in_atomic_write.py (new bytes in the temporary file, rename not done) and killed there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from catalog import Columns, Tables, Workspace
from flows.cli import app
from flows.refresh import recover_killed_runs
from monitor import MetricsStore

PAUSE = Path(__file__).with_name("pause_in_atomic_write.py")


def _kill_inside_the_write(
    name: str, arguments: list[str], marker: Path, env: dict[str, str], timeout: float = 600
) -> Path:
    """Run `python -m flows.cli ARGUMENTS` until it pauses in the atomic write of a file called `name`, SIGKILL it
    there, and return the temporary file it was writing."""
    command = [sys.executable, str(PAUSE), str(marker), name, "flows.cli", *arguments]
    process = subprocess.Popen(
        command, env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    try:
        while not marker.is_file():
            if process.poll() is not None:
                raise AssertionError(f"exited ({process.returncode}) before writing {name}: {process.stdout.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"never reached the write of {name}"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return Path(marker.read_text())


def test_a_killed_recommend_out_leaves_the_previous_file(served_slice: Path, cache_dir: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.csv"
    ids = Workspace(served_slice).read(Tables.interactions)[Columns.user].unique().sort().to_list()
    pl.DataFrame({Columns.user: ids}).write_csv(users)
    out = tmp_path / "recs.parquet"
    batch = ["recommend", "--users", str(users), "--out", str(out), "-w", str(served_slice)]
    env = {"WARMSTART_CACHE_DIR": str(cache_dir)}
    first = CliRunner().invoke(app, [*batch, "--k", "4"], env=env)
    assert first.exit_code == 0, first.output
    previous = out.read_bytes()

    temporary = _kill_inside_the_write(out.name, [*batch, "--k", "9"], tmp_path / "paused", env)

    assert out.read_bytes() == previous  # the previous batch, whole
    kept = pl.read_parquet(out)
    assert kept.height == len(ids) * 4 and kept[Columns.user].n_unique() == len(ids)
    # The killed run had its new batch written (to the temporary file beside it) when it died.
    assert temporary.parent == out.parent and pl.read_parquet(temporary).height == len(ids) * 9
    # And the next run replaces the file as usual.
    assert CliRunner().invoke(app, [*batch, "--k", "9"], env=env).exit_code == 0
    assert pl.read_parquet(out).height == len(ids) * 9


def test_a_refresh_killed_while_publishing_leaves_the_previous_recommendations(
    served_slice: Path, cache_dir: Path, prefect_api: str, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(served_slice, workspace)
    space = Workspace(workspace)
    previous = space.read(Tables.recommendations)
    provenance = space.provenance(Tables.recommendations)
    refresh = ["refresh", "--augment-limit", "0", "--max-epochs", "3", "--no-reference-gate", "--k", "10"]
    refresh += ["--gate-tolerance", "1", "-w", str(workspace)]  # promote whatever it trains: publishing follows
    env = {"PREFECT_API_URL": prefect_api, "WARMSTART_CACHE_DIR": str(cache_dir)}

    _kill_inside_the_write(f"{Tables.recommendations}.parquet", refresh, tmp_path / "paused", env)

    assert space.read(Tables.recommendations).equals(previous)
    assert space.provenance(Tables.recommendations) == provenance
    assert set(previous["model_version"]) == {provenance["parameters"]["model_version"]}
    # Killed after promoting: the table lags the registry until the next start publishes the current version's.
    killed = _last_refresh(workspace)
    assert space.models.current("lightgbm") == killed
    _next_start(workspace, cache_dir)
    _assert_published(workspace, killed)


def _last_refresh(workspace: Path) -> str:
    store = MetricsStore.for_workspace(workspace, read_only=True)
    try:
        return str(store.runs("refresh")["run_id"][-1])
    finally:
        store.close()


def _next_start(workspace: Path, cache_dir: Path) -> list[str]:
    """What a refresh does first: complete what a killed run recorded (it would then detect, train...)."""
    said: list[str] = []
    space, store = Workspace(workspace), MetricsStore.for_workspace(workspace)
    dataset = str(space.state()["dataset"])
    recover_killed_runs(space, store, dataset=dataset, ranker="lightgbm", cache_dir=cache_dir, say=said.append)
    store.close()
    return said


def _assert_published(workspace: Path, version: str) -> None:
    """`version` is current, and the recommendations table is its, 10 per user as published before."""
    space = Workspace(workspace)
    assert space.models.current("lightgbm") == version
    table = space.read(Tables.recommendations)
    assert set(table["model_version"]) == {version}
    assert space.provenance(Tables.recommendations)["parameters"]["k"] == 10
    assert set(table.group_by(Columns.user).len()["len"]) == {10}


def test_a_refresh_killed_between_its_record_and_its_promotion_is_completed_at_the_next_start(
    served_slice: Path, cache_dir: Path, prefect_api: str, tmp_path: Path
) -> None:
    """The store has recorded the run completed and promoted (the commit) when the kill comes, inside the write of
    current.json: the registry and the table still name the version before. The next start promotes what the store
    recorded and publishes its table."""
    workspace = tmp_path / "ws"
    shutil.copytree(served_slice, workspace)
    space = Workspace(workspace)
    before = space.models.current("lightgbm")
    previous = space.read(Tables.recommendations)
    refresh = ["refresh", "--augment-limit", "0", "--max-epochs", "3", "--no-reference-gate", "--k", "10"]
    refresh += ["--gate-tolerance", "1", "-w", str(workspace)]
    env = {"PREFECT_API_URL": prefect_api, "WARMSTART_CACHE_DIR": str(cache_dir)}

    _kill_inside_the_write("current.json", refresh, tmp_path / "paused", env)

    killed = _last_refresh(workspace)
    store = MetricsStore.for_workspace(workspace, read_only=True)
    assert store.run_status(killed) == "completed"
    assert store.promotions().filter(pl.col("candidate_version") == killed)["promoted"].to_list() == [True]
    store.close()
    assert space.models.current("lightgbm") == before and space.read(Tables.recommendations).equals(previous)
    said = _next_start(workspace, cache_dir)
    _assert_published(workspace, killed)
    assert any("the current version (a run was killed)" in line for line in said), said
