"""The scheduled flows over a workspace: `augment-new` (frequent) and `refresh` (nightly).

    augment-new: detect -> describe new/cold items, profile new/sparse users -> record volume
    refresh:     detect -> describe, profile, simulate -> encode -> retrain -> evaluate on real held-out data
                 -> gate against the current model on the same data -> record -> promote

Each run is a row of the metrics history with its status, timings and what it measured; the gate's decision
and both models' figures are kept beside it. The stage code runs in plain functions (flows/steps.py,
flows/augmentation.py, flows/pipeline.py); this module only orders them as Prefect tasks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, unmapped

from catalog import Columns, Workspace, new_run_id, segment_counts, segment_transitions
from flows import steps, tasks
from flows.augmentation import backend_label
from flows.runners import with_runner
from flows.settings import WarmstartSettings
from monitor import COMPLETED, GateConfig, GateMetric, MetricsStore, RunRecord


def augmentation_row(
    described: dict[str, Any], profiled: dict[str, Any], simulated: dict[str, Any], backend: str | None = None
) -> dict:
    """The metrics-store row of one run's augmentation reports (`backend`: what ran them, see backend_label)."""
    reports = (described, profiled, simulated)
    return {
        "backend": backend,
        "items_augmented": int(described.get("generated", 0)) + int(described.get("cached", 0)),
        "users_augmented": int(profiled.get("generated", 0)) + int(profiled.get("cached", 0)),
        "synthetic_rows": int(simulated.get("synthetic_rows", 0)),
        "cache_hits": sum(int(report.get("cached", 0)) for report in reports),
        "rejected": sum(int(report.get("rejected", 0)) for report in reports),
        "tokens": sum(int(report.get("tokens", 0)) for report in reports),
        "seconds": round(sum(float(report.get("seconds", 0.0)) for report in reports), 3),
    }


def _detect_and_count(space: Workspace, run_id: str, settings: WarmstartSettings) -> tuple[pl.DataFrame, pl.DataFrame]:
    before = space.read("segments") if space.exists("segments") else None
    segments = tasks.detect(space.root, run_id, settings.sparse_max, settings.head_share)
    moves = segment_transitions(before, segments) if before is not None else None
    return segment_counts(segments), moves if moves is not None else pl.DataFrame()


def _augment(space: Workspace, run_id: str, settings: WarmstartSettings, limit: int, simulate: bool) -> dict:
    # Descriptions and profiles write different tables: they run side by side on the task runner (two Dask
    # workers, say). Simulation reads the descriptions, so it waits for them.
    described = tasks.describe.submit(space.root, settings, run_id, ("new", "cold", "sparse"), limit)
    profiled = tasks.profile.submit(space.root, settings, run_id, ("new", "sparse"), limit)
    descriptions = described.result()
    simulated = tasks.simulate(space.root, settings, run_id, ("cold",), limit) if simulate else {}
    return augmentation_row(descriptions, profiled.result(), simulated, backend_label(settings))


def _batches(values: list[str], size: int) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


@flow(name="encode-items", log_prints=True)
def encode_items(workspace: Path | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Embed every item's text into `item_embeddings`, one task per batch: they run in parallel on the flow's task
    runner (a Dask cluster with task_runner=dask) and Prefect caches each on its texts."""
    settings = WarmstartSettings()
    space = Workspace(workspace or settings.workspace)
    run_id = new_run_id()
    ids, texts = steps.item_texts(space)
    cache_root = space.root / "cache" / "embeddings"
    futures = tasks.encode_batch.map(_batches(texts, batch_size or settings.encode_batch_size), unmapped(cache_root))
    parts = [future.result() for future in futures]
    if not parts:
        from encoders import EMBEDDING_DIM

        parts = [np.zeros((0, EMBEDDING_DIM), dtype=np.float32)]
    vectors = np.vstack(parts)
    stats = steps.store_item_embeddings(space, ids, vectors, run_id, {"batches": len(futures)})
    get_run_logger().info(f"item_embeddings: {stats['items']:,} items in {len(futures)} batches")
    return stats


COUNTS = ("generated", "cached", "rejected", "tokens", "attempts")


def describe_in_batches(
    space: Workspace, settings: WarmstartSettings, run_id: str, segments: tuple[str, ...], limit: int, batch: int
) -> dict[str, Any]:
    """Describe the items of `segments` (at most `limit`), one task per `batch` items on the flow's task runner
    (a Dask cluster with task_runner=dask), then write the table once."""
    from flows.augmentation import segment_ids, store_descriptions

    started = time.perf_counter()
    ids = segment_ids(space, "item", segments, limit)
    items = space.read("items").filter(pl.col(Columns.item).is_in(ids))
    chunks = [items.slice(offset, batch) for offset in range(0, items.height, batch)]
    results = [future.result() for future in tasks.describe_batch.map(chunks, unmapped(settings))]
    frames = [frame for frame, _ in results]
    report: dict[str, Any] = {name: sum(int(stats[name]) for _, stats in results) for name in COUNTS}
    report |= {"requested": len(ids), "batches": len(chunks), "seconds": round(time.perf_counter() - started, 3)}
    frame = pl.concat(frames) if frames else pl.DataFrame()
    if frame.is_empty():
        return report
    model = str(frame["model"][0])
    return store_descriptions(space, frame, report, run_id=run_id, model=model, segments=segments)


@flow(name="augment-new", log_prints=True)
def augment_new(workspace: Path | None = None, limit: int = 16, batch: int = 8) -> dict[str, Any]:
    """Detect newly arrived items and users and augment them (at most `limit` of each) with the language model;
    descriptions are written in batches of `batch` items, one task each."""
    settings = WarmstartSettings()
    space = Workspace(workspace or settings.workspace)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url)
    run_id = new_run_id()
    dataset = str(space.state().get("dataset", "workspace"))
    store.start_run(run_id, flow="augment-new", dataset=dataset, parameters={"limit": limit})
    started = time.perf_counter()
    try:
        counts, moves = _detect_and_count(space, run_id, settings)
        described = describe_in_batches(space, settings, run_id, ("new", "cold", "sparse"), limit, batch)
        profiled = tasks.profile(space.root, settings, run_id, ("new", "sparse"), limit)
        augmentation = augmentation_row(described, profiled, {}, backend_label(settings))
    except Exception as error:
        store.fail_run(run_id, error)
        raise
    outcome = RunRecord(
        status=COMPLETED,
        timings={"total": time.perf_counter() - started},
        augmentation=augmentation,
        segment_counts=counts,
        transitions=moves if moves.height else None,
    )
    tasks.record(store.url, run_id, outcome)
    get_run_logger().info(f"augment-new {run_id}: {augmentation}")
    return augmentation | {"run_id": run_id}


@flow(name="refresh", log_prints=True)
def refresh(
    workspace: Path | None = None,
    k: int = 20,
    seed: int = 0,
    max_epochs: int = 150,
    augment_limit: int = 16,
    simulate: bool = True,
    gate_metrics: tuple[str, ...] = ("overall/ndcg@20", "cold/recall@20"),
    gate_tolerance: float = 0.005,
) -> dict[str, Any]:
    """One nightly cycle over the workspace (see the module doc); returns the run id, metrics and gate decision."""
    from flows import pipeline

    settings = WarmstartSettings()
    space = Workspace(workspace or settings.workspace)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url)
    run_id = new_run_id()
    dataset = steps.workspace_dataset(space)
    protocol = "cold-item" if dataset.splits else "temporal"
    gate_config = GateConfig(metrics=[GateMetric.parse(text) for text in gate_metrics], tolerance=gate_tolerance)
    parameters = {"k": k, "seed": seed, "max_epochs": max_epochs, "augment_limit": augment_limit, "simulate": simulate}
    parameters["ranker"] = settings.ranker
    store.start_run(run_id, flow="refresh", dataset=dataset.name, parameters=parameters | {"protocol": protocol})
    incumbent = store.promoted_version(flow="refresh", dataset=dataset.name)
    timings: dict[str, float] = {}
    try:
        clock = time.perf_counter()
        counts, moves = _detect_and_count(space, run_id, settings)
        timings["detect"] = time.perf_counter() - clock
        clock = time.perf_counter()
        augmentation = _augment(space, run_id, settings, augment_limit, simulate) if augment_limit else None
        timings["augment"] = time.perf_counter() - clock
        clock = time.perf_counter()
        with_runner(encode_items, settings)(space.root)
        timings["encode"] = time.perf_counter() - clock
        plan = pipeline.dataset_plan(dataset, pipeline.PROTOCOLS[protocol])
        outcome = tasks.retrain_and_gate(
            plan,
            run_id=run_id,
            workspace=space,
            models=pipeline.ModelSettings.capped(seed, max_epochs, settings.ranker),
            cache_dir=settings.cache_dir,
            k=k,
            protocol=protocol,
            title=f"refresh {run_id} on {dataset.name}",
            gate_config=gate_config,
            incumbent=incumbent,
            incumbent_recorded=store.run_metrics(incumbent) if incumbent else None,
        )
    except Exception as error:
        store.fail_run(run_id, error)
        raise
    outcome.timings = timings | outcome.timings
    outcome.augmentation = augmentation
    outcome.segment_counts = counts
    outcome.transitions = moves if moves.height else None
    tasks.record(store.url, run_id, outcome)
    assert outcome.promotion is not None
    if outcome.promotion["promoted"]:
        space.update_state(promoted_model=run_id)
    get_run_logger().info(f"refresh {run_id}: {outcome.promotion['reason']}")
    return {"run_id": run_id, "promotion": outcome.promotion, "metrics": outcome.metrics}
