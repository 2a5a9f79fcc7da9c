"""Trend tables from metric rows."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from monitor import beyond_accuracy_trend, metric_trend

T1, T2 = datetime(1998, 1, 1, tzinfo=UTC), datetime(1998, 2, 1, tzinfo=UTC)


def test_one_row_per_point_one_column_per_segment() -> None:
    rows = pl.DataFrame(
        [
            (T2, "temporal", "overall", "recall", 20, 0.2),
            (T1, "temporal", "overall", "recall", 20, 0.1),
            (T1, "temporal", "cold", "recall", 20, 0.05),
            (T1, "temporal", "overall", "recall", 10, 0.9),
            (T1, "temporal", "overall", "gini", 20, 0.8),
            (T2, "temporal", "overall", "coverage", 20, 0.3),
        ],
        schema=["as_of", "protocol", "segment", "metric", "k", "value"],
        orient="row",
    )
    trend = metric_trend(rows, metric="recall", k=20)
    assert trend.columns == ["as_of", "overall", "cold"]
    assert trend["overall"].to_list() == [0.1, 0.2]
    assert trend["cold"].to_list() == [0.05, None]
    beyond = beyond_accuracy_trend(rows, k=20)
    assert beyond.columns == ["as_of", "coverage", "gini"]
    assert beyond.row(0) == (T1, None, 0.8)
