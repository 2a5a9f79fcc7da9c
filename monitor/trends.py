"""Metric rows of the history reshaped into trends: one row per point in time, one column per segment."""

from __future__ import annotations

import polars as pl

ACCURACY_SEGMENTS = ("overall", "head", "tail", "cold")
BEYOND_ACCURACY = ("coverage", "gini", "aplt", "novelty")


def metric_trend(
    metrics: pl.DataFrame,
    *,
    metric: str,
    k: int,
    segments: tuple[str, ...] = ACCURACY_SEGMENTS,
    protocol: str | None = None,
) -> pl.DataFrame:
    """(as_of, one column per segment) for one metric@k, oldest first; a segment a point did not measure
    (no cold item in its test window, say) is null there."""
    rows = metrics.filter((pl.col("metric") == metric) & (pl.col("k") == k) & pl.col("segment").is_in(segments))
    if protocol is not None:
        rows = rows.filter(pl.col("protocol") == protocol)
    wide = rows.pivot(on="segment", index="as_of", values="value", aggregate_function="last").sort("as_of")
    present = [segment for segment in segments if segment in wide.columns]
    return wide.select("as_of", *present)


def beyond_accuracy_trend(metrics: pl.DataFrame, *, k: int, protocol: str | None = None) -> pl.DataFrame:
    """(as_of, coverage, gini, aplt, novelty) of the overall segment, oldest first."""
    rows = metrics.filter(
        (pl.col("segment") == "overall") & (pl.col("k") == k) & pl.col("metric").is_in(BEYOND_ACCURACY)
    )
    if protocol is not None:
        rows = rows.filter(pl.col("protocol") == protocol)
    wide = rows.pivot(on="metric", index="as_of", values="value", aggregate_function="last").sort("as_of")
    return wide.select("as_of", *[name for name in BEYOND_ACCURACY if name in wide.columns])
