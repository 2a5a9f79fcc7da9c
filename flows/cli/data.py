"""Commands that change the workspace's data: ingest, detect, rollback, encode, add-items, add-users."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.text import Text

from catalog import DATASETS, ConfigError, atomic_write_bytes, load_additions, load_dataset, load_files, new_run_id
from flows import stages
from flows.cli._common import (
    WorkspaceOption,
    as_utc,
    console,
    errors,
    friendly_errors,
    load_settings,
    open_workspace,
    print_frame,
    show_detection,
)
from flows.settings import WarmstartSettings


@friendly_errors
def ingest(
    dataset: Annotated[str | None, typer.Option(help=f"Built-in data set: {' or '.join(DATASETS)}.")] = None,
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
    append: Annotated[
        bool,
        typer.Option(
            "--append",
            help="Add the --interactions (and any --items, --users) to the current data instead of replacing it.",
        ),
    ] = False,
    drop_additions: Annotated[
        bool,
        typer.Option(
            "--drop-additions",
            help="Leave out the items and users added with add-items, add-users or POST /items that the new data "
            "lacks (kept by default).",
        ),
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Load a data set, check it against the contracts and store it in the workspace.

    The tables are written as a new generation and switched in at once: a failed ingest changes nothing, and
    `warmstart rollback` restores the previous data (with its segments and watermark). With --append, the files'
    rows are added to the current data (exact duplicates of rows held are collapsed and counted; the last
    detection's watermark is kept, so `detect` counts as new what the append brought). Items and users added with
    add-items, add-users or POST /items stay in the data across ingests and appends (--drop-additions leaves them
    out of a full ingest).
    """
    settings = load_settings()
    if append and drop_additions:
        raise ConfigError("--drop-additions applies to a full ingest: --append keeps every item and user held.")
    if append:
        _append(settings, interactions, items, users, map_ or [], workspace, dataset is not None)
        return
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
    ingested = stages.ingest(open_workspace(workspace, settings), loaded, run_id, drop_additions=drop_additions)
    reports = loaded.reports.items()
    report = pl.DataFrame(
        {
            "table": [name for name, _ in reports],
            "rows read": [r.rows_read for _, r in reports],
            "duplicates collapsed": [r.duplicates_collapsed for _, r in reports],
            "rows kept": [r.rows_kept for _, r in reports],
        }
    )
    print_frame(report, f"ingest {loaded.name} (run {run_id})")
    for name, table_report in reports:
        if (note := table_report.ignored_note(name)) is not None:
            # Column names are data: printed literally, never as markup.
            errors.print(Text(f"note: {note}"), highlight=False, soft_wrap=True)
    console.print("tables written: " + ", ".join(f"{name} ({rows:,})" for name, rows in ingested.written.items()))
    kept = {"item": ingested.kept_items, "user": ingested.kept_users}
    if any(kept.values()):
        shown = " and ".join(
            f"{len(ids):,} {kind}(s) ({', '.join(ids[:3])}{'...' if len(ids) > 3 else ''})"
            for kind, ids in kept.items()
            if ids
        )
        console.print(
            f"kept {shown} added with add-items, add-users or POST /items, which the new data lacks; "
            "--drop-additions leaves them out",
            markup=False,
        )


def _append(
    settings: WarmstartSettings,
    interactions: Path | None,
    items: Path | None,
    users: Path | None,
    map_: list[str],
    workspace: Path | None,
    named_dataset: bool,
) -> None:
    """`ingest --append`: the files' rows added to the workspace's current data as a new generation."""
    if named_dataset or interactions is None:
        raise ConfigError("--append takes --interactions FILE [--items FILE] [--users FILE], not --dataset.")
    added = load_additions(interactions, items, users, mapping=stages.parse_mapping(map_))
    run_id = new_run_id()
    report = stages.append(open_workspace(workspace, settings), added, run_id, source=str(interactions))
    counts = report.as_dict()
    table = pl.DataFrame(
        {
            "table": ["interactions", "items", "users"],
            "rows added": [counts[f"{name}_added"] for name in ("interactions", "items", "users")],
            "duplicates of held rows": [counts[f"{name}_collapsed"] for name in ("interactions", "items", "users")],
        }
    )
    print_frame(table, f"append (run {run_id})")


@friendly_errors
def detect(
    sparse_max: Annotated[int | None, typer.Option(help="Entities with 1..N interactions are sparse.")] = None,
    head_share: Annotated[float | None, typer.Option(help="Share of interactions the head holds.")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Count as new what was first seen after this time \\[default: last run].")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the counts and the new items' and users' ids as JSON here.")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Classify items and users into new / cold / sparse / tail / head segments."""
    settings = load_settings()
    detection = stages.detect(
        open_workspace(workspace, settings),
        new_run_id(),
        sparse_max=settings.sparse_max if sparse_max is None else sparse_max,
        head_share=settings.head_share if head_share is None else head_share,
        since=as_utc(since),
    )
    show_detection(detection, "segments")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_out, json.dumps(detection.as_dict(), indent=2).encode())
        console.print(f"detection written to {json_out}")


@friendly_errors
def rollback(workspace: WorkspaceOption = None) -> None:
    """Make the previous generation of the workspace's data current again: the tables of the ingest before
    the last, with their segments, derived tables and watermark. A second rollback undoes the first."""
    space = open_workspace(workspace, load_settings())
    pointer = space.rollback()
    console.print(f"current generation: {pointer['current']} (previous: {pointer['previous']})")


@friendly_errors
def encode(workspace: WorkspaceOption = None) -> None:
    """Embed every item's text with all-MiniLM-L6-v2 into the `item_embeddings` table.

    Texts already in the embedding cache (CACHE/embeddings, keyed by model and text hash) are not encoded again.
    """
    settings = load_settings()
    encoded = stages.encode(open_workspace(workspace, settings), new_run_id(), cache_dir=settings.cache_dir)
    console.print(
        f"item_embeddings: {encoded.items:,} items x {encoded.dim} ({encoded.model}); "
        f"{encoded.stats['cache_hits']:,} texts from the cache, {encoded.stats['cache_misses']:,} encoded"
    )


@friendly_errors
def add_items(
    file: Annotated[Path, typer.Argument(help="CSV/TSV/Parquet: item_id, title[, text, categories].", dir_okay=False)],
    workspace: WorkspaceOption = None,
) -> None:
    """Append new items to the workspace through the items contract and embed their text: the promoted version
    serves them at once (a stand-in from their text), with no retraining; the next refresh warms them properly."""
    from catalog import conform_items, read_table

    settings = load_settings()
    space = open_workspace(workspace, settings)
    added, _ = conform_items(read_table(file), str(file))
    run_id = new_run_id()
    count = stages.add_items(space, added, run_id, cache_dir=settings.cache_dir, source=f"add-items {file}")
    console.print(f"{count:,} item(s) added to {space.root} (run {run_id}); `warmstart recommend` serves them now")


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

    space = open_workspace(workspace, load_settings())
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
