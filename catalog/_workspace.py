"""The workspace: a directory of Parquet tables, each written atomically with a provenance record.

Layout::

    WORKSPACE/
      tables/NAME.parquet        the table
      tables/NAME.json           provenance of its latest write (run id, source, rows, schema, parameters)
      provenance.jsonl           every write ever made, one JSON object a line
      state.json                 small run state (e.g. the detection watermark)

A write goes to a temporary file in the same directory, is flushed to disk, then renamed over the old
file, so a reader sees either the old table or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from catalog.errors import WorkspaceError

if TYPE_CHECKING:
    from catalog._registry import ModelRegistry


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


class Workspace:
    """Parquet tables with provenance under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tables = self.root / "tables"

    @property
    def models(self) -> ModelRegistry:
        """The model registry of this workspace (WORKSPACE/models)."""
        from catalog._registry import ModelRegistry  # the registry writes through this module's atomic writes

        return ModelRegistry(self.root / "models")

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def _table_path(self, name: str) -> Path:
        if not name.replace("_", "").isalnum():
            raise WorkspaceError(f"table name {name!r} must be letters, digits and underscores.")
        return self.tables / f"{name}.parquet"

    def exists(self, name: str) -> bool:
        return self._table_path(name).is_file()

    def write(
        self,
        name: str,
        frame: pl.DataFrame,
        *,
        run_id: str,
        source: str,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Atomically replace table `name` with `frame` and record where it came from."""
        path = self._table_path(name)
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        atomic_write_bytes(path, buffer.getvalue())
        record = {
            "table": name,
            "run_id": run_id,
            "written_at": datetime.now(UTC).isoformat(),
            "source": source,
            "rows": frame.height,
            "schema": {column: str(dtype) for column, dtype in frame.schema.items()},
            "parameters": parameters or {},
        }
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(record, indent=2).encode())
        with (self.root / "provenance.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        return record

    def scan(self, name: str) -> pl.LazyFrame:
        """The table as a LazyFrame; nothing is read until it is collected."""
        path = self._table_path(name)
        if not path.is_file():
            raise WorkspaceError(
                f"workspace {self.root} has no table '{name}'. Run `warmstart ingest --workspace {self.root}` first."
            )
        return pl.scan_parquet(path)

    def read(self, name: str) -> pl.DataFrame:
        return self.scan(name).collect()

    def provenance(self, name: str) -> dict[str, Any]:
        """The provenance record of the table's latest write."""
        path = self._table_path(name).with_suffix(".json")
        if not path.is_file():
            raise WorkspaceError(f"workspace {self.root} has no provenance for table '{name}'.")
        return json.loads(path.read_text(encoding="utf-8"))

    def history(self) -> list[dict[str, Any]]:
        """Every write recorded in this workspace, oldest first."""
        log = self.root / "provenance.jsonl"
        if not log.is_file():
            return []
        return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def update_state(self, **values: Any) -> dict[str, Any]:
        """Merge `values` into state.json, atomically."""
        state = self.state() | values
        atomic_write_bytes(self.root / "state.json", json.dumps(state, indent=2, default=str).encode())
        return state
