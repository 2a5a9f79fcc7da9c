"""`warmstart serve`: the deployments of deployments/prefect.yaml, run in one process with `prefect.serve`, against
a real Prefect server (PREFECT_API_URL, or one started here) whose scheduler fires their schedules.

prefect.yaml stays the one place that names deployments, schedules and parameters: `prefect deploy --all`
reads it for a work-pool setup, and this module reads it to serve the same deployments without a pool.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from prefect import Flow
from prefect.schedules import Cron

from catalog import ConfigError, WarmstartError
from flows.runners import with_runner
from flows.settings import WarmstartSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS_FILE = REPO / "deployments" / "prefect.yaml"
# A local Prefect server must answer /health within this many seconds (`warmstart serve --server-timeout`): it
# migrates its database on first start, which takes about a minute on a busy two-core machine.
SERVER_STARTUP_SECONDS = 180


def read_deployments(config: Path = DEPLOYMENTS_FILE) -> list[dict[str, object]]:
    """The `deployments` entries of a prefect.yaml, checked for what serving needs."""
    if not config.is_file():
        raise ConfigError(f"no deployments file at {config}.")
    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config} is not valid YAML: {error}") from None
    entries = document.get("deployments") or []
    if not entries:
        raise ConfigError(f"{config} declares no deployments.")
    for entry in entries:
        missing = [key for key in ("name", "entrypoint") if not entry.get(key)]
        if missing:
            raise ConfigError(f"a deployment in {config} lacks {', '.join(missing)}: {entry}")
    return entries


def load_flow(entrypoint: str, root: Path = REPO) -> Flow:
    """'flows/refresh.py:refresh' -> the flow object."""
    path, _, name = entrypoint.partition(":")
    module_name = path.removesuffix(".py").replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if not (root / path).is_file():
            raise ConfigError(f"cannot import the entrypoint {entrypoint!r}: no file {root / path}.") from None
        spec = importlib.util.spec_from_file_location(module_name, root / path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import the entrypoint {entrypoint!r}.") from None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    flow = getattr(module, name, None)
    if not isinstance(flow, Flow):
        raise ConfigError(f"entrypoint {entrypoint!r} is not a Prefect flow.")
    return flow


def runner_deployments(config: Path = DEPLOYMENTS_FILE, only: list[str] | None = None) -> list[Any]:
    """RunnerDeployments for `prefect.serve`, with each entry's schedules, parameters, tags and description,
    running their tasks where the settings say (threads, or a Dask cluster)."""
    entries = read_deployments(config)
    settings = WarmstartSettings()
    if only:
        unknown = sorted(set(only) - {entry["name"] for entry in entries})
        if unknown:
            raise ConfigError(f"unknown deployment(s) {unknown}; {config} declares {[e['name'] for e in entries]}.")
        entries = [entry for entry in entries if entry["name"] in only]
    deployments = []
    for entry in entries:
        schedules = [
            Cron(schedule["cron"], timezone=schedule.get("timezone", "UTC"))
            for schedule in entry.get("schedules") or []
            if "cron" in schedule
        ]
        deployments.append(
            with_runner(load_flow(entry["entrypoint"]), settings).to_deployment(
                name=entry["name"],
                schedules=schedules,
                parameters=entry.get("parameters") or {},
                description=entry.get("description"),
                tags=entry.get("tags") or [],
            )
        )
    return deployments


def _healthy(api_url: str) -> bool:
    """Whether the Prefect API at `api_url` (e.g. http://127.0.0.1:4200/api) answers its /health."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# The child asks Linux to TERM it when its parent dies (a killed command then leaves no orphan), then becomes the
# server (`python ARGUMENTS...`). Run as `python -c` so that no code runs between fork and exec in the (threaded)
# parent. The signal follows the thread that started the child: start it from the main thread.
_CHILD = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""
# What Prefect's own temporary server is run with (prefect.server.api.server.SubprocessASGIServer): no UI, and no
# background services.
_EPHEMERAL_ENVIRONMENT = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _launch(arguments: list[str], environment: dict[str, str], output: IO[bytes] | None) -> subprocess.Popen[bytes]:
    """`python ARGUMENTS` in its own process group, TERMed by Linux when this process dies, stopped at exit."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(os.getpid()), *arguments],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,  # its own process group: stopped as a whole, and spared a terminal's Ctrl-C
    )
    atexit.register(stop_process_group, child)
    return child


def _await_health(child: subprocess.Popen[bytes], api_url: str, startup_seconds: float, exited: str, late: str) -> None:
    """Until the server at `api_url` answers /health; WarmstartError(`exited` with its exit code, or `late`) when it
    exits first or takes longer than `startup_seconds`."""
    deadline = time.monotonic() + startup_seconds
    while not _healthy(api_url):
        if child.poll() is not None:
            raise WarmstartError(exited.format(code=child.returncode))
        if time.monotonic() > deadline:
            raise WarmstartError(late)
        time.sleep(0.2)


def stop_process_group(child: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 30) -> None:
    """TERM the child's process group, KILL it if it has not exited within `grace` seconds."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    except ProcessLookupError:
        pass


@contextmanager
def _pointed_at(api_url: str) -> Iterator[None]:
    """This process and the flow runs it spawns (they inherit os.environ) use the Prefect API at `api_url`."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                yield
            finally:  # send the logs and events still queued while the server is there to take them
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


@contextmanager
def prefect_server(workspace: Path, startup_seconds: float = SERVER_STARTUP_SECONDS) -> Iterator[str]:
    """The API URL of a Prefect server whose scheduler fires schedules, with this process and the flow runs it spawns
    pointed at it: Prefect's configured PREFECT_API_URL when set (it must answer /health), else a local
    `prefect server start` on a free loopback port, its home and SQLite database in WORKSPACE/prefect and its log
    at WORKSPACE/prefect/server.log, stopped on leaving the block (and TERMed by Linux if this process is killed)."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        if not _healthy(configured):
            raise ConfigError(
                f"the Prefect API at PREFECT_API_URL={configured} does not answer {configured.rstrip('/')}/health: "
                "start that server, or unset PREFECT_API_URL to let serve start a local one."
            )
        with _pointed_at(configured):
            yield configured
        return
    home = workspace.resolve() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    environment = os.environ | {"PREFECT_HOME": str(home)}
    environment.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    arguments = ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log_path = home / "server.log"
    with log_path.open("ab") as log:
        child = _launch(arguments, environment, log)
    try:
        _await_health(
            child,
            api_url,
            startup_seconds,
            f"the local Prefect server exited (code {{code}}) before it answered; see {log_path}.",
            f"the local Prefect server ({api_url}) did not answer within {startup_seconds:g} s; raise "
            f"--server-timeout, or run a server and set PREFECT_API_URL to it (its log: {log_path}).",
        )
        with _pointed_at(api_url):
            yield api_url
    finally:
        stop_process_group(child)
        atexit.unregister(stop_process_group)


@contextmanager
def flow_server(startup_seconds: float, on_start: Callable[[str], None] | None = None) -> Iterator[str]:
    """The Prefect API a command's flow runs report to: PREFECT_API_URL when set, else a temporary server that dies
    with this process.

    Without this, Prefect starts its own temporary server (uvicorn, about 230 MB) on the first flow run, and a
    `kill -9` of the command left it running, reparented to PID 1. This one is the same app with the same settings
    and database (Prefect's home), started the way `prefect_server` starts one: Linux TERMs it when this process dies
    however it dies, and it is stopped on leaving the block. `on_start` is told its URL once it answers."""
    import prefect
    from prefect.settings import PREFECT_API_URL, get_current_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    environment = os.environ | get_current_settings().to_environment_variables(exclude_unset=True)
    environment |= _EPHEMERAL_ENVIRONMENT
    arguments = ["-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory"]
    arguments += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
    child = _launch([*arguments, "--log-level", "error", "--lifespan", "on"], environment, None)
    try:
        fix = (
            "Run a Prefect server (`prefect server start`) and set PREFECT_API_URL to it, or raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS."
        )
        _await_health(
            child,
            api_url,
            startup_seconds,
            f"Prefect's temporary API exited (code {{code}}) before it answered. {fix}",
            f"Prefect's temporary API did not start within {startup_seconds:g} s (the machine is busy). {fix}",
        )
        if on_start is not None:
            on_start(api_url)
        with _pointed_at(api_url):
            yield api_url
    finally:
        stop_process_group(child)
        atexit.unregister(stop_process_group)
