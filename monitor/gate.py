"""The quality gate: a retrained ranker replaces the current one only if its gate metrics do not regress."""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import BaseModel, Field


class GateMetric(BaseModel):
    """One metric the gate watches, e.g. overall NDCG@20."""

    segment: str
    metric: str
    k: int = Field(20, ge=1)

    @property
    def name(self) -> str:
        return f"{self.segment}/{self.metric}@{self.k}"

    @classmethod
    def parse(cls, text: str) -> GateMetric:
        """'cold/recall@20' -> GateMetric(segment='cold', metric='recall', k=20)."""
        segment, _, rest = text.partition("/")
        metric, _, k = rest.partition("@")
        if not segment or not metric or not k.isdigit():
            raise ValueError(f"gate metric {text!r} must look like SEGMENT/METRIC@K, e.g. cold/recall@20")
        return cls(segment=segment, metric=metric, k=int(k))


class GateConfig(BaseModel):
    """Gate metrics and the absolute drop each may show before the candidate is refused."""

    metrics: list[GateMetric] = Field(
        default_factory=lambda: [GateMetric.parse("overall/ndcg@20"), GateMetric.parse("cold/recall@20")]
    )
    tolerance: float = Field(
        0.005,
        ge=-1,
        le=1,
        description="Largest allowed drop (absolute) of any gate metric; a negative tolerance asks the candidate "
        "to beat the incumbent by at least that much.",
    )


class GateDecision(BaseModel):
    promoted: bool
    reason: str
    candidate: dict[str, float | None]
    incumbent: dict[str, float | None] | None

    def record(self, candidate_version: str, incumbent_version: str | None, config: GateConfig) -> dict[str, Any]:
        """The row the metrics store keeps for this decision."""
        return {
            "candidate_version": candidate_version,
            "incumbent_version": incumbent_version,
            "promoted": self.promoted,
            "reason": self.reason,
            "gate": config.model_dump(),
            "candidate_metrics": self.candidate,
            "incumbent_metrics": self.incumbent,
        }


def gate_values(metrics: pl.DataFrame, config: GateConfig) -> dict[str, float | None]:
    """The gate metrics read from a (segment, metric, k, value) frame; None where the run did not measure one
    (e.g. no cold item had a held-out interaction)."""
    values: dict[str, float | None] = {}
    for gate in config.metrics:
        found = metrics.filter(
            (pl.col("segment") == gate.segment) & (pl.col("metric") == gate.metric) & (pl.col("k") == gate.k)
        )["value"]
        values[gate.name] = float(found[0]) if found.len() else None
    return values


def decide(candidate: pl.DataFrame, incumbent: pl.DataFrame | None, config: GateConfig) -> GateDecision:
    """Promote the candidate unless a gate metric measured for both falls more than `tolerance` below the
    incumbent's on the same held-out data. With no incumbent, the candidate is promoted."""
    mine = gate_values(candidate, config)
    if incumbent is None:
        return GateDecision(promoted=True, reason="no current model", candidate=mine, incumbent=None)
    theirs = gate_values(incumbent, config)
    regressions, compared = [], []
    for name, value in mine.items():
        reference = theirs[name]
        if value is None or reference is None:
            continue
        compared.append(name)
        if value < reference - config.tolerance:
            regressions.append(f"{name} {value:.4f} < {reference:.4f} - {config.tolerance:g}")
    if regressions:
        return GateDecision(
            promoted=False, reason="regressed: " + "; ".join(regressions), candidate=mine, incumbent=theirs
        )
    if not compared:
        reason = "no gate metric measured for both models"
    else:
        reason = f"no regression beyond {config.tolerance:g} on " + ", ".join(compared)
    return GateDecision(promoted=True, reason=reason, candidate=mine, incumbent=theirs)
