"""Copies of the MovieLens slice workspace (tests/conftest.py), a whole MovieLens-100K workspace, the real
`warmstart` CLI in a subprocess, and a small MovieLens slice as files for the protocols over users."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, Dataset


@pytest.fixture
def ml100k_workspace(ml100k_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace holding the whole of MovieLens-100K, ingested and detected by the CLI, and this process's
    default (WARMSTART_WORKSPACE, with the tests' cache)."""
    from flows.cli import app

    root = tmp_path / "ws"
    monkeypatch.setenv("WARMSTART_WORKSPACE", str(root))
    monkeypatch.setenv("WARMSTART_CACHE_DIR", str(cache_dir))
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "--dataset", "ml-100k", "--data", str(ml100k_dir)]).exit_code == 0
    assert runner.invoke(app, ["detect"]).exit_code == 0
    return root


@pytest.fixture
def slice_copy(ml100k_slice_workspace: Path, tmp_path: Path) -> Callable[[], Path]:
    """A fresh copy of the slice workspace for a test that changes it."""

    def copy() -> Path:
        target = tmp_path / f"ws{len(list(tmp_path.glob('ws*')))}"
        shutil.copytree(ml100k_slice_workspace, target)
        return target

    return copy


@pytest.fixture
def warmstart(prefect_api: str, cache_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the `warmstart` CLI in its own process, as operators do, against the session's Prefect API (a flow's
    console logging binds to the first stdout it sees, so in-process runners cannot invoke two flows in a row)."""

    def run(*args: str, env: dict[str, str] | None = None, expect: int = 0) -> subprocess.CompletedProcess[str]:
        environment = os.environ | {"PREFECT_API_URL": prefect_api, "WARMSTART_CACHE_DIR": str(cache_dir)}
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            env=environment | (env or {}),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == expect, (
            f"{args}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done

    return run


@pytest.fixture(scope="module")
def user_files(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 MovieLens users' ratings (one log: the protocol draws its own test users), the films they rated, and
    their attributes as columns (gender, age, occupation, zip_code)."""
    folder = tmp_path_factory.mktemp("users")
    users = ml100k.users.sort(Columns.user).head(60)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi")
    items = ml100k.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi")
    decoded = users[Columns.attributes].str.json_decode(infer_schema_length=None).struct.unnest()
    attributes = pl.concat([users.select(Columns.user), decoded], how="horizontal")
    paths = {"train": folder / "log.csv", "items": folder / "items.parquet", "users": folder / "users.csv"}
    log.write_csv(paths["train"])
    items.write_parquet(paths["items"])
    attributes.write_csv(paths["users"])
    return paths
