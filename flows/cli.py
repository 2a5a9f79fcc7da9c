"""The `warmstart` command line. Every command takes --workspace (default ./workspace or $WARMSTART_WORKSPACE)."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import polars as pl
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from catalog import (
    Columns,
    ConfigError,
    Segments,
    Tables,
    WarmstartError,
    Workspace,
    WorkspaceError,
    atomic_write_bytes,
    load_dataset,
    load_files,
    new_run_id,
    redact,
)
from flows import stages
from flows.settings import WarmstartSettings
from monitor import Lines, MetricsStore, beyond_accuracy_trend, metric_trend, product_rows, versus_trend
from training.defaults import ITEM_SEGMENTS, SIMULATE_SEGMENTS, USER_SEGMENTS

if TYPE_CHECKING:
    from augment import Backend

app = typer.Typer(
    name="warmstart",
    help="Turn cold-start and long-tail items and users of a recommender system into warm ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace directory \\[default: ./workspace or $WARMSTART_WORKSPACE]."),
]


def _settings() -> WarmstartSettings:
    try:
        return WarmstartSettings()
    except ValidationError as error:
        raise ConfigError(f"invalid WARMSTART_* environment setting: {error}") from None


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn warmstart's own errors into one line on stderr and exit code 1, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (WarmstartError, OSError) as error:  # OSError: a disk or permission failure is the user's to fix
            # The message is data: never parsed as markup (a value like `[/x]` would break or restyle it).
            line = " ".join(redact(str(error)).split()) or type(error).__name__
            line = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in line)  # no terminal escapes
            errors.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _workspace(option: Path | None, settings: WarmstartSettings) -> Workspace:
    return Workspace(option or settings.workspace)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_frame(frame: pl.DataFrame, title: str) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(column, justify="right" if frame.schema[column].is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*(_cell(value) for value in row))
    console.print(table)


def _print_metrics(report: dict, title: str) -> None:
    """One row per metric, one column per segment: fits a terminal where the long form would not."""
    table = pl.DataFrame(report["metrics"]).pivot(on="segment", index="metric", values="value")
    _print_frame(table, title)


@app.command()
@friendly_errors
def ingest(
    dataset: Annotated[str | None, typer.Option(help="Built-in data set: ml-100k or citeulike.")] = None,
    data: Annotated[Path | None, typer.Option(help="Folder holding the data set's files.")] = None,
    interactions: Annotated[Path | None, typer.Option(help="Interactions file (CSV, TSV or Parquet).")] = None,
    items: Annotated[Path | None, typer.Option(help="Items file (CSV, TSV or Parquet).")] = None,
    users: Annotated[Path | None, typer.Option(help="Users file (CSV, TSV or Parquet), optional.")] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="Column mapping CONTRACT=FILE_COLUMN, repeatable (e.g. --map user_id=uid)."),
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Store files with no rows (refused by default: data would be lost).")
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Load a data set, check it against the contracts and store it in the workspace.

    The tables are written as a new generation and switched in at once: a failed ingest changes nothing, and
    `warmstart rollback` restores the previous data (with its segments and watermark).
    """
    settings = _settings()
    if (dataset is None) == (interactions is None):
        raise ConfigError("give either --dataset NAME or --interactions FILE --items FILE.")
    if dataset is not None:
        with console.status(f"loading {dataset}..."):
            loaded = load_dataset(dataset, data, settings.cache_dir)
    else:
        if items is None:
            raise ConfigError("--interactions needs --items FILE too.")
        assert interactions is not None
        mapping = stages.parse_mapping(map_ or [])
        loaded = load_files(interactions, items, users, mapping=mapping, allow_empty=allow_empty)
    run_id = new_run_id()
    written = stages.ingest(_workspace(workspace, settings), loaded, run_id)
    reports = loaded.reports.items()
    report = pl.DataFrame(
        {
            "table": [name for name, _ in reports],
            "rows read": [r.rows_read for _, r in reports],
            "duplicates collapsed": [r.duplicates_collapsed for _, r in reports],
            "rows kept": [r.rows_kept for _, r in reports],
        }
    )
    _print_frame(report, f"ingest {loaded.name} (run {run_id})")
    console.print("tables written: " + ", ".join(f"{name} ({rows:,})" for name, rows in written.items()))


def _show_detection(detection: stages.Detection, title: str) -> None:
    _print_frame(detection.summary, title)
    since = detection.watermark.isoformat() if detection.watermark else "never (first run: nothing is new)"
    console.print(f"new = first seen after {since}")


@app.command()
@friendly_errors
def detect(
    sparse_max: Annotated[int | None, typer.Option(help="Entities with 1..N interactions are sparse.")] = None,
    head_share: Annotated[float | None, typer.Option(help="Share of interactions the head holds.")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Count as new what was first seen after this time [default: last run].")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Classify items and users into new / cold / sparse / tail / head segments."""
    settings = _settings()
    detection = stages.detect(
        _workspace(workspace, settings),
        new_run_id(),
        sparse_max=settings.sparse_max if sparse_max is None else sparse_max,
        head_share=settings.head_share if head_share is None else head_share,
        since=_utc(since),
    )
    _show_detection(detection, "segments")


@app.command()
@friendly_errors
def rollback(workspace: WorkspaceOption = None) -> None:
    """Make the previous generation of the workspace's data current again: the tables of the ingest before
    the last, with their segments, derived tables and watermark. A second rollback undoes the first."""
    space = _workspace(workspace, _settings())
    pointer = space.rollback()
    console.print(f"current generation: {pointer['current']} (previous: {pointer['previous']})")


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _show_trends(store: MetricsStore, k: int, title: str) -> None:
    rows = store.metrics()
    if rows.is_empty():
        console.print("the metrics store holds no metric rows yet.")
        return
    for metric in ("recall", "ndcg"):
        trend = metric_trend(rows, metric=metric, k=k).with_columns(pl.col("as_of").dt.strftime("%Y-%m-%d"))
        _print_frame(trend, f"{title}: {metric}@{k} per segment")
    for metric in ("recall", "ndcg"):
        versus = versus_trend(rows, metric=metric, k=k).with_columns(pl.col("as_of").dt.strftime("%Y-%m-%d"))
        alternatives = [c for c in versus.columns if c.startswith(Lines.alternative_prefix)]
        if versus.width - len(alternatives) > 2:  # the product and at least one reference line
            shown = versus.drop(alternatives)
            _print_frame(shown, f"{title}: overall {metric}@{k}, the product beside popularity (same split)")
        if alternatives and metric == "ndcg":  # what a backfill's rolling choice read (flows.backfill)
            choices = versus.select("as_of", "product", *alternatives).rename(
                {name: name.removeprefix(Lines.alternative_prefix) for name in alternatives}
            )
            what = "of each timed choice (the next window serves the best)"
            _print_frame(choices, f"{title}: overall {metric}@{k} {what}")
    if rows["protocol"].str.ends_with(f":{Lines.without_augmentation}").any():
        for segment in (Segments.cold, Segments.tail):  # what synthetic interactions did where they act
            versus = versus_trend(rows, metric="recall", k=k, segment=segment)
            shown = [c for c in versus.columns if c in ("product", Lines.without_augmentation)]
            versus = versus.select(pl.col("as_of").dt.strftime("%Y-%m-%d"), *shown)
            _print_frame(versus, f"{title}: {segment} recall@{k} with and without augmentation (same model, split)")
    beyond = beyond_accuracy_trend(rows, k=k).with_columns(pl.col("as_of").dt.strftime("%Y-%m-%d"))
    _print_frame(beyond, f"{title}: beyond accuracy @{k} (overall)")
    augmentation = store.augmentation()
    if not augmentation.is_empty():
        runs = store.runs().select("run_id", pl.col("window_end").dt.strftime("%Y-%m-%d").alias("as_of"))
        shown = augmentation.join(runs, on="run_id", how="left").select(
            "as_of",
            "items_augmented",
            "synthetic_rows",
            "synthetic_precision",
            "cold_items_warmed",
            "simulator_precision",
            "cache_hits",
            "tokens",
            "seconds",
            "backend",
        )
        _print_frame(shown, f"{title}: language-model augmentation per run")


ChooseTimedOption = Annotated[
    bool,
    typer.Option(
        help="Train each timed alternative per window and serve, from the second window on, the one with the best "
        "overall NDCG on the window before among those that keep the default's cold recall (within the gate's "
        "tolerance).",
    ),
]
DateOption = Annotated[datetime | None, typer.Option(help="UTC date or time, e.g. 1998-01-01.")]


def _run_backfill(
    *,
    dataset: str,
    data: Path | None,
    space: Workspace,
    settings: WarmstartSettings,
    start: datetime | None,
    end: datetime | None,
    every: str,
    k: int,
    seed: int,
    max_epochs: int,
    augment_limit: int,
    choose_timed: bool,
) -> MetricsStore:
    from flows.backfill import backfill as backfill_flow
    from flows.backfill import parse_every
    from flows.runners import with_runner

    parse_every(every)  # a bad --every fails here, before Prefect starts
    with_runner(backfill_flow, settings)(
        dataset=dataset,
        data_dir=data,
        workspace=space.root,
        cache_dir=settings.cache_dir,
        start=_utc(start),
        end=_utc(end),
        every=every,
        k=k,
        seed=seed,
        max_epochs=max_epochs,
        store_url=None,  # the flow reads it from the settings: Prefect keeps flow parameters, passwords included
        sparse_max=settings.sparse_max,
        head_share=settings.head_share,
        augment_limit=augment_limit,
        choose_timed=choose_timed,
    )
    return MetricsStore.for_workspace(space.root, settings.metrics_url, read_only=True)


@app.command()
@friendly_errors
def backfill(
    dataset: Annotated[str, typer.Option(help="Built-in data set with timestamps: ml-100k.")] = "ml-100k",
    data: Annotated[Path | None, typer.Option(help="Folder holding the data set's files [default: fetch].")] = None,
    start: DateOption = None,
    end: DateOption = None,
    every: Annotated[str, typer.Option(help="Window length: a number with d, h or w.")] = "7d",
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    max_epochs: Annotated[int, typer.Option(min=1, help="Most BPR-MF epochs per window.")] = 150,
    augment_limit: Annotated[
        int,
        typer.Option(
            min=0,
            help="Items per window the language model describes (new ones) and judges users for (cold ones); 0: none.",
        ),
    ] = 0,
    choose_timed: ChooseTimedOption = True,
    workspace: WorkspaceOption = None,
) -> None:
    """Replay history window by window: train on events up to each window's end, evaluate on the next window
    (its new items are the cold ones) and write one point per window and segment into the metrics history.

    --start and --end default to the data set's first and last event. Resumable: a rerun skips finished windows.
    """
    settings = _settings()
    space = _workspace(workspace, settings)
    store = _run_backfill(
        dataset=dataset,
        data=data,
        space=space,
        settings=settings,
        start=start,
        end=end,
        every=every,
        k=k,
        seed=seed,
        max_epochs=max_epochs,
        augment_limit=augment_limit,
        choose_timed=choose_timed,
    )
    _show_trends(store, k, f"{dataset} backfill")


@app.command()
@friendly_errors
def history(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write runs and metric rows as JSON here.")] = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of the trend tables.")] = 20,
    workspace: WorkspaceOption = None,
) -> None:
    """Print the runs and the long-tail metric trends of the metrics history (or write them as JSON)."""
    settings = _settings()
    store = MetricsStore.for_workspace(_workspace(workspace, settings).root, settings.metrics_url, read_only=True)
    runs = store.runs()
    if json_out is not None:
        payload = {"runs": runs.to_dicts(), "metrics": store.metrics(completed_only=False).to_dicts()}
        atomic_write_bytes(json_out, json.dumps(payload, indent=2, default=str).encode())
        console.print(f"{runs.height:,} runs and {len(payload['metrics']):,} metric rows written to {json_out}")
        return
    shown = runs.select(
        "run_id", "flow", "dataset", pl.col("window_end").dt.strftime("%Y-%m-%d"), "status", "model_version"
    )
    _print_frame(shown, f"{runs.height:,} runs")
    _show_trends(store, k, "history")


@app.command()
@friendly_errors
def demo(
    data: Annotated[Path | None, typer.Option(help="Folder with ml-100k.{inter,item,user} [default: fetch].")] = None,
    every: Annotated[str, typer.Option(help="Window length of the backfill.")] = "30d",
    max_epochs: Annotated[int, typer.Option(min=1, help="Most BPR-MF epochs per window.")] = 150,
    augment_limit: Annotated[
        int,
        typer.Option(
            min=0, help="Items per window the language model describes (new ones) and judges users for (cold ones)."
        ),
    ] = 4,
    choose_timed: ChooseTimedOption = True,
    workspace: WorkspaceOption = None,
) -> None:
    """Backfill MovieLens-100K window by window, then print the long-tail metric trends per segment.

    Ingests MovieLens-100K into the workspace and prints its segments first; a rerun resumes the backfill.
    """
    settings = _settings()
    space = _workspace(workspace, settings)
    with console.status("fetching and loading MovieLens-100K..."):
        dataset = load_dataset("ml-100k", data, settings.cache_dir)
    run_id = new_run_id()
    stages.ingest(space, dataset, run_id)
    last_event = dataset.interactions[Columns.ts].max()
    assert isinstance(last_event, datetime)
    detection = stages.detect(
        space,
        run_id,
        sparse_max=settings.sparse_max,
        head_share=settings.head_share,
        since=last_event - timedelta(days=7),
    )
    console.print(
        f"MovieLens-100K: {dataset.interactions.height:,} ratings, {dataset.items.height:,} movies, "
        f"{dataset.users.height:,} users -> workspace {space.root}"
    )
    _show_detection(detection, "MovieLens-100K segments (new: first seen in the last week)")
    store = _run_backfill(
        dataset="ml-100k",
        data=data,
        space=space,
        settings=settings,
        start=None,
        end=None,
        every=every,
        k=20,
        seed=0,
        max_epochs=max_epochs,
        augment_limit=augment_limit,
        choose_timed=choose_timed,
    )
    _show_trends(store, 20, "MovieLens-100K backfill, read back from the metrics store")


@app.command()
@friendly_errors
def serve(
    config: Annotated[Path | None, typer.Option(help="Deployments file [default: deployments/prefect.yaml].")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Serve only this deployment (repeatable).")] = None,
) -> None:
    """Run the deployments of prefect.yaml (augment-new, nightly-refresh, weekly-backfill) in this process.

    Needs a Prefect API (PREFECT_API_URL, e.g. `prefect server start`); their schedules then fire here, and
    `prefect deployment run NAME` triggers one by hand. Stop with Ctrl-C.
    """
    from prefect import serve as prefect_serve

    from flows.serve import DEPLOYMENTS_FILE, runner_deployments

    deployments = runner_deployments(config or DEPLOYMENTS_FILE, only)
    console.print(f"serving {', '.join(d.name for d in deployments)}")
    prefect_serve(*deployments)


@app.command()
@friendly_errors
def dashboard(
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the page to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the page.")] = 8501,
    workspace: WorkspaceOption = None,
) -> None:
    """Open the monitoring dashboard (Streamlit) over the metrics history, read-only.

    Shows per-segment accuracy and beyond-accuracy metrics over time, segment sizes and cold-to-warm
    transitions, augmentation volume, and runs with the gate's decisions. Stop with Ctrl-C.
    """
    import os
    import sys

    from monitor import DASHBOARD_STORE_ENV, dashboard_script

    settings = _settings()
    space = _workspace(workspace, settings)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url, read_only=True)
    command = [sys.executable, "-m", "streamlit", "run", str(dashboard_script()), "--server.address", host]
    command += ["--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    console.print(f"dashboard on http://{host}:{port} (store {store.engine.url.render_as_string(hide_password=True)})")
    # The URL (and its password) reaches the page through the environment: a command line is public in `ps`.
    environment = os.environ | {DASHBOARD_STORE_ENV: store.url}
    store.close()
    sys.stdout.flush()
    # Become the Streamlit server: a signal to this process (Ctrl-C, a supervisor's TERM) reaches the server itself.
    os.execve(sys.executable, command, environment)


class Protocol(StrEnum):
    cold_item = "cold-item"
    warm = "warm"
    hybrid = "hybrid"
    temporal = "temporal"


class RankerName(StrEnum):
    lightgbm = "lightgbm"
    deepfm = "deepfm"


RankerOption = Annotated[
    RankerName | None, typer.Option(help="Ranker to train \\[default: lightgbm or $WARMSTART_RANKER].")
]
FileOption = Annotated[Path | None, typer.Option(help="CSV or Parquet file.", dir_okay=False)]


@app.command()
@friendly_errors
def evaluate(
    protocol: Annotated[Protocol, typer.Option(help="Evaluation protocol.")] = Protocol.cold_item,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = 20,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Built-in data set: citeulike or ml-100k.")] = None,
    data: Annotated[Path | None, typer.Option(help="Folder holding the data set's files.")] = None,
    train: FileOption = None,
    test: FileOption = None,
    items: FileOption = None,
    valid: FileOption = None,
    users: FileOption = None,
    ranker: RankerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    workspace: WorkspaceOption = None,
    augment: Annotated[
        bool,
        typer.Option(
            "--augment/--no-augment",
            help="Warm cold items with synthetic interactions (the embedding simulator's) as the product does; "
            "--no-augment is the ablation.",
        ),
    ] = True,
) -> None:
    """Train the encoders and the ranker on a split's training part and evaluate on its held-out part: the whole
    chain as the product runs it, synthetic interactions included (--no-augment leaves them out).

    Give --dataset citeulike --data DIR (ALDI split), --dataset ml-100k (temporal), or a split as files:
    --train F --test F --items F [--valid F] [--users F]. Test users or items without training rows are cold.
    """
    import training  # torch and the models load only for the commands that need them

    settings = _settings()
    ranker_name = (ranker or RankerName(settings.ranker)).value
    if (dataset is None) == (train is None):
        raise ConfigError("give either --dataset NAME or --train FILE --test FILE --items FILE.")
    if dataset is not None:
        with console.status(f"loading {dataset}..."):
            loaded = load_dataset(dataset, data, settings.cache_dir)
        plan = training.dataset_plan(loaded, training.PROTOCOLS[protocol.value])
    else:
        if test is None or items is None:
            raise ConfigError("--train needs --test FILE and --items FILE too.")
        assert train is not None
        plan = training.files_plan(
            training.PROTOCOLS[protocol.value], train=train, test=test, items=items, valid=valid, users=users
        )
    run_id = new_run_id()
    model_dir = _workspace(workspace, settings).models.path(ranker_name, run_id)
    models = training.ModelSettings.seeded(seed, ranker_name)
    if not augment:
        models = models.without_augmentation()
    evaluation = training.train_and_evaluate(
        plan, k=k, cache_dir=settings.cache_dir, settings=models, model_dir=model_dir
    )
    report = evaluation.as_dict() | {"protocol": protocol.value}
    _print_metrics(report, f"{protocol.value} @ {k} ({report['n_users']:,} users, {report['seconds']:.0f} s)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_out, json.dumps(report, indent=2, default=str).encode())
        console.print(f"report written to {json_out}")


@app.command()
@friendly_errors
def encode(workspace: WorkspaceOption = None) -> None:
    """Embed every item's text with all-MiniLM-L6-v2 into the `item_embeddings` table.

    Texts already in the embedding cache (CACHE/embeddings, keyed by model and text hash) are not encoded again.
    """
    settings = _settings()
    encoded = stages.encode(_workspace(workspace, settings), new_run_id(), cache_dir=settings.cache_dir)
    console.print(
        f"item_embeddings: {encoded.items:,} items x {encoded.dim} ({encoded.model}); "
        f"{encoded.stats['cache_hits']:,} texts from the cache, {encoded.stats['cache_misses']:,} encoded"
    )


GateMetricOption = Annotated[
    list[str] | None,
    typer.Option(
        "--gate-metric", help="Gate metric SEGMENT/METRIC@K, repeatable [default: overall/ndcg@20, cold/recall@20]."
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
ProtocolOption = Annotated[
    Protocol | None,
    typer.Option(help="Protocol of the evaluation [default: cold-item for CiteULike's split, else temporal]."),
]


def _refresh(
    space: Workspace,
    settings: WarmstartSettings,
    *,
    title: str,
    ranker: RankerName | None,
    **options: Any,
) -> None:
    """Run the refresh flow on the workspace, then print its metrics and the gate's decision."""
    from flows.refresh import refresh as refresh_flow
    from flows.runners import with_runner

    if not space.exists(Tables.interactions):  # say so before Prefect starts
        raise WorkspaceError(f"workspace {space.root} holds no data: run `warmstart ingest --workspace {space.root}`.")
    name = (ranker or RankerName(settings.ranker)).value
    outcome = with_runner(refresh_flow, settings)(workspace=space.root, ranker=name, **options)
    metrics = outcome.metrics
    product = product_rows(metrics)
    _print_metrics({"metrics": product.to_dicts()}, f"{title} {outcome.run_id}: {product['protocol'][0]}")
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


@app.command()
@friendly_errors
def refresh(
    augment_limit: Annotated[
        int, typer.Option(min=0, help="Entities per step the language model augments (0: no augmentation).")
    ] = 16,
    simulate: Annotated[bool, typer.Option(help="Simulate interactions for cold items.")] = True,
    protocol: ProtocolOption = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = 20,
    ranker: RankerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    max_epochs: Annotated[int, typer.Option(min=1, help="Most BPR-MF epochs.")] = 150,
    gate_metric: GateMetricOption = None,
    gate_tolerance: GateToleranceOption = 0.005,
    reference_gate: ReferenceGateOption = True,
    choose_timed: ChooseTimedRunOption = True,
    workspace: WorkspaceOption = None,
) -> None:
    """One gated, recorded refresh cycle on the workspace (what the nightly deployment runs): detect, augment,
    encode, retrain, evaluate on real held-out data, gate against the current model on the same data, record the
    run in the metrics history and promote the candidate if the gate lets it through."""
    from flows.cycle import default_gate_metrics

    settings = _settings()
    _refresh(
        _workspace(workspace, settings),
        settings,
        title="refresh",
        ranker=ranker,
        augment_limit=augment_limit,
        simulate=simulate,
        protocol=protocol.value if protocol else None,
        k=k,
        seed=seed,
        max_epochs=max_epochs,
        gate_metrics=tuple(gate_metric or default_gate_metrics(k)),
        gate_tolerance=gate_tolerance,
        reference_gate=reference_gate,
        choose_timed=choose_timed,
    )


@app.command()
@friendly_errors
def retrain(
    protocol: ProtocolOption = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = 20,
    ranker: RankerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    gate_tolerance: GateToleranceOption = 0.005,
    reference_gate: ReferenceGateOption = True,
    choose_timed: ChooseTimedRunOption = True,
    workspace: WorkspaceOption = None,
) -> None:
    """`warmstart refresh --augment-limit 0`: retrain on the workspace's data without augmenting, still gated
    against the current model and recorded. The version (WORKSPACE/models/RANKER/RUN_ID/) holds the model, its
    metadata and report.json: the data window, the metrics on real held-out interactions, the parent version."""
    from flows.cycle import default_gate_metrics

    settings = _settings()
    _refresh(
        _workspace(workspace, settings),
        settings,
        title="retrained",
        ranker=ranker,
        augment_limit=0,
        protocol=protocol.value if protocol else None,
        k=k,
        seed=seed,
        gate_metrics=default_gate_metrics(k),
        gate_tolerance=gate_tolerance,
        reference_gate=reference_gate,
        choose_timed=choose_timed,
    )


@app.command()
@friendly_errors
def models(
    ranker: RankerOption = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of the metrics shown.")] = 20,
    workspace: WorkspaceOption = None,
) -> None:
    """List the saved model versions with their held-out metrics; `*` marks the current (promoted) one."""
    space = _workspace(workspace, _settings())
    versions = space.models.versions(ranker.value if ranker else None)
    if not versions:
        console.print(f"no model versions in {space.models.root}: run `warmstart refresh` first.")
        return
    rows = []
    for version in versions:
        report = version.report()
        values = {
            f"{row['segment']}/{row['metric']}@{row['k']}": row["value"]
            for row in report.get("metrics", [])
            if row["k"] == k and row["metric"] in ("recall", "ndcg") and row["segment"] in ("overall", "cold", "tail")
        }
        rows.append(
            {"current": "*" if version.current else "", "ranker": version.ranker, "version": version.version}
            | {"parent": report.get("parent") or "", "dataset": report.get("dataset") or ""}
            | values
        )
    _print_frame(pl.DataFrame(rows, infer_schema_length=None), f"model versions in {space.models.root}")


@app.command()
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
    settings = _settings()
    space = _workspace(workspace, settings)
    name = (ranker or RankerName(settings.ranker)).value
    if (version is None) == (not previous):
        raise ConfigError("give either a VERSION or --previous.")
    registry = space.models
    chosen = registry.previous(name) if previous else version
    if chosen is None:
        raise ConfigError(f"{name} has no previous version to roll back to.")
    incumbent = registry.current(name)
    entry = registry.promote(name, chosen, reason=reason)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url)
    store.record_promotion(
        new_run_id(),
        dataset=str(space.state().get("dataset", "workspace")),
        candidate=chosen,
        incumbent=incumbent,
        reason=f"{'rollback' if previous else 'promoted'} by hand: {reason}",
    )
    store.close()
    console.print(f"{name} {entry['version']} is now current (was {entry['previous']})", markup=False)


def _augment_plan(
    items: bool, users: bool, segment: list[str] | None, limit: int | None, simulate: bool, max_new_tokens: int
) -> stages.AugmentPlan:
    """The steps and segments `warmstart augment` runs: both sides unless --items or --users; without --segment,
    a refresh's segments but the new ones (this command works on what detect labelled, not on what just arrived)."""
    do_items, do_users = (items or not users), (users or not items)
    keys = ("item_segments", "user_segments", "simulate_segments")
    refresh = (ITEM_SEGMENTS, USER_SEGMENTS, SIMULATE_SEGMENTS)
    defaults = [tuple(s for s in segments if s != Segments.new) for segments in refresh]
    chosen = dict(zip(keys, [tuple(segment)] * 3 if segment else defaults, strict=True))
    return stages.AugmentPlan(
        limit=limit,
        describe=do_items,
        simulate=do_items and simulate,
        profile=do_users,
        max_new_tokens=max_new_tokens,
        **chosen,
    )


def _augment_dry_run(space: Workspace, backend: Backend, plan: stages.AugmentPlan, settings: WarmstartSettings) -> None:
    """Print what the plan's steps would cost (prompts, cached, tokens, seconds) without generating anything."""
    from flows import augmentation

    names = [name for name, wanted in (("describe", plan.describe), ("simulate", plan.simulate)) if wanted]
    names += ["profile"] if plan.profile else []
    rows = [augmentation.estimate_step(name, space, backend, plan, cache_dir=settings.cache_dir) for name in names]
    _print_frame(pl.DataFrame(rows), f"augment --dry-run (model {backend.model_name}): nothing generated")


@app.command()
@friendly_errors
def augment(
    items: Annotated[
        bool, typer.Option("--items", help="Only items: describe them and simulate their interactions.")
    ] = False,
    users: Annotated[bool, typer.Option("--users", help="Only users: write their profiles.")] = False,
    segment: Annotated[
        list[str] | None,
        typer.Option(help="Segment to augment, repeatable [default: items cold+sparse, users sparse; simulate cold]."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many entities per step.")] = None,
    simulate: Annotated[bool, typer.Option(help="Simulate interactions for the items.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the run's counts as JSON here.")] = None,
    allow_insecure: Annotated[
        bool, typer.Option("--allow-insecure", help="Allow plain http to an LLM server that is not on loopback.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print the prompts, tokens and time the run would take.")
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Write LLM item descriptions, user profiles and synthetic interactions for cold and sparse segments.

    Needs `warmstart ingest` and `warmstart detect` first. The model comes from WARMSTART_LLM_* settings
    (local SmolLM2 by default). Outputs already in the generation cache are not generated again.
    """
    from flows import augmentation

    settings = _settings()
    space = _workspace(workspace, settings)
    augmentation.segment_ids(space, "item", segment or ())  # checks segments and detection before loading a model
    if allow_insecure:
        settings = settings.model_copy(update={"llm_allow_insecure": True})
    plan = _augment_plan(items, users, segment, limit, simulate, settings.llm_max_new_tokens)
    with console.status(f"loading the {settings.llm_backend} language model..."):
        backend = augmentation.make_backend(settings)
    if dry_run:
        _augment_dry_run(space, backend, plan, settings)
        return
    run_id = new_run_id()
    report = stages.augment(space, backend, plan, cache_dir=settings.cache_dir, run_id=run_id)
    rows = [
        {"step": name} | {key: step.as_dict()[key] for key in stages.REPORT_KEYS} for name, step in report.steps.items()
    ]
    _print_frame(pl.DataFrame(rows), f"augment (run {run_id}, model {backend.model_name})")
    if json_out is not None:
        steps = {name: step.as_dict() for name, step in report.steps.items()}
        payload = report.totals() | {"run_id": run_id, "model": backend.model_name, "steps": steps}
        atomic_write_bytes(json_out, json.dumps(payload, indent=2, default=str).encode())
        console.print(f"report written to {json_out}")


ServeRankerOption = Annotated[
    RankerName | None, typer.Option("--ranker", help="Ranker to serve \\[default: the one with a promoted version].")
]


def _users_file(path: Path) -> list[str]:
    """User ids from a CSV/TSV/Parquet file with a `user_id` column, in file order, repeats dropped."""
    from catalog import DataError, read_table

    frame = read_table(path)
    if Columns.user not in frame.columns:
        raise DataError(f"{path}: needs a '{Columns.user}' column; found {frame.columns}.")
    ids = frame[Columns.user].cast(pl.String).drop_nulls().unique(maintain_order=True)
    if ids.is_empty():
        raise DataError(f"{path}: no user ids in column '{Columns.user}'.")
    return ids.to_list()


def _show_recommendations(frame: pl.DataFrame, titles: dict[str, str], model: str, text: str | None) -> None:
    """One compact table per user (a terminal is narrower than the frame), explanations as titles."""
    if "because" in frame.columns:
        frame = frame.with_columns(
            pl.col("because").map_elements(
                lambda because: "; ".join(titles.get(i, i) for i in because), return_dtype=pl.String
            )
        )
    columns = [Columns.rank, Columns.item, Columns.title, Columns.score, "source", Columns.segment]
    columns += [name for name in ("text_similarity", "because") if name in frame.columns]
    for (who,), group in frame.group_by(Columns.user, maintain_order=True):
        label = f"user {who} ({group['user_segment'][0]})" if who is not None else f"stated text: {text}"
        _print_frame(group.select(columns), f"{label}, {model}")


@app.command()
@friendly_errors
def recommend(
    user: Annotated[list[str] | None, typer.Option("--user", help="User id, repeatable.")] = None,
    users: Annotated[
        Path | None, typer.Option("--users", help="CSV/TSV/Parquet file with a user_id column.", dir_okay=False)
    ] = None,
    text: Annotated[
        str | None, typer.Option(help="Interests stated in words: rank items by MiniLM similarity to this text.")
    ] = None,
    weight: Annotated[float, typer.Option(min=0, max=1, help="Share of the text in a --user + --text blend.")] = 0.5,
    k: Annotated[int, typer.Option(min=1, help="Recommendations per user.")] = 20,
    explain: Annotated[bool, typer.Option("--explain", help="Add each user's history items closest to each.")] = False,
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="Also items logged since the version was trained.")
    ] = False,
    version: Annotated[str | None, typer.Option(help="Model version \\[default: the promoted one].")] = None,
    ranker: ServeRankerOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the recommendations to this Parquet file.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Users per batch (one progress step).")] = 256,
    workspace: WorkspaceOption = None,
) -> None:
    """Recommend items from a saved model version (the promoted one by default): to users by id (--user,
    --users FILE), or from interests stated in words (--text, alone or blended with one --user)."""
    from rich.progress import track

    from serving import Recommender

    settings = _settings()
    space = _workspace(workspace, settings)
    ids = list(user or []) + (_users_file(users) if users is not None else [])
    if text is None and not ids:
        raise ConfigError("say whom to recommend for: --user ID, --users FILE or --text '...'.")
    if text is not None and len(ids) > 1:
        raise ConfigError("--text serves one person: give it alone or with a single --user.")
    recommender = Recommender.load(
        space,
        version,
        ranker=ranker.value if ranker else None,
        cache_dir=settings.cache_dir,
        sparse_max=settings.sparse_max,
    )
    if text is not None:
        frame = recommender.recommend_text(
            text, k, user_id=ids[0] if ids else None, weight=weight, exclude_seen=not include_seen
        )
    else:
        batches = [ids[start : start + batch] for start in range(0, len(ids), batch)]
        steps = track(batches, description="recommending", console=errors) if len(batches) > 1 else batches
        frame = pl.concat(
            [recommender.recommend(chunk, k, exclude_seen=not include_seen, explain=explain) for chunk in steps]
        )
    frame = frame.with_columns(
        pl.lit(recommender.version).alias("model_version"), pl.lit(recommender.ranker_name).alias("ranker")
    )
    if out is not None:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        atomic_write_bytes(out, buffer.getvalue())
        console.print(f"{frame.height:,} recommendations for {max(len(ids), 1):,} user(s) written to {out}")
        return
    _show_recommendations(frame, recommender.titles, f"{recommender.ranker_name} {recommender.version}", text)


@app.command("add-items")
@friendly_errors
def add_items(
    file: Annotated[Path, typer.Argument(help="CSV/TSV/Parquet: item_id, title[, text, categories].", dir_okay=False)],
    workspace: WorkspaceOption = None,
) -> None:
    """Append new items to the workspace through the items contract and embed their text: the promoted version
    serves them at once (a stand-in from their text), with no retraining; the next refresh warms them properly."""
    from catalog import conform_items, read_table

    settings = _settings()
    space = _workspace(workspace, settings)
    added, _ = conform_items(read_table(file), str(file))
    run_id = new_run_id()
    count = stages.add_items(space, added, run_id, cache_dir=settings.cache_dir, source=f"add-items {file}")
    console.print(f"{count:,} item(s) added to {space.root} (run {run_id}); `warmstart recommend` serves them now")


@app.command("add-users")
@friendly_errors
def add_users(
    file: Annotated[
        Path, typer.Argument(help="CSV/TSV/Parquet: user_id[, first_seen], other columns attributes.", dir_okay=False)
    ],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="Column mapping CONTRACT=FILE_COLUMN, repeatable (e.g. --map user_id=uid)."),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Append new users to the workspace through the users contract (every column but user_id and first_seen is an
    attribute): the promoted version serves them at once as cold users, with no retraining. Ids already in the
    workspace, repeated ids and attribute columns its users lack are refused, and then nothing is written."""
    from catalog import DataError, conform_users, read_table

    space = _workspace(workspace, _settings())
    raw = read_table(file)
    mapping = stages.parse_mapping(map_ or [])
    unused = sorted(source for source in mapping.values() if source not in raw.columns)
    if unused:
        raise DataError(f"{file}: --map names column(s) {unused} that the file lacks; it has {raw.columns}.")
    added, report = conform_users(raw.rename({source: target for target, source in mapping.items()}), str(file))
    run_id = new_run_id()
    count = stages.add_users(space, added, run_id, source=f"add-users {file}")
    collapsed = (
        f", {report.duplicates_collapsed:,} exact duplicate row(s) collapsed" if report.duplicates_collapsed else ""
    )
    console.print(
        f"{count:,} user(s) added to {space.root} (run {run_id}{collapsed}); `warmstart recommend` serves them now"
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


@app.command()
@friendly_errors
def api(
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Key every request but /health must send in the X-API-Key header \\[default: $WARMSTART_API_KEY]. "
            "Prefer the variable: a command line is visible to every user of the machine.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[str | None, typer.Option(help="Model version \\[default: the promoted one].")] = None,
    ranker: ServeRankerOption = None,
    follow_every: Annotated[
        float, typer.Option(min=0, help="Seconds between checks for items, users and versions the CLI adds.")
    ] = 1.0,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve recommendations over HTTP (FastAPI under uvicorn) from the promoted version: GET /health, GET and POST
    /recommend, POST /items (stored in the workspace like `add-items`, served at once). OpenAPI at /docs. Items and
    users added by `warmstart add-items` / `add-users` and a newly promoted version are served without a restart
    (checked at most every --follow-every seconds). Stop with Ctrl-C."""
    import uvicorn

    from serving import API_KEY_HEADER, WorkspaceFollower, create_app

    settings = _settings()
    key = api_key if api_key is not None else (settings.api_key.get_secret_value() if settings.api_key else None)
    if key is not None and not key.strip():
        raise ConfigError("the API key is empty; give a real one (--api-key or WARMSTART_API_KEY) or none on loopback.")
    if not _is_loopback(host) and not key:
        raise ConfigError(
            f"--host {host} exposes the API beyond this machine: set WARMSTART_API_KEY (or --api-key) so that "
            f"clients must send it in the {API_KEY_HEADER} header, or bind 127.0.0.1."
        )
    space = _workspace(workspace, settings)
    follower = WorkspaceFollower(
        space.root,
        version,
        ranker=ranker.value if ranker else None,
        cache_dir=settings.cache_dir,
        sparse_max=settings.sparse_max,
    )
    recommender = follower.load()

    def store_items(items: pl.DataFrame) -> None:
        # A new Workspace each time: one pins the generation current when first used, and ingest may switch it.
        stages.add_items(
            Workspace(space.root), items, new_run_id(), cache_dir=settings.cache_dir, source="api POST /items"
        )

    server = create_app(
        recommender, api_key=key, store_items=store_items, follow=follower.update, follow_every=follow_every
    )
    guarded = f", {API_KEY_HEADER} required" if key else ""
    console.print(f"{recommender.ranker_name} {recommender.version} on http://{host}:{port} (docs at /docs{guarded})")
    uvicorn.run(server, host=host, port=port, log_level="info")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
