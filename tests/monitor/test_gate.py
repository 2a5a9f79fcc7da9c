"""The quality gate on hand-made metric frames."""

from __future__ import annotations

import polars as pl
import pytest

from monitor import GateConfig, GateMetric, decide, gate_values


def _frame(overall_ndcg: float, cold_recall: float | None) -> pl.DataFrame:
    rows = [("overall", "ndcg", 20, overall_ndcg), ("overall", "ndcg", 10, 0.9)]
    if cold_recall is not None:
        rows.append(("cold", "recall", 20, cold_recall))
    return pl.DataFrame(rows, schema=["segment", "metric", "k", "value"], orient="row")


def test_first_model_is_promoted() -> None:
    decision = decide(_frame(0.10, 0.05), None, GateConfig())
    assert decision.promoted and decision.reason == "no current model"
    assert decision.candidate == {"overall/ndcg@20": 0.10, "cold/recall@20": 0.05}


def test_a_drop_within_tolerance_passes_and_beyond_it_fails() -> None:
    config = GateConfig(tolerance=0.01)
    assert decide(_frame(0.095, 0.05), _frame(0.10, 0.05), config).promoted
    refused = decide(_frame(0.10, 0.03), _frame(0.10, 0.05), config)
    assert not refused.promoted
    assert "cold/recall@20 0.0300 < 0.0500" in refused.reason
    assert refused.incumbent == {"overall/ndcg@20": 0.10, "cold/recall@20": 0.05}


def test_a_metric_only_one_model_measured_is_not_compared() -> None:
    decision = decide(_frame(0.10, None), _frame(0.10, 0.5), GateConfig())
    assert decision.promoted
    assert decision.candidate["cold/recall@20"] is None
    assert "overall/ndcg@20" in decision.reason and "cold" not in decision.reason


def test_gate_metrics_are_configurable() -> None:
    config = GateConfig(metrics=[GateMetric.parse("overall/ndcg@10")], tolerance=0.0)
    assert gate_values(_frame(0.1, 0.1), config) == {"overall/ndcg@10": 0.9}
    with pytest.raises(ValueError, match="SEGMENT/METRIC@K"):
        GateMetric.parse("ndcg20")
