"""Prefect tasks made from the stage functions, mechanically: `POLICIES` is the one place that decides, per stage,
how it retries, whether Prefect caches it on its inputs, and which keyed artifact publishes its result.

Deterministic stages (a window's segment detection, a batch of text encoding) are cached on their inputs;
language-model steps retry with exponential backoff; results people look at (segment counts, metrics, the gate's
decision, augmentation volume) are published as keyed artifacts, so the Prefect UI shows their latest value.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
import polars as pl
from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.tasks import exponential_backoff

import training
from augment import AugmentStats, Backend
from flows import stages
from flows.settings import WarmstartSettings
from monitor import GateDecision

if TYPE_CHECKING:
    from encoders import EmbeddingCache

P = ParamSpec("P")
R = TypeVar("R")


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


# ------------------------------------------------------------------------------------------------ publishers


def publish_segment_counts(detection: stages.Detection | pl.DataFrame) -> None:
    """The latest segment counts as the keyed table artifact `segment-counts`."""
    summary = detection.summary if isinstance(detection, stages.Detection) else stages.summarize_segments(detection)
    create_table_artifact(key="segment-counts", table=summary.to_dicts(), description="items and users per segment")


def publish_metrics(metrics: pl.DataFrame) -> None:
    """A run's metrics, one column per segment, as the keyed markdown artifact `metrics-PROTOCOL`."""
    protocol = str(metrics["protocol"][0]) if metrics.height else "none"
    wide = metrics.pivot(on="segment", index=["metric", "k"], values="value")
    create_markdown_artifact(key=artifact_key("metrics", protocol), markdown=_markdown_table(wide))


def publish_decision(decision: GateDecision) -> None:
    verdict = "promoted" if decision.promoted else "refused"
    create_markdown_artifact(
        key="gate-decision",
        markdown=f"**{verdict}**: {decision.reason}\n\n"
        f"candidate {decision.candidate}\n\nincumbent {decision.incumbent}",
    )


def publish_audit(rows: list[training.AuditRow]) -> None:
    """The run's augmentation audit as the keyed table artifact `augmentation-audit`."""
    create_table_artifact(
        key="augmentation-audit",
        table=[row.as_dict() for row in rows],
        description="each language-model output against its no-LLM control on the run's held-out data",
    )


def publish_augmentation(report: stages.StepReport) -> None:
    row = {name: value for name, value in report.as_dict().items() if name != "reasons"}
    create_table_artifact(key="augment", table=[row], description="one augmentation step's report")


# ------------------------------------------------------------------------------------------------ policies

# Language-model calls fail transiently (a server restarting, a timeout): retry with exponential backoff.
LLM_BACKOFF = exponential_backoff(backoff_factor=5)


@dataclass(frozen=True)
class StagePolicy:
    """How a stage runs as a Prefect task."""

    retries: int = 0
    retry_delay_seconds: Any = 0
    cache_policy: CachePolicy = field(default_factory=lambda: NO_CACHE)
    persist_result: bool | None = None
    publish: Callable[[Any], None] | None = None
    options: dict[str, Any] = field(default_factory=dict)


POLICIES: dict[str, StagePolicy] = {
    "detect": StagePolicy(publish=publish_segment_counts),
    # A window's detection and a batch's encoding are deterministic: a resumed backfill recomputes neither.
    "detect_as_of": StagePolicy(cache_policy=INPUTS + TASK_SOURCE, persist_result=True, publish=publish_segment_counts),
    # Its results are persisted: Prefect's copies in memory outlived the flow (every item's embedding, 0.7 GB at
    # 500k items, held through a whole retrain).
    "encode_batch": StagePolicy(
        cache_policy=INPUTS + TASK_SOURCE, persist_result=True, options={"cache_result_in_memory": False}
    ),
    "augment_step": StagePolicy(retries=3, retry_delay_seconds=LLM_BACKOFF, publish=publish_augmentation),
    "describe_batch": StagePolicy(retries=3, retry_delay_seconds=LLM_BACKOFF),
    "fit_ranker": StagePolicy(),
    "refit_ranker": StagePolicy(),
    "evaluate_metrics": StagePolicy(publish=publish_metrics),
    "reference_lines": StagePolicy(),
    "tail_calibrated": StagePolicy(),
    "without_augmentation": StagePolicy(),
    "alternative_lines": StagePolicy(),
    "gate_evidence": StagePolicy(),
    "gate": StagePolicy(publish=publish_decision),
    "audit_outputs": StagePolicy(publish=publish_audit),
}


def as_task(stage: Callable[P, R]) -> Task[P, R]:
    """The stage as a Prefect task named after it, run as POLICIES says (and its result published)."""
    policy = POLICIES[stage.__name__]

    @functools.wraps(stage)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        result = stage(*args, **kwargs)
        if policy.publish is not None:
            policy.publish(result)
        return result

    return task(
        run,
        name=stage.__name__.replace("_", "-"),
        retries=policy.retries,
        retry_delay_seconds=policy.retry_delay_seconds,
        cache_policy=policy.cache_policy,
        persist_result=policy.persist_result,
        **policy.options,
    )


# ------------------------------------------------------------------------------------------------ stage tasks


# One embedding cache per process and model, which the encoding tasks sharing the process take turns on: each
# task opening its own read every shard into memory, and a 100k-item catalogue's tasks, run at once by the thread
# pool, held 23 GB before the kernel killed the run (docs/scaling.md). Encoding uses every core already.
_CACHE_LOCK = threading.Lock()
_CACHES: dict[tuple[Path, str], EmbeddingCache] = {}


def encode_batch(texts: list[str], cache_dir: Path, text_model: str) -> np.ndarray:
    """Embeddings of one batch of texts (cached by Prefect on the texts and `text_model`, and by the embedding cache
    per text). `text_model` names the flow's backend: a Dask worker does not read the flow's settings."""
    from encoders import EmbeddingCache, encode_texts

    with _CACHE_LOCK:
        key = (Path(cache_dir), text_model)
        if key not in _CACHES:
            _CACHES[key] = EmbeddingCache.in_cache_dir(cache_dir, text_model)
        return encode_texts(texts, cache=_CACHES[key], show_progress=False)


def release_embedding_caches() -> None:
    """Let go of this process's embedding caches (an encoding flow's end: the catalogue's vectors are stored)."""
    with _CACHE_LOCK:
        _CACHES.clear()


# One language model per process: it loads once, and tasks sharing a process take turns on it (two threads
# generating with one torch model gain nothing on these cores); on Dask each worker process has its own.
_MODEL_LOCK = threading.Lock()
_BACKENDS: dict[str, Backend] = {}


def backend(settings: WarmstartSettings) -> Backend:
    """The process's backend for these settings (the JSON key shows secrets masked, but equal settings match)."""
    from flows.augmentation import make_backend

    key = settings.model_dump_json()
    if key not in _BACKENDS:
        _BACKENDS[key] = make_backend(settings)
    return _BACKENDS[key]


def augment_step(
    step: str, workspace: Path, settings: WarmstartSettings, plan: stages.AugmentPlan, run_id: str
) -> stages.StepReport:
    """One augmentation step on the process's language model (see stages.augment_step)."""
    from catalog import Workspace

    with _MODEL_LOCK:
        model = backend(settings)
        return stages.augment_step(
            step, Workspace(workspace), model, plan, cache_dir=settings.cache_dir, run_id=run_id, show_progress=False
        )


def describe_batch(
    items: pl.DataFrame,
    settings: WarmstartSettings,
    kind: str | None = None,
    neighbours: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, AugmentStats]:
    """LLM descriptions of one batch of items (no write: the flow merges every batch into the table once), grounded
    in the kind of thing the catalogue holds and the items' `neighbours` (flows.augmentation.description_context).
    A module-level function, so that Dask ships this task by reference, not the process's lock."""
    from augment import describe_items
    from flows.augmentation import generation_cache

    with _MODEL_LOCK:
        frame, stats = describe_items(
            items,
            backend(settings),
            generation_cache(settings.cache_dir),
            kind=kind,
            neighbours=neighbours,
            max_new_tokens=settings.llm_max_new_tokens,
            show_progress=False,
        )
    return frame, stats


detect_task = as_task(stages.detect)
detect_as_of_task = as_task(stages.detect_as_of)
encode_batch_task = as_task(encode_batch)
augment_step_task = as_task(augment_step)
describe_batch_task = as_task(describe_batch)
fit_ranker_task = as_task(training.fit_ranker)
refit_ranker_task = as_task(training.refit_ranker)
evaluate_task = as_task(training.evaluate_metrics)
reference_lines_task = as_task(training.reference_lines)
tail_calibrated_task = as_task(training.tail_calibrated)
without_augmentation_task = as_task(training.without_augmentation)
alternative_lines_task = as_task(training.alternative_lines)
gate_evidence_task = as_task(training.gate_evidence)
gate_task = as_task(training.gate)
audit_task = as_task(training.audit_outputs)
