"""Deployments: prefect.yaml parses into served deployments; a real Prefect server runs one to completion."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml
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


def _serve_command(*args: str) -> list[str]:
    """`warmstart serve` of this checkout, as its own process."""
    return [sys.executable, "-m", "flows.cli", "serve", *args]


def _without_prefect_api() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}


def test_serve_refuses_a_prefect_api_that_does_not_answer(free_port: Callable[[], int], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    environment = _without_prefect_api() | {"PREFECT_API_URL": url}
    command = _serve_command("-w", str(tmp_path / "ws"))
    done = subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "PREFECT_API_URL" in lines[0], done.stderr


def _completed_runs(workspace: Path, flow: str) -> pl.DataFrame:
    """The workspace's recorded runs of `flow` (none while its metrics store does not exist yet)."""
    if not (workspace / "metrics.sqlite").is_file():
        return pl.DataFrame({"flow": [], "status": []}, schema={"flow": pl.String, "status": pl.String})
    store = MetricsStore.for_workspace(workspace, read_only=True)
    try:
        runs = store.runs()
    finally:
        store.close()
    return runs.filter((pl.col("flow") == flow) & (pl.col("status") == "completed"))


def _completed_flow_runs(api_url: str) -> list[str]:
    """Names of the flows whose deployment runs the Prefect server at `api_url` records as completed."""
    try:
        answer = httpx.post(
            f"{api_url}/flow_runs/filter",
            json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
            timeout=10,
        )
    except httpx.TransportError:  # still starting
        return []
    answer.raise_for_status()
    return [run["name"] for run in answer.json() if run.get("deployment_id")]


def test_a_served_schedule_fires_on_the_local_server_serve_starts(
    ml100k_slice_workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """`warmstart serve` without PREFECT_API_URL, as an operator starts it: it runs its own Prefect server, whose
    scheduler fires a once-a-minute nightly-refresh; serve runs it on the workspace; stopping serve stops the
    server."""
    workspace = tmp_path / "ws"
    shutil.copytree(ml100k_slice_workspace, workspace)
    config = tmp_path / "deployments.yaml"
    refresh = {
        "name": "nightly-refresh",
        "entrypoint": "flows/refresh.py:refresh",
        # The cheapest real cycle: no language model, three epochs, no timed alternatives, no reference gate.
        "parameters": {
            "k": 10,
            "augment_limit": 0,
            "simulate": False,
            "max_epochs": 3,
            "reference_gate": False,
            "choose_timed": False,
        },
        "schedules": [{"cron": "* * * * *", "timezone": "UTC"}],
    }
    config.write_text(yaml.safe_dump({"deployments": [refresh]}))
    environment = _without_prefect_api() | {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The server schedules new deployments within seconds, and the runner asks for due runs every 2 s, one at
        # a time (a second minute's run waits instead of competing for the two cores).
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_RUNNER_PROCESS_LIMIT": "1",
        "WARMSTART_CACHE_DIR": str(cache_dir),
    }
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        serve = subprocess.Popen(
            _serve_command("--config", str(config), "-w", str(workspace)),
            env=environment,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    api_url = ""
    try:
        deadline = time.monotonic() + 480
        while not (api_url and _completed_flow_runs(api_url) and not _completed_runs(workspace, "refresh").is_empty()):
            assert serve.poll() is None, f"serve exited with {serve.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no scheduled refresh completed:\n{log.read_text()[-4000:]}"
            found = re.search(r"Prefect API (http://127\.0\.0\.1:\d+/api)", log.read_text())
            api_url = found.group(1) if found else ""
            time.sleep(3)
    finally:
        serve.terminate()
        serve.wait(timeout=120)
    served = log.read_text()
    assert serve.returncode == 0, served[-4000:]
    assert "Error logging to API" not in served, served[-4000:]  # its logs reached the server before it stopped
    assert (workspace / "prefect" / "prefect.db").is_file()  # the server's database lives in the workspace
    with pytest.raises(httpx.TransportError):  # the server stopped with serve
        httpx.get(f"{api_url}/health", timeout=5)
    assert _completed_runs(workspace, "refresh").height == 1


REPO = Path(__file__).resolve().parents[2]


def _prefect(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `prefect` CLI of this environment, as an operator runs it."""
    command = [str(Path(sys.executable).with_name("prefect")), "--no-prompt", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done


def test_prefect_deploy_all_and_a_process_worker_run_the_weekly_backfill(
    prefect_api: str, ml100k_slice_workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The scheduled path as operators use it: `prefect deploy --all` from prefect.yaml against a real server, a
    process worker for the `warmstart` pool, and weekly-backfill run to completion by that worker on the log of the
    worker's workspace (a copy of the slice), two 30-day windows of it."""
    workspace = tmp_path / "ws"
    shutil.copytree(ml100k_slice_workspace, workspace)
    env = _without_prefect_api() | {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "WARMSTART_WORKSPACE": str(workspace),
        "WARMSTART_CACHE_DIR": str(cache_dir),
        "WARMSTART_HOME": str(REPO),
    }
    _prefect("work-pool", "create", "warmstart", "--type", "process", "--overwrite", env=env)
    deployed = _prefect("deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env)
    assert "weekly-backfill" in deployed.stdout + deployed.stderr
    # The slice's log runs from 1997-09 to 1998-04: windows from January, 30 days each, up to 20 March, are two
    # (each trained on everything before its end and evaluated on the 30 days after, or up to 20 March).
    parameters = {
        "start": "1998-01-01T00:00:00+00:00",
        "end": "1998-03-20T00:00:00+00:00",
        "every": "30d",
        "k": 10,
        "max_epochs": 3,
        "reference_gate": False,
        "choose_timed": False,
    }
    flow_run = run_deployment("backfill/weekly-backfill", parameters=parameters, timeout=0)
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
    runs = _completed_runs(workspace, "backfill").sort("window_end")
    assert runs.height == 2, f"{runs}\n{output[-3000:]}"
    assert [end.date().isoformat() for end in runs["window_end"]] == ["1998-01-31", "1998-03-02"]
