"""The metrics history store and the quality gate (the dashboard reads the store)."""

from pathlib import Path

from monitor.gate import Evidence, GateConfig, GateDecision, GateMetric, decide, gate_values
from monitor.store import (
    COMPLETED,
    DASHBOARD_STORE_ENV,
    FAILED,
    RUNNING,
    SCHEMA_VERSION,
    ActiveRun,
    MetricsStore,
    RunRecord,
    run_key,
    sqlite_url,
)
from monitor.trends import (
    ACCURACY_SEGMENTS,
    BEYOND_ACCURACY,
    PRODUCT,
    USER_SEGMENTS,
    Lines,
    beyond_accuracy_trend,
    metric_trend,
    product_rows,
    reference_protocol,
    versus_trend,
)

__all__ = [
    "ACCURACY_SEGMENTS",
    "BEYOND_ACCURACY",
    "COMPLETED",
    "DASHBOARD_STORE_ENV",
    "FAILED",
    "PRODUCT",
    "RUNNING",
    "SCHEMA_VERSION",
    "USER_SEGMENTS",
    "ActiveRun",
    "Evidence",
    "GateConfig",
    "GateDecision",
    "GateMetric",
    "Lines",
    "MetricsStore",
    "RunRecord",
    "beyond_accuracy_trend",
    "dashboard_script",
    "decide",
    "gate_values",
    "metric_trend",
    "product_rows",
    "reference_protocol",
    "run_key",
    "sqlite_url",
    "versus_trend",
]


def dashboard_script() -> Path:
    """The Streamlit page's file (run by `streamlit run`, never imported)."""
    return Path(__file__).with_name("dashboard.py")
