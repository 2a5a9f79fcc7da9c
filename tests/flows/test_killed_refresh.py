"""A refresh killed (SIGKILL) at any point (issue 28, items 3 and 4): it leaves no Prefect server behind, and what it
left half done is swept, marked failed or completed by the next start. The kills are arranged at a chosen point (the
flow's first stage logged; inside a chosen atomic write), never by timing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from catalog import ModelRegistry
from flows import cycle
from monitor import MetricsStore, RunRecord

REPO = Path(__file__).resolve().parents[2]
FAST_REFRESH = ["--augment-limit", "0", "--max-epochs", "3", "--k", "10", "--no-reference-gate"]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for PID 1 to reap it runs no more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_killed_refresh_leaves_no_prefect_server(
    slice_copy: Callable[[], Path], cache_dir: Path, prefect_api: str, tmp_path: Path
) -> None:
    """Without PREFECT_API_URL a command that runs flows needs a temporary Prefect server (uvicorn, about 230 MB).
    Prefect's own outlived a `kill -9` of the command, reparented to PID 1. Killed once its flow runs, the command
    now leaves nothing alive and nothing listening."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    workspace = slice_copy()
    environment = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    # The session server's database, already migrated: the temporary server starts in seconds.
    environment |= {"PYTHONPATH": str(REPO), "WARMSTART_CACHE_DIR": str(cache_dir)}
    environment["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    log = tmp_path / "refresh.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "refresh", *FAST_REFRESH, "-w", str(workspace)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        deadline = time.monotonic() + 180
        while "detect: new, cold and sparse" not in log.read_text():  # the flow runs, reporting to the server
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        [server] = [pid for pid in _children(process.pid) if "uvicorn" in _cmdline(pid)]
        arguments = _cmdline(server)
        port = int(arguments[arguments.index("--port") + 1])
        assert _listening(port)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(server) or _listening(port):
            assert time.monotonic() < deadline, f"the server {server} outlived its command: {_cmdline(server)}"
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait(timeout=30)


def _hold_a_guard(registry: Path, version: str, *, whole: bool) -> subprocess.Popen[str]:
    """Another process that holds `version`'s guard (with metadata.json written when `whole`) until it is killed."""
    code = (
        "import sys, time\n"
        "from catalog import ModelRegistry\n"
        "saving = ModelRegistry(sys.argv[1]).saving('lightgbm', sys.argv[2])\n"
        "folder = saving.__enter__()\n"
        "(folder / 'model.txt').write_text('half')\n"
        "if sys.argv[3] == 'whole':\n"
        "    (folder / 'metadata.json').write_text('{}')\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(registry), version, "whole" if whole else "half"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_the_next_start_sweeps_what_killed_runs_left_and_nothing_else(tmp_path: Path) -> None:
    """Version folders of runs SIGKILLed before their outcome was recorded (one half-saved, one whole) go and their
    runs are marked failed; one killed after its record keeps its version; a folder still guarded by a live process,
    a whole version and an older half folder without a guard are each treated by what they are."""
    workspace = tmp_path / "ws"
    registry_root = workspace / "models"
    store = MetricsStore.for_workspace(workspace)
    for run in ("killed-half", "killed-whole", "killed-recorded", "alive"):
        store.start_run(run, flow="refresh", dataset="slice", parameters={"run": run})
    store.finish_run("killed-recorded", RunRecord(model_version="killed-recorded"))
    killed = [
        _hold_a_guard(registry_root, "killed-half", whole=False),
        _hold_a_guard(registry_root, "killed-whole", whole=True),
        _hold_a_guard(registry_root, "killed-recorded", whole=True),
    ]
    alive = _hold_a_guard(registry_root, "alive", whole=True)
    for process in killed:
        process.kill()
        process.wait(timeout=30)
    older = registry_root / "lightgbm" / "older-half"
    older.mkdir()
    (older / "model.txt").write_text("half")
    whole = registry_root / "lightgbm" / "whole"
    whole.mkdir()
    (whole / "metadata.json").write_text("{}")
    registry = ModelRegistry(registry_root)
    assert [v.version for v in registry.versions()] == ["whole"]  # guarded folders are not versions yet
    try:
        removed = cycle.sweep_killed_runs(registry, store)
        assert removed == ["killed-half", "killed-whole", "older-half"]
        assert sorted(p.name for p in (registry_root / "lightgbm").iterdir()) == ["alive", "killed-recorded", "whole"]
        assert [v.version for v in registry.versions()] == ["killed-recorded", "whole"]
        runs = {row["run_id"]: row for row in store.runs().to_dicts()}
        assert {run: runs[run]["status"] for run in runs} == {
            "killed-half": "failed",
            "killed-whole": "failed",
            "killed-recorded": "completed",
            "alive": "running",
        }
        assert runs["killed-half"]["error"] == "killed before its outcome was recorded; its version folder was removed"
    finally:
        alive.kill()
        alive.wait(timeout=30)
        store.close()
