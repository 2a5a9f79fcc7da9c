"""Segment detection: which items and users are new, cold, sparse, tail or head.

Rules (applied to items and users alike, counting interactions per entity):

- `cold`: no interaction;
- `sparse`: 1..`sparse_max` interactions;
- `head`: among the rest, the most-interacted entities that together hold `head_share` of all interactions
  (sorted by count, ties by id; the entity that crosses the threshold is head);
- `tail`: every other entity with interactions.

`is_new` is independent of the segment: the entity was first seen after `watermark` (the latest interaction
time of the previous detection run). Everything is vectorised polars: no loop over rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

from catalog._columns import Columns as C
from catalog._columns import Segments as S
from catalog._contracts import TIMESTAMP, with_first_seen

SEGMENT_ORDER = (S.cold, S.sparse, S.tail, S.head)
ENTITY = "entity_id"


HEAD_SHARE = 0.8
"""Head items are the most popular ones that together hold this share of the training interactions."""
SPARSE_MAX = 5
"""Entities with 1..SPARSE_MAX interactions are sparse."""


def head_items(popularity: np.ndarray, head_share: float = HEAD_SHARE) -> np.ndarray:
    """Mask of the head among entities with these interaction counts: the same rule as the `head` segment
    (`_head_mask`), ties in count taken in the order given (entities sorted by id give the segments' order)."""
    order = np.argsort(-popularity, kind="stable")
    total = popularity.sum()
    cumulative = np.cumsum(popularity[order])
    head = np.zeros(popularity.size, dtype=bool)
    if total > 0:
        # An entity is head while the share before it is still below head_share.
        head[order] = (cumulative - popularity[order]) < head_share * total
    return head & (popularity > 0)


def _head_mask(count: pl.Expr, head_share: float) -> pl.Expr:
    """True for the smallest set of most-interacted entities holding `head_share` of all interactions.

    Expects rows sorted by count descending.
    """
    before = count.cum_sum() - count
    return (count > 0) & (before < head_share * count.sum())


def entity_segments(
    interactions: pl.LazyFrame | pl.DataFrame,
    entities: pl.LazyFrame | pl.DataFrame,
    *,
    key: str,
    kind: str,
    sparse_max: int = SPARSE_MAX,
    head_share: float = HEAD_SHARE,
    watermark: datetime | None = None,
) -> pl.DataFrame:
    """Segment every entity of `entities` (keyed by `key`) from its count in `interactions`.

    Returns (kind, entity_id, n_interactions, segment, first_seen, is_new), ordered by count descending.
    """
    if sparse_max < 0:
        raise ValueError(f"sparse_max must be >= 0, got {sparse_max}.")
    if not 0 < head_share <= 1:
        raise ValueError(f"head_share must be in (0, 1], got {head_share}.")
    counts = interactions.lazy().group_by(key).agg(pl.len().cast(pl.Int64).alias(C.n_interactions))
    first_seen = pl.col(C.first_seen)
    if watermark is not None and watermark.tzinfo is None:
        watermark = watermark.replace(tzinfo=UTC)  # a naive time is UTC, as naive input times are
    is_new = first_seen > watermark if watermark is not None else pl.lit(False)
    known = entities.lazy()
    if C.first_seen not in known.collect_schema().names():
        known = known.with_columns(pl.lit(None, TIMESTAMP).alias(C.first_seen))
    return (
        known.select(key, C.first_seen)
        .join(counts, on=key, how="left")
        .with_columns(pl.col(C.n_interactions).fill_null(0))
        .sort([C.n_interactions, key], descending=[True, False])
        .with_columns(
            pl.when(pl.col(C.n_interactions) == 0)
            .then(pl.lit(S.cold))
            .when(pl.col(C.n_interactions) <= sparse_max)
            .then(pl.lit(S.sparse))
            .when(_head_mask(pl.col(C.n_interactions), head_share))
            .then(pl.lit(S.head))
            .otherwise(pl.lit(S.tail))
            .alias(C.segment),
            is_new.fill_null(False).alias("is_new"),
        )
        .select(
            pl.lit(kind).alias(C.kind),
            pl.col(key).alias(ENTITY),
            C.n_interactions,
            C.segment,
            C.first_seen,
            "is_new",
        )
        .collect()
    )


def detect_segments(
    interactions: pl.LazyFrame | pl.DataFrame,
    items: pl.LazyFrame | pl.DataFrame,
    users: pl.LazyFrame | pl.DataFrame,
    *,
    sparse_max: int = SPARSE_MAX,
    head_share: float = HEAD_SHARE,
    watermark: datetime | None = None,
) -> pl.DataFrame:
    """Segments of every item and user: one table, `kind` telling which is which."""
    options = {"sparse_max": sparse_max, "head_share": head_share, "watermark": watermark}
    return pl.concat(
        [
            entity_segments(interactions, items, key=C.item, kind="item", **options),
            entity_segments(interactions, users, key=C.user, kind="user", **options),
        ]
    )


def segments_as_of(
    interactions: pl.LazyFrame | pl.DataFrame,
    items: pl.LazyFrame | pl.DataFrame,
    users: pl.LazyFrame | pl.DataFrame,
    *,
    before: datetime | None,
    since: datetime | None,
    sparse_max: int = SPARSE_MAX,
    head_share: float = HEAD_SHARE,
) -> pl.DataFrame:
    """Segments as they were at `before` (events strictly earlier; None: every event), `new` meaning first seen
    after `since`. As of a past time, an entity whose first event is still to come is not new yet, only cold."""
    if before is not None:
        interactions = interactions.lazy().filter(pl.col(C.ts) < before).collect()
        items, users = (
            with_first_seen(
                frame.lazy().collect().with_columns(pl.lit(None, TIMESTAMP).alias(C.first_seen)), interactions, key
            )
            for key, frame in ((C.item, items), (C.user, users))
        )
    return detect_segments(interactions, items, users, sparse_max=sparse_max, head_share=head_share, watermark=since)


def summarize_segments(segments: pl.DataFrame) -> pl.DataFrame:
    """Counts per segment (rows: new, cold, sparse, tail, head, total; columns: items, users)."""
    labels = [S.new, *SEGMENT_ORDER, "total"]
    long = pl.concat(
        [
            segments.group_by(C.kind, C.segment).agg(pl.len().alias("count")),
            segments.filter("is_new").group_by(C.kind).agg(pl.lit(S.new).alias(C.segment), pl.len().alias("count")),
            segments.group_by(C.kind).agg(pl.lit("total").alias(C.segment), pl.len().alias("count")),
        ],
        how="diagonal",
    )
    grid = pl.DataFrame({C.segment: labels}).join(pl.DataFrame({C.kind: ["item", "user"]}), how="cross")
    return (
        grid.join(long, on=[C.segment, C.kind], how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
        .pivot(on=C.kind, index=C.segment, values="count")
        .rename({"item": "items", "user": "users"})
        .select(C.segment, "items", "users")
    )


def popularity_segments(
    train: pl.LazyFrame | pl.DataFrame, items: pl.LazyFrame | pl.DataFrame, *, head_share: float = HEAD_SHARE
) -> pl.DataFrame:
    """Item segments as metrics report them (docs/metrics.md): head, tail (other warm) or cold (no training row).

    Returns (item_id, segment). Unlike `entity_segments` there is no sparse segment: sparse items are tail.
    """
    segments = entity_segments(train, items, key=C.item, kind="item", sparse_max=0, head_share=head_share)
    return segments.select(pl.col(ENTITY).alias(C.item), C.segment)


def segment_counts(segments: pl.DataFrame) -> pl.DataFrame:
    """(kind, segment, count) in long form, with `new` counted beside the segments, for the metrics history."""
    return pl.concat(
        [
            segments.group_by(C.kind, C.segment).agg(pl.len().cast(pl.Int64).alias("count")),
            segments.filter("is_new")
            .group_by(C.kind)
            .agg(pl.lit(S.new).alias(C.segment), pl.len().cast(pl.Int64).alias("count")),
        ]
    ).sort(C.kind, C.segment)


def segment_transitions(before: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame:
    """How many entities moved from one segment to another between two detections (e.g. cold -> sparse);
    entities that kept their segment are not counted. Returns (kind, from_segment, to_segment, count)."""
    keys = [C.kind, ENTITY]
    return (
        before.select(*keys, pl.col(C.segment).alias("from_segment"))
        .join(after.select(*keys, pl.col(C.segment).alias("to_segment")), on=keys, how="inner")
        .filter(pl.col("from_segment") != pl.col("to_segment"))
        .group_by(C.kind, "from_segment", "to_segment")
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort(C.kind, "from_segment", "to_segment")
    )
