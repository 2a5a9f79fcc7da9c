"""Deployments: prefect.yaml parses into served deployments; a real Prefect server runs one to completion."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from typer.testing import CliRunner

from catalog import ConfigError
from flows.cli import app
from flows.serve import read_deployments, runner_deployments
from monitor import MetricsStore


def test_prefect_yaml_declares_the_three_scheduled_deployments() -> None:
    deployments = {d.name: d for d in runner_deployments()}
    assert set(deployments) == {"augment-new", "nightly-refresh", "weekly-backfill"}
    assert deployments["nightly-refresh"].schedules[0].schedule.cron == "0 2 * * *"
    assert deployments["weekly-backfill"].parameters == {"every": "7d"}  # the workspace's own log
    assert {d.flow_name for d in deployments.values()} == {"augment-new", "refresh", "backfill"}


def test_bad_deployment_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\n")
    with pytest.raises(ConfigError, match="declares no deployments"):
        read_deployments(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("deployments:\n  - name: a\n    entrypoint: flows/nothing.py:flow\n")
    with pytest.raises(ConfigError, match=r"cannot import|not a Prefect flow"):
        runner_deployments(broken)
    with pytest.raises(ConfigError, match="unknown deployment"):
        runner_deployments(only=["nope"])
    result = CliRunner().invoke(app, ["serve", "--config", str(empty)])
    assert result.exit_code == 1 and "declares no deployments" in result.output


async def _deployment_ids(names: list[str]) -> list[str]:
    async with get_client() as client:
        return [str((await client.read_deployment_by_name(name)).id) for name in names]


def test_served_deployment_runs_to_completion(prefect_api: str, ml100k_dir: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["ingest", "--dataset", "ml-100k", "--data", str(ml100k_dir), "-w", str(workspace)]
        ).exit_code
        == 0
    )
    assert runner.invoke(app, ["detect", "-w", str(workspace)]).exit_code == 0
    env = os.environ | {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "WARMSTART_WORKSPACE": str(workspace),
    }
    command = [str(Path(sys.executable).with_name("warmstart")), "serve"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        names = ["augment-new/augment-new", "refresh/nightly-refresh", "backfill/weekly-backfill"]
        deadline = time.monotonic() + 180
        while True:
            try:
                ids = asyncio.run(_deployment_ids(names))
                break
            except Exception:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                assert time.monotonic() < deadline, "the deployments were never registered"
                time.sleep(1)
        assert len(set(ids)) == 3
        flow_run = run_deployment("augment-new/augment-new", parameters={"limit": 1}, timeout=600)
        assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    finally:
        server.terminate()
        server.wait(timeout=60)
    store = MetricsStore.for_workspace(workspace, read_only=True)
    runs = store.runs()
    assert runs["flow"].to_list() == ["augment-new"] and runs["status"].to_list() == ["completed"]
    assert store.augmentation()["items_augmented"].to_list() == [1]


def _prefect(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `prefect` CLI of this environment, as an operator runs it."""
    command = [str(Path(sys.executable).with_name("prefect")), "--no-prompt", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done


REPO = Path(__file__).resolve().parents[2]


def test_prefect_deploy_all_and_a_process_worker_run_a_deployment(
    prefect_api: str, ml100k_dir: Path, tmp_path: Path
) -> None:
    """The scheduled path as operators use it: `prefect deploy --all` from prefect.yaml against a real server, a
    process worker for the `warmstart` pool, and one deployment run to completion by that worker."""
    workspace = tmp_path / "ws"
    runner = CliRunner()
    ingest = runner.invoke(app, ["ingest", "--dataset", "ml-100k", "--data", str(ml100k_dir), "-w", str(workspace)])
    assert ingest.exit_code == 0, ingest.output
    assert runner.invoke(app, ["detect", "-w", str(workspace)]).exit_code == 0
    env = os.environ | {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "WARMSTART_WORKSPACE": str(workspace),
        "WARMSTART_HOME": str(REPO),
    }
    _prefect("work-pool", "create", "warmstart", "--type", "process", "--overwrite", env=env)
    deployed = _prefect("deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env)
    assert "nightly-refresh" in deployed.stdout + deployed.stderr
    flow_run = run_deployment("augment-new/augment-new", parameters={"limit": 1}, timeout=0)
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "warmstart", "--run-once"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = worker.communicate(timeout=600)
    finally:
        worker.kill()

    async def final_state() -> object:
        async with get_client() as client:
            return (await client.read_flow_run(flow_run.id)).state

    state = asyncio.run(final_state())
    assert state is not None and state.is_completed(), f"{state}\n{output[-3000:]}"  # type: ignore[attr-defined]
    runs = MetricsStore.for_workspace(workspace, read_only=True).runs()
    assert runs["flow"].to_list() == ["augment-new"] and runs["status"].to_list() == ["completed"]
