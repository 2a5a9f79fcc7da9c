"""Workspace tables: atomic writes, provenance, lazy reads, state."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from catalog import Workspace, WorkspaceError, new_run_id


def test_write_then_scan_roundtrip_with_provenance(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    frame = pl.DataFrame({"item_id": ["a", "b"], "n": [1, 2]})
    run_id = new_run_id()
    record = space.write("items", frame, run_id=run_id, source="test", parameters={"k": 5})
    assert isinstance(space.scan("items"), pl.LazyFrame)
    assert space.read("items").equals(frame)
    assert space.provenance("items") == record
    assert record["run_id"] == run_id
    assert record["rows"] == 2
    assert record["schema"] == {"item_id": "String", "n": "Int64"}
    assert record["parameters"] == {"k": 5}


def test_rewrite_replaces_the_table_and_keeps_history(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    space.write("t", pl.DataFrame({"x": [1]}), run_id="r1", source="a")
    space.write("t", pl.DataFrame({"x": [2, 3]}), run_id="r2", source="b")
    assert space.read("t")["x"].to_list() == [2, 3]
    assert [entry["run_id"] for entry in space.history()] == ["r1", "r2"]
    assert not list(space.tables.glob(".*.tmp")), "no temporary file is left behind"


def test_failed_write_keeps_the_old_table(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    space.write("t", pl.DataFrame({"x": [1]}), run_id="r1", source="a")
    # A frame with an object column cannot be written as Parquet: the write fails midway.
    with pytest.raises(Exception, match=r"(?i)object"):
        space.write("t", pl.DataFrame({"x": [object()]}, schema={"x": pl.Object}), run_id="r2", source="b")
    assert space.read("t")["x"].to_list() == [1]
    assert space.provenance("t")["run_id"] == "r1"
    assert not list(space.tables.glob(".*.tmp"))


def test_missing_table_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match=r"no table 'interactions'.*warmstart ingest"):
        Workspace(tmp_path).scan("interactions")


def test_bad_table_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match=r"letters, digits and underscores"):
        Workspace(tmp_path).write("../escape", pl.DataFrame({"x": [1]}), run_id="r", source="s")


def test_state_merges_and_persists(tmp_path: Path) -> None:
    Workspace(tmp_path).update_state(a=1)
    Workspace(tmp_path).update_state(b="two")
    assert Workspace(tmp_path).state() == {"a": 1, "b": "two"}


def test_run_ids_are_unique_and_sortable() -> None:
    ids = [new_run_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(len(run_id) == len(ids[0]) for run_id in ids)
