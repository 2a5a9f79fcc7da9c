"""Prefect tasks: one per stage of a refresh cycle, each a thin wrapper over a plain step function.

Deterministic steps (a window's segment detection, a batch of text encoding) are cached by Prefect on their
inputs; language-model steps retry with exponential backoff; results that people look at (segment counts,
metrics, the gate's decision) are published as keyed artifacts, so the Prefect UI shows their latest value.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.tasks import exponential_backoff

from catalog import TIMESTAMP, Columns, Segments, WarmstartError, Workspace, detect_segments, with_first_seen
from flows import steps
from flows.settings import WarmstartSettings
from monitor import COMPLETED, GateConfig, GateDecision, MetricsStore, RunRecord, decide, reference_protocol

# ------------------------------------------------------------------------------------------------ helpers


def _markdown_table(frame: pl.DataFrame) -> str:
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        float_precision=4,
        tbl_rows=-1,
        tbl_cols=-1,
    ):
        return str(frame)


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
    publish_segment_counts(detection.summary, f"Items and users per segment, detection run {run_id}")
    return detection.segments


def publish_segment_counts(summary: pl.DataFrame, description: str) -> None:
    """The latest segment counts as the keyed table artifact `segment-counts`."""
    create_table_artifact(key="segment-counts", table=summary.to_dicts(), description=description)


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
    # First seen as of `before`: an entity whose first event is still to come is not new yet, only cold.
    as_of = {
        key: with_first_seen(frame.with_columns(pl.lit(None, TIMESTAMP).alias(Columns.first_seen)), seen, key)
        for key, frame in ((Columns.item, items), (Columns.user, users))
    }
    return detect_segments(
        seen, as_of[Columns.item], as_of[Columns.user], sparse_max=sparse_max, head_share=head_share, watermark=since
    )


@task(name="encode-batch", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def encode_batch(texts: list[str], cache_root: Path) -> np.ndarray:
    """Embeddings of one batch of texts; cached by Prefect on the texts, and by the embedding cache per text."""
    from encoders import EmbeddingCache, encode_texts

    return encode_texts(texts, cache=EmbeddingCache(cache_root), show_progress=False)


# One language model per process: it loads once, and tasks sharing a process take turns on it (two threads
# generating with one torch model gain nothing on these cores); on Dask each worker process has its own.
_MODEL_LOCK = threading.Lock()


_BACKENDS: dict[str, Any] = {}


def _backend(settings: WarmstartSettings) -> Any:
    """The process's backend for these settings (the JSON key shows secrets masked, but equal settings match)."""
    from flows.augmentation import make_backend

    key = settings.model_dump_json()
    if key not in _BACKENDS:
        _BACKENDS[key] = make_backend(settings)
    return _BACKENDS[key]


def _augment_step(
    step: str, workspace_root: Path, settings: WarmstartSettings, run_id: str, segments: tuple[str, ...], limit: int
) -> dict[str, Any]:
    from flows import augmentation

    function = getattr(augmentation, f"{step}_step")
    with _MODEL_LOCK:
        report = function(
            Workspace(workspace_root),
            _backend(settings),
            cache_dir=settings.cache_dir,
            run_id=run_id,
            segments=segments,
            limit=limit,
            show_progress=False,
        )
    create_table_artifact(key=artifact_key("augment", step), table=[report], description=f"{step}, run {run_id}")
    return report


# Language-model calls fail transiently (a server restarting, a timeout): retry with exponential backoff.
LLM_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=5), "cache_policy": NO_CACHE}


@task(name="describe", **LLM_RETRIES)
def describe(
    workspace_root: Path, settings: WarmstartSettings, run_id: str, segments: tuple[str, ...], limit: int
) -> dict[str, Any]:
    """LLM descriptions of the items of `segments` (at most `limit`); the generation cache skips known inputs."""
    return _augment_step("describe", workspace_root, settings, run_id, segments, limit)


def _describe_items(items: pl.DataFrame, settings: WarmstartSettings) -> tuple[pl.DataFrame, dict[str, Any]]:
    from augment import describe_items
    from flows.augmentation import generation_cache

    with _MODEL_LOCK:
        frame, stats = describe_items(
            items,
            _backend(settings),
            generation_cache(settings.cache_dir),
            max_new_tokens=settings.llm_max_new_tokens,
            show_progress=False,
        )
    return frame, stats.as_dict()


@task(name="describe-batch", **LLM_RETRIES)
def describe_batch(items: pl.DataFrame, settings: WarmstartSettings) -> tuple[pl.DataFrame, dict[str, Any]]:
    """LLM descriptions of one batch of items (no write: the flow merges every batch into the table once).
    The work is in a module-level function so that Dask ships this task by reference, not the process's lock."""
    return _describe_items(items, settings)


@task(name="profile", **LLM_RETRIES)
def profile(
    workspace_root: Path, settings: WarmstartSettings, run_id: str, segments: tuple[str, ...], limit: int
) -> dict[str, Any]:
    """LLM profiles of the users of `segments` from their items (at most `limit` users)."""
    return _augment_step("profile", workspace_root, settings, run_id, segments, limit)


@task(name="simulate", **LLM_RETRIES)
def simulate(
    workspace_root: Path, settings: WarmstartSettings, run_id: str, segments: tuple[str, ...], limit: int
) -> dict[str, Any]:
    """Synthetic interactions for the items of `segments`, judged by the LLM, into their own table."""
    return _augment_step("simulate", workspace_root, settings, run_id, segments, limit)


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


# The reference lines every run records beside the product (rows of protocol 'PROTOCOL:NAME'); the gate holds
# the product to the first one measured (recent popularity needs times, popularity stands in without them).
POPULARITY, RECENT_POPULARITY = "popularity", "recent_popularity"


@task(name="baselines", cache_policy=NO_CACHE)
def baselines(split: Any, k: int, protocol: str) -> pl.DataFrame:
    """Popularity and, for a log with times, recent popularity fitted on the split's training data and scored on
    its held-out data: the lines the product must beat, measured exactly as the product is."""
    from ranker.baselines import PopularityScorer, RecentPopularityScorer
    from ranker.evaluate import evaluate as evaluate_split

    scorers: dict[str, Any] = {POPULARITY: PopularityScorer()}
    train = split.train
    if Columns.ts in train.columns and train[Columns.ts].null_count() < train.height:
        scorers[RECENT_POPULARITY] = RecentPopularityScorer()
    frames = [
        evaluate_split(split, scorer.fit(train, split.index), k=k).metrics.with_columns(
            pl.lit(reference_protocol(protocol, name)).alias("protocol")
        )
        for name, scorer in scorers.items()
    ]
    return pl.concat(frames)


# The calibrated tail exposure option (ranker.rerank) is recorded beside every run as the line 'tail_calibrated':
# the candidate re-ranked so that each user's top k holds STRENGTH x their historical share of tail items.
# 1.0 had the best validation tail Recall@20 in benchmarks/tail_rerank.py (MovieLens-100K; docs/benchmarks.md).
TAIL_CALIBRATED, TAIL_STRENGTH = "tail_calibrated", 1.0


@task(name="tail-calibrated", cache_policy=NO_CACHE)
def tail_calibrated(fitted: Any, split: Any, k: int, protocol: str, strength: float = TAIL_STRENGTH) -> pl.DataFrame:
    """The candidate's metrics with calibrated tail exposure, on the same split (tail recall, coverage, Gini,
    APLT and accuracy side by side with the candidate's own)."""
    from ranker.evaluate import evaluate as evaluate_split
    from ranker.evaluate import interaction_matrix
    from ranker.rerank import tail_rerank_scorer, tail_share_targets

    ids = split.index.item_ids.to_numpy()
    is_tail, is_cold = (
        np.isin(ids, split.item_segments.filter(pl.col(Columns.segment) == name)[Columns.item].to_numpy())
        for name in (Segments.tail, Segments.cold)
    )
    exclude = interaction_matrix(split.exclude, split.index)
    targets = tail_share_targets(interaction_matrix(split.train, split.index), is_tail)
    base = fitted.ranker.scorer(fitted.served.inputs, exclude=exclude)
    # Tail items displace head items only: the cold items the ranker placed (its cold slots) stay.
    scorer = tail_rerank_scorer(base, is_tail, targets, k=k, strength=strength, protect=is_cold)
    metrics = evaluate_split(split, scorer, k=k).metrics
    return metrics.with_columns(pl.lit(reference_protocol(protocol, TAIL_CALIBRATED)).alias("protocol"))


def _gate_reference(references: pl.DataFrame, protocol: str) -> tuple[pl.DataFrame | None, str]:
    for name in (RECENT_POPULARITY, POPULARITY):
        rows = references.filter(pl.col("protocol") == reference_protocol(protocol, name))
        if rows.height:
            return rows, name.replace("_", " ")
    return None, ""


@task(name="gate", cache_policy=NO_CACHE)
def gate(
    candidate: pl.DataFrame,
    incumbent: pl.DataFrame | None,
    config: GateConfig,
    reference: pl.DataFrame | None = None,
    reference_name: str = "recent popularity",
) -> GateDecision:
    """Promote or refuse the candidate; the decision is published as an artifact."""
    decision = decide(candidate, incumbent, config, reference, reference_name)
    verdict = "promoted" if decision.promoted else "refused"
    create_markdown_artifact(
        key="gate-decision",
        markdown=f"**{verdict}**: {decision.reason}\n\n"
        f"candidate {decision.candidate}\n\nincumbent {decision.incumbent}",
    )
    return decision


def model_dir(workspace: Workspace, ranker_name: str, version: str) -> Path:
    return workspace.root / "models" / ranker_name / version


def _incumbent_metrics(
    fitted: Any, ranker_name: str, version: str | None, workspace: Workspace, split: Any, k: int, recorded: Any
) -> tuple[pl.DataFrame | None, str | None]:
    """The current model's metrics to gate against, and a note when they are not from the same held-out data.

    LightGBM's features are the same functions of the data for every version, so the current booster is scored
    over this run's features: the same data for both. A DeepFM version is tied to the encoders it was trained
    with (its projections learned their coordinates), so it is compared by the figures recorded for it."""
    if version is None:
        return None, None
    directory = model_dir(workspace, ranker_name, version)
    if ranker_name != "lightgbm" or not (directory / "metadata.json").is_file():
        return recorded, f"compared with the recorded figures of {version}"
    from flows import pipeline

    try:
        incumbent = pipeline.FittedRanker(pipeline.load_ranker(ranker_name, directory), fitted.served, {})
        return incumbent.evaluate(split, k).metrics, None
    except (WarmstartError, ValueError, IndexError, RuntimeError) as error:
        note = f"{version} cannot score this data ({type(error).__name__}: {error}); compared with its recorded figures"
        return recorded, note


def retrain_and_gate(
    plan: Any,
    *,
    run_id: str,
    workspace: Workspace,
    models: Any,
    cache_dir: Path,
    k: int,
    protocol: str,
    title: str,
    gate_config: GateConfig,
    incumbent: str | None,
    incumbent_recorded: pl.DataFrame | None = None,
) -> RunRecord:
    """Retrain on the plan, evaluate it and the reference lines (popularity, recent popularity) on its real
    held-out data, gate against the current model and the reference on the same data and save the candidate as
    version `run_id`; returns the run's record (metrics of the product and of the references, decision, timings)."""
    clock = time.perf_counter()
    fitted = retrain(plan, cache_dir, models)
    timings = {"retrain": time.perf_counter() - clock}
    clock = time.perf_counter()
    metrics = evaluate(fitted, plan.split, k, protocol, title)
    ranker_name = models.ranker_name
    incumbent_metrics, note = _incumbent_metrics(
        fitted, ranker_name, incumbent, workspace, plan.split, k, incumbent_recorded
    )
    references = pl.concat([baselines(plan.split, k, protocol), tail_calibrated(fitted, plan.split, k, protocol)])
    timings["evaluate"] = time.perf_counter() - clock
    decision = gate(metrics, incumbent_metrics, gate_config, *_gate_reference(references, protocol))
    if note:
        decision = decision.model_copy(update={"reason": f"{decision.reason} ({note})"})
    fitted.ranker.save(model_dir(workspace, ranker_name, run_id))
    return RunRecord(
        status=COMPLETED,
        model_version=run_id,
        timings=timings,
        metrics=pl.concat([metrics, references.select(metrics.columns)]),
        as_of=_as_of(plan.split),
        promotion=decision.record(run_id, incumbent, gate_config),
    )


def _as_of(split: Any) -> datetime:
    """A point's time: the end of its training data (the cut), or now for splits without times."""
    train = split.train
    if Columns.ts in train.columns and train[Columns.ts].null_count() < train.height:
        return train[Columns.ts].max() + timedelta(microseconds=1)
    return datetime.now(UTC)


@task(name="record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def record(store_url: str, run_id: str, outcome: RunRecord) -> None:
    """Write a run's outcome into the metrics history in one transaction (retried: the store may be busy)."""
    store = MetricsStore(store_url)
    try:
        store.finish_run(run_id, outcome)
    finally:
        store.close()
