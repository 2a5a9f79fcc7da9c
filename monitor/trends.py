"""Metric rows of the history reshaped into trends: one row per point in time, one column per segment.

A run also records other lines measured on its own split, references the product must beat (popularity, recent
popularity) and variants of it (the calibrated tail re-ranking): their rows carry the protocol `PROTOCOL:LINE`
(e.g. `temporal:recent_popularity`), the product's rows the bare protocol, so the store keeps its schema and
every reader can tell the lines apart.
"""

from __future__ import annotations

import polars as pl

ACCURACY_SEGMENTS = ("overall", "head", "tail", "cold")
# Evaluated users by their training interactions (ranker.evaluate.USER_SEGMENT_ORDER: none, 1..sparse_max, more).
USER_SEGMENTS = ("cold_user", "sparse_user", "warm_user")
BEYOND_ACCURACY = ("coverage", "gini", "aplt", "novelty")
REFERENCE_SEPARATOR = ":"
PRODUCT = "product"


class Lines:
    """Names of the lines every run records beside the product (rows of protocol 'PROTOCOL:NAME')."""

    popularity = "popularity"
    recent_popularity = "recent_popularity"  # the gate holds the product to it where the log has times
    tail_calibrated = "tail_calibrated"  # the candidate re-ranked for calibrated tail exposure (ranker.rerank)
    without_augmentation = "without_augmentation"  # the candidate serving content stand-ins, not warmed ones
    alternative_prefix = "choice_"  # timed alternatives trained beside the candidate (training.TIMED_ALTERNATIVES)
    attribute_popularity = "attribute_popularity"  # popularity among training users sharing the user's attributes
    bprmf = "bprmf"  # BPR-MF alone, from the factors its training rows gave each user (the sparse-user protocol)
    # The share of the events of the days before each user asks (the newcomer model's window): protocols over users
    arrival_popularity = "arrival_popularity"


def reference_protocol(protocol: str, reference: str) -> str:
    """The protocol name under which a reference line's rows are stored, e.g. 'temporal:popularity'."""
    if REFERENCE_SEPARATOR in protocol or not reference:
        raise ValueError(f"cannot name a reference {reference!r} of protocol {protocol!r}")
    return f"{protocol}{REFERENCE_SEPARATOR}{reference}"


def series_of(protocol: pl.Expr) -> pl.Expr:
    """The line a row belongs to: the reference's name, or 'product' for the product's own rows."""
    return (
        pl.when(protocol.str.contains(REFERENCE_SEPARATOR, literal=True))
        .then(protocol.str.split(REFERENCE_SEPARATOR).list.last())
        .otherwise(pl.lit(PRODUCT))
    )


def product_rows(metrics: pl.DataFrame) -> pl.DataFrame:
    """The product's own rows (references left out); a frame without a protocol column is all product."""
    if "protocol" not in metrics.columns:
        return metrics
    return metrics.filter(~pl.col("protocol").str.contains(REFERENCE_SEPARATOR, literal=True))


def metric_trend(
    metrics: pl.DataFrame,
    *,
    metric: str,
    k: int,
    segments: tuple[str, ...] = ACCURACY_SEGMENTS,
    protocol: str | None = None,
) -> pl.DataFrame:
    """(as_of, one column per segment) for one metric@k, oldest first; a segment a point did not measure
    (no cold item in its test window, say) is null there. Without `protocol`, the product's rows only."""
    metrics = product_rows(metrics) if protocol is None else metrics
    rows = metrics.filter((pl.col("metric") == metric) & (pl.col("k") == k) & pl.col("segment").is_in(segments))
    if protocol is not None:
        rows = rows.filter(pl.col("protocol") == protocol)
    wide = rows.pivot(on="segment", index="as_of", values="value", aggregate_function="last").sort("as_of")
    present = [segment for segment in segments if segment in wide.columns]
    return wide.select("as_of", *present)


def beyond_accuracy_trend(metrics: pl.DataFrame, *, k: int, protocol: str | None = None) -> pl.DataFrame:
    """(as_of, coverage, gini, aplt, novelty) of the overall segment, oldest first (the product's rows only,
    without `protocol`)."""
    metrics = product_rows(metrics) if protocol is None else metrics
    rows = metrics.filter(
        (pl.col("segment") == "overall") & (pl.col("k") == k) & pl.col("metric").is_in(BEYOND_ACCURACY)
    )
    if protocol is not None:
        rows = rows.filter(pl.col("protocol") == protocol)
    wide = rows.pivot(on="metric", index="as_of", values="value", aggregate_function="last").sort("as_of")
    return wide.select("as_of", *[name for name in BEYOND_ACCURACY if name in wide.columns])


def versus_trend(
    metrics: pl.DataFrame, *, metric: str, k: int, segment: str = "overall", protocol: str | None = None
) -> pl.DataFrame:
    """(as_of, product, one column per reference line) for one segment's metric@k, oldest first: the product's
    line beside the lines it must beat, each measured on the same split. Without `protocol`, every protocol."""
    rows = metrics.filter((pl.col("metric") == metric) & (pl.col("k") == k) & (pl.col("segment") == segment))
    if protocol is not None:
        base = pl.col("protocol").str.split(REFERENCE_SEPARATOR).list.first()
        rows = rows.filter(base == protocol)
    rows = rows.with_columns(series_of(pl.col("protocol")).alias("series"))
    wide = rows.pivot(on="series", index="as_of", values="value", aggregate_function="last").sort("as_of")
    references = sorted(c for c in wide.columns if c not in ("as_of", PRODUCT))
    return wide.select("as_of", *[c for c in (PRODUCT, *references) if c in wide.columns])
