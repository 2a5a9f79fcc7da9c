"""The `warmstart` command line. Every command takes --workspace (default ./workspace or $WARMSTART_WORKSPACE)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import polars as pl
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from catalog import Columns, ConfigError, WarmstartError, Workspace, atomic_write_bytes, load_files, new_run_id
from flows import steps
from flows.settings import WarmstartSettings

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
        except WarmstartError as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
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
    workspace: WorkspaceOption = None,
) -> None:
    """Load a data set, check it against the contracts and store it in the workspace."""
    settings = _settings()
    if (dataset is None) == (interactions is None):
        raise ConfigError("give either --dataset NAME or --interactions FILE --items FILE.")
    if dataset is not None:
        with console.status(f"loading {dataset}..."):
            loaded = steps.load_named_dataset(dataset, data, settings.cache_dir)
    else:
        if items is None:
            raise ConfigError("--interactions needs --items FILE too.")
        assert interactions is not None
        loaded = load_files(interactions, items, users, mapping=steps.parse_mapping(map_ or []))
    run_id = new_run_id()
    written = steps.store_dataset(_workspace(workspace, settings), loaded, run_id)
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


def _show_detection(detection: steps.Detection, title: str) -> None:
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
    detection = steps.detect(
        _workspace(workspace, settings),
        new_run_id(),
        sparse_max=settings.sparse_max if sparse_max is None else sparse_max,
        head_share=settings.head_share if head_share is None else head_share,
        since=since,
    )
    _show_detection(detection, "segments")


@app.command()
@friendly_errors
def demo(
    data: Annotated[Path | None, typer.Option(help="Folder with ml-100k.{inter,item,user} [default: fetch].")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Load MovieLens-100K into a workspace and print its segment summary.

    `new` is counted as if the previous run had been one week before the last rating.
    """
    settings = _settings()
    space = _workspace(workspace, settings)
    with console.status("fetching and loading MovieLens-100K..."):
        dataset = steps.load_named_dataset("ml-100k", data, settings.cache_dir)
    run_id = new_run_id()
    steps.store_dataset(space, dataset, run_id)
    last_event = dataset.interactions[Columns.ts].max()
    assert isinstance(last_event, datetime)
    detection = steps.detect(
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
    _show_detection(detection, "MovieLens-100K segments")


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
) -> None:
    """Train the encoders and the ranker on a split's training part and evaluate on its held-out part.

    Give --dataset citeulike --data DIR (ALDI split), --dataset ml-100k (temporal), or a split as files:
    --train F --test F --items F [--valid F] [--users F]. Test users or items without training rows are cold.
    """
    from flows import pipeline  # torch and the models load only for the commands that need them

    settings = _settings()
    ranker_name = (ranker or RankerName(settings.ranker)).value
    if (dataset is None) == (train is None):
        raise ConfigError("give either --dataset NAME or --train FILE --test FILE --items FILE.")
    if dataset is not None:
        with console.status(f"loading {dataset}..."):
            loaded = steps.load_named_dataset(dataset, data, settings.cache_dir)
        plan = pipeline.dataset_plan(loaded, pipeline.PROTOCOLS[protocol.value])
    else:
        if test is None or items is None:
            raise ConfigError("--train needs --test FILE and --items FILE too.")
        assert train is not None
        plan = pipeline.files_plan(
            pipeline.PROTOCOLS[protocol.value], train=train, test=test, items=items, valid=valid, users=users
        )
    run_id = new_run_id()
    model_dir = _workspace(workspace, settings).root / "models" / ranker_name / run_id
    models = pipeline.ModelSettings.seeded(seed, ranker_name)
    report = pipeline.train_and_evaluate(plan, k=k, cache_dir=settings.cache_dir, settings=models, model_dir=model_dir)
    report["protocol"] = protocol.value
    report["models"]["saved_to"] = str(model_dir)
    _print_metrics(report, f"{protocol.value} @ {k} ({report['n_users']:,} users, {report['seconds']:.0f} s)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_out, json.dumps(report, indent=2, default=str).encode())
        console.print(f"report written to {json_out}")


@app.command()
@friendly_errors
def encode(workspace: WorkspaceOption = None) -> None:
    """Embed every item's text with all-MiniLM-L6-v2 into the `item_embeddings` table.

    Texts already in the workspace's embedding cache (keyed by model and text hash) are not encoded again.
    """
    from encoders import MODEL_NAME, EmbeddingCache, encode_texts, item_text

    space = _workspace(workspace, _settings())
    items = space.read("items")
    cache = EmbeddingCache.in_workspace(space)
    vectors = encode_texts(item_text(items).to_list(), cache=cache)
    table = pl.DataFrame(
        {Columns.item: items[Columns.item], "embedding": vectors},
        schema={Columns.item: pl.String, "embedding": pl.Array(pl.Float32, vectors.shape[1])},
    )
    stats = {"model": MODEL_NAME, "items": table.height, "cache_hits": cache.hits, "cache_misses": cache.misses}
    space.write("item_embeddings", table, run_id=new_run_id(), source="encode", parameters=stats)
    console.print(
        f"item_embeddings: {table.height:,} items x {vectors.shape[1]} ({MODEL_NAME}); "
        f"{cache.hits:,} texts from the cache, {cache.misses:,} encoded"
    )


@app.command()
@friendly_errors
def retrain(
    protocol: Annotated[
        Protocol | None,
        typer.Option(help="Protocol of the evaluation [default: cold-item for CiteULike's split, else temporal]."),
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = 20,
    ranker: RankerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    workspace: WorkspaceOption = None,
) -> None:
    """Retrain the encoders and the ranker on the workspace's data and save a new model version.

    The version (WORKSPACE/models/RANKER/RUN_ID/) holds the model, its metadata and report.json: the data
    window, the metrics on real held-out interactions, and the parent version.
    """
    from flows import pipeline

    settings = _settings()
    space = _workspace(workspace, settings)
    dataset = steps.workspace_dataset(space)
    chosen = protocol.value if protocol else ("cold-item" if dataset.splits else "temporal")
    plan = pipeline.dataset_plan(dataset, pipeline.PROTOCOLS[chosen])
    run_id = new_run_id()
    ranker_name = (ranker or RankerName(settings.ranker)).value
    parent = steps.latest_model(space, ranker_name)
    model_dir = space.root / "models" / ranker_name / run_id
    models = pipeline.ModelSettings.seeded(seed, ranker_name)
    report = pipeline.train_and_evaluate(plan, k=k, cache_dir=settings.cache_dir, settings=models, model_dir=model_dir)
    times = plan.split.train[Columns.ts] if Columns.ts in plan.split.train.columns else None
    report |= {
        "version": run_id,
        "parent": parent.name if parent else None,
        "dataset": dataset.name,
        "data_window": {"start": str(times.min()), "end": str(times.max())} if times is not None else None,
    }
    atomic_write_bytes(model_dir / "report.json", json.dumps(report, indent=2, default=str).encode())
    _print_metrics(report, f"retrained {run_id} on {dataset.name}: {chosen} @ {k}")
    console.print(f"model saved to {model_dir} (parent: {report['parent']})")


def main() -> None:
    app()
