"""Prefect tasks: one per stage of a refresh cycle, each a thin wrapper over a plain step function.

Deterministic steps are cached by Prefect on what they read (the input table's write id, or the inputs
themselves); language-model steps retry with exponential backoff; results that people look at (segment counts,
metrics, the gate's decision) are published as keyed artifacts, so the Prefect UI shows their latest value.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.context import TaskRunContext

from catalog import Columns, Workspace, detect_segments
from flows import steps
from monitor import GateConfig, GateDecision, MetricsStore, RunRecord, decide

# ------------------------------------------------------------------------------------------------ helpers


def _table_version_key(*tables: str) -> Any:
    """A cache key function: the task's parameters (minus the workspace) plus the write ids of `tables`."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        space = Workspace(Path(parameters["workspace_root"]))
        versions = [space.provenance(name)["run_id"] if space.exists(name) else "-" for name in tables]
        shown = {name: value for name, value in sorted(parameters.items()) if name != "run_id"}
        return f"{context.task.name}|{space.root.resolve()}|{versions}|{shown}"

    return key


def _markdown_table(frame: pl.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(_cell(value) for value in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return "".join(char if char.isalnum() else "-" for char in text).strip("-")


# ------------------------------------------------------------------------------------------------ stages


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(workspace_root: Path, dataset: str, data_dir: Path | None, cache_dir: Path, run_id: str) -> dict[str, int]:
    """Load a built-in data set into the workspace."""
    loaded = steps.load_named_dataset(dataset, data_dir, cache_dir)
    return steps.store_dataset(Workspace(workspace_root), loaded, run_id)


@task(name="detect", cache_policy=NO_CACHE)
def detect(workspace_root: Path, run_id: str, sparse_max: int, head_share: float) -> pl.DataFrame:
    """Segment the workspace's items and users (advancing the `new` watermark); publish the counts."""
    detection = steps.detect(Workspace(workspace_root), run_id, sparse_max=sparse_max, head_share=head_share)
    create_table_artifact(
        key="segment-counts",
        table=detection.summary.to_dicts(),
        description=f"Items and users per segment, detection run {run_id}",
    )
    return detection.segments


@task(name="detect-window", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def detect_window(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    *,
    before: datetime,
    since: datetime | None,
    sparse_max: int,
    head_share: float,
) -> pl.DataFrame:
    """Segments as they were at `before` (events strictly earlier), `new` meaning first seen after `since`.
    Deterministic, so Prefect caches it on its inputs: a resumed backfill does not recompute finished windows."""
    seen = interactions.filter(pl.col(Columns.ts) < before)
    return detect_segments(seen, items, users, sparse_max=sparse_max, head_share=head_share, watermark=since)


@task(name="encode", cache_key_fn=_table_version_key("items"), persist_result=True)
def encode(workspace_root: Path, run_id: str) -> dict[str, Any]:
    """Embed every item's text into the `item_embeddings` table (cached on the items table's version)."""
    return steps.encode_items(Workspace(workspace_root), run_id)


@task(name="retrain", cache_policy=NO_CACHE)
def retrain(plan: Any, cache_dir: Path, models: Any) -> Any:
    """Fit the encoders and the ranker as the plan says (a FittedRanker)."""
    from flows import pipeline

    return pipeline.fit_ranker(plan, cache_dir=cache_dir, settings=models)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(fitted: Any, split: Any, k: int, protocol: str, title: str) -> pl.DataFrame:
    """Metrics of a fitted ranker on the split's real held-out interactions, published as an artifact."""
    metrics = fitted.evaluate(split, k).metrics.with_columns(pl.lit(protocol).alias("protocol"))
    wide = metrics.pivot(on="segment", index=["metric", "k"], values="value")
    create_markdown_artifact(key=artifact_key("metrics", protocol), markdown=f"## {title}\n\n{_markdown_table(wide)}")
    return metrics


@task(name="gate", cache_policy=NO_CACHE)
def gate(candidate: pl.DataFrame, incumbent: pl.DataFrame | None, config: GateConfig) -> GateDecision:
    """Promote or refuse the candidate; the decision is published as an artifact."""
    decision = decide(candidate, incumbent, config)
    verdict = "promoted" if decision.promoted else "refused"
    create_markdown_artifact(
        key="gate-decision",
        markdown=f"**{verdict}**: {decision.reason}\n\n"
        f"candidate {decision.candidate}\n\nincumbent {decision.incumbent}",
    )
    return decision


@task(name="record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def record(store_url: str, run_id: str, outcome: RunRecord) -> None:
    """Write a run's outcome into the metrics history in one transaction (retried: the store may be busy)."""
    store = MetricsStore(store_url)
    try:
        store.finish_run(run_id, outcome)
    finally:
        store.close()
