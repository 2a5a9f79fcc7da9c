"""Shared fixtures: real data sets, fetched or read once per session."""

from __future__ import annotations

import collections
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import polars as pl
import pytest

from catalog import Columns, Dataset, fetch_movielens_100k, load_citeulike, load_movielens_100k
from flows.serve import stop_process_group

REPO = Path(__file__).resolve().parents[1]
CITEULIKE_DIR = Path(os.environ.get("WARMSTART_CITEULIKE", REPO.parent / "shared" / "datasets" / "citeulike-a"))


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose component (PostgreSQL, Chromium, a data set) is missing, saying why; under CI=true,
    fail instead: a CI run must not pass without running them."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing component fails the run instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def missing_component() -> Callable[[str], NoReturn]:
    """`unavailable` for test modules (they cannot import this conftest by name)."""
    return unavailable


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where fetched data sets live between test runs (the repo's git-ignored .cache by default)."""
    return Path(os.environ.get("WARMSTART_TEST_CACHE", REPO / ".cache"))


@pytest.fixture(scope="session")
def ml100k_dir(cache_dir: Path) -> Path:
    return fetch_movielens_100k(cache_dir)


@pytest.fixture(scope="session")
def ml100k(ml100k_dir: Path) -> Dataset:
    return load_movielens_100k(ml100k_dir)


@pytest.fixture(scope="session")
def citeulike() -> Dataset:
    if not (CITEULIKE_DIR / "titles.txt").is_file():
        unavailable(f"CiteULike-a not found at {CITEULIKE_DIR} (set WARMSTART_CITEULIKE)")
    return load_citeulike(CITEULIKE_DIR)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real temporary Prefect server for the session; yields its API URL (for subprocesses to share)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness started no API"
        yield str(url)


@pytest.fixture(scope="session")
def ml100k_slice_workspace(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding a small real MovieLens slice (100 users), ingested through the CLI. Copy it to change it."""
    from typer.testing import CliRunner

    from flows.cli import app

    folder = tmp_path_factory.mktemp("slice")
    users = ml100k.interactions.select(Columns.user).unique().sort(Columns.user).head(100)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi")
    items = ml100k.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi")
    log.write_parquet(folder / "interactions.parquet")
    items.drop(Columns.first_seen).write_parquet(folder / "items.parquet")
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            f"--interactions={folder / 'interactions.parquet'}",
            f"--items={folder / 'items.parquet'}",
            f"--workspace={folder / 'ws'}",
        ],
    )
    assert result.exit_code == 0, result.output
    return folder / "ws"


@pytest.fixture(scope="session")
def served_slice(
    ml100k: Dataset,
    ml100k_slice_workspace: Path,
    prefect_api: str,
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The slice as a service holds it: its events before 1998-02-26 (about 80%) ingested with every slice user
    (and their age, gender, occupation and zip) and item, one promoted LightGBM version (and its `recommendations`
    table, k=10) saved by a real `warmstart refresh` in its own process, then the later events appended (logged
    after the version trained; users first seen in them are the version's users without history). Read-only for
    tests: copy it to change it."""
    from typer.testing import CliRunner

    from flows.cli import app

    source = ml100k_slice_workspace.parent  # the slice's files, beside its workspace
    folder = tmp_path_factory.mktemp("served")
    log = pl.read_parquet(source / "interactions.parquet")
    cut = datetime(1998, 2, 26, tzinfo=UTC)
    log.filter(pl.col(Columns.ts) < cut).write_parquet(folder / "before.parquet")
    log.filter(pl.col(Columns.ts) >= cut).write_parquet(folder / "after.parquet")
    users = ml100k.users.drop(Columns.first_seen).join(log.select(Columns.user).unique(), on=Columns.user, how="semi")
    users.sort(Columns.user).write_parquet(folder / "users.parquet")
    workspace = folder / "ws"
    files = ["--interactions", str(folder / "before.parquet"), "--items", str(source / "items.parquet")]
    ingest = CliRunner().invoke(app, ["ingest", *files, "--users", str(folder / "users.parquet"), "-w", str(workspace)])
    assert ingest.exit_code == 0, ingest.output
    environment = os.environ | {"PREFECT_API_URL": prefect_api, "WARMSTART_CACHE_DIR": str(cache_dir)}
    command = [sys.executable, "-m", "flows.cli", "refresh", "--augment-limit", "0", "--max-epochs", "3"]
    command += ["--no-reference-gate", "--k", "10", "-w", str(workspace)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    append = ["ingest", "--append", "--interactions", str(folder / "after.parquet"), "-w", str(workspace)]
    appended = CliRunner().invoke(app, append)
    assert appended.exit_code == 0, appended.output
    return workspace


@pytest.fixture
def served_copy(served_slice: Path, tmp_path: Path) -> Path:
    """A copy of the served slice for a test that changes it (the session's own is read-only)."""
    target = tmp_path / "ws"
    shutil.copytree(served_slice, target)
    return target


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A TCP port free on loopback when called (a process may take it before the caller binds: rare, and loud)."""
    return _free_port


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on loopback for the session (Debian's `postgresql`); skipped with the reason
    where it cannot start (failed under CI=true). As root, the server runs as the `postgres` user, which
    PostgreSQL requires."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = Path(shutil.which("initdb") or (binaries[-1] if binaries else "initdb"))
    if not initdb.exists():
        unavailable("PostgreSQL is not installed (apt-get install postgresql); the SQLite store was tested")
    pg_ctl = initdb.with_name("pg_ctl")
    # Not under pytest's tmp dir: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="warmstart-postgres-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            unavailable("running as root without runuser: cannot start PostgreSQL as the postgres user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()
    try:
        subprocess.run(
            [*as_user, str(initdb), "-D", str(data), "-U", "warmstart", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_user, str(pg_ctl), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        detail = getattr(error, "stderr", b"") or b""
        unavailable(f"PostgreSQL could not start: {error} {detail.decode(errors='replace')[-300:]}")
    try:
        yield f"postgresql+psycopg://warmstart@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# llama-cpp-python's [server] extra: what `python -m llama_cpp.server` imports (requirements-dev.lock pins the two
# that the runtime lacks)
LLAMA_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
LLAMA_SERVER_STARTUP_S = 90.0  # it answers in 2-4 s here; the rest is for a loaded machine
_CHAT_ANSWERED = '"POST /v1/chat/completions HTTP/1.1" 200'  # uvicorn's access log line of one answered request


class LlamaServer:
    """llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) serving `model` (as
    `alias`) on loopback, in its own process group, one thread for each of its llama.cpp pools (the cores are
    shared). `start` waits until /v1/models answers, or fails with the server's last output lines; `kill` is a
    crash (SIGKILL to the whole group); `kill_after(n)` crashes it once it has answered n more chat requests,
    which may leave the next one in flight. `answered` counts answered chat requests over its restarts."""

    def __init__(self, model: Path, port: int, *, alias: str = "smollm2", context: int = 1024) -> None:
        self.model, self.port, self.alias = Path(model), port, alias
        self.url = f"http://127.0.0.1:{port}/v1"
        self.command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model)]
        self.command += ["--model_alias", alias, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(context)]
        self.command += ["--n_threads", "1", "--n_threads_batch", "1", "--use_mlock", "False", "--verbose", "False"]
        self.output: collections.deque[str] = collections.deque(maxlen=40)  # last lines, for failure messages
        self.answered = 0
        self.kills = 0
        self._kill_at: int | None = None
        self._lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = LLAMA_SERVER_STARTUP_S) -> LlamaServer:
        import httpx

        process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: teardown and `kill` reach anything it started
        )
        self.process = process
        threading.Thread(target=self._read, args=(process,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                self._failed(f"exited with code {process.returncode} before it answered")
            try:
                if httpx.get(f"{self.url}/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                self._failed(f"did not answer within {timeout:.0f} s")
            time.sleep(0.2)

    def _failed(self, reason: str) -> NoReturn:
        time.sleep(0.2)  # (let the reader take the last lines of a process that just exited)
        shown = "".join(self.output) or "(no output)\n"
        pytest.fail(f"llama_cpp.server {reason}: {' '.join(self.command)}\n{shown}", pytrace=False)

    def _read(self, process: subprocess.Popen[str]) -> None:
        """Keep the last output lines (the pipe must be drained or the server blocks) and count the answers."""
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)
            if _CHAT_ANSWERED in line:
                with self._lock:
                    self.answered += 1
                    due = self._kill_at is not None and self.answered >= self._kill_at
                    if due:
                        self._kill_at = None
                if due:
                    self.kill()

    def kill_after(self, requests: int) -> None:
        with self._lock:
            self._kill_at = self.answered + requests

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            self.kills += 1

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL to what is left after 10 s."""
        if self.process is not None:
            stop_process_group(self.process, grace=10)


@pytest.fixture(scope="session")
def start_llama_server() -> Iterator[Callable[..., LlamaServer]]:
    """Starts llama_cpp.server on a free loopback port serving the product's own llama.cpp file of the shipped
    SmolLM2 (the F16 re-encoding the in-process backend runs, so answers are comparable); the caller may name
    another `model`. Every server started is stopped at the end of the session. Where the server's modules or
    llama-cpp-python are missing, the test is skipped with the reason (failed under CI=true)."""
    missing = [name for name in LLAMA_SERVER_MODULES if importlib.util.find_spec(name) is None]
    started: list[LlamaServer] = []

    def start(model: Path | None = None, *, context: int = 1024) -> LlamaServer:
        if missing:
            unavailable(f"llama_cpp.server needs {', '.join(missing)} (`make setup` installs them)")
        if model is None:
            from augment import smollm2_llamacpp_gguf

            model = smollm2_llamacpp_gguf(Path(os.environ.get("WARMSTART_TEST_LLM_CACHE", REPO / ".cache")))
        server = LlamaServer(model, _free_port(), context=context)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
