"""How fast segment detection classifies a large interaction log.

Generates a synthetic log with a Zipf-like item popularity (string ids, UTC timestamps), then times
`detect_segments` over items and users. Run: `.venv/bin/python benchmarks/segments.py --interactions 10000000`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import polars as pl
import typer

from catalog import Columns, detect_segments, summarize_segments, with_first_seen


def synthetic_log(n_interactions: int, n_items: int, n_users: int, seed: int) -> tuple[pl.DataFrame, ...]:
    rng = np.random.default_rng(seed)
    # Zipf-like popularity: a long tail, as in real catalogs; 5% of items never appear.
    weights = 1.0 / np.arange(1, n_items + 1) ** 1.1
    weights[rng.choice(n_items, n_items // 20, replace=False)] = 0
    items = rng.choice(n_items, n_interactions, p=weights / weights.sum())
    users = rng.integers(0, n_users, n_interactions)
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    seconds = np.sort(rng.uniform(start, start + 365 * 86400, n_interactions))
    interactions = pl.DataFrame({"u": users, "i": items, "s": seconds}).select(
        pl.col("u").cast(pl.String).alias(Columns.user),
        pl.col("i").cast(pl.String).alias(Columns.item),
        pl.from_epoch((pl.col("s") * 1e6).cast(pl.Int64), time_unit="us").dt.replace_time_zone("UTC").alias(Columns.ts),
        pl.lit(1.0).alias(Columns.value),
    )
    first = pl.lit(None, pl.Datetime("us", "UTC")).alias(Columns.first_seen)
    catalog = pl.DataFrame({Columns.item: [str(i) for i in range(n_items)]}).with_columns(first)
    people = pl.DataFrame({Columns.user: [str(u) for u in range(n_users)]}).with_columns(first)
    # first_seen as ingest fills it: the entity's first interaction.
    return (
        interactions,
        with_first_seen(catalog, interactions, Columns.item),
        with_first_seen(people, interactions, Columns.user),
    )


def main(
    interactions: int = typer.Option(10_000_000, help="Number of interactions to generate."),
    items: int = typer.Option(500_000, help="Catalog size."),
    users: int = typer.Option(1_000_000, help="Number of users."),
    repeats: int = typer.Option(3, help="Timed runs; the best and the median are reported."),
    seed: int = 0,
) -> None:
    log, catalog, people = synthetic_log(interactions, items, users, seed)
    watermark = log[Columns.ts].quantile(0.95)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        segments = detect_segments(log.lazy(), catalog.lazy(), people.lazy(), watermark=watermark)
        timings.append(time.perf_counter() - started)
    print(summarize_segments(segments))
    print(
        f"detect_segments on {interactions:,} interactions, {items:,} items, {users:,} users: "
        f"best {min(timings):.2f} s, median {float(np.median(timings)):.2f} s over {repeats} runs"
    )


if __name__ == "__main__":
    typer.run(main)
