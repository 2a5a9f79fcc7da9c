"""The metrics history store and the quality gate (the dashboard reads the store)."""

from monitor.gate import GateConfig, GateDecision, GateMetric, decide, gate_values
from monitor.store import COMPLETED, FAILED, RUNNING, SCHEMA_VERSION, MetricsStore, RunRecord, run_key, sqlite_url
from monitor.trends import ACCURACY_SEGMENTS, BEYOND_ACCURACY, beyond_accuracy_trend, metric_trend

__all__ = [
    "ACCURACY_SEGMENTS",
    "BEYOND_ACCURACY",
    "COMPLETED",
    "FAILED",
    "RUNNING",
    "SCHEMA_VERSION",
    "GateConfig",
    "GateDecision",
    "GateMetric",
    "MetricsStore",
    "RunRecord",
    "beyond_accuracy_trend",
    "decide",
    "gate_values",
    "metric_trend",
    "run_key",
    "sqlite_url",
]
