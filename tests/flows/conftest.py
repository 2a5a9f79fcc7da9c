"""Copies of the MovieLens slice workspace (tests/conftest.py) and the real `warmstart` CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


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
