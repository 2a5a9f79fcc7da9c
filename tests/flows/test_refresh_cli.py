"""The gated, recorded cycle through `warmstart refresh`, the model registry (`models`, `promote`) and a killed run,
on a small real MovieLens slice with the real models, a real Prefect API and the SQLite metrics store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from catalog import Columns, Tables, Workspace
from flows.cli import app
from flows.cycle import default_gate_metrics, gate_config, rolling_choice
from monitor import MetricsStore
from ranker.registry import load_ranker
from training import EVALUATED, TIMED_ALTERNATIVES

runner = CliRunner()
# Without the reference gate: these tests are about the registry and the gate against the current model.
FAST = ["--augment-limit", "0", "--max-epochs", "3", "--k", "10", "--no-reference-gate"]


Warmstart = Callable[..., subprocess.CompletedProcess[str]]


def test_refresh_twice_gates_the_second_against_the_first_and_promote_rolls_back(
    warmstart: Warmstart, slice_copy: Callable[[], Path], cache_dir: Path, prefect_api: str
) -> None:
    workspace = slice_copy()
    done = warmstart("refresh", *FAST, "-w", str(workspace))
    output = done.stdout
    assert "promoted: now current" in output
    for stage in ("detect", "encode", "retrain", "evaluate", "refit"):  # each stage says when it ends
        assert f"{stage}: done in" in output + done.stderr
    assert "timed choice: choice_recent14_place1 (no earlier run measured the alternatives)" in output
    output = warmstart("refresh", *FAST, "-w", str(workspace)).stdout
    assert "promoted: now current" in output
    registry = Workspace(workspace).models
    first, second = (version.version for version in registry.versions("lightgbm"))
    assert registry.current("lightgbm") == second and registry.previous("lightgbm") == first
    store = MetricsStore.for_workspace(workspace, read_only=True)
    promotions = store.promotions()
    assert promotions["incumbent_version"].to_list() == [None, first]  # the second run was gated against the first
    runs = store.runs()
    assert runs["flow"].to_list() == ["refresh", "refresh"] and set(runs["status"]) == {"completed"}

    # The second run served the timed alternative its rule (tests/flows/test_rolling_choice.py) reads from the
    # first run's lines, and its model is that alternative's.
    gate = gate_config(default_gate_metrics(10))
    assert {f"temporal:{name}" for name in TIMED_ALTERNATIVES} <= set(store.run_metrics(first)["protocol"])
    chosen, why = rolling_choice(store.run_metrics(first), list(TIMED_ALTERNATIVES), gate)
    assert json.loads(runs["parameters"][1])["timed_choice"] == chosen
    assert " ".join(f"timed choice: {why}".split()) in " ".join(output.split())  # (as printed, lines wrapped)
    ndcg = store.run_metrics(second).filter((pl.col("segment") == "overall") & (pl.col("metric") == "ndcg"))
    product, line = (ndcg.filter(pl.col("protocol") == p)["value"].item() for p in ("temporal", f"temporal:{chosen}"))
    assert product == line
    report = json.loads((registry.path("lightgbm", second) / "report.json").read_text())
    assert report["parent"] == first and report["metrics"]

    # The version served was refit on every event with what the evaluated candidate chose (its boosting rounds,
    # without early stopping); the evaluated ranker stays beside it, and the second gate re-scored the first
    # version's evaluated ranker on its window (the refit had trained on it), not its recorded figures.
    last_event = Workspace(workspace).read(Tables.interactions)[Columns.ts].max()
    assert report["evaluated"]["refit"] and report["data_window"]["end"] == str(last_event)
    assert report["evaluated"]["train_window"]["end"] < report["data_window"]["end"]
    served, evaluated = (load_ranker(registry.path("lightgbm", second) / part) for part in ("", EVALUATED))
    assert served.config.early_stopping_rounds is None  # type: ignore[attr-defined]
    assert served.config.n_estimators == evaluated.metadata["best_iteration"]  # type: ignore[attr-defined]
    assert "recorded figures" not in promotions["reason"][1]

    listing = runner.invoke(app, ["models", "-w", str(workspace)])
    assert listing.exit_code == 0, listing.output
    lines = [line for line in listing.output.splitlines() if first[:15] in line or second[:15] in line]
    assert len(lines) == 2 and "*" in lines[1] and "*" not in lines[0]

    back = runner.invoke(app, ["promote", "--previous", "-w", str(workspace)])
    assert back.exit_code == 0, back.output
    assert registry.current("lightgbm") == first
    # The published table follows the current version, at the refresh's k.
    published = Workspace(workspace).read(Tables.recommendations)
    assert set(published["model_version"]) == {first} and set(published.group_by(Columns.user).len()["len"]) == {10}
    forward = runner.invoke(app, ["promote", second, "--reason", "checked by hand", "-w", str(workspace)])
    assert forward.exit_code == 0, forward.output
    assert registry.current("lightgbm") == second
    assert [entry["version"] for entry in registry.promotions()] == [first, second, first, second]
    hand = MetricsStore.for_workspace(workspace, read_only=True).runs("promote")
    assert hand.height == 2 and set(hand["status"]) == {"completed"}

    unknown = runner.invoke(app, ["promote", "20990101T000000Z-nope", "-w", str(workspace)])
    assert unknown.exit_code == 1 and "no saved version" in unknown.output
    assert registry.current("lightgbm") == second


def test_a_candidate_that_does_not_beat_the_current_model_is_refused(
    warmstart: Warmstart, slice_copy: Callable[[], Path], cache_dir: Path, prefect_api: str
) -> None:
    workspace = slice_copy()
    warmstart("refresh", *FAST, "-w", str(workspace))
    current = Workspace(workspace).models.current("lightgbm")
    # Same data and seed: the candidate only ties the current model, and this gate asks for +0.5 NDCG.
    output = warmstart("refresh", *FAST, "--gate-tolerance", "-0.5", "-w", str(workspace)).stdout
    assert "refused: the current model stays" in output
    registry = Workspace(workspace).models
    assert registry.current("lightgbm") == current
    assert len(registry.versions("lightgbm")) == 2  # the refused candidate is kept, for audit, but not current
    promotions = MetricsStore.for_workspace(workspace, read_only=True).promotions()
    assert promotions["promoted"].to_list() == [True, False]
    assert "regressed" in promotions["reason"][1]


def test_a_refresh_killed_while_training_leaves_the_registry_as_it_was(
    warmstart: Warmstart, slice_copy: Callable[[], Path], cache_dir: Path, prefect_api: str
) -> None:
    workspace = slice_copy()
    warmstart("refresh", *FAST, "-w", str(workspace))
    registry = Workspace(workspace).models
    before = [version.version for version in registry.versions()]
    current = registry.current("lightgbm")
    env = os.environ | {"WARMSTART_CACHE_DIR": str(cache_dir), "PREFECT_API_URL": prefect_api}
    slow = [*FAST, "--max-epochs", "150"]  # long enough to be killed while training
    command = [sys.executable, "-m", "flows.cli", "refresh", *slow, "-w", str(workspace)]
    embeddings = Workspace(workspace).tables / "item_embeddings.parquet"  # the current generation's
    encoded_before = embeddings.stat().st_mtime_ns
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = MetricsStore.for_workspace(workspace, read_only=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if embeddings.stat().st_mtime_ns != encoded_before:
            break  # the second run got past encoding: it is training
        time.sleep(0.2)
    assert process.poll() is None, "the refresh ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    assert [version.version for version in registry.versions()] == before
    assert registry.current("lightgbm") == current
    assert store.runs()["status"].to_list() == ["completed", "running"]
    killed = store.runs()["run_id"][1]
    assert store.run_metrics(killed).is_empty()
    # Its version folder, guarded from its start, is left without metadata.json (and is no version).
    assert (registry.path("lightgbm", killed) / ".saving").is_file()
    assert not (registry.path("lightgbm", killed) / "metadata.json").exists()
    # A rerun sweeps the folder, records the killed run as failed and completes.
    warmstart("refresh", *slow, "-w", str(workspace))
    assert store.runs()["status"].to_list() == ["completed", "failed", "completed"]
    assert store.runs()["error"][1] == "killed before its outcome was recorded; its version folder was removed"
    assert not registry.path("lightgbm", killed).exists()
    promoted = store.promotions().filter(pl.col("promoted"))["candidate_version"]
    assert registry.current("lightgbm") == promoted[-1]  # the gate's last word, whichever it was
