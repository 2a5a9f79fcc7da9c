"""Trend tables from metric rows."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from monitor import beyond_accuracy_trend, metric_trend, reference_protocol, versus_trend

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


def test_reference_lines_stand_beside_the_product_and_stay_out_of_its_trends() -> None:
    rows = pl.DataFrame(
        [
            (T1, "temporal", "overall", "ndcg", 20, 0.30),
            (T1, reference_protocol("temporal", "popularity"), "overall", "ndcg", 20, 0.25),
            (T1, reference_protocol("temporal", "recent_popularity"), "overall", "ndcg", 20, 0.28),
            (T2, "temporal", "overall", "ndcg", 20, 0.35),
            (T2, "temporal:popularity", "overall", "ndcg", 20, 0.20),
            (T2, "temporal:popularity", "tail", "ndcg", 20, 0.0),
        ],
        schema=["as_of", "protocol", "segment", "metric", "k", "value"],
        orient="row",
    )
    # The product's trend reads its own rows, not the last reference written at the same time.
    assert metric_trend(rows, metric="ndcg", k=20)["overall"].to_list() == [0.30, 0.35]
    assert metric_trend(rows, metric="ndcg", k=20, protocol="temporal:popularity")["overall"].to_list() == [0.25, 0.20]
    versus = versus_trend(rows, metric="ndcg", k=20)
    assert versus.columns == ["as_of", "product", "popularity", "recent_popularity"]
    assert versus.rows() == [(T1, 0.30, 0.25, 0.28), (T2, 0.35, 0.20, None)]
    assert versus_trend(rows, metric="ndcg", k=20, protocol="cold_item").height == 0
    with pytest.raises(ValueError, match="reference"):
        reference_protocol("temporal:popularity", "again")
