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
"""

from __future__ import annotations

import json
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
            if (path / METADATA).is_file()
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
        if not self.exists(ranker, version):
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
