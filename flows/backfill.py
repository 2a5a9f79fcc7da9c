"""Backfill: replay a data set's history window by window through the refresh cycle, one point per window.

Window i covers [start + i*every, start + (i+1)*every). Its point is measured as a scheduled retrain at the
window's end would have been: train on every event before the end, then evaluate on the next window's real
interactions; items first rated in that next window are the cold ones. Each window is one run in the metrics
history, keyed by (flow, data set, window end, parameters): a rerun skips completed windows, and a window killed
half-way left no metric rows (they are written with the run's completion, in one transaction), so it is redone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
from prefect import flow, get_run_logger

from catalog import (
    Columns,
    ConfigError,
    DataError,
    Dataset,
    ModelRegistry,
    Segments,
    Tables,
    Workspace,
    has_times,
    load_dataset,
    new_run_id,
    segment_counts,
    segment_transitions,
)
from catalog.datasets import dataset_item_kind
from flows import cycle, refresh, stages, tasks
from flows.augmentation import backend_label, item_kind
from flows.settings import WarmstartSettings, apply_text_backend
from monitor import ActiveRun, GateDecision, MetricsStore
from training.defaults import DEFAULT_GATE_TOLERANCE, DEFAULT_K, HEAD_SHARE, MAX_EPOCHS, SPARSE_MAX

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


@dataclass(frozen=True)
class WindowContext:
    """What every window of one backfill shares."""

    dataset: Dataset
    space: Workspace
    registry: ModelRegistry
    settings: WarmstartSettings
    config: cycle.CycleConfig
    sparse_max: int
    head_share: float
    augment_limit: int


def augment_window(
    context: WindowContext, window: Window, segments: pl.DataFrame, run_id: str
) -> tuple[dict[str, str | int | float | None], pl.DataFrame | None]:
    """Describe the window's new items and simulate who would take to its cold ones, as a scheduled run at the window's
    end would have: from the events before it only. Returns the store's augmentation row and the synthetic pairs
    the window's model trains on. The window's tables (descriptions, synthetic pairs) are kept in
    WORKSPACE/backfill/WINDOW_END for audit. The synthetic pairs' precision is measured against the real
    interactions of the next window (synthetic rows never enter the ranker's evaluation)."""
    dataset = context.dataset
    scratch = Workspace(context.space.root / "backfill" / f"{window.end:%Y%m%dT%H%M%S}")
    history = dataset.interactions.filter(pl.col(Columns.ts) < window.end)
    for name, frame in ((Tables.interactions, history), (Tables.items, dataset.items), (Tables.users, dataset.users)):
        scratch.write(name, frame, run_id=run_id, source=f"backfill window ending {window.end}")
    scratch.write(Tables.segments, segments, run_id=run_id, source="backfill")
    # the kind of thing the items are, for the description prompt and its checks: the workspace's, else the data set's
    kind = item_kind(context.space)
    scratch.update_state(item_kind=dataset_item_kind(dataset.name) if kind == "item" else kind)
    plan = stages.AugmentPlan(
        item_segments=(Segments.new,),
        # Items still without an interaction at the window's end: the only ones the judge's pairs can warm (a new
        # item already rated in the window trains from its real interactions, which win over synthetic ones).
        simulate_segments=(Segments.cold,),
        limit=context.augment_limit,
        profile=False,
        max_new_tokens=context.settings.llm_max_new_tokens,
    )
    report = refresh.augment_workspace(scratch, context.settings, plan, run_id)
    judged = stages.synthetic_interactions(scratch)  # as a refresh reads its workspace's, provenance included
    if judged is not None:
        synthetic = judged.select(Columns.user, Columns.item).unique()
        later = dataset.interactions.filter(
            (pl.col(Columns.ts) >= window.end) & (pl.col(Columns.ts) < window.next_end)
        ).select(Columns.user, Columns.item)
        hits = synthetic.join(later.unique(), on=[Columns.user, Columns.item], how="semi").height
        precision = hits / synthetic.height if synthetic.height else None
        report.steps["simulate"] = replace(report.steps["simulate"], synthetic_precision=precision)
    return report.store_row(backend_label(context.settings)), judged


def run_window(context: WindowContext, window: Window, run: ActiveRun, recorded: pl.DataFrame | None) -> GateDecision:
    """One window through the cycle as of its end: detect, augment, retrain, evaluate, gate; fills the run's record."""
    import training
    from ranker.evaluate import temporal_split

    dataset, record = context.dataset, run.record
    with cycle.stage(record, "detect", f"segments at the window's start and end ({window.end:%Y-%m-%d})"):
        segments = {
            when: tasks.detect_as_of_task(
                dataset, before=when, since=window.start, sparse_max=context.sparse_max, head_share=context.head_share
            )
            for when in (window.start, window.end)
        }
    record.segment_counts = segment_counts(segments[window.end])
    record.transitions = segment_transitions(segments[window.start], segments[window.end])
    judged = None
    if context.augment_limit > 0:
        with cycle.stage(record, "augment", "the window's new items with the language model"):
            record.augmentation, judged = augment_window(context, window, segments[window.end], run.run_id)
    split = temporal_split(
        dataset.interactions, dataset.items, cut=window.end, end=window.next_end, sparse_max=context.sparse_max
    )
    if split.truth.height == 0:
        raise DataError(f"no new interaction between {window.end} and {window.next_end} to evaluate on.")
    # The window's model trains on its augmentation, its users' stand-ins on their attributes.
    plan = replace(training.holdout_plan(split), synthetic=judged, users=dataset.users)
    decision = cycle.train_evaluate_gate(
        plan, context.config, run, context.registry, recorded=recorded, dataset=dataset.name
    )
    record.as_of = window.end
    return decision


def history_windows(dataset: Dataset, start: datetime | None, end: datetime | None, every: str) -> list[Window]:
    """The windows to replay, from `start` (default: the first event) to `end` (default: the last)."""
    if not has_times(dataset.interactions):
        raise DataError(f"{dataset.name} has no timestamps: backfill replays history by time.")
    times = dataset.interactions[Columns.ts]
    first, last = start or times.min(), end or times.max()
    assert isinstance(first, datetime) and isinstance(last, datetime)
    return time_windows(first, last, parse_every(every))


def replay_window(
    context: WindowContext,
    window: Window,
    store: MetricsStore,
    identity: dict[str, object],
    previous: pl.DataFrame | None = None,
) -> str:
    """One window as a recorded run, gated against the backfill's current model; returns what happened. With timed
    alternatives, the window trains the one `cycle.rolling_choice` reads from `previous` (the window before's rows)."""
    config = context.config
    ranker = config.models.ranker_name
    chose = ""
    if config.alternatives:
        config, _, chose = cycle.serving_rolling_choice(config, previous)
        chose = f"serves {chose}; "
    current = context.registry.current(ranker)
    recorded = store.run_metrics(current) if current else None
    bounds = {"window_start": window.start, "window_end": window.end}
    with store.run(new_run_id(), flow=FLOW_NAME, dataset=context.dataset.name, parameters=identity, **bounds) as run:
        decision = run_window(replace(context, config=config), window, run, recorded)
    cycle.promote(context.registry, ranker, decision, run.run_id)
    return f"recorded run {run.run_id} ({chose}{decision.reason})"


@flow(name=FLOW_NAME, log_prints=True)
def backfill(
    dataset: str | None = None,
    data_dir: Path | None = None,
    workspace: Path | None = None,
    cache_dir: Path | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    every: str = "7d",
    k: int = DEFAULT_K,
    seed: int = 0,
    max_epochs: int = MAX_EPOCHS,
    gate_metrics: tuple[str, ...] | None = None,
    gate_tolerance: float = DEFAULT_GATE_TOLERANCE,
    reference_gate: bool = True,
    sparse_max: int = SPARSE_MAX,
    head_share: float = HEAD_SHARE,
    augment_limit: int = 0,
    choose_timed: bool = True,
) -> pl.DataFrame:
    """Replay `dataset` (a built-in data set's name; None: the workspace's own log) window by window (see the
    module doc); returns the store's metric rows of this backfill.
    `augment_limit` bounds the language model's work per window (new items described and simulated); 0 skips it.
    `choose_timed` trains every timed alternative (training.TIMED_ALTERNATIVES) in each window and serves, from the
    second window on, the one `cycle.rolling_choice` reads from the window before; off, the default choices.
    Unset paths come from the WARMSTART_* settings, and the store URL always does: Prefect stores a flow run's
    parameters in its database, where a URL parameter would keep its password. The windows' models live in their own
    registry (WORKSPACE/backfill/models): a replay of history never changes the workspace's current model."""
    settings = WarmstartSettings()
    apply_text_backend(settings)
    workspace, cache_dir = workspace or settings.workspace, cache_dir or settings.cache_dir
    space = Workspace(workspace)
    loaded = load_dataset(dataset, data_dir, cache_dir) if dataset else stages.workspace_dataset(space)
    windows = history_windows(loaded, start, end, every)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url)
    config = cycle.cycle_config(
        seed=seed,
        max_epochs=max_epochs,
        ranker=settings.ranker,
        k=k,
        protocol=PROTOCOL,
        gate_metrics=gate_metrics,
        gate_tolerance=gate_tolerance,
        reference_gate=reference_gate,
        cache_dir=cache_dir,
        choose_timed=choose_timed,
        ann_min_items=settings.ann_min_items,
    )
    registry = ModelRegistry(space.root / "backfill" / "models")
    context = WindowContext(loaded, space, registry, settings, config, sparse_max, head_share, augment_limit)
    # What makes two backfill runs the same unit of work (the window end is keyed separately).
    identity = dict(every=every, k=k, seed=seed, max_epochs=max_epochs, sparse_max=sparse_max, head_share=head_share)
    identity |= {"augment_limit": augment_limit, "ranker": settings.ranker, "gate": config.gate.model_dump()}
    if config.alternatives:  # absent when off, so that runs recorded before the option keep their key
        identity["timed_alternatives"] = {name: c.model_dump() for name, c in config.alternatives.items()}
    cycle.reconcile(context.registry, store, flow=FLOW_NAME, dataset=loaded.name, ranker=settings.ranker)
    _replay(context, windows, store, identity, every)
    rows = store.metrics(protocol=PROTOCOL).filter(pl.col("flow") == FLOW_NAME)
    store.close()
    return rows


def _replay(
    context: WindowContext, windows: list[Window], store: MetricsStore, identity: dict[str, object], every: str
) -> None:
    """Replay each window not yet completed under `identity` (a rerun resumes), each reading the window before's
    metrics for its rolling choice."""
    logger, name = get_run_logger(), context.dataset.name
    logger.info(f"{len(windows)} windows of {every} from {windows[0].start:%Y-%m-%d} to {windows[-1].end:%Y-%m-%d}")
    previous: pl.DataFrame | None = None
    for number, window in enumerate(windows, start=1):
        label = f"window {number}/{len(windows)} ending {window.end:%Y-%m-%d}"
        done = store.completed_run(flow=FLOW_NAME, dataset=name, window_end=window.end, parameters=identity)
        if done is not None:
            logger.info(f"{label}: done in run {done}, skipped")
        else:
            logger.info(f"{label}: {replay_window(context, window, store, identity, previous)}")
            done = store.completed_run(flow=FLOW_NAME, dataset=name, window_end=window.end, parameters=identity)
        previous = store.run_metrics(done) if done is not None else None
