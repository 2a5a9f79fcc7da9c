"""Workspace generations under real concurrency: processes ingesting at once, readers during switches, and
ingests killed with SIGKILL at arbitrary points, then rerun."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from catalog import Workspace, WorkspaceError

REPO = Path(__file__).resolve().parents[2]

# One ingest = three tables carrying the run's tag; a consistent generation has one tag in all three.
INGESTER = """
import sys, polars as pl
from catalog import Workspace
root, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for n in range(rounds):
    run = f"{tag}-{n:05d}"
    with Workspace(root).new_generation(run) as staged:
        for name in ("interactions", "items", "users"):
            staged.write(name, pl.DataFrame({"tag": [run] * 2000}), run_id=run, source=tag)
        staged.update_state(ingest_run_id=run)
"""


def _start(root: Path, tag: str, rounds: int) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", INGESTER, str(root), tag, str(rounds)], env=env, cwd=REPO)


def _consistent_tags(space: Workspace) -> set[str]:
    tags = {str(space.read(name)["tag"].unique().item()) for name in ("interactions", "items", "users")}
    assert tags == {space.state()["ingest_run_id"]}, f"mixed generation: {tags}"
    return tags


def test_concurrent_ingests_and_readers_never_see_a_mix(tmp_path: Path) -> None:
    writers = [_start(tmp_path, tag, 15) for tag in ("a", "b")]
    seen: set[str] = set()
    while any(writer.poll() is None for writer in writers):
        if (tmp_path / "generation.json").exists():
            try:
                seen |= _consistent_tags(Workspace(tmp_path))  # a reader pinned to one generation
            except WorkspaceError as error:  # two switches while it read: its generation is gone, it says so
                assert "was removed by later ingests" in str(error)
    assert [writer.wait() for writer in writers] == [0, 0]
    assert len(seen) > 1, "the reader saw several generations switch in"
    final = Workspace(tmp_path)
    _consistent_tags(final)
    assert {entry["run_id"] for entry in final.history()} == {f"{t}-{n:05d}" for t in "ab" for n in range(15)}
    assert sorted(p.name for p in (tmp_path / "generations").iterdir()) == sorted(final.generations().values())


def test_an_ingest_killed_anywhere_leaves_a_consistent_workspace_and_a_rerun_cleans_up(tmp_path: Path) -> None:
    rng = random.Random(0)
    for attempt in range(6):
        writer = _start(tmp_path, f"k{attempt}", 1000)
        time.sleep(1.0 + rng.random())  # the interpreter starts in about a second, then it ingests in a loop
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if (tmp_path / "generation.json").exists():
            _consistent_tags(Workspace(tmp_path))
    rerun = _start(tmp_path, "rerun", 1)
    assert rerun.wait() == 0
    assert _consistent_tags(Workspace(tmp_path)) == {"rerun-00000"}
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.startswith(".staging")]
    assert leftovers == []
    assert len(list((tmp_path / "generations").iterdir())) == 2
    assert not pl.read_parquet(Workspace(tmp_path).tables / "items.parquet").is_empty()


# Ingests through the real loader and step, each run with its own item and user ids.
STEP_INGESTER = """
import sys
from pathlib import Path
from catalog import Workspace, load_files
from flows.stages import ingest as store_dataset
root, folder, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for n in range(rounds):
    items, inter = folder / f"items{n}.csv", folder / f"inter{n}.csv"
    items.write_text("item_id,title\\n" + "".join(f"r{n}i{k},T{k}\\n" for k in range(30)))
    inter.write_text("user_id,item_id,ts\\n" + "".join(f"r{n}u{k % 7},r{n}i{k},{1700000000 + k}\\n" for k in range(25)))
    store_dataset(Workspace(root), load_files(inter, items), f"run{n:04d}")
"""


def test_detect_during_ingests_writes_segments_of_the_data_it_read(tmp_path: Path) -> None:
    from flows.stages import detect

    root, folder = tmp_path / "ws", tmp_path / "files"
    folder.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", STEP_INGESTER, str(root), str(folder), "40"]
    writer = subprocess.Popen(command, env=env, cwd=REPO)
    detections = 0
    while writer.poll() is None:
        if not (root / "generation.json").exists():
            continue
        space = Workspace(root)
        try:
            detect(space, f"detect{detections}", sparse_max=2, head_share=0.8)
            segmented = set(space.read("segments").filter(pl.col("kind") == "item")["entity_id"])
            items = set(space.read("items")["item_id"])
        except WorkspaceError as error:  # its generation was replaced twice while it ran: it says so
            assert "was removed by later ingests" in str(error)
            continue
        detections += 1
        assert segmented == items, "segments of one generation's data only"
    assert writer.wait() == 0
    assert detections > 1
    final = Workspace(root)
    if final.exists("segments"):  # whatever generation holds segments, they are of its own items
        assert set(final.read("segments").filter(pl.col("kind") == "item")["entity_id"]) == set(
            final.read("items")["item_id"]
        )
