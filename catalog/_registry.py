"""The workspace's layout and its model registry: table names in one place, and model versions with one meaning
of "current".

Layout::

    WORKSPACE/models/RANKER/VERSION/     one saved version (the ranker's files and metadata.json)
    WORKSPACE/models/RANKER/VERSION/report.json   what the run that trained it measured (optional)
    WORKSPACE/models/current.json        the promoted version of each ranker, written atomically
    WORKSPACE/models/promotions.jsonl    every promotion and rollback, one JSON object a line

"Current" is the promoted version: the metrics store records each gate decision, and current.json holds its
outcome so that serving reads it without the store. A version exists once its metadata.json does (rankers write
it last), so a run killed while saving leaves no version behind.

A run writes its version folder under a guard (`ModelRegistry.saving`): VERSION/.saving, locked by the writing
process for as long as the run is undecided, and hidden from the listing meanwhile. A run that fails removes its
folder; a killed one leaves the guard unlocked, and the next start sweeps it (`ModelRegistry.sweep`).
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catalog._workspace import atomic_write_bytes
from catalog.errors import WorkspaceError


class Tables:
    """Names of the workspace's tables, so that a rename is one edit."""

    interactions = "interactions"
    items = "items"
    users = "users"
    segments = "segments"
    item_embeddings = "item_embeddings"
    item_descriptions = "item_descriptions"
    user_profiles = "user_profiles"
    synthetic_interactions = "synthetic_interactions"
    recommendations = "recommendations"
    split_prefix = "split_"

    base = (interactions, items, users)


METADATA = "metadata.json"
REPORT = "report.json"
GUARD = ".saving"  # in a version folder whose run is still writing or deciding it (see ModelRegistry.saving)
LOCK = ".lock"  # the registry's lock: taking a guard and sweeping exclude each other


@dataclass(frozen=True)
class ModelVersion:
    """One saved model version."""

    ranker: str
    version: str
    path: Path
    current: bool

    def report(self) -> dict[str, Any]:
        """The training run's report (report.json), or {} when none was written."""
        path = self.path / REPORT
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class ModelRegistry:
    """Model versions under one directory (WORKSPACE/models): save paths, versions, current, promote."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    def path(self, ranker: str, version: str) -> Path:
        """Where version `version` of `ranker` lives (a ranker's `save` writes into it)."""
        for part in (ranker, version):
            if not part or "/" in part or part.startswith("."):
                raise WorkspaceError(f"model name {part!r} must be a plain directory name.")
        return self.root / ranker / version

    def exists(self, ranker: str, version: str) -> bool:
        return (self.path(ranker, version) / METADATA).is_file()

    def versions(self, ranker: str | None = None) -> list[ModelVersion]:
        """Saved versions (of `ranker`, or of every ranker), oldest first: versions are run ids, sorted by time."""
        rankers = [ranker] if ranker else sorted(p.name for p in self.root.glob("*") if p.is_dir())
        current = self._current()
        return [
            ModelVersion(name, path.name, path, current.get(name, {}).get("version") == path.name)
            for name in rankers
            for path in sorted((self.root / name).glob("*"))
            if (path / METADATA).is_file() and not (path / GUARD).exists()
        ]

    def _current(self) -> dict[str, dict[str, Any]]:
        path = self.root / "current.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise WorkspaceError(f"{path} is not valid JSON ({error}); promote a version to rewrite it.") from None

    def current(self, ranker: str) -> str | None:
        """The promoted version of `ranker`, or None before any promotion."""
        return self._current().get(ranker, {}).get("version")

    def promote(self, ranker: str, version: str, *, reason: str, run_id: str | None = None) -> dict[str, Any]:
        """Make `version` the current model of `ranker` (atomically) and log it; returns the log entry."""
        if not self.exists(ranker, version) or (self.path(ranker, version) / GUARD).exists():
            known = ", ".join(v.version for v in self.versions(ranker)) or "none"
            raise WorkspaceError(f"no saved version {version!r} of {ranker} under {self.root} (versions: {known}).")
        entries = self._current()
        entry = {
            "ranker": ranker,
            "version": version,
            "previous": entries.get(ranker, {}).get("version"),
            "reason": reason,
            "run_id": run_id,
            "at": datetime.now(UTC).isoformat(),
        }
        entries[ranker] = entry
        atomic_write_bytes(self.root / "current.json", json.dumps(entries, indent=2).encode())
        with (self.root / "promotions.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        return entry

    def promotions(self) -> list[dict[str, Any]]:
        """Every promotion and rollback, oldest first."""
        log = self.root / "promotions.jsonl"
        if not log.is_file():
            return []
        return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def previous(self, ranker: str) -> str | None:
        """The version that was current before the current one (what a rollback restores)."""
        return self._current().get(ranker, {}).get("previous")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK).open("ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @contextmanager
    def saving(self, ranker: str, version: str) -> Iterator[Path]:
        """Hold version `version`'s folder while a run writes it and decides on it; yields the folder.

        Its guard file is locked by this process until the block ends: unlisted and unpromotable meanwhile, so a
        version appears whole with its run's outcome or not at all. When the block raises, the folder is removed
        (a failed run leaves no version); when this process is killed, the kernel frees the guard and the next
        `sweep` finds it."""
        directory = self.path(ranker, version)
        with self._lock():  # a sweep never sees the folder before its guard is held
            directory.mkdir(parents=True, exist_ok=True)
            guard = (directory / GUARD).open("ab")
            fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            yield directory
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        else:
            (directory / GUARD).unlink(missing_ok=True)
        finally:
            guard.close()

    def sweep(self, committed: Callable[[str, str], bool]) -> list[tuple[str, str]]:
        """Remove what killed runs left: every version folder whose guard no process holds any more (its run was
        killed), unless `committed(ranker, version)` says its run's outcome was recorded (then only the guard goes),
        and every folder without metadata.json nor guard (a run killed while saving, before guards). Returns the
        (ranker, version) folders removed."""
        removed: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return removed
        with self._lock():
            for directory in sorted(path for path in self.root.glob("*/*") if path.is_dir()):
                ranker, version = directory.parent.name, directory.name
                guard = directory / GUARD
                if guard.exists():
                    with guard.open("ab") as handle:
                        try:
                            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            continue  # its run is alive
                    if committed(ranker, version):
                        guard.unlink(missing_ok=True)
                        continue
                elif (directory / METADATA).is_file():
                    continue
                shutil.rmtree(directory, ignore_errors=True)
                removed.append((ranker, version))
        return removed
