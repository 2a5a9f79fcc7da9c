"""One refresh cycle, composed once from the stage tasks; the refresh flow, `warmstart refresh` / `retrain` and each
backfill window run it.

    detect -> augment -> encode -> retrain -> evaluate -> gate -> save -> (the run's record) -> promote

`train_evaluate_gate` is the cycle's second half: it fills the run's record (metrics, the gate's decision, model
version) while `MetricsStore.run` owns the run's start, timings, failure and its one-transaction finish; only
after that record is written does `promote` make the candidate current in the model registry.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from prefect import get_run_logger

import training
from catalog import ConfigError, ModelRegistry
from flows import runners, stages, tasks
from monitor import (
    COMPLETED,
    ActiveRun,
    GateConfig,
    GateDecision,
    GateMetric,
    MetricsStore,
    RunRecord,
    reference_protocol,
)
from training.defaults import DEFAULT_GATE_METRICS, DEFAULT_GATE_TOLERANCE, GATE, PROFILES

if TYPE_CHECKING:
    from training import AuditInputs, EvaluationPlan, ModelSettings, TimedChoices


@contextlib.contextmanager
def stage(record: RunRecord, name: str, what: str) -> Iterator[None]:
    """Time a stage into the run's record, saying in the flow's log (which the CLI prints) what starts and how long
    it took: a retrain is minutes of silence otherwise."""
    logger = get_run_logger()
    logger.info(f"{name}: {what}")
    started = time.perf_counter()
    with record.timed(name):
        yield
    logger.info(f"{name}: done in {time.perf_counter() - started:.1f} s")


def default_gate_metrics(k: int) -> tuple[str, ...]:
    """The default gate metrics at cut-off `k` (a run measured at another k would compare nothing)."""
    return tuple(metric.model_copy(update={"k": k}).name for metric in GATE.metrics)


def gate_config(
    metrics: tuple[str, ...] = DEFAULT_GATE_METRICS, tolerance: float = DEFAULT_GATE_TOLERANCE, reference: bool = True
) -> GateConfig:
    """The gate from its textual form (SEGMENT/METRIC@K, ...); `reference` also holds the candidate to the reference
    line (recent popularity, measured on the same data) on the first gate metric."""
    gates = [GateMetric.parse(text) for text in metrics]
    return GateConfig(metrics=gates, tolerance=tolerance, reference_metrics=gates[:1] if reference else [])


@dataclass(frozen=True)
class CycleConfig:
    """What the retrain half of a cycle needs besides the data: models, metrics cut-off, gate, cache."""

    models: ModelSettings
    k: int
    protocol: str
    gate: GateConfig
    cache_dir: Path
    # Timed choices trained beside the candidate on the same encoders and recorded as lines (the next backfill
    # window, or the next refresh, serves the best of them: rolling_choice); none by default.
    alternatives: dict[str, TimedChoices] = field(default_factory=dict)


def cycle_config(
    *,
    seed: int,
    max_epochs: int,
    ranker: str,
    k: int,
    protocol: str,
    gate_metrics: tuple[str, ...] | None,
    gate_tolerance: float,
    reference_gate: bool,
    cache_dir: Path,
    choose_timed: bool,
    ann_min_items: int | None,
) -> CycleConfig:
    """A scheduled cycle's configuration: the seeded defaults with BPR-MF capped at `max_epochs`, the gate (its
    default metrics at `k` unless `gate_metrics`), and on the temporal protocol with `choose_timed` every timed
    alternative trained beside the candidate."""
    timed = choose_timed and protocol == "temporal"
    return CycleConfig(
        models=training.ModelSettings.capped(seed, max_epochs, ranker).with_ann_min_items(ann_min_items),
        k=k,
        protocol=protocol,
        gate=gate_config(gate_metrics or default_gate_metrics(k), gate_tolerance, reference_gate),
        cache_dir=cache_dir,
        alternatives=dict(training.TIMED_ALTERNATIVES) if timed else {},
    )


def rolling_choice(
    previous: pl.DataFrame | None, names: list[str], gate: GateConfig, *, protocol: str = "temporal"
) -> tuple[str, str]:
    """(name, why): the timed alternative to serve, read from `previous`'s lines (the metric rows of the run before:
    a backfill's window before, or a workspace's last refresh). `names[0]` is the default; the choice is the best on
    the gate's first metric among the alternatives that fall below the default by no more than the gate's tolerance
    on its other metrics (what the gate asks of a candidate against its incumbent: a choice that wins overall NDCG by
    giving up the new items' place would be refused). The default when the run before did not measure it; ties go
    to the earlier name."""
    if not names:
        raise ConfigError("a rolling choice needs at least one timed alternative.")
    lines: dict[str, dict[str, float]] = {}
    if previous is not None and previous.height:
        for name in names:
            rows = previous.filter(pl.col("protocol") == reference_protocol(protocol, name))
            values = {f"{s}/{m}@{k}": v for s, m, k, v in rows.select("segment", "metric", "k", "value").iter_rows()}
            if all(metric.name in values for metric in gate.metrics):
                lines[name] = {metric.name: values[metric.name] for metric in gate.metrics}
    default = names[0]
    if default not in lines:
        return default, f"{default} (no earlier run measured the alternatives)"
    first, *others = (metric.name for metric in gate.metrics)
    falls = {  # the other gate metrics on which each alternative fell below the default
        name: [o for o in others if line[o] < lines[default][o] - gate.tolerance]
        for name, line in lines.items()
        if name != default
    }
    kept = [default, *(name for name, fell in falls.items() if not fell)]
    best = max(kept, key=lambda name: (lines[name][first], -names.index(name)))
    shown = "; ".join(f"{name} " + ", ".join(f"{m} {v:.4f}" for m, v in line.items()) for name, line in lines.items())
    fell = "".join(f"; {name} fell below {default} on {', '.join(on)}" for name, on in falls.items() if on)
    return best, f"{best} (in the run before: {shown}{fell})"


def serving_rolling_choice(config: CycleConfig, previous: pl.DataFrame | None) -> tuple[CycleConfig, str, str]:
    """(config, name, why): `config` with the timed choices of the alternative `rolling_choice` reads from
    `previous` (the run before's metric rows) as its models' own."""
    name, why = rolling_choice(previous, list(config.alternatives), config.gate, protocol=config.protocol)
    return replace(config, models=config.models.with_timed(config.alternatives[name])), name, why


def train_evaluate_gate(
    plan: EvaluationPlan,
    config: CycleConfig,
    run: ActiveRun,
    registry: ModelRegistry,
    *,
    recorded: pl.DataFrame | None,
    dataset: str,
    whole_log: EvaluationPlan | None = None,
    audit: AuditInputs | None = None,
) -> GateDecision:
    """Retrain on the plan, evaluate it and the reference lines (popularity, recent popularity, its tail-calibrated
    variant) on its real held-out data, gate against the registry's current model and the reference on the same
    data, and save the candidate as version `run.run_id` (with report.json); fills the run's record. With `audit`,
    each language-model output is also measured against its no-LLM control on the same data (the run's audit rows).

    With `whole_log` (training.whole_log_plan), a candidate the gate lets through is refit on every event with
    what it chose (training.refit_ranker) and that is what the version serves; the evaluated ranker is kept in
    the version's `evaluated/` folder, where the next gate re-scores it (the refit has seen that gate's window)."""
    record, ranker = run.record, config.models.ranker_name
    # On a Dask task runner, its cluster trains the LightGBM ranker (DaskLGBMRanker) and scores the evaluation's
    # batches of users; in threads, both run here (the batches on a thread per core).
    client, parts = runners.dask_client(), runners.partitions()
    where = " on the Dask cluster" if client is not None else ""
    with stage(record, "retrain", f"encoders and the {ranker} ranker on the training window{where}"):
        fitted = tasks.fit_ranker_task(
            plan,
            cache_dir=config.cache_dir,
            settings=config.models,
            alternatives=config.alternatives,
            client=client,
            partitions=runners.here(),
        )
    with stage(record, "evaluate", "the candidate, the current model and the reference lines on held-out events"):
        metrics = tasks.evaluate_task(fitted, plan.split, k=config.k, protocol=config.protocol, partitions=parts)
        current = registry.current(ranker)
        incumbent = training.incumbent_on_same_data(
            fitted,
            registry.path(ranker, current) if current else None,
            plan.split,
            k=config.k,
            protocol=config.protocol,
            recorded=recorded,
            partitions=parts,
        )
        # The lines the product must beat, its tail-calibrated variant and itself without augmentation, on the
        # same held-out data.
        lines = [
            tasks.reference_lines_task(plan.split, k=config.k, protocol=config.protocol),
            tasks.tail_calibrated_task(fitted, plan.split, k=config.k, protocol=config.protocol),
            tasks.without_augmentation_task(fitted, plan.split, k=config.k, protocol=config.protocol, partitions=parts),
            tasks.alternative_lines_task(
                fitted, metrics, plan.split, k=config.k, protocol=config.protocol, partitions=parts
            ),
        ]
        references = pl.concat([line for line in lines if line.height])
    if audit is not None:
        with stage(record, "audit", "each language-model output against its no-LLM control on the same data"):
            rows = tasks.audit_task(fitted, plan.split, audit, k=config.k)
        for row in rows:
            measured = (
                "not measured (no user)"
                if row.delta is None
                else (f"{row.metric} {row.delta:+.4f} [{row.low:+.4f}, {row.high:+.4f}] over {row.users:,} users")
            )
            entities = "users" if row.output == PROFILES else "items"
            get_run_logger().info(
                f"audit: {row.output} on {row.entities:,} {entities}: {measured}; this run: {row.reason}"
            )
        record.audit = [row.as_dict() for row in rows]
    reference = training.gate_reference(references, config.protocol)
    decision = tasks.gate_task(metrics, incumbent, config.gate, reference)
    if not decision.promoted and config.gate.confidence is not None:
        # A refusal must show in the data: bootstrap each drop over users, and decide again with that evidence.
        with stage(record, "evaluate", "bootstrap intervals of the drops the gate saw"):
            evidence = tasks.gate_evidence_task(fitted, incumbent, plan.split, config.gate, k=config.k)
        decision = tasks.gate_task(metrics, incumbent, config.gate, reference, evidence)
    incumbent_version = incumbent.version
    # The store keeps, per run, what synthetic interactions warmed.
    warming = training.warming_row(fitted.served.warming, plan.split) if fitted.served.warming is not None else None
    # A version exists once its metadata.json does, and the ranker writes that last: what it serves from and its
    # report go first, so a run killed while saving leaves no half version behind.
    directory = registry.path(ranker, run.run_id)
    served, served_plan = fitted, plan
    if whole_log is not None and decision.promoted:
        # The candidate is kept as it was judged; past that the refit needs only its ranker and report. Its inputs
        # (and the incumbent's view of them) go before the refit encodes the whole log: holding them beside the
        # refit's own killed a refit at 500k items (20 GB).
        fitted.ranker.save(directory / training.EVALUATED)
        evaluated, chosen = fitted.ranker, fitted.report
        del fitted, incumbent, served
        # The candidate names itself among its timed alternatives: a cycle, freed by the collector alone (which
        # numpy's allocations seldom wake). Without this the refit at 500k items began beside all of it (18 GB).
        training.release_memory()
        with stage(record, "refit", "the promoted candidate's choices on every event of the log"):
            served = tasks.refit_ranker_task(
                whole_log, evaluated, chosen, cache_dir=config.cache_dir, settings=config.models, client=client
            )
        served_plan = whole_log
    stages.save_serving(directory, served, served_plan.split.index)  # the version serves on its own
    stages.write_report(directory, served, served_plan, metrics, evaluated=plan, parent=current, dataset=dataset)
    served.ranker.save(directory)
    if warming is not None:
        record.augmentation = (record.augmentation or {}) | warming
    record.model_version = run.run_id
    record.metrics = pl.concat([metrics, references.select(metrics.columns)])
    record.as_of = training.as_of(plan.split)
    record.promotion = decision.record(run.run_id, incumbent_version, config.gate)
    return decision


def promote(registry: ModelRegistry, ranker: str, decision: GateDecision, run_id: str) -> None:
    """After the run's record is written: make the candidate current if the gate let it through."""
    if decision.promoted:
        registry.promote(ranker, run_id, reason=decision.reason, run_id=run_id)


def still_current(registry: ModelRegistry, ranker: str, decision: GateDecision, run: ActiveRun) -> GateDecision:
    """The gate's decision, unless the current version is no longer the one the candidate was gated against:
    another refresh promoted, or someone promoted by hand, while this run trained. Then the candidate is not
    promoted (the other's choice stands: two runs never both promote, and a version pinned by hand stays) and the
    run's record says why. Called by the workspace's one writer, so nobody can promote between this check and the
    promotion that follows it."""
    if not decision.promoted or run.record.promotion is None:
        return decision
    gated = run.record.promotion["incumbent_version"]
    now = registry.current(ranker)
    if now == gated:
        return decision
    reason = (
        f"the current version changed during this run ({gated or 'none'} -> {now}); not promoted; run refresh again"
    )
    run.record.promotion = run.record.promotion | {"promoted": False, "reason": reason}
    return decision.model_copy(update={"promoted": False, "reason": reason})


def sweep_killed_runs(registry: ModelRegistry, store: MetricsStore) -> list[str]:
    """What runs killed before their outcome was recorded left: their version folders are removed and their runs,
    still `running` in the store, are marked failed. A run killed after its record keeps its version (`reconcile`
    promotes it when the record says so). Returns the versions removed."""
    removed = registry.sweep(lambda _ranker, version: store.run_status(version) == COMPLETED)
    for _ranker, version in removed:
        store.mark_interrupted(version, "killed before its outcome was recorded; its version folder was removed")
    return [version for _ranker, version in removed]


def reconcile(
    registry: ModelRegistry,
    store: MetricsStore,
    *,
    flow: str,
    dataset: str,
    ranker: str,
    writer: contextlib.AbstractContextManager[object] | None = None,
) -> None:
    """A run killed between writing its record and promoting leaves the store ahead of the registry: the version
    the store says was promoted, never promoted in the registry, becomes current. `writer` (the workspace's writer
    lock, not yet entered) is held only when there is something to promote, so that a run that finds nothing to
    reconcile does not wait for another writer."""
    recorded = store.promoted_version(flow=flow, dataset=dataset)
    if recorded is None or not registry.exists(ranker, recorded):
        return
    with writer or contextlib.nullcontext():
        if recorded not in {entry["version"] for entry in registry.promotions()}:
            registry.promote(ranker, recorded, reason=f"promoted by run {recorded} (recorded in the metrics store)")
