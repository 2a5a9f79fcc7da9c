"""A running `warmstart api` (its own process, uvicorn on loopback) serves what the CLI does meanwhile: items from
`warmstart add-items`, users from `warmstart add-users` and a version made current by `warmstart promote`, with no
restart. httpx is the client; nothing is mocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, Tables, Workspace
from flows.cli import app as cli
from serving import Recommender, WorkspaceFollower

NEW_ITEM = {
    Columns.item: "late-item",
    Columns.title: "Starship Nightmare (2026)",
    Columns.text: "An alien creature hunts the crew of a deep space mining ship.",
}


def _eventually(check: Callable[[], Any], timeout: float = 60) -> Any:
    """`check()`'s first truthy answer, polling until `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout} s: {check.__doc__ or check}")


@pytest.fixture
def workspace(served_copy: Path) -> Path:
    return served_copy


@pytest.fixture
def api(workspace: Path, cache_dir: Path, free_port: Callable[[], int]) -> Iterator[httpx.Client]:
    """`warmstart api` on loopback without a key, checking the workspace every 0.1 s; yields a client."""
    port = free_port()
    environment = os.environ | {"WARMSTART_CACHE_DIR": str(cache_dir)}
    environment.pop("WARMSTART_API_KEY", None)
    command = [sys.executable, "-m", "flows.cli", "api", "-w", str(workspace), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--follow-every", "0.1"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _eventually(lambda: process.poll() is None and _health(client), timeout=180)
            yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def _health(client: httpx.Client) -> dict[str, Any] | None:
    try:
        answer = client.get("/health")
    except httpx.TransportError:
        return None
    return answer.json() if answer.status_code == 200 else None


def _cli(workspace: Path, cache_dir: Path, *arguments: str) -> None:
    done = CliRunner().invoke(cli, [*arguments, "-w", str(workspace)], env={"WARMSTART_CACHE_DIR": str(cache_dir)})
    assert done.exit_code == 0, done.output


def test_cli_additions_and_a_promotion_reach_the_running_api(
    api: httpx.Client, workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    assert api.get("/recommend", params={"user_id": "late-user"}).status_code == 404
    items = tmp_path / "items.csv"
    pl.DataFrame([NEW_ITEM]).write_csv(items)
    _cli(workspace, cache_dir, "add-items", str(items))
    catalog = Workspace(workspace).read(Tables.items).height
    _eventually(lambda: _health(api)["items"] == catalog)  # type: ignore[index]
    found = api.post("/recommend", json={"text": "an alien monster in outer space", "k": 3}).json()
    assert found["recommendations"][0]["item_id"] == "late-item"

    users = tmp_path / "users.csv"
    pl.DataFrame({Columns.user: ["late-user"]}).write_csv(users)
    _cli(workspace, cache_dir, "add-users", str(users))
    served = _eventually(lambda: api.get("/recommend", params={"user_id": "late-user", "k": 5}).status_code == 200)
    assert served
    rows = api.get("/recommend", params={"user_id": "late-user", "k": 5}).json()["recommendations"]
    assert len(rows) == 5 and {row["user_segment"] for row in rows} == {"cold"}

    # A second saved version (a copy of the first under a new name) made current by hand.
    registry = Workspace(workspace).models
    first = registry.current("lightgbm")
    assert first is not None
    shutil.copytree(registry.path("lightgbm", first), registry.path("lightgbm", "copy-of-first"))
    _cli(workspace, cache_dir, "promote", "copy-of-first")
    _eventually(lambda: _health(api)["model_version"] == "copy-of-first")  # type: ignore[index]
    # Loaded afresh from the workspace: what the CLI added is still served.
    assert _health(api)["items"] == catalog  # type: ignore[index]
    assert api.get("/recommend", params={"user_id": "late-user", "k": 5}).status_code == 200


def test_the_follower_adds_to_the_served_recommender_what_a_fresh_load_serves(
    workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    follower = WorkspaceFollower(workspace, cache_dir=cache_dir)
    served = follower.load()
    assert follower.update(served) is None  # nothing changed
    items = tmp_path / "items.csv"
    pl.DataFrame([NEW_ITEM]).write_csv(items)
    _cli(workspace, cache_dir, "add-items", str(items))
    updated = follower.update(served)
    assert updated is not None and updated.version == served.version
    fresh = Recommender.load(workspace, cache_dir=cache_dir)
    assert updated.item_ids.to_list() == fresh.item_ids.to_list()
    users = updated.user_ids.to_list()[:20]
    assert updated.recommend(users, k=10).equals(fresh.recommend(users, k=10))
    assert updated.users_for_item("late-item", k=5).equals(fresh.users_for_item("late-item", k=5))
