"""One writer per workspace (issue 28): commands that read, change and write back the data or the model registry run
one after the other under the workspace's writer lock, say whom they wait for, refuse after a bounded wait having
changed nothing, and a refresh promotes only over the version it was gated against.

The races are arranged, not hoped for: the test holds the writer lock itself while the real commands (in their own
processes) reach it, checks that each says it waits, then lets them go."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from catalog import Columns, Tables, Workspace, WorkspaceError, load_additions
from flows import cycle, stages
from monitor import GateConfig, GateDecision, MetricsStore

REPO = Path(__file__).resolve().parents[2]
HOLDER = "the test holding the lock"
FAST_REFRESH = ["--augment-limit", "0", "--max-epochs", "3", "--k", "10", "--no-reference-gate"]


def _start(
    args: list[str], log: Path, *, cache_dir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The real CLI in its own process, its stdout and stderr into `log` (read while it runs)."""
    environment = os.environ | {"PYTHONPATH": str(REPO), "WARMSTART_CACHE_DIR": str(cache_dir)} | (env or {})
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], stdout=handle, stderr=subprocess.STDOUT, env=environment
        )


def _wait_for(logs: list[Path], text: str, processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Until every log holds `text` (fails early when a process ended without saying it)."""
    deadline = time.monotonic() + timeout
    while not all(text in " ".join(log.read_text().split()) for log in logs):
        for process, log in zip(processes, logs, strict=True):
            assert process.poll() is None or text in log.read_text(), f"ended without waiting:\n{log.read_text()}"
        assert time.monotonic() < deadline, "\n---\n".join(log.read_text()[-2000:] for log in logs)
        time.sleep(0.2)


def _finish(process: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    process.wait(timeout=timeout)
    output = " ".join(log.read_text().split())
    assert process.returncode == 0, output[-3000:]
    return output


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _items_file(path: Path, ids: list[str]) -> Path:
    pl.DataFrame({Columns.item: ids, Columns.title: [f"Film {i}" for i in ids]}).write_csv(path)
    return path


def test_two_add_items_at_once_keep_both_sets_of_items(
    slice_copy: Callable[[], Path], cache_dir: Path, tmp_path: Path
) -> None:
    """The operator's loss: 3,000 items acknowledged, then gone when a one-item add-items wrote back the table it had
    read before them. Now the second waits for the first and extends what it wrote."""
    workspace = slice_copy()
    before = Workspace(workspace).read(Tables.items)[Columns.item].to_list()
    first = _items_file(tmp_path / "first.csv", [f"batch-{n}" for n in range(300)])
    second = _items_file(tmp_path / "second.csv", ["single-1"])
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with Workspace(workspace).writer(HOLDER):
        processes = [
            _start(["add-items", str(file), "-w", str(workspace)], log, cache_dir=cache_dir)
            for file, log in zip((first, second), logs, strict=True)
        ]
        # Both have read their files and embedded them; neither has read the table yet.
        _wait_for(logs, f"waiting for the workspace's writer lock held by {HOLDER}, pid {os.getpid()}", processes, 120)
    for process, log in zip(processes, logs, strict=True):
        _finish(process, log, 120)
    items = Workspace(workspace).read(Tables.items)[Columns.item].to_list()
    assert items[: len(before)] == before
    assert sorted(items[len(before) :]) == sorted([*(f"batch-{n}" for n in range(300)), "single-1"])
    assert len(set(items)) == len(items)


@pytest.mark.parametrize(
    "command",
    [
        ["add-users", "{file}"],
        ["promote", "some-version"],
        ["rollback"],
        ["ingest", "--append", "--interactions", "{log}"],
    ],
    ids=["add-users", "promote", "rollback", "append"],
)
def test_a_writer_that_waits_too_long_refuses_and_changes_nothing(
    command: list[str], slice_copy: Callable[[], Path], cache_dir: Path, tmp_path: Path
) -> None:
    workspace = slice_copy()
    users = tmp_path / "users.csv"
    users.write_text("user_id,age\nnew-user,30\n")
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n1,1,2000-01-01T00:00:00Z\n")
    args = [part.format(file=users, log=events) for part in command]
    log = tmp_path / "refused.log"
    with Workspace(workspace).writer(HOLDER):
        before = _snapshot(workspace)
        process = _start([*args, "-w", str(workspace)], log, cache_dir=cache_dir, env={"WARMSTART_WRITER_WAIT": "1"})
        process.wait(timeout=120)
        after = _snapshot(workspace)
    output = " ".join(log.read_text().split())
    assert process.returncode == 1, output
    assert f"waiting for the workspace's writer lock held by {HOLDER}, pid {os.getpid()} since" in output
    assert f"refused: the writer lock is still held by {HOLDER}" in output and "nothing was changed" in output
    assert after == before


def _fake_version(workspace: Path, version: str) -> None:
    """A saved version as far as the registry is concerned (its metadata.json), for promotions by hand."""
    directory = Workspace(workspace).models.path("lightgbm", version)
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text("{}")


def test_a_promotion_by_hand_during_a_refresh_is_kept(
    slice_copy: Callable[[], Path], cache_dir: Path, tmp_path: Path
) -> None:
    """A refresh gated its candidate against v1; `warmstart promote v2` (the real command) lands before the refresh's
    promotion step. That step, under the writer lock, sees the change: the candidate is not promoted, the run's
    record says why, and the next refresh's reconciliation does not promote it either."""
    workspace = slice_copy()
    for version in ("v1", "v2", "candidate"):
        _fake_version(workspace, version)
    registry = Workspace(workspace).models
    registry.promote("lightgbm", "v1", reason="the incumbent")
    gate = GateConfig()
    decision = GateDecision(promoted=True, reason="better than v1", candidate={}, incumbent={})
    store = MetricsStore.for_workspace(workspace)
    with store.run("candidate", flow="refresh", dataset="slice", parameters={}) as run:
        run.record.model_version = "candidate"
        run.record.promotion = decision.record("candidate", "v1", gate)
        log = tmp_path / "promote.log"
        _finish(_start(["promote", "v2", "-w", str(workspace)], log, cache_dir=cache_dir), log, 120)
        with Workspace(workspace).writer("refresh candidate (promotion)"):
            decided = cycle.still_current(registry, "lightgbm", decision, run)
    cycle.promote(registry, "lightgbm", decided, "candidate")
    cycle.reconcile(registry, store, flow="refresh", dataset="slice", ranker="lightgbm")
    assert not decided.promoted
    assert decided.reason == "the current version changed during this run (v1 -> v2); not promoted; run refresh again"
    assert registry.current("lightgbm") == "v2"
    assert [entry["version"] for entry in registry.promotions()] == ["v1", "v2"]
    recorded = store.promotions().filter(pl.col("candidate_version") == "candidate")
    assert recorded["promoted"].to_list() == [False] and recorded["reason"].to_list() == [decided.reason]
    store.close()


def test_two_refreshes_at_once_never_both_promote(
    slice_copy: Callable[[], Path], cache_dir: Path, prefect_api: str, tmp_path: Path
) -> None:
    """Both refreshes train and gate against no model at all; the test holds the writer lock until both wait for it
    at their promotion. The one that gets it first promotes; the other finds the current version changed and does
    not promote over it.

    Meanwhile two ingests switch generations twice, so the generation both runs started on is removed: the one that
    promotes publishes into the current generation and exits 0 (it exited 1, "generation ... was removed", after the
    store had recorded it completed and promoted)."""
    workspace = slice_copy()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    env = {"PREFECT_API_URL": prefect_api}
    with Workspace(workspace).writer(HOLDER):
        started_on = Workspace(workspace).generation
        processes = [
            _start(["refresh", *FAST_REFRESH, "-w", str(workspace)], log, cache_dir=cache_dir, env=env) for log in logs
        ]
        _wait_for(logs, f"(promotion): waiting for the workspace's writer lock held by {HOLDER}", processes, 600)
        for run in ("20990101T000000Z-first", "20990101T000001Z-second"):  # this thread is the writer: no wait
            ingested = Workspace(workspace)
            stages.ingest(ingested, stages.workspace_dataset(ingested), run)
        assert not (workspace / "generations" / str(started_on)).exists()
    outputs = [_finish(process, log, 300) for process, log in zip(processes, logs, strict=True)]
    promoted = [output for output in outputs if "promoted: now current" in output]
    refused = [output for output in outputs if "not promoted; run refresh again" in output]
    assert len(promoted) == 1 and len(refused) == 1, outputs
    registry = Workspace(workspace).models
    [entry] = registry.promotions()
    assert entry["previous"] is None and entry["version"] == registry.current("lightgbm")
    assert f"the current version changed during this run (none -> {entry['version']})" in refused[0]
    store = MetricsStore.for_workspace(workspace, read_only=True)
    decisions = store.promotions().sort("promoted")
    assert decisions["promoted"].to_list() == [False, True]
    assert decisions["candidate_version"][1] == entry["version"]
    assert store.runs("refresh")["status"].to_list() == ["completed", "completed"]
    store.close()
    published = Workspace(workspace)
    assert published.generation == "20990101T000001Z-second"
    assert set(published.read(Tables.recommendations)["model_version"]) == {entry["version"]}


def test_reconciling_a_recorded_promotion_waits_for_the_writer_and_only_when_it_has_to(
    slice_copy: Callable[[], Path],
) -> None:
    """A refresh starts by promoting what the metrics store recorded but the registry never got (a run killed in
    between). That is a promotion too, so it takes the writer lock; a refresh with nothing to reconcile must not wait
    for another writer at its start (it would wait behind a long add-items for nothing)."""
    workspace = slice_copy()
    _fake_version(workspace, "killed-run")
    registry = Workspace(workspace).models
    store = MetricsStore.for_workspace(workspace)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another thread: its lock is another holder, as another process's would be
        with Workspace(workspace).writer(HOLDER):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(60)
    try:
        impatient = Workspace(workspace, writer_wait=0, on_wait=lambda _: None)
        reconcile = {"flow": "refresh", "dataset": "slice", "ranker": "lightgbm"}
        cycle.reconcile(registry, store, **reconcile, writer=impatient.writer("refresh"))  # nothing recorded: no wait
        decision = GateDecision(promoted=True, reason="better", candidate={}, incumbent=None)
        with store.run("killed-run", flow="refresh", dataset="slice", parameters={}) as run:
            run.record.model_version = "killed-run"
            run.record.promotion = decision.record("killed-run", None, GateConfig())
        with pytest.raises(WorkspaceError, match=f"still held by {HOLDER}"):
            cycle.reconcile(registry, store, **reconcile, writer=impatient.writer("refresh"))
        assert registry.current("lightgbm") is None
    finally:
        release.set()
        holder.join()
    cycle.reconcile(registry, store, **reconcile, writer=impatient.writer("refresh"))
    assert registry.current("lightgbm") == "killed-run"
    store.close()


def test_the_callers_workspace_follows_an_ingest_or_append_to_its_new_generation(
    slice_copy: Callable[[], Path], tmp_path: Path
) -> None:
    """The writer reads through a workspace pinned when it gets the lock, but the switch is the caller's: a command
    that ingests then detects (`warmstart trends`) goes on with the data it just wrote."""
    space = Workspace(slice_copy())
    old = space.generation
    stages.ingest(space, stages.workspace_dataset(space), "20990101T000000Z-again")
    assert space.generation == "20990101T000000Z-again" == Workspace(space.root).generation
    assert Workspace(space.root).generations()["previous"] == old
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n1,1,2000-01-01T00:00:00Z\n")
    report = stages.append(space, load_additions(events, None, None), "20990102T000000Z-append", source=str(events))
    assert report.as_dict()["interactions_added"] == 1
    assert space.generation == "20990102T000000Z-append" == Workspace(space.root).generation
