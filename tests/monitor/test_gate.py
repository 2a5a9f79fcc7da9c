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


def test_a_candidate_that_loses_to_the_reference_line_is_refused() -> None:
    # No incumbent, but recent popularity ranks the same held-out data better: serving the model would hurt.
    refused = decide(_frame(0.10, 0.05), None, GateConfig(), reference=_frame(0.12, 0.0))
    assert not refused.promoted
    assert refused.reason == "loses to recent popularity: overall/ndcg@20 0.1000 < recent popularity's 0.1200"
    assert refused.reference == {"overall/ndcg@20": 0.12}
    # Both refusals are said when both apply.
    both = decide(_frame(0.10, 0.01), _frame(0.10, 0.05), GateConfig(), reference=_frame(0.12, 0.0))
    assert not both.promoted and "loses to recent popularity" in both.reason and "regressed" in both.reason
    # Level with the reference is not losing; the reason says what was checked.
    level = decide(_frame(0.12, 0.05), _frame(0.12, 0.05), GateConfig(), reference=_frame(0.12, 0.0))
    assert level.promoted
    assert level.reason.endswith("beats recent popularity (overall/ndcg@20 0.1200 >= 0.1200)")


def test_reference_rows_in_a_runs_metrics_are_not_the_products() -> None:
    # A run's recorded metrics hold its reference lines too (protocol 'temporal:...'): the gate reads the product.
    product = _frame(0.10, 0.05).with_columns(protocol=pl.lit("temporal"))
    recorded = pl.concat([_frame(0.50, 0.50).with_columns(protocol=pl.lit("temporal:popularity")), product])
    assert gate_values(recorded, GateConfig()) == {"overall/ndcg@20": 0.10, "cold/recall@20": 0.05}
    # ...and the reference is read from its own rows, as the flows hand them over.
    reference = _frame(0.12, 0.0).with_columns(protocol=pl.lit("temporal:recent_popularity"))
    refused = decide(product, None, GateConfig(), reference=reference)
    assert not refused.promoted and refused.reference == {"overall/ndcg@20": 0.12}


def test_a_drop_the_evidence_does_not_show_is_noise_not_a_refusal() -> None:
    # Point estimates refuse on both counts; bootstrap intervals over users decide which drops are real.
    candidate, incumbent, reference = _frame(0.10, 0.03), _frame(0.10, 0.05), _frame(0.12, 0.0)
    noisy = {"incumbent": {"cold/recall@20": (-0.05, 0.01)}, "reference": {"overall/ndcg@20": (-0.04, 0.002)}}
    passed = decide(candidate, incumbent, GateConfig(), reference=reference, evidence=noisy)
    assert passed.promoted
    assert "drops within noise: overall/ndcg@20 0.1000 < recent popularity's 0.1200 (95% interval" in passed.reason
    assert "cold/recall@20 0.0300 < 0.0500 - 0.005 (95% interval [-0.0500, +0.0100])" in passed.reason
    # An interval wholly below minus the tolerance refuses, and the reason gives it; one that reaches into the
    # tolerance does not.
    shown = {"incumbent": {"cold/recall@20": (-0.05, -0.01)}, "reference": {"overall/ndcg@20": (-0.04, 0.002)}}
    refused = decide(candidate, incumbent, GateConfig(), reference=reference, evidence=shown)
    assert not refused.promoted
    assert refused.reason == "regressed: cold/recall@20 0.0300 < 0.0500 - 0.005 (95% interval [-0.0500, -0.0100])"
    within = {"incumbent": {"cold/recall@20": (-0.05, -0.001)}, "reference": {"overall/ndcg@20": (-0.04, 0.002)}}
    assert decide(candidate, incumbent, GateConfig(), reference=reference, evidence=within).promoted
    # A negative tolerance asks the candidate to beat the incumbent by that much: a tie, however certain, refuses.
    tie = {"incumbent": {"overall/ndcg@20": (0.0, 0.0)}}
    demanding = GateConfig(tolerance=-0.5, reference_metrics=[])
    assert not decide(_frame(0.10, 0.05), _frame(0.10, 0.05), demanding, evidence=tie).promoted
    # Without a confidence level the point estimates alone decide, evidence or not.
    assert not decide(candidate, incumbent, GateConfig(confidence=None), reference=reference, evidence=noisy).promoted
    # A metric without evidence refuses on its point estimate.
    partial = {"reference": {"overall/ndcg@20": (-0.04, 0.002)}}
    assert not decide(candidate, incumbent, GateConfig(), reference=reference, evidence=partial).promoted
