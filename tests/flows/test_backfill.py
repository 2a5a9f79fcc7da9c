"""The backfill flow on real MovieLens-100K windows, through the real CLI, a real Prefect server and SQLite."""

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

from catalog import Workspace, WorkspaceError
from flows.cli import app
from flows.cycle import gate_config, rolling_choice
from monitor import COMPLETED, FAILED, MetricsStore
from training import TIMED_ALTERNATIVES, TimedChoices

# Two 10-day windows at the end of MovieLens-100K (last rating 1998-04-22); few epochs keep each window short.
WINDOWS = ["--start", "1998-03-31", "--every", "10d", "--max-epochs", "5"]


def _cli(workspace: Path, data: Path) -> list[str]:
    command = Path(sys.executable).with_name("warmstart")
    return [
        str(command),
        "backfill",
        "--dataset",
        "ml-100k",
        "--data",
        str(data),
        *WINDOWS,
        "--workspace",
        str(workspace),
    ]


def _completed(workspace: Path) -> pl.DataFrame:
    """Completed runs, read as a dashboard would (read-only) while the backfill writes; none before it exists."""
    try:
        store = MetricsStore.for_workspace(workspace, read_only=True)
    except WorkspaceError:
        return pl.DataFrame()
    try:
        return store.runs().filter(pl.col("status") == COMPLETED)
    except Exception:  # the writer is still creating the schema
        return pl.DataFrame()
    finally:
        store.close()


def test_backfill_killed_midway_resumes_without_duplicates(
    prefect_api: str, cache_dir: Path, ml100k_dir: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    env = os.environ | {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "WARMSTART_CACHE_DIR": str(cache_dir),
    }
    first = subprocess.Popen(
        _cli(workspace, ml100k_dir), env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while _completed(workspace).height < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, f"backfill ended before it could be killed: {first.stderr.read().decode()[-2000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    survivors = _completed(workspace)
    assert survivors.height == 1
    finished_before = dict(zip(survivors["window_end"], survivors["run_id"], strict=True))

    rerun = subprocess.run(_cli(workspace, ml100k_dir), env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "skipped" in rerun.stdout + rerun.stderr

    store = MetricsStore.for_workspace(workspace)
    runs = store.runs()
    completed = runs.filter(pl.col("status") == COMPLETED)
    assert completed["window_end"].n_unique() == completed.height == 2
    # Finished windows were not redone: their runs are the ones that completed before the kill.
    for window_end, run_id in finished_before.items():
        assert completed.filter(pl.col("window_end") == window_end)["run_id"].item() == run_id
    # The window the kill interrupted was marked failed and left no metric rows.
    interrupted = runs.filter(pl.col("status") != COMPLETED)
    assert interrupted["status"].to_list() == [FAILED] * interrupted.height
    metrics = store.metrics(completed_only=False)
    assert set(metrics["run_id"]) == set(completed["run_id"])
    assert metrics.select("as_of", "protocol", "segment", "metric", "k").is_duplicated().sum() == 0
    assert metrics.filter(pl.col("segment") == "overall")["as_of"].n_unique() == 2
    # The product, popularity, recent popularity, tail-calibrated, the product without augmentation, and a line per
    # timed alternative.
    assert metrics["protocol"].n_unique() == 5 + len(TIMED_ALTERNATIVES)
    assert store.promotions().height == 2
    # Rolling choice (its rule: tests/flows/test_rolling_choice.py): the first window serves the default timed
    # choices, the second the choice its rule reads from the first window's lines, the resumed run reading the
    # killed run's rows.
    first_run, second_run = completed.sort("window_end")["run_id"]
    gate = gate_config(("overall/ndcg@20", "cold/recall@20"))
    best, _ = rolling_choice(store.run_metrics(first_run), list(TIMED_ALTERNATIVES), gate)
    for run_id, choices in ((first_run, TimedChoices()), (second_run, TIMED_ALTERNATIVES[best])):
        metadata = workspace / "backfill" / "models" / "lightgbm" / run_id / "metadata.json"
        config = json.loads(metadata.read_text())["config"]
        assert (config["prior_days"], config["cold_slots"]) == (choices.prior_days, choices.cold_slots)
    rows_after = metrics.height

    again = subprocess.run(_cli(workspace, ml100k_dir), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert store.runs().height == runs.height
    assert store.metrics(completed_only=False).height == rows_after
    store.close()


def test_demo_backfills_and_prints_the_trend_from_the_store(prefect_api: str, ml100k_dir: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    arguments = ["demo", "--data", str(ml100k_dir), "--every", "90d", "--max-epochs", "5", "--augment-limit", "1"]
    result = CliRunner().invoke(app, [*arguments, "--workspace", str(workspace)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "100,000 ratings, 1,682 movies, 943 users" in result.output
    segments = Workspace(workspace).read("segments")
    new_items = segments.filter((pl.col("kind") == "item") & pl.col("is_new")).height
    assert new_items > 0
    assert f"│ new     │ {new_items:>5,} │" in result.output
    store = MetricsStore.for_workspace(workspace, read_only=True)
    overall = store.metrics().filter((pl.col("segment") == "overall") & (pl.col("metric") == "recall"))
    product = overall.filter(pl.col("protocol") == "temporal")
    assert product.height == 2  # 1997-09-20 + 90 d and + 180 d, each evaluated on the following window
    assert "recall@20 per segment" in result.output
    # Every window's product and reference figures are printed, side by side.
    # (an 80-column console shortens the later headers: the values below are what must be there)
    assert "┃ product ┃ popularity ┃" in result.output
    # the product, popularity, recent popularity, tail-calibrated, without augmentation, the timed alternatives
    assert overall.height == 2 * (5 + len(TIMED_ALTERNATIVES))
    for value in overall.filter(~pl.col("protocol").str.contains(":choice_"))["value"]:
        assert f"{value:.4f}" in result.output
    # Each timed alternative's NDCG, which the next window's rolling choice reads, in a table of its own.
    assert "of each timed choice" in result.output
    choices = store.metrics().filter(
        (pl.col("segment") == "overall") & (pl.col("metric") == "ndcg") & pl.col("protocol").str.contains(":choice_")
    )
    assert choices.height == 2 * len(TIMED_ALTERNATIVES)
    for value in choices["value"]:
        assert f"{value:.4f}" in result.output
    # The language model's budget: one new item per window described, its synthetic pairs scored against
    # the next window.
    augmentation = store.augmentation()
    assert augmentation["items_augmented"].to_list() == [1, 1]
    assert augmentation["synthetic_precision"].null_count() == 0
    assert "augmentation" in result.output
    # Each window's model trained on the judge's synthetic interactions: the cold items they warmed (on a log with
    # times the embedding simulator is off, so it has no precision), and cold and tail recall with and without
    # them, printed from the store.
    assert (augmentation["cold_items_warmed"] > 0).all() and augmentation["simulator_precision"].is_null().all()
    assert "cold recall@20 with and without" in result.output and "tail recall@20 with and without" in result.output
    # Each window's version names the judged synthetic rows it trained on: its own run's, from the scratch tables.
    for run_id, rows in zip(augmentation["run_id"], augmentation["synthetic_rows"], strict=True):
        saved = workspace / "backfill" / "models" / "lightgbm" / run_id / "report.json"
        trained_on = json.loads(saved.read_text())["augmentation"]
        assert (trained_on["synthetic_rows"], trained_on["synthetic_runs"]) == (rows, [run_id])
        assert rows > 0


def test_backfill_without_a_data_set_replays_the_workspaces_own_log(
    slice_copy: Callable[[], Path], warmstart: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    workspace = slice_copy()
    done = warmstart("backfill", *WINDOWS, "--workspace", str(workspace))
    assert "workspace backfill" in done.stdout
    store = MetricsStore.for_workspace(workspace, read_only=True)
    runs = store.runs().filter(pl.col("flow") == "backfill")
    store.close()
    # The slice was ingested from files (data set "custom"): its own two windows, not MovieLens-100K's whole log.
    assert runs["status"].to_list() == [COMPLETED, COMPLETED] and set(runs["dataset"]) == {"custom"}
