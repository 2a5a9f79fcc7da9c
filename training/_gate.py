"""The gate's evidence and the reference lines: everything a candidate is measured against on its own real
held-out data (the current model re-scored there, popularity and recent popularity, its tail-calibrated variant,
itself without augmentation, the timed alternatives), and the paired bootstrap intervals a refusal needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from catalog import Columns, Segments, WarmstartError, has_times
from monitor import Evidence, GateConfig, GateDecision, GateMetric, Lines, decide, reference_protocol
from ranker.baselines import PopularityScorer, RecentPopularityScorer
from ranker.evaluate import IN_TURN, PartitionMap, ProtocolSplit, interaction_matrix
from ranker.evaluate import evaluate as evaluate_split
from ranker.metrics import bootstrap_difference, per_user_accuracy
from ranker.registry import load_ranker
from ranker.rerank import tail_rerank_scorer, tail_share_targets
from training._fit import FittedRanker
from training._standins import Warmed, synthetic_precision
from training.defaults import TAIL_STRENGTH


def evaluate_metrics(
    fitted: FittedRanker, split: ProtocolSplit, *, k: int, protocol: str, partitions: PartitionMap = IN_TURN
) -> pl.DataFrame:
    """(protocol, segment, metric, k, value) of a fitted ranker on the split's real held-out interactions, its
    users scored in batches where `partitions` runs them (`ranker.evaluate.evaluate`)."""
    metrics = fitted.evaluate(split, k, partitions=partitions).metrics
    return metrics.with_columns(pl.lit(protocol).alias("protocol"))


@dataclass(frozen=True)
class Incumbent:
    """The current model: its version, and its figures on the candidate's held-out data where it can be scored
    there (else its recorded figures, with a note saying so)."""

    version: str | None
    metrics: pl.DataFrame | None
    note: str | None = None
    # The current model serving from the candidate's inputs, where it was re-scored (gate_evidence scores it again).
    fitted: FittedRanker | None = None


def incumbent_on_same_data(
    fitted: FittedRanker,
    directory: Path | None,
    split: ProtocolSplit,
    *,
    k: int,
    protocol: str,
    recorded: pl.DataFrame | None,
    partitions: PartitionMap = IN_TURN,
) -> Incumbent:
    """The current model's metrics to gate against. A ranker whose versions can be re-scored (LightGBM: features
    are the same functions of the data for every version) is scored over this run's inputs, on the same held-out
    data as the candidate (in batches where `partitions` runs them); one tied to its encoders (DeepFM) is compared
    by its recorded figures."""

    if directory is None:
        return Incumbent(None, None)
    version = directory.name
    if fitted.ranker.tied_to_encoders:
        return Incumbent(version, recorded, f"compared with the recorded figures of {version}")
    # A version refit on its whole log has seen this window's events: its evaluated ranker is re-scored instead.
    judged = directory / EVALUATED if (directory / EVALUATED).is_dir() else directory
    trained_to = trained_through(judged)
    if trained_to is not None and has_times(split.train) and trained_to >= as_of(split):
        note = f"{version} trained on events up to {trained_to}, inside this window; compared with its recorded figures"
        return Incumbent(version, recorded, note)
    try:
        current = FittedRanker(load_ranker(judged), fitted.served)
        metrics = evaluate_metrics(current, split, k=k, protocol=protocol, partitions=partitions)
        return Incumbent(version, metrics, fitted=current)
    except (WarmstartError, ValueError, IndexError, RuntimeError) as error:
        note = f"{version} cannot score this data ({type(error).__name__}: {error}); compared with its recorded figures"
        return Incumbent(version, recorded, note)


# Where a refit version keeps the ranker its figures were measured on (flows.cycle writes it).
EVALUATED = "evaluated"


def trained_through(directory: Path) -> datetime | None:
    """The last event time a saved ranker's training saw, from its version's report.json (the evaluated window
    for `evaluated/`, the data window otherwise); None where the report does not say."""
    is_evaluated = directory.name == EVALUATED
    report_path = (directory.parent if is_evaluated else directory) / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    window = (report.get("evaluated") or {}).get("train_window") if is_evaluated else report.get("data_window")
    if not window or not window.get("end"):
        return None
    end = datetime.fromisoformat(str(window["end"]))
    return end if end.tzinfo is not None else end.replace(tzinfo=UTC)


# The reference lines every run records beside the product; the gate holds the product to the first one measured
# (recent popularity needs times, popularity stands in without them).
POPULARITY, RECENT_POPULARITY = Lines.popularity, Lines.recent_popularity
TAIL_CALIBRATED = Lines.tail_calibrated


def reference_lines(split: ProtocolSplit, *, k: int, protocol: str) -> pl.DataFrame:
    """Popularity and, for a log with times, recent popularity fitted on the split's training data and scored on
    its held-out data: the lines the product must beat, measured exactly as the product is."""

    frames = [
        evaluate_split(split, scorer, k=k).metrics.with_columns(
            pl.lit(reference_protocol(protocol, name)).alias("protocol")
        )
        for name, scorer in _reference_scorers(split).items()
    ]
    return pl.concat(frames)


def _reference_scorers(split: ProtocolSplit) -> dict[str, PopularityScorer]:
    """Popularity, and recent popularity where the training log has times, fitted on the split's training data."""

    scorers: dict[str, PopularityScorer] = {POPULARITY: PopularityScorer()}
    train = split.train
    if has_times(train):
        scorers[RECENT_POPULARITY] = RecentPopularityScorer()
    return {name: scorer.fit(train, split.index) for name, scorer in scorers.items()}


def tail_calibrated(
    fitted: FittedRanker, split: ProtocolSplit, *, k: int, protocol: str, strength: float = TAIL_STRENGTH
) -> pl.DataFrame:
    """The candidate's metrics with calibrated tail exposure, on the same split (tail recall, coverage, Gini,
    APLT and accuracy side by side with the candidate's own)."""

    # polars' hashed is_in: numpy's isin sorts string ids, 2 minutes of an evaluation at 100,000 items.
    is_tail, is_cold = (
        split.index.item_ids.is_in(
            split.item_segments.filter(pl.col(Columns.segment) == name)[Columns.item].implode()
        ).to_numpy()
        for name in (Segments.tail, Segments.cold)
    )
    targets = tail_share_targets(interaction_matrix(split.train, split.index), is_tail)
    base = fitted.scorer(split)  # the scores the candidate's own line ranked (scored once)
    # Tail items displace head items only: the cold items the ranker placed (its cold slots) stay.
    scorer = tail_rerank_scorer(base, is_tail, targets, k=k, strength=strength, protect=is_cold)
    metrics = evaluate_split(split, scorer, k=k).metrics
    return metrics.with_columns(pl.lit(reference_protocol(protocol, TAIL_CALIBRATED)).alias("protocol"))


def warming_row(warmed: Warmed, split: ProtocolSplit) -> dict[str, float | int | None]:
    """The store's augmentation columns of a model's warming: cold items warmed, and the embedding simulator's
    pairs' precision against the split's real held-out interactions (a diagnostic: truth is never changed)."""

    precision = synthetic_precision(warmed, interaction_matrix(split.truth, split.index))
    return {"cold_items_warmed": int(warmed.items.sum()), "simulator_precision": precision["simulator"]}


WITHOUT_AUGMENTATION = Lines.without_augmentation


def without_augmentation(
    fitted: FittedRanker, split: ProtocolSplit, *, k: int, protocol: str, partitions: PartitionMap = IN_TURN
) -> pl.DataFrame:
    """The candidate serving cold items through their content stand-ins instead of the stand-ins its synthetic
    interactions warmed, on the same split: what augmentation adds (no rows when nothing was warmed). Scored in
    batches where `partitions` runs them."""
    if fitted.served.warming is None:
        return pl.DataFrame()
    metrics = fitted.without_warming().evaluate(split, k, partitions=partitions).metrics
    return metrics.with_columns(pl.lit(reference_protocol(protocol, WITHOUT_AUGMENTATION)).alias("protocol"))


def alternative_lines(
    fitted: FittedRanker,
    metrics: pl.DataFrame,
    split: ProtocolSplit,
    *,
    k: int,
    protocol: str,
    partitions: PartitionMap = IN_TURN,
) -> pl.DataFrame:
    """Each timed alternative trained beside the candidate, scored on the same split as the line 'PROTOCOL:NAME'
    (the candidate's own `metrics` where the alternative is the candidate): what a backfill's next window chooses
    from. No rows without alternatives. Scored in batches where `partitions` runs them."""
    if any(not name.startswith(Lines.alternative_prefix) for name in fitted.alternatives):
        names = list(fitted.alternatives)
        raise ValueError(f"timed alternatives' names must start with {Lines.alternative_prefix!r}: {names}")
    frames = [
        (metrics if other is fitted else other.evaluate(split, k, partitions=partitions).metrics).with_columns(
            pl.lit(reference_protocol(protocol, name)).alias("protocol")
        )
        for name, other in fitted.alternatives.items()
    ]
    return pl.concat(frames) if frames else pl.DataFrame()


@dataclass(frozen=True)
class Reference:
    """The line the gate holds the candidate to (its metric rows and its name), or none."""

    metrics: pl.DataFrame | None = None
    name: str = ""


def gate_reference(references: pl.DataFrame, protocol: str) -> Reference:
    """Recent popularity where it was measured, else popularity."""
    for name in (RECENT_POPULARITY, POPULARITY):
        rows = references.filter(pl.col("protocol") == reference_protocol(protocol, name))
        if rows.height:
            return Reference(rows, name.replace("_", " "))
    return Reference()


def gate_user_values(recs: pl.DataFrame, split: ProtocolSplit, gate: GateMetric) -> pl.DataFrame:
    """(user_id, value) of one gate metric for each user it averages over: those with a held-out positive in the
    gate's segment (an item segment: head, tail, cold; a user segment; or overall). Their mean is the metric."""

    truth = split.truth
    if gate.segment in (Segments.head, Segments.tail, Segments.cold):
        items = split.item_segments.filter(pl.col(Columns.segment) == gate.segment).select(Columns.item)
        truth = truth.join(items, on=Columns.item, how="semi")
    elif gate.segment != Segments.overall:
        if split.user_segments is None:  # a split without user segments measures none of them
            truth = truth.clear()
        else:
            members = split.user_segments.filter(pl.col(Columns.segment) == gate.segment).select(Columns.user)
            truth, recs = (frame.join(members, on=Columns.user, how="semi") for frame in (truth, recs))
    if truth.is_empty():
        return pl.DataFrame(schema={Columns.user: pl.String, "value": pl.Float64})
    values = per_user_accuracy(recs, truth, gate.k)
    return values.select(Columns.user, pl.col(gate.metric).cast(pl.Float64).alias("value"))


def gate_evidence(
    fitted: FittedRanker, incumbent: Incumbent, split: ProtocolSplit, config: GateConfig, *, k: int
) -> Evidence:
    """Paired bootstrap intervals over users (at `config.confidence`) of the candidate minus the incumbent (where it
    was scored on this data) on each gate metric, and minus the reference line (recent popularity, else
    popularity) on each reference metric: the evidence `monitor.decide` asks of a drop before it refuses."""

    if config.confidence is None:
        return {}
    scorers = _reference_scorers(split)
    reference = scorers.get(RECENT_POPULARITY, scorers[POPULARITY])
    recs = {"candidate": fitted.evaluate(split, k).recs, "reference": evaluate_split(split, reference, k=k).recs}
    if incumbent.fitted is not None:
        recs["incumbent"] = incumbent.fitted.evaluate(split, k).recs
    evidence: Evidence = {}
    for comparison, gates in (("incumbent", config.metrics), ("reference", config.reference_metrics)):
        if comparison not in recs:
            continue
        for gate_metric in gates:
            mine = gate_user_values(recs["candidate"], split, gate_metric)
            theirs = gate_user_values(recs[comparison], split, gate_metric)
            both = mine.join(theirs, on=Columns.user, suffix="_other")
            if both.is_empty():
                continue
            _, low, high = bootstrap_difference(
                both["value"].to_numpy(), both["value_other"].to_numpy(), level=config.confidence
            )
            evidence.setdefault(comparison, {})[gate_metric.name] = (low, high)
    return evidence


def gate(
    candidate: pl.DataFrame,
    incumbent: Incumbent,
    config: GateConfig,
    reference: Reference | None = None,
    evidence: Evidence | None = None,
) -> GateDecision:
    """Promote or refuse the candidate against the current model and the reference line (see `monitor.decide`)."""
    reference = reference or Reference()
    decision = decide(
        candidate, incumbent.metrics, config, reference.metrics, reference.name or "the reference", evidence
    )
    if incumbent.note:
        decision = decision.model_copy(update={"reason": f"{decision.reason} ({incumbent.note})"})
    return decision


def as_of(split: ProtocolSplit) -> datetime:
    """A point's time: the end of its training data (the cut), or now for splits without times."""
    train = split.train
    if has_times(train):
        return train[Columns.ts].max() + timedelta(microseconds=1)
    return datetime.now(UTC)
