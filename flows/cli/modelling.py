"""Commands that train, evaluate and manage model versions: evaluate, refresh, retrain, models, promote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer

from catalog import (
    DATASETS,
    ConfigError,
    ModelVersion,
    Tables,
    Workspace,
    WorkspaceError,
    atomic_write_bytes,
    load_dataset,
    new_run_id,
)
from flows import stages
from flows.cli._common import (
    Protocol,
    RankerName,
    WorkspaceOption,
    console,
    flow_server,
    friendly_errors,
    load_settings,
    open_workspace,
    print_frame,
    print_metrics,
)
from flows.settings import WarmstartSettings
from monitor import MetricsStore, product_rows
from training.defaults import (
    AUGMENT_LIMIT,
    DEFAULT_GATE_METRICS,
    DEFAULT_GATE_TOLERANCE,
    DEFAULT_K,
    MAX_EPOCHS,
    SPARSE_MAX,
)

if TYPE_CHECKING:
    from training import EvaluationPlan, FittedRanker, ModelSettings

RankerOption = Annotated[
    RankerName | None, typer.Option(help="Ranker to train \\[default: lightgbm or $WARMSTART_RANKER].")
]
FileOption = Annotated[Path | None, typer.Option(help="CSV or Parquet file.", dir_okay=False)]


def _evaluation_plan(
    protocol: Protocol,
    settings: WarmstartSettings,
    *,
    dataset: str | None,
    data: Path | None,
    train: Path | None,
    test: Path | None,
    items: Path | None,
    valid: Path | None,
    users: Path | None,
    history_n: int | None = None,
    sparse_max: int = SPARSE_MAX,
) -> EvaluationPlan:
    """The split `warmstart evaluate` trains and evaluates on: a built-in data set's, or one given as files."""
    import training  # torch and the models load only for the commands that need them

    if (dataset is None) == (train is None):
        raise ConfigError("give either --dataset NAME or --train FILE --test FILE --items FILE.")
    name = training.PROTOCOLS[protocol.value]
    if dataset is not None:
        with console.status(f"loading {dataset}..."):
            loaded = load_dataset(dataset, data, settings.cache_dir)
        return training.dataset_plan(loaded, name, history_n=history_n, sparse_max=sparse_max)
    if items is None or (test is None and name not in training.USER_PROTOCOLS):
        raise ConfigError("--train needs --test FILE and --items FILE too.")
    assert train is not None
    return training.files_plan(
        name, train=train, test=test, items=items, valid=valid, users=users, history_n=history_n, sparse_max=sparse_max
    )


def _print_lines(lines: pl.DataFrame) -> None:
    """One line per reference line: its overall Recall and NDCG and those of each user segment it measured."""
    for (protocol,), rows in lines.group_by("protocol", maintain_order=True):
        values = rows.filter(
            (pl.col("segment") == "overall") | pl.col("segment").str.ends_with("_user"),
            pl.col("metric").is_in(["recall", "ndcg"]),
        )
        cells = values.select("segment", "metric", "k", "value").rows()
        shown = ", ".join(f"{segment} {metric}@{k} {value:.4f}" for segment, metric, k, value in cells)
        console.print(f"beside it, {protocol}: {shown}", markup=False)


@friendly_errors
def evaluate(
    protocol: Annotated[Protocol, typer.Option(help="Evaluation protocol.")] = Protocol.cold_item,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = DEFAULT_K,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    dataset: Annotated[str | None, typer.Option(help=f"Built-in data set: {' or '.join(DATASETS)}.")] = None,
    data: Annotated[Path | None, typer.Option(help="Folder holding the data set's files.")] = None,
    train: FileOption = None,
    test: FileOption = None,
    items: FileOption = None,
    valid: FileOption = None,
    users: FileOption = None,
    ranker: RankerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    max_epochs: Annotated[
        int, typer.Option(min=1, help="Most iterations of the collaborative model (ALS sweeps).")
    ] = MAX_EPOCHS,
    history_n: Annotated[
        int, typer.Option(min=1, help="sparse-user: the first N events (by time) each held-out user keeps.")
    ] = 1,
    sparse_max: Annotated[
        int, typer.Option(min=0, help="Evaluated users with 1..N training interactions are the sparse_user segment.")
    ] = SPARSE_MAX,
    cold_user_share: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="cold-user, sparse-user: share of training users the ranker sees without history \\[default: "
            "chosen on a validation split of the training users].",
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    augment: Annotated[
        bool,
        typer.Option(
            "--augment/--no-augment",
            help="Warm cold items with synthetic interactions (the embedding simulator's) as the product does; "
            "--no-augment is the ablation.",
        ),
    ] = True,
    keep_version: Annotated[
        bool,
        typer.Option(
            "--keep-version",
            help="cold-user, sparse-user: keep the evaluated model as a servable version of the workspace (not "
            "promoted; `recommend --version V` serves it), its held-out pairs in V/held_out.parquet. The workspace's "
            "data becomes the split's training part (every item and user, none of the held-out events), so the "
            "workspace must be empty or hold that very split's part already.",
        ),
    ] = False,
) -> None:
    """Train the encoders and the ranker on a split's training part and evaluate on its held-out part: the whole
    chain as the product runs it, synthetic interactions included (--no-augment leaves them out).

    Give --dataset citeulike --data DIR (ALDI split), --dataset ml-100k (temporal), or a split as files:
    --train F --test F --items F [--valid F] [--users F]. Test users or items without training rows are cold.

    --protocol cold-user holds out a seeded 20% of users whole (known by their attributes only); sparse-user keeps
    their first --history-n events. Both need a users table (ml-100k has one; files: --users F, and the train and
    test files' events are one log to draw from) and print popularity, attribute-group popularity and, for
    sparse-user, BPR-MF beside the product, each on the same split.

    The ranker is saved under WORKSPACE/models/RANKER/RUN_ID. With --keep-version (the protocols over users) that
    folder is a whole version, which serves the held-out users exactly as they were scored: `warmstart recommend
    --users V/held_out.parquet --version V` lists what the report measured.
    """
    import training  # torch and the models load only for the commands that need them

    settings = load_settings()
    ranker_name = (ranker or RankerName(settings.ranker)).value
    plan = _evaluation_plan(
        protocol,
        settings,
        dataset=dataset,
        data=data,
        train=train,
        test=test,
        items=items,
        valid=valid,
        users=users,
        history_n=history_n,
        sparse_max=sparse_max,
    )
    run_id = new_run_id()
    models = training.ModelSettings.capped(seed, max_epochs, ranker_name).with_ann_min_items(settings.ann_min_items)
    if not augment:
        models = models.without_augmentation()
    space = open_workspace(workspace, settings)
    part = None
    if keep_version:  # refused before training when the workspace cannot serve the split
        part = training.training_part(plan)
        stages.check_training_part(space, part, plan.split.name)
    # Guarded while it trains: a refresh starting meanwhile does not take the half-written folder for a killed run's.
    with space.models.saving(ranker_name, run_id) as model_dir:
        report, lines, fitted = _train_and_evaluate(plan, models, protocol, k, settings, model_dir, cold_user_share)
        if part is not None and fitted is not None:
            metrics = pl.DataFrame(report["metrics"])
            stages.keep_evaluated_version(space, plan, part, fitted, metrics, model_dir, run_id)
    print_metrics(report, f"{protocol.value} @ {k} ({report['n_users']:,} users, {report['seconds']:.0f} s)")
    if lines is not None:
        _print_lines(lines)
        choice = report["cold_user_share"]
        if choice:
            console.print(f"users shown without history while training: {choice}", markup=False)
    newcomers = report["models"].get("newcomers")
    if newcomers:
        chosen, route = newcomers["chosen"], newcomers.get("route")
        served = route["served"] if route else [chosen["min_events"], chosen["max_events"]]
        who = "no users" if served is None else f"users with {served[0]}-{served[1]} events"
        names = ("numeric_scale", "level_weight", "history_weight", "recent_weight", "recent_days")
        weights = {name: chosen[name] for name in names if name in chosen}
        left_out = " (items without history left out)" if route and route.get("cold_items") is False else ""
        console.print(f"the newcomer model serves {who}{left_out}; its weights: {weights}", markup=False)
    if part is not None:
        report["kept_version"] = {"ranker": ranker_name, "version": run_id, "path": str(model_dir)}
        console.print(
            f"kept as {ranker_name} version {run_id} (not promoted); its held-out users are served by `warmstart "
            f"recommend --users {model_dir / stages.HELD_OUT} --version {run_id} --ranker {ranker_name} --workspace "
            f"{space.root}`",
            markup=False,
            soft_wrap=True,
        )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_out, json.dumps(report, indent=2, default=str).encode())
        console.print(f"report written to {json_out}")


def _train_and_evaluate(
    plan: EvaluationPlan,
    models: ModelSettings,
    protocol: Protocol,
    k: int,
    settings: WarmstartSettings,
    model_dir: Path,
    cold_user_share: float | None,
) -> tuple[dict[str, object], pl.DataFrame | None, FittedRanker | None]:
    """(report, reference lines or None, the evaluated ranker where a protocol over users evaluated it):
    `warmstart evaluate`'s training and evaluation, saving the ranker into `model_dir`."""
    import training

    lines, fitted = None, None
    if plan.split.protocol in training.USER_PROTOCOLS:
        users_evaluation = training.evaluate_users(
            plan,
            k=k,
            cache_dir=settings.cache_dir,
            settings=models,
            model_dir=model_dir,
            cold_user_share=cold_user_share,
        )
        report = users_evaluation.as_dict() | {"protocol": protocol.value}
        lines, fitted = users_evaluation.lines, users_evaluation.fitted
    else:
        evaluation = training.train_and_evaluate(
            plan, k=k, cache_dir=settings.cache_dir, settings=models, model_dir=model_dir
        )
        report = evaluation.as_dict() | {"protocol": protocol.value}
    return report, lines, fitted


GateMetricOption = Annotated[
    list[str] | None,
    typer.Option(
        "--gate-metric",
        help=f"Gate metric SEGMENT/METRIC@K, repeatable \\[default: {', '.join(DEFAULT_GATE_METRICS)}].",
    ),
]
GateToleranceOption = Annotated[
    float, typer.Option(help="Largest drop of a gate metric that still promotes (negative: must improve by that much).")
]
ReferenceGateOption = Annotated[
    bool,
    typer.Option(
        help="Refuse a candidate that loses to recent popularity (measured on the same data) on the first gate metric."
    ),
]
ChooseTimedRunOption = Annotated[
    bool,
    typer.Option(
        help="On the temporal protocol, train each timed alternative and serve the one with the best overall NDCG "
        "in the workspace's last refresh among those that keep the default's cold recall (within the gate's "
        "tolerance).",
    ),
]
DaskAddressOption = Annotated[
    str | None,
    typer.Option(
        help="Run on the existing Dask cluster whose scheduler is here (e.g. tcp://host:8786): the task runner "
        "becomes dask and training, evaluation and the published top k run on its workers "
        "\\[default: WARMSTART_DASK_ADDRESS, used when WARMSTART_TASK_RUNNER=dask].",
    ),
]


def _on_cluster(settings: WarmstartSettings, dask_address: str | None) -> WarmstartSettings:
    """The settings, on the Dask cluster at `dask_address` where one is given."""
    if dask_address is None:
        return settings
    return settings.model_copy(update={"task_runner": "dask", "dask_address": dask_address})


ProtocolOption = Annotated[
    Protocol | None,
    typer.Option(
        help="Protocol of the evaluation "
        "\\[default: cold-item for a data set with predefined (ALDI) splits, else temporal]."
    ),
]


def _refresh(
    space: Workspace,
    settings: WarmstartSettings,
    *,
    title: str,
    ranker: RankerName | None,
    **options: object,
) -> None:
    """Run the refresh flow on the workspace, then print its metrics and the gate's decision."""
    from flows.refresh import refresh as refresh_flow
    from flows.runners import with_runner

    if not space.exists(Tables.interactions):  # say so before Prefect starts
        raise WorkspaceError(f"workspace {space.root} holds no data: run `warmstart ingest --workspace {space.root}`.")
    name = (ranker or RankerName(settings.ranker)).value
    with flow_server():
        outcome = with_runner(refresh_flow, settings)(workspace=space.root, ranker=name, **options)
    metrics = outcome.metrics
    product = product_rows(metrics)
    print_metrics({"metrics": product.to_dicts()}, f"{title} {outcome.run_id}: {product['protocol'][0]}")
    lines = metrics.filter(pl.col("protocol") != product["protocol"][0])  # the reference lines, on the same data
    for (protocol,), rows in lines.group_by("protocol", maintain_order=True):
        values = rows.filter((pl.col("segment") == "overall") & pl.col("metric").is_in(["recall", "ndcg"]))
        shown = ", ".join(f"{m}@{k} {v:.4f}" for m, k, v in values.select("metric", "k", "value").iter_rows())
        console.print(f"beside it, {protocol}: overall {shown}", markup=False)
    if outcome.timed_choice:
        console.print(f"timed choice: {outcome.timed_choice}", markup=False)
    decision = outcome.decision
    verdict = "promoted: now current" if decision.promoted else "refused: the current model stays"
    console.print(f"{name} {outcome.run_id} {verdict} ({decision.reason})", markup=False)


@friendly_errors
def refresh(
    augment_limit: Annotated[
        int, typer.Option(min=0, help="Entities per step the language model augments (0: no augmentation).")
    ] = AUGMENT_LIMIT,
    simulate: Annotated[bool, typer.Option(help="Simulate interactions for cold items.")] = True,
    protocol: ProtocolOption = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = DEFAULT_K,
    ranker: RankerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    max_epochs: Annotated[
        int, typer.Option(min=1, help="Most iterations of the collaborative model (ALS sweeps).")
    ] = MAX_EPOCHS,
    gate_metric: GateMetricOption = None,
    gate_tolerance: GateToleranceOption = DEFAULT_GATE_TOLERANCE,
    reference_gate: ReferenceGateOption = True,
    choose_timed: ChooseTimedRunOption = True,
    dask_address: DaskAddressOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """One gated, recorded refresh cycle on the workspace (what the nightly deployment runs): detect, augment,
    encode, retrain, evaluate on real held-out data, gate against the current model on the same data, record the
    run in the metrics history and promote the candidate if the gate lets it through."""
    settings = _on_cluster(load_settings(), dask_address)
    _refresh(
        open_workspace(workspace, settings),
        settings,
        title="refresh",
        ranker=ranker,
        augment_limit=augment_limit,
        simulate=simulate,
        protocol=protocol.value if protocol else None,
        k=k,
        seed=seed,
        max_epochs=max_epochs,
        gate_metrics=tuple(gate_metric) if gate_metric else None,  # None: the default gate metrics at k
        gate_tolerance=gate_tolerance,
        reference_gate=reference_gate,
        choose_timed=choose_timed,
    )


@friendly_errors
def retrain(
    protocol: ProtocolOption = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = DEFAULT_K,
    ranker: RankerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    gate_tolerance: GateToleranceOption = DEFAULT_GATE_TOLERANCE,
    reference_gate: ReferenceGateOption = True,
    choose_timed: ChooseTimedRunOption = True,
    dask_address: DaskAddressOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """`warmstart refresh --augment-limit 0`: retrain on the workspace's data without augmenting, still gated
    against the current model and recorded. The version (WORKSPACE/models/RANKER/RUN_ID/) holds the model, its
    metadata and report.json: the data window, the metrics on real held-out interactions, the parent version."""
    settings = _on_cluster(load_settings(), dask_address)
    _refresh(
        open_workspace(workspace, settings),
        settings,
        title="retrained",
        ranker=ranker,
        augment_limit=0,
        protocol=protocol.value if protocol else None,
        k=k,
        seed=seed,
        gate_tolerance=gate_tolerance,
        reference_gate=reference_gate,
        choose_timed=choose_timed,
    )


@friendly_errors
def models(
    ranker: RankerOption = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of the metrics shown.")] = DEFAULT_K,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write every version (data window, parent, all its metrics) as JSON here."),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """List the saved model versions with the data they trained on and their held-out metrics; `*` marks the
    current (promoted) one."""
    space = open_workspace(workspace, load_settings())
    versions = space.models.versions(ranker.value if ranker else None)
    if json_out is not None:
        listed = [_version_entry(version) for version in versions]
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_out, json.dumps(listed, indent=2, default=str).encode())
        console.print(f"{len(listed)} version(s) written to {json_out}")
    if not versions:
        console.print(f"no model versions in {space.models.root}: run `warmstart refresh` first.")
        return
    rows = []
    for version in versions:
        entry = _version_entry(version)
        values = {
            f"{row['segment']}/{row['metric']}@{row['k']}": row["value"]
            for row in version.report().get("metrics", [])
            if row["k"] == k and row["metric"] in ("recall", "ndcg") and row["segment"] in ("overall", "cold", "tail")
        }
        shown = {"current": "*" if version.current else "", "ranker": version.ranker, "version": version.version}
        shown |= {"parent": entry["parent"] or "", "data_end": str(entry["data_end"] or "")}
        rows.append(shown | values)
    print_frame(pl.DataFrame(rows, infer_schema_length=None), f"model versions in {space.models.root}")


def _version_entry(version: ModelVersion) -> dict[str, object]:
    """One version as `models --json` lists it: the first and last event it trained on, parent and metrics."""
    report = version.report()
    window = report.get("data_window") or {}
    return {
        "version": version.version,
        "ranker": version.ranker,
        "current": version.current,
        "parent": report.get("parent"),
        "dataset": report.get("dataset"),
        "data_start": window.get("start"),
        "data_end": window.get("end"),
        "metrics": report.get("metrics", []),
    }


@friendly_errors
def promote(
    version: Annotated[str | None, typer.Argument(help="Version to make current (a run id).")] = None,
    previous: Annotated[bool, typer.Option("--previous", help="Roll back to the version current before.")] = False,
    ranker: RankerOption = None,
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "by hand",
    workspace: WorkspaceOption = None,
) -> None:
    """Make a saved version the current model by hand (or roll back with --previous); recorded in the registry's
    promotion log and in the metrics history."""
    settings = load_settings()
    space = open_workspace(workspace, settings)
    name = (ranker or RankerName(settings.ranker)).value
    if (version is None) == (not previous):
        raise ConfigError("give either a VERSION or --previous.")
    # The one writer: a refresh promoting meanwhile re-checks the current version under the same lock and leaves
    # this choice in place (and --previous means the version before the current one as it is now).
    with space.writer("promote --previous" if previous else f"promote {version}") as current:
        registry = current.models
        chosen = registry.previous(name) if previous else version
        if chosen is None:
            raise ConfigError(f"{name} has no previous version to roll back to.")
        incumbent = registry.current(name)
        published = current.exists(Tables.recommendations)
        if published:  # the table must name the current version: check the chosen one serves before switching
            from serving import Recommender

            served = Recommender.load(current, chosen, ranker=name, cache_dir=settings.cache_dir)
        entry = registry.promote(name, chosen, reason=reason)
        run_id = new_run_id()
        store = MetricsStore.for_workspace(space.root, settings.metrics_url)
        store.record_promotion(
            run_id,
            dataset=str(current.state().get("dataset", "workspace")),
            candidate=chosen,
            incumbent=incumbent,
            reason=f"{'rollback' if previous else 'promoted'} by hand: {reason}",
        )
        store.close()
        if published:
            k = int(current.provenance(Tables.recommendations).get("parameters", {}).get("k", DEFAULT_K))
            rows = stages.publish_recommendations(current, served, run_id, k=k)
    console.print(f"{name} {entry['version']} is now current (was {entry['previous']})", markup=False)
    if published:
        console.print(f"recommendations: {rows:,} rows from {name} {chosen}", markup=False)
