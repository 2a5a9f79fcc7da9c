"""Backfill: replay a data set's history window by window through the refresh cycle, one point per window.

Window i covers [start + i*every, start + (i+1)*every). Its point is measured as a scheduled retrain at the
window's end would have been: train on every event before the end, then evaluate on the next window's real
interactions; items first rated in that next window are the cold ones. Each window is one run in the metrics
history, keyed by (flow, data set, window end, parameters): a rerun skips completed windows, and a window killed
half-way left no metric rows (they are written with the run's completion, in one transaction), so it is redone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger

from catalog import (
    Columns,
    ConfigError,
    DataError,
    Dataset,
    Workspace,
    new_run_id,
    segment_counts,
    segment_transitions,
    summarize_segments,
)
from flows import steps, tasks
from flows.augmentation import backend_label
from flows.refresh import augmentation_row
from flows.settings import WarmstartSettings
from monitor import GateConfig, GateMetric, MetricsStore, RunRecord

FLOW_NAME = "backfill"
PROTOCOL = "temporal"


@dataclass(frozen=True)
class Window:
    """Train on events before `end`; evaluate on [end, next_end)."""

    start: datetime
    end: datetime
    next_end: datetime


def time_windows(first: datetime, last: datetime, every: timedelta) -> list[Window]:
    """The windows between the first and the last event that have a following window to evaluate on."""
    if every <= timedelta(0):
        raise ConfigError(f"--every must be positive, got {every}.")
    if last <= first:
        raise ConfigError(f"backfill needs end ({last}) after start ({first}).")
    windows, start = [], first
    # The last event belongs to the history too: windows run up to just after it.
    stop = last + timedelta(microseconds=1)
    while start + every < stop:
        end = start + every
        windows.append(Window(start, end, min(end + every, stop)))
        start = end
    if not windows:
        raise ConfigError(f"--every {every} leaves no window to evaluate between {first} and {last}: shorten it.")
    return windows


def parse_every(text: str) -> timedelta:
    """'7d', '12h', '30d' -> timedelta."""
    units = {"d": "days", "h": "hours", "w": "weeks"}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise ConfigError(f"--every {text!r} must be a positive number with a unit d, h or w, e.g. 7d.")
    return timedelta(**{units[unit]: int(number)})


def augment_window(
    dataset: Dataset,
    window: Window,
    segments: pl.DataFrame,
    *,
    workspace: Workspace,
    settings: WarmstartSettings,
    run_id: str,
    limit: int,
) -> dict[str, Any]:
    """Describe the window's new items and simulate who would take to them, as a scheduled run at the window's
    end would have: from the events before it only. The window's tables (descriptions, synthetic pairs) are kept
    in WORKSPACE/backfill/WINDOW_END for audit. The synthetic pairs' precision is measured against the real
    interactions of the next window (synthetic rows never enter the ranker's evaluation)."""
    scratch = Workspace(workspace.root / "backfill" / f"{window.end:%Y%m%dT%H%M%S}")
    history = dataset.interactions.filter(pl.col(Columns.ts) < window.end)
    for name, frame in (("interactions", history), ("items", dataset.items), ("users", dataset.users)):
        scratch.write(name, frame, run_id=run_id, source=f"backfill window ending {window.end}")
    scratch.write("segments", segments, run_id=run_id, source="backfill")
    described = tasks.describe(scratch.root, settings, run_id, ("new",), limit)
    simulated = tasks.simulate(scratch.root, settings, run_id, ("new",), limit)
    row = augmentation_row(described, {}, simulated, backend_label(settings))
    if scratch.exists("synthetic_interactions"):
        synthetic = scratch.read("synthetic_interactions").select(Columns.user, Columns.item).unique()
        later = dataset.interactions.filter(
            (pl.col(Columns.ts) >= window.end) & (pl.col(Columns.ts) < window.next_end)
        ).select(Columns.user, Columns.item)
        hits = synthetic.join(later.unique(), on=[Columns.user, Columns.item], how="semi").height
        row["synthetic_precision"] = hits / synthetic.height if synthetic.height else None
    return row


def run_window(
    dataset: Dataset,
    window: Window,
    *,
    run_id: str,
    workspace: Workspace,
    k: int,
    models: Any,
    cache_dir: Path,
    gate_config: GateConfig,
    sparse_max: int,
    head_share: float,
    incumbent: str | None,
    incumbent_recorded: pl.DataFrame | None,
    settings: WarmstartSettings,
    augment_limit: int,
) -> RunRecord:
    """One window through the cycle: detect, retrain, evaluate, gate; returns what to record."""
    from flows import pipeline
    from ranker.evaluate import temporal_split

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    segments = {
        when: tasks.detect_window(
            dataset.interactions,
            dataset.items,
            dataset.users,
            before=when,
            since=window.start,
            sparse_max=sparse_max,
            head_share=head_share,
        )
        for when in (window.start, window.end)
    }
    timings["detect"] = time.perf_counter() - clock
    counts = segment_counts(segments[window.end])
    tasks.publish_segment_counts(
        summarize_segments(segments[window.end]), f"{dataset.name}: segments as of {window.end:%Y-%m-%d}"
    )
    moves = segment_transitions(segments[window.start], segments[window.end])
    augmentation = None
    if augment_limit > 0:
        clock = time.perf_counter()
        augmentation = augment_window(
            dataset,
            window,
            segments[window.end],
            workspace=workspace,
            settings=settings,
            run_id=run_id,
            limit=augment_limit,
        )
        timings["augment"] = time.perf_counter() - clock
    split = temporal_split(dataset.interactions, dataset.items, cut=window.end, end=window.next_end)
    if split.truth.height == 0:
        raise DataError(f"no new interaction between {window.end} and {window.next_end} to evaluate on.")
    title = f"{dataset.name} window ending {window.end:%Y-%m-%d}"
    outcome = tasks.retrain_and_gate(
        pipeline.holdout_plan(split),
        run_id=run_id,
        workspace=workspace,
        models=models,
        cache_dir=cache_dir,
        k=k,
        protocol=PROTOCOL,
        title=title,
        gate_config=gate_config,
        incumbent=incumbent,
        incumbent_recorded=incumbent_recorded,
    )
    outcome.timings = timings | outcome.timings
    outcome.as_of = window.end
    outcome.segment_counts = counts
    outcome.transitions = moves
    outcome.augmentation = augmentation
    return outcome


@flow(name=FLOW_NAME, log_prints=True)
def backfill(
    dataset: str = "ml-100k",
    data_dir: Path | None = None,
    workspace: Path | None = None,
    cache_dir: Path | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    every: str = "7d",
    k: int = 20,
    seed: int = 0,
    max_epochs: int = 150,
    store_url: str | None = None,
    gate_metrics: tuple[str, ...] = ("overall/ndcg@20", "cold/recall@20"),
    gate_tolerance: float = 0.005,
    sparse_max: int = 5,
    head_share: float = 0.8,
    augment_limit: int = 0,
) -> pl.DataFrame:
    """Replay `dataset` window by window (see the module doc); returns the store's metric rows of this backfill.
    `augment_limit` bounds the language model's work per window (new items described and simulated); 0 skips it.
    Unset paths and the store URL come from the WARMSTART_* settings."""
    from flows import pipeline

    logger = get_run_logger()
    settings = WarmstartSettings()
    workspace, cache_dir = workspace or settings.workspace, cache_dir or settings.cache_dir
    store_url = store_url or settings.metrics_url
    loaded = steps.load_named_dataset(dataset, data_dir, cache_dir)
    times = loaded.interactions[Columns.ts]
    if times.null_count() == times.len():
        raise DataError(f"{dataset} has no timestamps: backfill replays history by time.")
    first, last = start or times.min(), end or times.max()
    assert isinstance(first, datetime) and isinstance(last, datetime)
    windows = time_windows(first, last, parse_every(every))
    space = Workspace(workspace)
    store = MetricsStore.for_workspace(space.root, store_url)
    models = pipeline.ModelSettings.capped(seed, max_epochs, settings.ranker)
    gate_config = GateConfig(metrics=[GateMetric.parse(text) for text in gate_metrics], tolerance=gate_tolerance)
    # What makes two backfill runs the same unit of work (the window end is keyed separately).
    identity = {
        "every": every,
        "k": k,
        "seed": seed,
        "max_epochs": max_epochs,
        "sparse_max": sparse_max,
        "head_share": head_share,
        "augment_limit": augment_limit,
        "ranker": settings.ranker,
        "gate": gate_config.model_dump(),
    }
    incumbent = store.promoted_version(flow=FLOW_NAME, dataset=loaded.name)
    logger.info(f"{len(windows)} windows of {every} from {first:%Y-%m-%d} to {last:%Y-%m-%d}")
    for number, window in enumerate(windows, start=1):
        label = f"window {number}/{len(windows)} ending {window.end:%Y-%m-%d}"
        done = store.completed_run(flow=FLOW_NAME, dataset=loaded.name, window_end=window.end, parameters=identity)
        if done is not None:
            logger.info(f"{label}: done in run {done}, skipped")
            continue
        run_id = new_run_id()
        store.start_run(
            run_id,
            flow=FLOW_NAME,
            dataset=loaded.name,
            parameters=identity,
            window_start=window.start,
            window_end=window.end,
        )
        try:
            outcome = run_window(
                loaded,
                window,
                run_id=run_id,
                workspace=space,
                k=k,
                models=models,
                cache_dir=cache_dir,
                gate_config=gate_config,
                sparse_max=sparse_max,
                head_share=head_share,
                incumbent=incumbent,
                incumbent_recorded=store.run_metrics(incumbent) if incumbent else None,
                settings=settings,
                augment_limit=augment_limit,
            )
        except Exception as error:
            store.fail_run(run_id, error)
            raise
        tasks.record(store.url, run_id, outcome)
        if outcome.promotion and outcome.promotion["promoted"]:
            incumbent = run_id
        logger.info(f"{label}: recorded run {run_id} ({outcome.promotion['reason'] if outcome.promotion else ''})")
    rows = store.metrics(protocol=PROTOCOL).filter(pl.col("flow") == FLOW_NAME)
    store.close()
    return rows
