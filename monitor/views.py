"""What the dashboard shows, as plain frames computed from the metrics store (the page only draws them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import polars as pl

from monitor.store import MetricsStore
from monitor.trends import (
    BEYOND_ACCURACY,
    PRODUCT,
    REFERENCE_SEPARATOR,
    USER_SEGMENTS,
    Lines,
    product_rows,
    series_of,
)

ACCURACY = ("recall", "ndcg")
WARM_SEGMENTS = ("sparse", "tail", "head")


@dataclass(frozen=True)
class Filters:
    """The page's filters: protocol, cut-off, segments and a time range (inclusive) over `as_of`."""

    protocol: str | None
    k: int
    segments: tuple[str, ...]
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class StoreFrames:
    """Everything the page reads from the store, once per refresh."""

    runs: pl.DataFrame
    metrics: pl.DataFrame
    augmentation: pl.DataFrame
    audit: pl.DataFrame
    segment_counts: pl.DataFrame
    transitions: pl.DataFrame
    promotions: pl.DataFrame

    @classmethod
    def read(cls, store: MetricsStore) -> StoreFrames:
        return cls(
            runs=store.runs(),
            metrics=store.metrics(),
            augmentation=store.augmentation(),
            audit=store.augmentation_audit(),
            segment_counts=store.segment_counts(),
            transitions=store.transitions(),
            promotions=store.promotions(),
        )

    @property
    def empty(self) -> bool:
        return self.runs.is_empty()


def _in_range(frame: pl.DataFrame, column: str, filters: Filters) -> pl.DataFrame:
    if filters.start is not None:
        frame = frame.filter(pl.col(column) >= filters.start)
    if filters.end is not None:
        frame = frame.filter(pl.col(column) <= filters.end)
    return frame


def filter_choices(metrics: pl.DataFrame) -> dict[str, list]:
    """The values each filter can take, from what the store holds."""
    return {
        # Lines recorded beside the product ('temporal:popularity'...) are drawn with it, not chosen apart.
        "protocol": sorted(product_rows(metrics)["protocol"].unique().to_list()),
        "k": sorted(metrics["k"].unique().to_list()),
        "segment": sorted(metrics.filter(pl.col("metric").is_in(ACCURACY))["segment"].unique().to_list()),
    }


def accuracy_over_time(metrics: pl.DataFrame, filters: Filters) -> pl.DataFrame:
    """(as_of, segment, metric, value) for Recall@K and NDCG@K, one line per segment."""
    rows = metrics.filter(
        pl.col("metric").is_in(ACCURACY) & (pl.col("k") == filters.k) & pl.col("segment").is_in(filters.segments)
    )
    if filters.protocol is not None:
        rows = rows.filter(pl.col("protocol") == filters.protocol)
    return _in_range(rows, "as_of", filters).select("as_of", "segment", "metric", "value").sort("as_of", "segment")


def user_accuracy_over_time(metrics: pl.DataFrame, filters: Filters) -> pl.DataFrame:
    """(as_of, segment, metric, value) for Recall@K and NDCG@K of the evaluated users without history, with 1..
    sparse_max training interactions and with more (cold_user, sparse_user, warm_user): the page draws them apart
    from the item segments, whatever segments the filters chose."""
    return accuracy_over_time(metrics, replace(filters, segments=USER_SEGMENTS))


def lines_over_time(metrics: pl.DataFrame, filters: Filters) -> pl.DataFrame:
    """(as_of, line, metric, value): overall Recall@K and NDCG@K of the product and of every line recorded beside
    it on the same split (popularity, recent popularity, the tail-calibrated variant)."""
    rows = metrics.filter(
        pl.col("metric").is_in(ACCURACY) & (pl.col("k") == filters.k) & (pl.col("segment") == "overall")
    )
    if filters.protocol is not None:
        rows = rows.filter(pl.col("protocol").str.split(REFERENCE_SEPARATOR).list.first() == filters.protocol)
    rows = rows.with_columns(series_of(pl.col("protocol")).alias("line"))
    return _in_range(rows, "as_of", filters).select("as_of", "line", "metric", "value").sort("as_of", "line")


WITHOUT_AUGMENTATION = Lines.without_augmentation


def augmentation_effect_over_time(metrics: pl.DataFrame, filters: Filters) -> pl.DataFrame:
    """(as_of, segment, line, value): cold and tail Recall@K of the product with its augmentation and of the same
    model without it, at the runs that recorded both (empty when none did)."""
    rows = metrics.filter(
        (pl.col("metric") == "recall") & (pl.col("k") == filters.k) & pl.col("segment").is_in(["cold", "tail"])
    )
    if filters.protocol is not None:
        rows = rows.filter(pl.col("protocol").str.split(REFERENCE_SEPARATOR).list.first() == filters.protocol)
    rows = rows.with_columns(series_of(pl.col("protocol")).alias("line"))
    both = rows.filter(pl.col("line") == WITHOUT_AUGMENTATION).select("as_of").unique()
    rows = rows.filter(pl.col("line").is_in([PRODUCT, WITHOUT_AUGMENTATION])).join(both, on="as_of", how="semi")
    named = pl.when(pl.col("line") == PRODUCT).then(pl.lit("with augmentation")).otherwise(pl.lit("without"))
    rows = _in_range(rows.with_columns(named.alias("line")), "as_of", filters)
    return rows.select("as_of", "segment", "line", "value").sort("as_of", "segment", "line")


def beyond_accuracy_over_time(metrics: pl.DataFrame, filters: Filters) -> pl.DataFrame:
    """(as_of, metric, value) for coverage, Gini, APLT and novelty of the overall segment."""
    rows = metrics.filter(
        (pl.col("segment") == "overall") & pl.col("metric").is_in(BEYOND_ACCURACY) & (pl.col("k") == filters.k)
    )
    if filters.protocol is not None:
        rows = rows.filter(pl.col("protocol") == filters.protocol)
    return _in_range(rows, "as_of", filters).select("as_of", "metric", "value").sort("as_of", "metric")


def current_segments(segment_counts: pl.DataFrame) -> pl.DataFrame:
    """(kind, segment, count) of the latest run that counted segments."""
    if segment_counts.is_empty():
        return segment_counts.select("kind", "segment", "count")
    latest = segment_counts.sort("as_of").tail(1)["run_id"].item()
    return segment_counts.filter(pl.col("run_id") == latest).select("kind", "segment", "count")


def cold_to_warm(transitions: pl.DataFrame, filters: Filters) -> pl.DataFrame:
    """(as_of, kind, count): entities that left the cold segment for a warm one (sparse, tail or head) per run."""
    moved = transitions.filter((pl.col("from_segment") == "cold") & pl.col("to_segment").is_in(WARM_SEGMENTS))
    moved = _in_range(moved, "as_of", filters)
    return moved.group_by("as_of", "kind").agg(pl.col("count").sum()).sort("as_of", "kind")


def augmentation_over_time(augmentation: pl.DataFrame, runs: pl.DataFrame, filters: Filters) -> pl.DataFrame:
    """Per run: when (the window end, or the start of a run without a window), volume, cache hit rate,
    language-model seconds and synthetic-pair precision."""
    when = runs.select("run_id", pl.coalesce("window_end", "started_at").alias("as_of"))
    rows = augmentation.join(when, on="run_id", how="left").with_columns(
        (
            pl.col("cache_hits")
            / pl.max_horizontal(pl.col("items_augmented") + pl.col("users_augmented") + pl.col("synthetic_rows"), 1)
        )
        .clip(0, 1)
        .alias("cache_hit_rate")
    )
    columns = ["as_of", "run_id", "items_augmented", "users_augmented", "synthetic_rows", "cache_hit_rate"]
    columns += ["tokens", "seconds", "synthetic_precision"]
    return _in_range(rows, "as_of", filters).select(columns).sort("as_of")


def language_model_bought(audit: pl.DataFrame, filters: Filters | None = None) -> pl.DataFrame:
    """What the language model bought, per run and output: the audit's metric change against the output's no-LLM
    control with its 95% interval, that change per 1,000 tokens the run spent on the output (None without
    tokens: a cache answered), whether the run used the output and why."""
    rows = audit.with_columns(pl.coalesce("window_end", "started_at").alias("as_of"))
    rows = rows.with_columns(
        pl.when(pl.col("tokens") > 0).then(pl.col("delta") / pl.col("tokens") * 1000).alias("delta_per_1k_tokens")
    )
    if filters is not None:
        rows = _in_range(rows, "as_of", filters)
    columns = ["as_of", "run_id", "output", "metric", "delta", "low", "high", "users", "entities"]
    return rows.select(*columns, "delta_per_1k_tokens", "tokens", "seconds", "used", "reason").sort("as_of", "output")


def runs_and_promotions(runs: pl.DataFrame, promotions: pl.DataFrame) -> pl.DataFrame:
    """Every run, newest first, with the gate's decision and figures when it made one."""
    decided = promotions.select(
        "run_id",
        pl.when(pl.col("promoted")).then(pl.lit("promoted")).otherwise(pl.lit("refused")).alias("gate"),
        "reason",
        "candidate_metrics",
        "incumbent_metrics",
        "incumbent_version",
    )
    return (
        runs.join(decided, on="run_id", how="left")
        .select(
            "run_id",
            "flow",
            "dataset",
            "window_end",
            "status",
            "model_version",
            "gate",
            "reason",
            "candidate_metrics",
            "incumbent_metrics",
            "incumbent_version",
            "started_at",
            "finished_at",
        )
        .sort("started_at", descending=True)
    )
