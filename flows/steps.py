"""The steps of a refresh cycle as plain functions over a workspace; the CLI and (later) Prefect tasks call them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from catalog import (
    Columns,
    ConfigError,
    Dataset,
    Workspace,
    WorkspaceError,
    detect_segments,
    fetch_movielens_100k,
    load_citeulike,
    load_movielens_100k,
    summarize_segments,
)

DATASETS = ("ml-100k", "citeulike")
BASE_TABLES = ("interactions", "items", "users")


def load_named_dataset(name: str, data_dir: Path | None, cache_dir: Path) -> Dataset:
    """Load a built-in data set: MovieLens-100K (fetched into `cache_dir` unless `data_dir`) or CiteULike-a."""
    if name == "ml-100k":
        return load_movielens_100k(data_dir or fetch_movielens_100k(cache_dir))
    if name == "citeulike":
        if data_dir is None:
            raise ConfigError("--dataset citeulike needs --data DIR (the folder with titles.txt and users.dat).")
        return load_citeulike(data_dir)
    raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """['user_id=customer', ...] -> {'user_id': 'customer'}."""
    mapping = {}
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise ConfigError(f"column mapping {pair!r} must look like CONTRACT_COLUMN=FILE_COLUMN, e.g. user_id=uid.")
        if target.strip() in mapping:
            raise ConfigError(f"column mapping names {target.strip()!r} twice; give one --map per column.")
        mapping[target.strip()] = source.strip()
    return mapping


def store_dataset(workspace: Workspace, dataset: Dataset, run_id: str) -> dict[str, int]:
    """Write the data set's tables (and splits) into the workspace as a new generation, switched in at once
    (the tables derived from the old data stay with it); returns rows written per table."""
    written = {}
    tables = {"interactions": dataset.interactions, "items": dataset.items, "users": dataset.users}
    tables |= {f"split_{name}": frame for name, frame in dataset.splits.items()}
    with workspace.new_generation(run_id) as staged:
        for name, frame in tables.items():
            report = dataset.reports.get(name)
            parameters = {"source": report.source, "rows_read": report.rows_read} if report else {}
            if report:
                parameters["duplicates_collapsed"] = report.duplicates_collapsed
            staged.write(name, frame, run_id=run_id, source=dataset.name, parameters=parameters)
            written[name] = frame.height
        staged.update_state(dataset=dataset.name, ingest_run_id=run_id)
    return written


def _check_same_ingest(workspace: Workspace) -> None:
    """The base tables must come from one ingest run; a mix means an ingest was interrupted."""
    runs = {name: workspace.provenance(name)["run_id"] for name in BASE_TABLES if workspace.exists(name)}
    if len(set(runs.values())) > 1:
        raise WorkspaceError(
            f"workspace {workspace.root} holds tables from different ingest runs ({runs}): an ingest was "
            "interrupted. Run `warmstart ingest` again."
        )


@dataclass(frozen=True)
class Detection:
    segments: pl.DataFrame
    summary: pl.DataFrame
    watermark: datetime | None
    next_watermark: datetime | None


def detect(
    workspace: Workspace,
    run_id: str,
    *,
    sparse_max: int,
    head_share: float,
    since: datetime | None = None,
) -> Detection:
    """Segment the workspace's items and users; `new` means first seen after `since`, by default the
    watermark of the previous detection. Writes the `segments` table and advances the watermark."""
    _check_same_ingest(workspace)
    interactions = workspace.scan("interactions")
    stored = workspace.state().get("watermark")
    watermark = since if since is not None or stored is None else datetime.fromisoformat(stored)
    segments = detect_segments(
        interactions,
        workspace.scan("items"),
        workspace.scan("users"),
        sparse_max=sparse_max,
        head_share=head_share,
        watermark=watermark,
    )
    parameters = {"sparse_max": sparse_max, "head_share": head_share, "watermark": str(watermark)}
    workspace.write("segments", segments, run_id=run_id, source="detect", parameters=parameters)
    latest = interactions.select(pl.col(Columns.ts).max()).collect().item()
    if latest is not None:
        workspace.update_state(watermark=latest.isoformat(), detect_run_id=run_id)
    return Detection(segments, summarize_segments(segments), watermark, latest)


def item_texts(workspace: Workspace) -> tuple[pl.Series, list[str]]:
    """(item ids, the text each item is embedded from), in the items table's order."""
    from encoders import item_text

    items = workspace.read("items")
    return items[Columns.item], item_text(items).to_list()


def store_item_embeddings(
    workspace: Workspace, ids: pl.Series, vectors: np.ndarray, run_id: str, stats: dict[str, Any]
) -> dict[str, Any]:
    """Write the `item_embeddings` table (item_id, embedding); returns `stats` with the table's shape."""
    from encoders import MODEL_NAME

    table = pl.DataFrame(
        {Columns.item: ids, "embedding": vectors},
        schema={Columns.item: pl.String, "embedding": pl.Array(pl.Float32, vectors.shape[1])},
    )
    stats = {"model": MODEL_NAME, "items": table.height, "dim": int(vectors.shape[1])} | stats
    workspace.write("item_embeddings", table, run_id=run_id, source="encode", parameters=stats)
    return stats


def encode_items(workspace: Workspace, run_id: str) -> dict[str, Any]:
    """Embed every item's text into the `item_embeddings` table; texts already in the workspace's embedding
    cache (keyed by model and text hash) are not encoded again. Returns what it did."""
    from encoders import EmbeddingCache, encode_texts

    ids, texts = item_texts(workspace)
    cache = EmbeddingCache.in_workspace(workspace)
    vectors = encode_texts(texts, cache=cache)
    stats = {"cache_hits": cache.hits, "cache_misses": cache.misses}
    return store_item_embeddings(workspace, ids, vectors, run_id, stats)


def workspace_dataset(workspace: Workspace) -> Dataset:
    """The ingested data set, with its predefined splits (split_* tables) if it has any."""
    _check_same_ingest(workspace)
    splits = {
        path.stem.removeprefix("split_"): pl.read_parquet(path)
        for path in sorted(workspace.tables.glob("split_*.parquet"))
    }
    return Dataset(
        name=str(workspace.state().get("dataset", "workspace")),
        interactions=workspace.read("interactions"),
        items=workspace.read("items"),
        users=workspace.read("users"),
        splits=splits,
    )


def latest_model(workspace: Workspace, ranker: str) -> Path | None:
    """The newest saved model version of `ranker` (versions are run ids, which sort by time)."""
    versions = sorted(p for p in (workspace.root / "models" / ranker).glob("*") if (p / "metadata.json").is_file())
    return versions[-1] if versions else None
