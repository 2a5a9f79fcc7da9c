"""The scheduled flows over a workspace: `augment-new` (frequent), `refresh` (nightly) and `encode-items`.

    augment-new: detect -> describe new/cold/sparse items (in batches), profile new/sparse users -> record volume
    refresh:     detect -> describe, profile, simulate -> encode -> retrain -> evaluate on real held-out data
                 -> gate against the current model on the same data -> record -> promote
                 -> publish the `recommendations` table (top k of every user, when promoted)

From "record" to "publish" the refresh is the workspace's one writer (`Workspace.writer`): it promotes only if the
version its candidate was gated against is still current, so two refreshes never both promote and a version
promoted by hand meanwhile stays (`cycle.still_current`).

Each run is a row of the metrics history (`MetricsStore.run` owns its start, timings, failure and finish); the
stages are flows/stages.py's, run as the tasks of flows/tasks.py and composed by flows/cycle.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, unmapped

import training
from augment import AugmentStats
from catalog import Columns, Dataset, Tables, Workspace, new_run_id, segment_counts, segment_transitions
from flows import cycle, runners, stages, tasks
from flows.augmentation import backend_label
from flows.settings import WarmstartSettings, apply_text_backend
from monitor import ActiveRun, GateDecision, MetricsStore, RunRecord
from ranker.ann import ANN_MIN_ITEMS
from training.defaults import (
    AUGMENT_LIMIT,
    DEFAULT_GATE_TOLERANCE,
    DEFAULT_K,
    DESCRIPTIONS,
    JUDGED_PAIRS,
    MAX_EPOCHS,
    PROFILES,
)


def _detect(space: Workspace, run: ActiveRun, settings: WarmstartSettings) -> None:
    """Detect segments; the run records their counts and the moves since the previous detection."""
    before = space.read(Tables.segments) if space.exists(Tables.segments) else None
    with cycle.stage(run.record, "detect", "new, cold and sparse items and users"):
        detection = tasks.detect_task(space, run.run_id, sparse_max=settings.sparse_max, head_share=settings.head_share)
    run.record.segment_counts = segment_counts(detection.segments)
    if before is not None:
        moves = segment_transitions(before, detection.segments)
        run.record.transitions = moves if moves.height else None


def _batches(values: list[str], size: int) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


@flow(name="encode-items", log_prints=True)
def encode_items(workspace: Path | None = None, batch_size: int | None = None) -> stages.Encoded:
    """Embed every item's text into `item_embeddings`, one task per batch: they run in parallel on the flow's task
    runner (a Dask cluster with task_runner=dask) and Prefect caches each on its texts."""
    settings = WarmstartSettings()
    apply_text_backend(settings)
    space = Workspace(workspace or settings.workspace)
    ids, texts = stages.item_texts(space)
    batches = _batches(texts, batch_size or settings.encode_batch_size)
    from encoders import current_text_model

    text_model = current_text_model()
    parts = [
        future.result()
        for future in tasks.encode_batch_task.map(batches, unmapped(settings.cache_dir), unmapped(text_model))
    ]
    tasks.release_embedding_caches()
    if not parts:
        from encoders import EMBEDDING_DIM

        parts = [np.zeros((0, EMBEDDING_DIM), dtype=np.float32)]
    encoded = stages.store_item_embeddings(
        space, ids, np.vstack(parts), new_run_id(), {"batches": len(batches)}, text_model=text_model
    )
    get_run_logger().info(f"item_embeddings: {encoded.items:,} items in {len(batches)} batches")
    return encoded


def describe_in_batches(
    space: Workspace, settings: WarmstartSettings, plan: stages.AugmentPlan, run_id: str, batch: int
) -> stages.StepReport:
    """Describe the plan's items, one task per `batch` items on the flow's task runner (a Dask cluster with
    task_runner=dask), then write the table once."""
    from flows.augmentation import describe_targets, description_context, store_descriptions

    started = time.perf_counter()
    items = describe_targets(space, plan.item_segments, plan.limit)
    kind, neighbours = description_context(space, items)
    chunks = [items.slice(offset, batch) for offset in range(0, items.height, batch)]
    related = [
        None if neighbours is None else neighbours.join(chunk.select(Columns.item), on=Columns.item, how="semi")
        for chunk in chunks
    ]
    if concurrent_llm_steps(settings):
        futures = tasks.describe_batch_task.map(chunks, unmapped(settings), unmapped(kind), related)
        results = [future.result() for future in futures]
    else:
        results = [
            tasks.describe_batch_task(chunk, settings, kind, part) for chunk, part in zip(chunks, related, strict=True)
        ]
    stats = AugmentStats.total([part for _, part in results])
    seconds = round(time.perf_counter() - started, 3)
    report = stages.StepReport(stats, items.height, seconds, batches=len(chunks))
    frame = pl.concat([frame for frame, _ in results]) if results else pl.DataFrame()
    if frame.is_empty():
        return report
    model = str(frame["model"][0])
    return store_descriptions(space, frame, report, run_id=run_id, model=model, segments=plan.item_segments)


@flow(name="augment-new", log_prints=True)
def augment_new(
    workspace: Path | None = None, limit: int = AUGMENT_LIMIT, batch: int = 8
) -> dict[str, str | int | float | None]:
    """Detect newly arrived items and users and augment them (at most `limit` of each) with the language model;
    descriptions are written in batches of `batch` items, one task each."""
    settings = WarmstartSettings()
    apply_text_backend(settings)
    space = Workspace(workspace or settings.workspace)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url)
    plan = stages.AugmentPlan(limit=limit, simulate=False, max_new_tokens=settings.llm_max_new_tokens)
    dataset = str(space.state().get("dataset", "workspace"))
    with store.run(new_run_id(), flow="augment-new", dataset=dataset, parameters={"limit": limit}) as run:
        _detect(space, run, settings)
        with cycle.stage(run.record, "augment", "descriptions and profiles of what is new"):
            report = stages.AugmentReport()
            report.steps["describe"] = describe_in_batches(space, settings, plan, run.run_id, batch)
            report.steps["profile"] = tasks.augment_step_task("profile", space.root, settings, plan, run.run_id)
        run.record.augmentation = report.store_row(backend_label(settings))
    get_run_logger().info(f"augment-new {run.run_id}: {run.record.augmentation}")
    return dict(run.record.augmentation) | {"run_id": run.run_id}


def concurrent_llm_steps(settings: WarmstartSettings) -> bool:
    """Whether language-model tasks run side by side: on Dask, where each worker process has its own model. In the
    flow's process the model lock runs them one at a time anyway, and torch work on a second thread is slower:
    describing 4 items with two torch threads took 1.4x as long on a task thread as on the thread that loaded the
    model (docs/benchmarks.md; likely libgomp spinning less once its threads outnumber the cores). So there they
    run on the calling thread."""
    return settings.task_runner == "dask"


def augment_workspace(
    space: Workspace, settings: WarmstartSettings, plan: stages.AugmentPlan, run_id: str
) -> stages.AugmentReport:
    """The plan's augmentation as tasks: descriptions and profiles (different tables) side by side on Dask, in
    turn otherwise (`concurrent_llm_steps`); simulation reads the descriptions, so it waits for them."""
    steps = [
        s
        for s, wanted in (("describe", plan.describe), ("simulate", plan.simulate), ("profile", plan.profile))
        if wanted
    ]
    # on Dask, descriptions and profiles start together; the steps are then collected (or run) in order
    started = (
        {s: tasks.augment_step_task.submit(s, space.root, settings, plan, run_id) for s in steps if s != "simulate"}
        if concurrent_llm_steps(settings)
        else {}
    )
    report = stages.AugmentReport()
    for step in steps:
        running = started.get(step)
        report.steps[step] = (
            running.result() if running else tasks.augment_step_task(step, space.root, settings, plan, run_id)
        )
    return report


def _augment_into(
    run: ActiveRun, space: Workspace, settings: WarmstartSettings, plan: stages.AugmentPlan
) -> stages.AugmentReport:
    """Augment the workspace as the plan says; the run records the volume and what ran the language model."""
    plan = replace(plan, max_new_tokens=settings.llm_max_new_tokens)
    with cycle.stage(run.record, "augment", "the language model on the segments the plan names"):
        report = augment_workspace(space, settings, plan, run.run_id)
    run.record.augmentation = report.store_row(backend_label(settings))
    return report


# The augmentation step that makes each audited output: what the run spent on it.
OUTPUT_STEPS = {JUDGED_PAIRS: "simulate", DESCRIPTIONS: "describe", PROFILES: "profile"}


def _outputs_used(store: MetricsStore, dataset: str) -> dict[str, training.OutputUse]:
    """Which language-model outputs this refresh uses: those the workspace's last completed refresh's audit found
    to help (training.use_outputs); the choice is logged."""
    last = store.last_completed_run(flow="refresh", dataset=dataset)
    uses = training.use_outputs(store.augmentation_audit(last) if last else None)
    for output, use in uses.items():
        get_run_logger().info(f"{output}: {use.reason}")
    return uses


def _with_costs(record: RunRecord, report: stages.AugmentReport | None) -> None:
    """The run's audit rows with what this run spent on each output (tokens, seconds)."""
    steps = report.steps if report is not None else {}
    for row in record.audit or []:
        step = steps.get(OUTPUT_STEPS[row["output"]])
        row["tokens"], row["seconds"] = (int(step.stats.tokens), float(step.seconds)) if step else (0, 0.0)


def _served_choice(
    config: cycle.CycleConfig, store: MetricsStore, dataset: str, parameters: dict[str, object]
) -> tuple[cycle.CycleConfig, str | None]:
    """(config, why): with timed alternatives, `config` serving the one the workspace's last completed refresh of
    the same ranker and protocol scored best (another ranker's or protocol's lines are not these); the choice is
    recorded in `parameters`. Without alternatives, `config` as it is."""
    if not config.alternatives:
        return config, None
    same = {"ranker": parameters["ranker"], "protocol": parameters["protocol"]}
    last = store.last_completed_run(flow="refresh", dataset=dataset, parameters=same)
    config, parameters["timed_choice"], why = cycle.serving_rolling_choice(
        config, store.run_metrics(last) if last else None
    )
    get_run_logger().info(f"serves {why}")
    return config, why


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did: its run, the gate's decision on its candidate (version = the run id), the metrics it
    recorded (the product's and the reference lines') and the timed choice it served (why; None without one)."""

    run_id: str
    decision: GateDecision
    metrics: pl.DataFrame
    timed_choice: str | None


@flow(name="refresh", log_prints=True)
def refresh(
    workspace: Path | None = None,
    k: int = DEFAULT_K,
    seed: int = 0,
    max_epochs: int = MAX_EPOCHS,
    augment_limit: int = AUGMENT_LIMIT,
    simulate: bool = True,
    gate_metrics: tuple[str, ...] | None = None,
    gate_tolerance: float = DEFAULT_GATE_TOLERANCE,
    reference_gate: bool = True,
    protocol: str | None = None,
    ranker: str | None = None,
    choose_timed: bool = True,
) -> RefreshResult:
    """One nightly cycle over the workspace (see the module doc); `augment_limit` 0 retrains without augmenting;
    `ranker` defaults to the settings'. On the temporal protocol, `choose_timed` trains every timed alternative
    and serves the one `cycle.rolling_choice` reads from the workspace's last completed refresh (the defaults on
    the first); off, the default choices."""
    settings = WarmstartSettings()
    apply_text_backend(settings)
    ranker = ranker or settings.ranker
    space = Workspace(workspace or settings.workspace, writer_wait=settings.writer_wait)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url)
    dataset = stages.workspace_dataset(space)
    protocol = protocol or ("cold-item" if dataset.splits else "temporal")
    config = cycle.cycle_config(
        seed=seed,
        max_epochs=max_epochs,
        ranker=ranker,
        k=k,
        protocol=protocol,
        gate_metrics=gate_metrics,
        gate_tolerance=gate_tolerance,
        reference_gate=reference_gate,
        cache_dir=settings.cache_dir,
        choose_timed=choose_timed,
        ann_min_items=settings.ann_min_items,
    )
    parameters = {"k": k, "seed": seed, "max_epochs": max_epochs, "augment_limit": augment_limit, "simulate": simulate}
    parameters |= {"ranker": ranker, "protocol": protocol}
    config, why = _served_choice(config, store, dataset.name, parameters)
    recover_killed_runs(
        space,
        store,
        dataset=dataset.name,
        ranker=ranker,
        cache_dir=settings.cache_dir,
        say=get_run_logger().info,
        ann_min_items=settings.ann_min_items,
    )
    current = space.models.current(ranker)
    recorded = store.run_metrics(current) if current else None
    run_id = new_run_id()
    with contextlib.ExitStack() as promotion:
        # One transaction as seen from outside: the version folder stays guarded (unlisted, unpromotable) until the
        # store records the run's outcome, the commit; a failure before it marks the run failed and removes the
        # folder. Everything that reads the data to publish runs before the commit; after it, only the promotion and
        # the table's replacement, each one atomic file write, which the next start completes if a kill stops them.
        with (
            space.models.saving(ranker, run_id),
            store.run(run_id, flow="refresh", dataset=dataset.name, parameters=parameters) as run,
        ):
            _detect(space, run, settings)
            uses = _outputs_used(store, dataset.name)
            report = None
            if augment_limit:
                plan = stages.AugmentPlan(limit=augment_limit, simulate=simulate)
                report = _augment_into(run, space, settings, plan)
            with cycle.stage(run.record, "encode", "item texts into embeddings"):
                runners.subflow_runner(encode_items, settings)(space.root)
            # The encoding tasks' results (every item's embedding, 0.7 GB at 500k items) sit in Prefect's reference
            # cycles once the flow is done, until the collector runs: it ran a third into the fit at scale M.
            training.release_memory()
            decision = _train_evaluate_gate(
                run, space, dataset, config, recorded, sparse_max=settings.sparse_max, uses=uses
            )
            _with_costs(run.record, report)
            # From here to the published table the run is the workspace's one writer: it re-checks that the version
            # it was gated against is still current, records the decision, then promotes, and nobody can promote
            # in between; nor can an ingest remove the generation it publishes into (the current one, not the one
            # the run started on). (Waiting too long fails the run, recorded, with nothing promoted.)
            writer = promotion.enter_context(space.writer(f"refresh {run.run_id} (promotion)"))
            decision = cycle.still_current(writer.models, ranker, decision, run)
            publication = _publication(
                writer,
                ranker,
                decision,
                run.run_id,
                k=k,
                cache_dir=settings.cache_dir,
                ann_min_items=settings.ann_min_items,
            )
        _promote_and_publish(writer, ranker, decision, run.run_id, publication)
    return RefreshResult(run.run_id, decision, run.record.metrics, why)


def recover_killed_runs(
    space: Workspace,
    store: MetricsStore,
    *,
    dataset: str,
    ranker: str,
    cache_dir: Path,
    say: Callable[[str], None],
    ann_min_items: int | None = ANN_MIN_ITEMS,
) -> None:
    """At the start of a refresh, finish or undo what killed runs left: version folders of runs killed before their
    outcome was recorded are removed and their runs marked failed; a promotion the store recorded but the registry
    never got is made; a `recommendations` table naming another version than the current one is published again.
    `say` is told what was done."""
    for version in cycle.sweep_killed_runs(space.models, store):
        say(f"removed the version folder of run {version}, killed before its outcome was recorded")
    writer = space.writer("refresh (completing what a killed run recorded)")
    cycle.reconcile(space.models, store, flow="refresh", dataset=dataset, ranker=ranker, writer=writer)
    if _stale_recommendations(Workspace(space.root), ranker) is None:  # the current generation's table
        return
    with space.writer("refresh (publishing the current version's recommendations)") as current:
        stale = _stale_recommendations(current, ranker)
        if stale is None:
            return
        version, k = stale
        from serving import Recommender

        served = Recommender.load(current, version, ranker=ranker, cache_dir=cache_dir, ann_min_items=ann_min_items)
        rows = stages.recommendations(served, new_run_id(), k=k).publish(current)
        say(f"recommendations: {rows:,} rows from {ranker} {version}, the current version (a run was killed)")


def _stale_recommendations(space: Workspace, ranker: str) -> tuple[str, int] | None:
    """(current version, k) when the workspace's `recommendations` table was published from `ranker` but names
    another version than its current one (a run killed between promoting and publishing); else None."""
    current = space.models.current(ranker)
    if current is None or not space.exists(Tables.recommendations):
        return None
    published = space.provenance(Tables.recommendations).get("parameters", {})
    if published.get("ranker") != ranker or published.get("model_version") == current:
        return None
    return current, int(published.get("k", DEFAULT_K))


def _train_evaluate_gate(
    run: ActiveRun,
    space: Workspace,
    dataset: Dataset,
    config: cycle.CycleConfig,
    recorded: pl.DataFrame | None,
    *,
    sparse_max: int,
    uses: dict[str, training.OutputUse],
) -> GateDecision:
    """The cycle's second half on the workspace's data set, the model training on the language model's outputs
    that `uses` names (judged pairs warm their cold items; descriptions join the encoded text), every output
    audited against its control. On a time-ordered log the version served is refit on every event once the gate
    has let the candidate through (`training.whole_log_plan`)."""
    judged, descriptions = stages.synthetic_interactions(space), stages.item_descriptions(space)
    profiles = stages.user_profiles(space)
    audit = training.AuditInputs(judged, descriptions, dataset.items, uses, config.cache_dir, profiles)
    if uses[DESCRIPTIONS].used:
        dataset = replace(dataset, items=training.with_descriptions(dataset.items, descriptions))
    plan = training.dataset_plan(dataset, training.PROTOCOLS[config.protocol], sparse_max=sparse_max)
    plan = replace(plan, synthetic=judged if uses[JUDGED_PAIRS].used else None)
    whole_log = training.whole_log_plan(dataset, plan)
    return cycle.train_evaluate_gate(
        plan, config, run, space.models, recorded=recorded, dataset=dataset.name, whole_log=whole_log, audit=audit
    )


def _publication(
    space: Workspace,
    ranker: str,
    decision: GateDecision,
    run_id: str,
    *,
    k: int,
    cache_dir: Path,
    ann_min_items: int | None = ANN_MIN_ITEMS,
) -> stages.Publication | None:
    """The promoted candidate's `recommendations` table, computed from the current data before the run's record
    is written; None when the gate refused it."""
    if not decision.promoted:
        return None
    from serving import Recommender

    served = Recommender.load(space, run_id, ranker=ranker, cache_dir=cache_dir, ann_min_items=ann_min_items)
    return stages.recommendations(served, run_id, k=k, partitions=runners.partitions())


def _promote_and_publish(
    space: Workspace, ranker: str, decision: GateDecision, run_id: str, publication: stages.Publication | None
) -> None:
    """After the run's record: promote the candidate if the gate let it through and publish its recommendations
    (a refused candidate leaves the current version and its table in place)."""
    cycle.promote(space.models, ranker, decision, run_id)
    if publication is not None:
        rows = publication.publish(space)
        get_run_logger().info(f"recommendations: {rows:,} rows from {ranker} {run_id}")
    get_run_logger().info(f"refresh {run_id}: {decision.reason}")
