"""Commands over the metrics history: backfill, history, demo."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from catalog import Columns, Segments, Workspace, atomic_write_bytes, load_dataset, new_run_id
from flows import stages
from flows.cli._common import (
    WorkspaceOption,
    as_utc,
    console,
    flow_server,
    friendly_errors,
    load_settings,
    open_workspace,
    print_frame,
    show_detection,
)
from flows.settings import WarmstartSettings
from monitor import USER_SEGMENTS, Lines, MetricsStore, beyond_accuracy_trend, metric_trend, versus_trend
from monitor.views import language_model_bought
from training.defaults import DEFAULT_K, MAX_EPOCHS


def _show_trends(store: MetricsStore, k: int, title: str) -> None:
    rows = store.metrics()
    if rows.is_empty():
        console.print("the metrics store holds no metric rows yet.")
        return
    for metric in ("recall", "ndcg"):
        trend = metric_trend(rows, metric=metric, k=k).with_columns(pl.col("as_of").dt.strftime("%Y-%m-%d"))
        print_frame(trend, f"{title}: {metric}@{k} per segment")
    for metric in ("recall", "ndcg"):  # the evaluated users by their training interactions: none, 1..sparse_max, more
        users = metric_trend(rows, metric=metric, k=k, segments=USER_SEGMENTS)
        if users.width > 1:
            shown = users.with_columns(pl.col("as_of").dt.strftime("%Y-%m-%d"))
            print_frame(shown, f"{title}: {metric}@{k} per user segment")
    for metric in ("recall", "ndcg"):
        versus = versus_trend(rows, metric=metric, k=k).with_columns(pl.col("as_of").dt.strftime("%Y-%m-%d"))
        alternatives = [c for c in versus.columns if c.startswith(Lines.alternative_prefix)]
        if versus.width - len(alternatives) > 2:  # the product and at least one reference line
            shown = versus.drop(alternatives)
            print_frame(shown, f"{title}: overall {metric}@{k}, the product beside popularity (same split)")
        if alternatives and metric == "ndcg":  # what a backfill's rolling choice read (flows.backfill)
            choices = versus.select("as_of", "product", *alternatives).rename(
                {name: name.removeprefix(Lines.alternative_prefix) for name in alternatives}
            )
            what = "of each timed choice (the next window serves the best)"
            print_frame(choices, f"{title}: overall {metric}@{k} {what}")
    if rows["protocol"].str.ends_with(f":{Lines.without_augmentation}").any():
        for segment in (Segments.cold, Segments.tail):  # what synthetic interactions did where they act
            versus = versus_trend(rows, metric="recall", k=k, segment=segment)
            shown = [c for c in versus.columns if c in ("product", Lines.without_augmentation)]
            versus = versus.select(pl.col("as_of").dt.strftime("%Y-%m-%d"), *shown)
            print_frame(versus, f"{title}: {segment} recall@{k} with and without augmentation (same model, split)")
    beyond = beyond_accuracy_trend(rows, k=k).with_columns(pl.col("as_of").dt.strftime("%Y-%m-%d"))
    print_frame(beyond, f"{title}: beyond accuracy @{k} (overall)")
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
        print_frame(shown, f"{title}: language-model augmentation per run")
    bought = language_model_bought(store.augmentation_audit())
    if not bought.is_empty():
        shown = bought.select(
            pl.col("as_of").dt.strftime("%Y-%m-%d %H:%M"), *bought.drop("as_of", "run_id", "users", "entities").columns
        )
        print_frame(shown, f"{title}: what the language model bought (each output against its no-LLM control)")


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
    dataset: str | None,
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
    with flow_server():
        with_runner(backfill_flow, settings)(
            dataset=dataset,
            data_dir=data,
            workspace=space.root,
            cache_dir=settings.cache_dir,
            start=as_utc(start),
            end=as_utc(end),
            every=every,
            k=k,
            seed=seed,
            max_epochs=max_epochs,
            sparse_max=settings.sparse_max,
            head_share=settings.head_share,
            augment_limit=augment_limit,
            choose_timed=choose_timed,
        )
    return MetricsStore.for_workspace(space.root, settings.metrics_url, read_only=True)


@friendly_errors
def backfill(
    dataset: Annotated[
        str | None,
        typer.Option(help="Built-in data set with timestamps (ml-100k) \\[default: the workspace's own log]."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Folder holding the data set's files \\[default: fetch].")] = None,
    start: DateOption = None,
    end: DateOption = None,
    every: Annotated[str, typer.Option(help="Window length: a number with d, h or w.")] = "7d",
    k: Annotated[int, typer.Option(min=1, help="Cut-off of every metric.")] = DEFAULT_K,
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    max_epochs: Annotated[
        int, typer.Option(min=1, help="Most iterations of the collaborative model (ALS sweeps) per window.")
    ] = MAX_EPOCHS,
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
    settings = load_settings()
    space = open_workspace(workspace, settings)
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
    _show_trends(store, k, f"{dataset or 'workspace'} backfill")


@friendly_errors
def history(
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write runs, metric rows and the augmentation audit as JSON here.")
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of the trend tables.")] = DEFAULT_K,
    workspace: WorkspaceOption = None,
) -> None:
    """Print the runs and the long-tail metric trends of the metrics history (or write them as JSON)."""
    settings = load_settings()
    store = MetricsStore.for_workspace(open_workspace(workspace, settings).root, settings.metrics_url, read_only=True)
    runs = store.runs()
    if json_out is not None:
        audit = store.augmentation_audit().drop("started_at", "window_end")
        payload = {"runs": runs.to_dicts(), "metrics": store.metrics(completed_only=False).to_dicts()}
        payload["augmentation_audit"] = audit.to_dicts()
        atomic_write_bytes(json_out, json.dumps(payload, indent=2, default=str).encode())
        console.print(f"{runs.height:,} runs and {len(payload['metrics']):,} metric rows written to {json_out}")
        return
    shown = runs.select(
        "run_id", "flow", "dataset", pl.col("window_end").dt.strftime("%Y-%m-%d"), "status", "model_version"
    )
    print_frame(shown, f"{runs.height:,} runs")
    _show_trends(store, k, "history")


@friendly_errors
def demo(
    data: Annotated[Path | None, typer.Option(help="Folder with ml-100k.{inter,item,user} \\[default: fetch].")] = None,
    every: Annotated[str, typer.Option(help="Window length of the backfill.")] = "30d",
    max_epochs: Annotated[
        int, typer.Option(min=1, help="Most iterations of the collaborative model (ALS sweeps) per window.")
    ] = MAX_EPOCHS,
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
    settings = load_settings()
    space = open_workspace(workspace, settings)
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
    show_detection(detection, "MovieLens-100K segments (new: first seen in the last week)")
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
