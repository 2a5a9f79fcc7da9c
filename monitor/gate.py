"""The quality gate: a retrained ranker replaces the current one only if its gate metrics do not regress and it
does not lose to the reference line (recent popularity) measured on the same held-out data. Where the point
estimates say it would refuse, the caller may bring evidence (paired bootstrap intervals over users of each
difference): a drop whose interval reaches zero is noise, not a regression, and is reported as such."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from monitor.trends import product_rows


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
    reference_metrics: list[GateMetric] = Field(
        default_factory=lambda: [GateMetric.parse("overall/ndcg@20")],
        description="Metrics on which the candidate must reach the reference line (e.g. recent popularity) "
        "measured on the same held-out data; a candidate below it is refused.",
    )
    confidence: float | None = Field(
        0.95,
        gt=0,
        lt=1,
        description="Level of the paired bootstrap interval over users that a drop must clear to refuse: a "
        "candidate below the incumbent by more than the tolerance is refused only when the interval of the "
        "difference lies wholly below minus the tolerance, one below the reference only when it lies wholly below "
        "zero. None: the point estimates alone decide.",
    )


# Evidence for `decide`: per comparison ('incumbent', 'reference'), per gate metric name, the (lower, upper) bounds
# of the paired bootstrap interval of candidate minus the other (training.gate_evidence measures them).
Evidence = dict[str, dict[str, tuple[float, float]]]


class GateDecision(BaseModel):
    promoted: bool
    reason: str
    candidate: dict[str, float | None]
    incumbent: dict[str, float | None] | None
    # The reference line's values of `reference_metrics`, when one was given (kept in the reason when recorded).
    reference: dict[str, float | None] | None = None

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
    (e.g. no cold item had a held-out interaction). Reference lines' rows in the frame are not the product's."""
    return _values(product_rows(metrics), config.metrics)


def _values(metrics: pl.DataFrame, gates: list[GateMetric]) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for gate in gates:
        found = metrics.filter(
            (pl.col("segment") == gate.segment) & (pl.col("metric") == gate.metric) & (pl.col("k") == gate.k)
        )["value"]
        values[gate.name] = float(found[0]) if found.len() else None
    return values


def decide(
    candidate: pl.DataFrame,
    incumbent: pl.DataFrame | None,
    config: GateConfig,
    reference: pl.DataFrame | None = None,
    reference_name: str = "recent popularity",
    evidence: Evidence | None = None,
) -> GateDecision:
    """Promote the candidate unless a gate metric measured for both falls more than `tolerance` below the
    incumbent's on the same held-out data, or a reference metric falls below `reference`'s (a baseline such as
    recent popularity scored on the same data: a ranker that loses to it should not serve). A drop with
    `evidence` whose interval reaches zero does not refuse (it is named in the reason as within noise). With no
    incumbent and no reference, the candidate is promoted."""
    mine = gate_values(candidate, config)
    found = _Findings(evidence or {}, config.confidence)
    theirs_reference: dict[str, float | None] | None = None
    if reference is not None:
        theirs_reference = found.against_reference(candidate, reference, reference_name, config.reference_metrics)
    theirs = gate_values(incumbent, config) if incumbent is not None else None
    if theirs is not None:
        found.against_incumbent(mine, theirs, config.tolerance)
    refusals = found.refusals(reference_name)
    if refusals:
        return GateDecision(
            promoted=False, reason="; ".join(refusals), candidate=mine, incumbent=theirs, reference=theirs_reference
        )
    reason = found.promotion_reason(incumbent is not None, config.tolerance, reference_name)
    return GateDecision(promoted=True, reason=reason, candidate=mine, incumbent=theirs, reference=theirs_reference)


@dataclass
class _Findings:
    """What `decide`'s comparisons found, each list in the order the reason names it. A drop refuses (`losses`,
    `regressions`) unless the evidence leaves it within noise (`noise`)."""

    evidence: Evidence
    confidence: float | None
    losses: list[str] = field(default_factory=list)
    checked_reference: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)

    def shown(self, comparison: str, name: str, allowed: float) -> tuple[bool, str]:
        """Whether the evidence (if any) shows a drop beyond `allowed` (its interval wholly below -allowed), and the
        interval as text."""
        interval = self.evidence.get(comparison, {}).get(name)
        if interval is None or self.confidence is None:
            return True, ""
        text = f" ({self.confidence:.0%} interval [{interval[0]:+.4f}, {interval[1]:+.4f}])"
        return interval[1] < -allowed, text

    def against_reference(
        self, candidate: pl.DataFrame, reference: pl.DataFrame, reference_name: str, metrics: list[GateMetric]
    ) -> dict[str, float | None]:
        """Each of `metrics` measured for both the candidate's own rows and the reference line: below the line, a
        loss (or noise); at or above it, checked. Returns the line's values."""
        ours = _values(product_rows(candidate), metrics)
        theirs = _values(reference, metrics)
        for name, value in ours.items():
            baseline = theirs[name]
            if value is None or baseline is None:
                continue
            if value < baseline:
                real, interval = self.shown("reference", name, 0.0)
                below = f"{name} {value:.4f} < {reference_name}'s {baseline:.4f}{interval}"
                (self.losses if real else self.noise).append(below)
            else:
                self.checked_reference.append(f"{name} {value:.4f} >= {baseline:.4f}")
        return theirs

    def against_incumbent(
        self, mine: dict[str, float | None], theirs: dict[str, float | None], tolerance: float
    ) -> None:
        """Each gate metric measured for both models is compared; one more than `tolerance` below the incumbent's
        is a regression (or noise)."""
        for name, value in mine.items():
            previous = theirs[name]
            if value is None or previous is None:
                continue
            self.compared.append(name)
            if value < previous - tolerance:
                real, interval = self.shown("incumbent", name, tolerance)
                drop = f"{name} {value:.4f} < {previous:.4f} - {tolerance:g}{interval}"
                (self.regressions if real else self.noise).append(drop)

    def refusals(self, reference_name: str) -> list[str]:
        return ([f"loses to {reference_name}: " + "; ".join(self.losses)] if self.losses else []) + (
            ["regressed: " + "; ".join(self.regressions)] if self.regressions else []
        )

    def promotion_reason(self, has_incumbent: bool, tolerance: float, reference_name: str) -> str:
        if not has_incumbent:
            reason = "no current model"
        elif not self.compared:
            reason = "no gate metric measured for both models"
        else:
            reason = f"no regression beyond {tolerance:g} on " + ", ".join(self.compared)
        if self.checked_reference:
            reason += f"; beats {reference_name} ({', '.join(self.checked_reference)})"
        if self.noise:
            reason += "; drops within noise: " + "; ".join(self.noise)
        return reason
