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


def _ingest(space: Workspace, run_id: str, rows: int) -> None:
    with space.new_generation(run_id) as staged:
        for name in ("interactions", "items", "users"):
            staged.write(name, pl.DataFrame({"x": list(range(rows))}), run_id=run_id, source="test")
        staged.update_state(ingest_run_id=run_id)


def test_a_new_generation_replaces_the_data_and_leaves_derived_tables_behind(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    _ingest(space, "r1", 2)
    space.write("segments", pl.DataFrame({"s": ["cold"]}), run_id="d1", source="detect")
    space.update_state(watermark="2024-01-01")
    _ingest(space, "r2", 3)
    assert space.read("items").height == 3
    assert not space.exists("segments"), "segments of the old data are not served with the new data"
    assert space.state() == {"ingest_run_id": "r2"}, "the watermark went with the old data"
    assert space.generations() == {"current": "r2", "previous": "r1"}
    assert [entry["run_id"] for entry in space.history()] == ["r1"] * 3 + ["d1"] + ["r2"] * 3

    # Rollback restores the previous generation whole: tables, derived tables and state; twice undoes it.
    assert Workspace(tmp_path).rollback() == {"current": "r1", "previous": "r2"}
    old = Workspace(tmp_path)
    assert (old.read("items").height, old.exists("segments"), old.state()["watermark"]) == (2, True, "2024-01-01")
    Workspace(tmp_path).rollback()
    assert Workspace(tmp_path).read("items").height == 3


def test_only_current_and_previous_generations_are_kept(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    for run in ("r1", "r2", "r3"):
        _ingest(space, run, 1)
    assert sorted(p.name for p in (tmp_path / "generations").iterdir()) == ["r2", "r3"]


def test_a_failed_ingest_changes_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    _ingest(space, "r1", 2)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="disk full"), space.new_generation("r2") as staged:
        staged.write("interactions", pl.DataFrame({"x": [9]}), run_id="r2", source="test")
        raise RuntimeError("disk full")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert Workspace(tmp_path).read("interactions")["x"].to_list() == [0, 1]


def test_a_pinned_workspace_reads_one_generation_while_another_is_switched_in(tmp_path: Path) -> None:
    _ingest(Workspace(tmp_path), "r1", 2)
    reader = Workspace(tmp_path)
    assert reader.read("interactions").height == 2
    lazy = reader.scan("items")  # read now: a later switch cannot break it
    _ingest(Workspace(tmp_path), "r2", 5)
    assert (reader.read("users").height, lazy.collect().height) == (2, 2)
    assert Workspace(tmp_path).read("users").height == 5


def test_stale_staging_and_temporary_files_are_swept_at_the_next_switch(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    _ingest(space, "r1", 1)
    # What a killed ingest and a killed table write leave behind.
    (tmp_path / "generations" / ".staging-dead" / "tables").mkdir(parents=True)
    (tmp_path / "generations" / ".staging-dead" / "tables" / "items.parquet").write_bytes(b"half")
    (space.tables / ".items.parquet.0123.tmp").write_bytes(b"half")
    _ingest(space, "r2", 1)
    leftovers = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.startswith(".staging")]
    assert leftovers == []


def test_rollback_without_a_previous_generation_says_so(tmp_path: Path) -> None:
    _ingest(Workspace(tmp_path), "r1", 1)
    with pytest.raises(WorkspaceError, match="no previous generation"):
        Workspace(tmp_path).rollback()


def test_a_corrupt_table_names_the_file_and_the_fix(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    space.write("t", pl.DataFrame({"x": [1]}), run_id="r1", source="a")
    (space.tables / "t.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(WorkspaceError, match=r"t\.parquet: table 't' is not readable Parquet.*rollback"):
        space.read("t")


def test_a_workspace_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="is a file, not a directory"):
        Workspace(tmp_path / "file").write("t", pl.DataFrame({"x": [1]}), run_id="r", source="s")
