"""A batch of recommendations killed (SIGKILL) half-way through its write leaves the previous one complete and
readable: `warmstart recommend --users F --out OUT` and the refresh's `recommendations` table. The real CLI runs in
its own process, stopped inside the write by pause_in_atomic_write.py (new bytes in the temporary file, rename not
done) and killed there."""

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
