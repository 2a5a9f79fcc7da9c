"""The workspace: generations of Parquet tables, each table written atomically with a provenance record.

Layout::

    WORKSPACE/
      generation.json                  {"current": G, "previous": G'}: replaced by rename, the one switch
      generations/G/tables/NAME.parquet
      generations/G/tables/NAME.json   provenance of the table's latest write (run id, source, rows, schema)
      generations/G/state.json         state of that data (data set, ingest run, detection watermark...)
      generations/.staging-RUN/        an ingest being written (removed when it fails or is found stale)
      provenance.jsonl                 every committed write, one JSON object a line
      .lock                            fcntl lock: exclusive to switch generations, shared to write a table
      .writer                          fcntl lock of the one writer (see `Workspace.writer`), naming its holder

An ingest writes a whole new generation beside the current one and switches `generation.json` to it in one
rename under the exclusive lock, so readers see the old tables or the new ones, never a mix. The new
generation holds only what the ingest wrote: tables derived from the old data (segments, embeddings,
augmentation outputs) and its state (the watermark) stay with the old generation, which is kept as
`previous` for `rollback`; older generations are deleted. Later stages write derived tables into the
generation they read from (a `Workspace` object is pinned to the generation current when it is first used),
each through a temporary file and a rename.

Every write that changes the data or the model registry from what it read (ingest, append, add-items, add-users,
a promotion, rollback) holds the writer lock across its read-modify-write (`Workspace.writer`): two such writers
one after the other, never interleaved, so the second extends what the first wrote instead of overwriting it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import polars as pl

from catalog.errors import DataError, WorkspaceError

if TYPE_CHECKING:
    from catalog._registry import ModelRegistry

POINTER = "generation.json"
GENERATIONS = "generations"
LOCK = ".lock"
STAGING = ".staging-"
TRASH = ".trash-"
WRITER = ".writer"
# How long a writer waits for another to finish before it refuses (WARMSTART_WRITER_WAIT overrides it).
DEFAULT_WRITER_WAIT = 600.0
_POLL_SECONDS = 0.05
# Workspaces whose writer lock this thread holds, by resolved root: a writer calling another writer (a promotion
# inside a refresh's locked step) must not wait for itself (two opens of one file are two flock holders).
_held = threading.local()


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_run_id() -> str:
    """A sortable, unique run id such as 20261129T001600Z-3f2a9c."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a hidden temporary file next to `path`, flush it to disk, then rename it over `path`:
    a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def verified_bytes(path: Path, expected_sha256: object, *, manifest: str, fix: str) -> bytes:
    """The file's bytes, if their SHA-256 is the one its manifest recorded; else a DataError saying how to fix it
    (a write was interrupted, or files of two saves were mixed)."""
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != expected_sha256:
        raise DataError(
            f"{path}: does not match the digest in {manifest} (a save was interrupted or the files were mixed); {fix}"
        )
    return payload


def _fsync_directory(path: Path) -> None:
    """Make a rename inside `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _try_lock(handle: IO[bytes]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Workspace:
    """Parquet tables with provenance under one directory, in generations switched atomically by ingest."""

    def __init__(
        self,
        root: Path,
        *,
        writer_wait: float = DEFAULT_WRITER_WAIT,
        on_wait: Callable[[str], None] = _say_on_stderr,
    ) -> None:
        self.root = Path(root)
        self.writer_wait = writer_wait  # seconds `writer` waits for another writer before it refuses
        self.on_wait = on_wait  # told once when `writer` has to wait, so that a waiting command is not silent
        self._dir: Path | None = None  # the pinned generation, resolved on first use
        self._staged = False  # a generation being written by `new_generation`: private, no locking
        self._records: list[dict[str, Any]] = []

    @property
    def models(self) -> ModelRegistry:
        """The model registry of this workspace (WORKSPACE/models)."""
        from catalog._registry import ModelRegistry  # the registry writes through this module's atomic writes

        return ModelRegistry(self.root / "models")

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -- generations -------------------------------------------------------------------------------------

    def _pointer(self) -> dict[str, str | None] | None:
        path = self.root / POINTER
        if not path.is_file():
            return None
        try:
            pointer = json.loads(path.read_text(encoding="utf-8"))
            return {"current": str(pointer["current"]), "previous": pointer.get("previous")}
        except (OSError, ValueError, KeyError, TypeError) as error:
            message = f"{path}: unreadable generation pointer ({error}). Run `warmstart ingest` again."
            raise WorkspaceError(message) from None

    def _generation_dir(self) -> Path | None:
        """The generation this object reads and writes: the current one when it was first asked for."""
        if self._dir is None:
            pointer = self._pointer()
            if pointer is not None:
                self._dir = self.root / GENERATIONS / str(pointer["current"])
        return self._dir

    @property
    def generation(self) -> str | None:
        """Name of the generation this object is pinned to (None: the workspace holds no tables yet)."""
        directory = self._generation_dir()
        return directory.name if directory is not None else None

    @property
    def tables(self) -> Path:
        """The tables directory of the pinned generation."""
        directory = self._generation_dir()
        return (directory if directory is not None else self.root / GENERATIONS / "none") / "tables"

    def generations(self) -> dict[str, str | None]:
        """{"current": name, "previous": name or None}; empty when nothing was written yet."""
        return self._pointer() or {}

    @contextmanager
    def lock(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the workspace lock: exclusive to switch generations or update state, shared to write a table."""
        with self._open_lock_file(LOCK, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield

    @contextmanager
    def writer(self, what: str) -> Iterator[Workspace]:
        """Be the workspace's one writer while the block runs; yields a Workspace pinned to the generation current
        once the lock is held, to read and change.

        A read-modify-write (read the items, add some, write them back; read the current model, gate, promote)
        is only correct when nobody writes in between: without this lock the last of two writers silently drops
        what the first added. The lock is an exclusive fcntl lock on WORKSPACE/.writer (released by the kernel
        when a holder dies), which records `what`, the pid and the time, so that a writer that has to wait says
        for whom. It waits at most `writer_wait` seconds, then raises WorkspaceError having changed nothing.
        Readers take no lock: they still see one whole generation or model version. Reentrant in one thread.
        """
        key = os.path.realpath(self.root)
        roots: set[str] = _held.__dict__.setdefault("roots", set())
        fresh = Workspace(self.root, writer_wait=self.writer_wait, on_wait=self.on_wait)
        if key in roots:
            yield fresh
            return
        with self._open_lock_file(WRITER, "r+b") as handle:
            self._wait_for_writer(handle, what)
            try:
                holder = {"what": what, "pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds")}
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(holder).encode())
                handle.flush()
                roots.add(key)
                yield fresh
            finally:
                roots.discard(key)
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _wait_for_writer(self, handle: IO[bytes], what: str) -> None:
        """Take the writer lock, saying once whom it waits for; refuse after `writer_wait` seconds."""
        deadline = time.monotonic() + self.writer_wait
        told = False
        while not _try_lock(handle):
            holder = self._writer_holder(handle)
            if time.monotonic() >= deadline:
                raise WorkspaceError(
                    f"workspace {self.root}: {what} refused: the writer lock is still held by {holder} after "
                    f"{self.writer_wait:g} s; nothing was changed. Run it again once that finishes (or raise "
                    "WARMSTART_WRITER_WAIT)."
                )
            if not told:
                self.on_wait(
                    f"{what}: waiting for the workspace's writer lock held by {holder} (at most {self.writer_wait:g} s)"
                )
                told = True
            time.sleep(_POLL_SECONDS)

    @staticmethod
    def _writer_holder(handle: IO[bytes]) -> str:
        """'<command>, pid <pid> since <time>' as the holder recorded it (it may be writing it right now)."""
        handle.seek(0)
        try:
            holder = json.loads(handle.read().decode() or "{}")
            return f"{holder['what']}, pid {holder['pid']} since {holder['since']}"
        except (ValueError, KeyError, TypeError):
            return "another process"

    def _open_lock_file(self, name: str, mode: str) -> IO[bytes]:
        """Open (creating) a lock file in the workspace's root, with a clear error when the root is unusable."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(f"workspace {self.root} is a file, not a directory. Pass --workspace DIRECTORY.")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / name).touch(exist_ok=True)
            return (self.root / name).open(mode)
        except OSError as error:
            raise WorkspaceError(
                f"workspace {self.root} is not writable ({error.strerror or error}). "
                "Fix its permissions or pass another --workspace."
            ) from None

    def _writable_generation(self) -> Path:
        """The pinned generation, created empty (under the lock) when the workspace has none yet."""
        directory = self._generation_dir()
        if directory is None:
            with self.lock():
                directory = self._generation_dir()  # another process may have created it meanwhile
                if directory is None:
                    directory = self.root / GENERATIONS / new_run_id()
                    (directory / "tables").mkdir(parents=True)
                    atomic_write_bytes(self.root / POINTER, json.dumps({"current": directory.name}).encode())
                    self._dir = directory
        return directory

    def _check_alive(self, directory: Path) -> None:
        if not directory.is_dir():
            raise WorkspaceError(
                f"workspace {self.root}: generation {directory.name} was removed by later ingests while this run "
                "used it. Run the step again."
            )

    @contextmanager
    def new_generation(self, run_id: str) -> Iterator[Workspace]:
        """Stage a new generation; when the block ends without error it becomes current in one atomic switch.

        Yields a Workspace that writes into the staged generation. On error the staged generation is removed
        and the current one is untouched. The previous generation is kept for `rollback`, older ones deleted.
        """
        staging = self.root / GENERATIONS / f"{STAGING}{run_id}"
        with self.lock():  # a sweep (which holds the lock) never sees a staging directory without its guard
            try:
                (staging / "tables").mkdir(parents=True)
                guard = (staging / LOCK).open("ab")
            except OSError as error:
                raise WorkspaceError(f"workspace {self.root}: cannot stage a new generation ({error}).") from None
            fcntl.flock(guard, fcntl.LOCK_EX)
        staged = Workspace(self.root)
        staged._dir, staged._staged = staging, True
        try:
            with guard:
                yield staged
                self._switch(staging, run_id, staged._records)  # the guard stays held until it is renamed
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _switch(self, staging: Path, name: str, records: list[dict[str, Any]]) -> None:
        with self.lock():
            generations = self.root / GENERATIONS
            target = generations / name
            old = self._pointer()
            pointer = {"current": name, "previous": old["current"] if old else None}
            try:
                os.rename(staging, target)
                (target / LOCK).unlink()
                _fsync_directory(generations)
                atomic_write_bytes(self.root / POINTER, json.dumps(pointer).encode())  # the switch
            except OSError as error:
                shutil.rmtree(target, ignore_errors=True)
                raise WorkspaceError(
                    f"workspace {self.root}: cannot switch to the new data ({error.strerror or error}); nothing was "
                    "changed. Fix the workspace's permissions or pass another --workspace."
                ) from None
            _fsync_directory(self.root)
            self._dir = target
            self._sweep()
            kept = (pointer["current"], pointer["previous"])
            for directory in generations.iterdir():
                if directory.is_dir() and not directory.name.startswith(STAGING) and directory.name not in kept:
                    # Renamed away first: a reader still pinned to it finds it whole or gone, never half-deleted.
                    trash = directory
                    if not directory.name.startswith(TRASH):
                        trash = directory.with_name(f"{TRASH}{directory.name}")
                        os.rename(directory, trash)
                    shutil.rmtree(trash, ignore_errors=True)
            with (self.root / "provenance.jsonl").open("a", encoding="utf-8") as log:
                log.writelines(json.dumps(record) + "\n" for record in records)

    def _sweep(self) -> None:
        """Remove what killed runs left: stale staged generations and temporary files. Runs under the
        exclusive lock, so no writer is between its temporary file and its rename."""
        generations = self.root / GENERATIONS
        if not generations.is_dir():
            return
        for directory in generations.iterdir():
            if directory.name.startswith(STAGING):
                try:
                    with (directory / LOCK).open("ab") as guard:
                        if not _try_lock(guard):
                            continue  # an ingest is still writing it
                except OSError:
                    pass
                shutil.rmtree(directory, ignore_errors=True)
            elif directory.is_dir():
                for stray in [*directory.glob(".*.tmp"), *directory.glob("tables/.*.tmp"), directory / LOCK]:
                    stray.unlink(missing_ok=True)
        for stray in self.root.glob(".*.tmp"):
            stray.unlink(missing_ok=True)

    def rollback(self) -> dict[str, str | None]:
        """Make the previous generation current again (and the current one previous: a second rollback
        undoes the first). Returns the new pointer."""
        with self.writer("rollback"), self.lock():
            pointer = self._pointer()
            previous = pointer.get("previous") if pointer else None
            if pointer is None or previous is None or not (self.root / GENERATIONS / previous).is_dir():
                raise WorkspaceError(f"workspace {self.root} has no previous generation to roll back to.")
            swapped = {"current": previous, "previous": pointer["current"]}
            atomic_write_bytes(self.root / POINTER, json.dumps(swapped).encode())
            _fsync_directory(self.root)
            self._dir = self.root / GENERATIONS / previous
            return swapped

    # -- tables ------------------------------------------------------------------------------------------

    def _table_path(self, name: str) -> Path:
        if not name.replace("_", "").isalnum():
            raise WorkspaceError(f"table name {name!r} must be letters, digits and underscores.")
        return self.tables / f"{name}.parquet"

    def exists(self, name: str) -> bool:
        path = self._table_path(name)
        if self._dir is not None:
            self._check_alive(self._dir)  # "no" would be wrong: the generation is gone, not the table
        return path.is_file()

    def write(
        self,
        name: str,
        frame: pl.DataFrame,
        *,
        run_id: str,
        source: str,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Atomically replace table `name` of the pinned generation with `frame` and record where it came from."""
        self._table_path(name)  # checks the name before anything is written
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        record = {
            "table": name,
            "run_id": run_id,
            "written_at": datetime.now(UTC).isoformat(),
            "source": source,
            "rows": frame.height,
            "schema": {column: str(dtype) for column, dtype in frame.schema.items()},
            "parameters": parameters or {},
        }
        if self._staged:
            self._store(name, buffer.getvalue(), record)
            self._records.append(record)
            return record
        self._writable_generation()
        with self.lock(shared=True):
            self._store(name, buffer.getvalue(), record)
            with (self.root / "provenance.jsonl").open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
        return record

    def table_names(self) -> list[str]:
        """The tables of the pinned generation, sorted."""
        return sorted(path.stem for path in self.tables.glob("*.parquet"))

    def carry(self, name: str, origin: Workspace) -> None:
        """Copy table `name` and its provenance from `origin`'s generation into this staged one unchanged: the write
        that made it is in the history already (an append keeps the tables derived from what it does not change)."""
        if not self._staged:
            raise WorkspaceError("carry copies into a staged generation only (inside Workspace.new_generation).")
        source = origin._table_path(name)
        try:
            data, record = source.read_bytes(), source.with_suffix(".json").read_bytes()
        except OSError as error:
            raise WorkspaceError(f"{source}: cannot carry table '{name}' ({error.strerror or error}).") from None
        path = self._table_path(name)
        atomic_write_bytes(path, data)
        atomic_write_bytes(path.with_suffix(".json"), record)

    def _store(self, name: str, data: bytes, record: dict[str, Any]) -> None:
        directory = self._generation_dir()
        assert directory is not None
        self._check_alive(directory)
        path = self._table_path(name)
        atomic_write_bytes(path, data)
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(record, indent=2).encode())

    def scan(self, name: str) -> pl.LazyFrame:
        """The table as a LazyFrame over a copy read now: a later write or switch cannot change it underneath."""
        path = self._table_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if self._dir is not None:
                self._check_alive(self._dir)
            raise WorkspaceError(
                f"workspace {self.root} has no table '{name}'. Run `warmstart ingest --workspace {self.root}` first."
            ) from None
        except OSError as error:
            raise WorkspaceError(f"{path}: cannot read table '{name}' ({error.strerror or error}).") from None
        try:
            return pl.read_parquet(io.BytesIO(data)).lazy()
        except pl.exceptions.PolarsError as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise WorkspaceError(
                f"{path}: table '{name}' is not readable Parquet ({reason}). Run the step that writes it again, "
                "or `warmstart rollback` to the previous generation."
            ) from None

    def read(self, name: str) -> pl.DataFrame:
        return self.scan(name).collect()

    def provenance(self, name: str) -> dict[str, Any]:
        """The provenance record of the table's latest write."""
        path = self._table_path(name).with_suffix(".json")
        if not path.is_file():
            raise WorkspaceError(f"workspace {self.root} has no provenance for table '{name}'.")
        return json.loads(path.read_text(encoding="utf-8"))

    def history(self) -> list[dict[str, Any]]:
        """Every committed write recorded in this workspace, oldest first."""
        log = self.root / "provenance.jsonl"
        if not log.is_file():
            return []
        return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- state of the pinned generation ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        directory = self._generation_dir()
        if directory is None:
            return {}
        self._check_alive(directory)
        path = directory / "state.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def update_state(self, **values: Any) -> dict[str, Any]:
        """Merge `values` into the pinned generation's state.json, atomically."""
        if self._staged:
            return self._merge_state(values)
        self._writable_generation()
        with self.lock():
            return self._merge_state(values)

    def _merge_state(self, values: dict[str, Any]) -> dict[str, Any]:
        directory = self._generation_dir()
        assert directory is not None
        self._check_alive(directory)
        state = self.state() | values
        atomic_write_bytes(directory / "state.json", json.dumps(state, indent=2, default=str).encode())
        return state
