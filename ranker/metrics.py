"""Offline ranking metrics: accuracy (overall and per item segment) and beyond-accuracy.

Every metric reads only the rows of `recs` with `rank <= k`. Definitions and conventions are in
docs/metrics.md; the functions below implement exactly those formulas, vectorised with polars.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

from catalog._columns import Columns, Segments
from catalog.errors import DataError

__all__ = [
    "ACCURACY_METRICS",
    "BEYOND_ACCURACY_METRICS",
    "MetricInputError",
    "accuracy_metrics",
    "aplt",
    "arp",
    "beyond_accuracy_metrics",
    "bootstrap_difference",
    "coverage",
    "evaluate_ranking",
    "gini",
    "novelty",
    "per_user_accuracy",
    "top_k",
]

ACCURACY_METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "hit_rate")
BEYOND_ACCURACY_METRICS: tuple[str, ...] = ("coverage", "gini", "aplt", "arp", "novelty")

# Item segments that accuracy_metrics reports, in output order (after "overall").
_ITEM_SEGMENTS: tuple[str, ...] = (Segments.head, Segments.tail, Segments.cold)

# How many offending values an error message quotes: enough to debug, short enough for one line.
_EXAMPLES = 5

_N_POS = "n_pos"
_HITS = "hits"
_DCG = "_dcg"
_IDCG = "_idcg"
_IS_TAIL = "_is_tail"


class MetricInputError(DataError, ValueError):
    """An input of a metric breaks its contract.

    A DataError so that the CLI prints it as one line, and a ValueError because it is a bad argument value.
    """


# --------------------------------------------------------------------------------------------- validation


def _check_k(k: int) -> None:
    """Reject a cut-off that is not a positive integer."""
    # bool is an int subclass; `k=True` is always a mistake.
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise MetricInputError(f"k must be >= 1, got {k}")


def _examples(values: Iterable[object]) -> str:
    """A short, sorted, comma-separated sample of offending values."""
    shown = sorted({repr(v) for v in values})
    more = f" (and {len(shown) - _EXAMPLES} more)" if len(shown) > _EXAMPLES else ""
    return ", ".join(shown[:_EXAMPLES]) + more


def _require(frame: pl.DataFrame, name: str, columns: Sequence[str]) -> None:
    """Check that `frame` is a DataFrame with `columns`, none of them holding nulls."""
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"{name} must be a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MetricInputError(
            f"{name} is missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"it has: {', '.join(frame.columns) or '(no columns)'}"
        )
    # A null id or rank would silently drop out of joins and skew the averages.
    with_nulls = [c for c in columns if frame[c].null_count() > 0]
    if with_nulls:
        raise MetricInputError(f"{name} has nulls in column(s) {', '.join(repr(c) for c in with_nulls)}")


def _require_unique(frame: pl.DataFrame, name: str, key: Sequence[str], why: str) -> None:
    """Raise when `key` repeats in `frame`, quoting some repeated keys."""
    dup = frame.select(key).filter(pl.struct(key).is_duplicated())
    if dup.height:
        shown = _examples(tuple(row) if len(row) > 1 else row[0] for row in dup.unique().rows())
        raise MetricInputError(f"{name} repeats ({', '.join(key)}) {why}: {shown}")


def _top(recs: pl.DataFrame, k: int) -> pl.DataFrame:
    """Validated (user, item, rank) rows of `recs` with rank <= k."""
    _check_k(k)
    _require(recs, "recs", (Columns.user, Columns.item, Columns.rank))
    if not recs.schema[Columns.rank].is_integer():
        raise MetricInputError(f"recs.{Columns.rank} must be an integer column, got {recs.schema[Columns.rank]}")
    top = recs.select(Columns.user, Columns.item, pl.col(Columns.rank).cast(pl.Int64))
    if top.height and top[Columns.rank].min() < 1:
        raise MetricInputError(f"recs.{Columns.rank} must start at 1 (1 = best), got {top[Columns.rank].min()}")
    top = top.filter(pl.col(Columns.rank) <= k)
    # Repeats would count one hit twice or put more than k rows in a list, pushing metrics above 1.
    _require_unique(top, "recs", (Columns.user, Columns.item), "within the top k; an item is listed once")
    _require_unique(top, "recs", (Columns.user, Columns.rank), "within the top k; ranks must be distinct")
    return top


def _truth(truth: pl.DataFrame) -> pl.DataFrame:
    """Validated, deduplicated (user, item) test positives."""
    _require(truth, "truth", (Columns.user, Columns.item))
    return truth.select(Columns.user, Columns.item).unique()


def _item_segments(item_segments: pl.DataFrame) -> pl.DataFrame:
    """Validated (item, segment) rows: one head/tail/cold label per item."""
    _require(item_segments, "item_segments", (Columns.item, Columns.segment))
    frame = item_segments.select(Columns.item, Columns.segment).unique()
    unknown = frame.filter(~pl.col(Columns.segment).is_in(list(_ITEM_SEGMENTS)))[Columns.segment]
    if unknown.len():
        raise MetricInputError(
            f"item_segments.{Columns.segment} must be one of {', '.join(_ITEM_SEGMENTS)}, got {_examples(unknown)}"
        )
    _require_unique(frame, "item_segments", (Columns.item,), "with different segments")
    return frame


def _item_frame(items: Sequence[str] | pl.Series, name: str, dtype: pl.DataType) -> pl.DataFrame:
    """Distinct item ids as a one-column frame of recs' item dtype, so that membership is a join."""
    series = items if isinstance(items, pl.Series) else pl.Series(list(items))
    if series.null_count():
        raise MetricInputError(f"{name} holds nulls")
    return pl.DataFrame({Columns.item: series.cast(dtype)}).unique()


def _popularity(item_popularity: pl.DataFrame) -> pl.DataFrame:
    """Validated (item, n_interactions) rows, one per item, counts as Float64."""
    _require(item_popularity, "item_popularity", (Columns.item, Columns.n_interactions))
    frame = item_popularity.select(Columns.item, pl.col(Columns.n_interactions).cast(pl.Float64))
    _require_unique(frame, "item_popularity", (Columns.item,), "with different counts")
    negative = frame.filter(pl.col(Columns.n_interactions) < 0)[Columns.item]
    if negative.len():
        raise MetricInputError(f"item_popularity has negative {Columns.n_interactions} for {_examples(negative)}")
    return frame


def _check_positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise MetricInputError(f"{name} must be >= 1, got {value}")


def _require_rows(top: pl.DataFrame, metric: str) -> None:
    """A mean over users (or a Gini over exposure) is undefined with nothing recommended."""
    if top.height == 0:
        raise MetricInputError(f"{metric} needs at least one row of recs with rank <= k; recs has none")


# ----------------------------------------------------------------------------------------------- ranking


def top_k(scores: pl.DataFrame, k: int) -> pl.DataFrame:
    """Each user's k highest-scored items as (user_id, item_id, rank), rank 1 = best.

    Equal scores are broken by item_id ascending, so the result does not depend on row order.
    A user with fewer than k candidates gets a shorter list.
    """
    _check_k(k)
    _require(scores, "scores", (Columns.user, Columns.item, Columns.score))
    if not scores.schema[Columns.score].is_numeric():
        raise MetricInputError(f"scores.{Columns.score} must be numeric, got {scores.schema[Columns.score]}")
    # polars sorts NaN above every number, so a NaN score would silently take rank 1.
    if scores.schema[Columns.score].is_float() and scores[Columns.score].is_nan().any():
        raise MetricInputError(f"scores.{Columns.score} holds NaN")
    _require_unique(scores, "scores", (Columns.user, Columns.item), "(one score per candidate)")
    return (
        scores.sort(
            [Columns.user, Columns.score, Columns.item],
            descending=[False, True, False],
        )
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(Columns.user).alias(Columns.rank))
        .filter(pl.col(Columns.rank) <= k)
        .select(Columns.user, Columns.item, Columns.rank)
    )


# ---------------------------------------------------------------------------------------------- accuracy


def _ideal_dcg(k: int) -> pl.DataFrame:
    """IDCG for 1..k relevant items: (n_ideal, idcg), idcg(n) = sum_{r=1}^{n} 1/log2(r+1)."""
    ranks = pl.int_range(1, k + 1, dtype=pl.Int64, eager=True)
    return pl.DataFrame({"_n_ideal": ranks, _IDCG: (1.0 / (ranks + 1).log(2)).cum_sum()})


def _per_group_accuracy(top: pl.DataFrame, labelled_truth: pl.DataFrame, k: int) -> pl.DataFrame:
    """Per (segment, user) accuracy; `labelled_truth` is (user, item, segment) positives.

    The user's whole top-k list is matched against the positives of each segment, so a hit counts in the
    segment of the hit item, at its rank in the full list.
    """
    keys = [Columns.segment, Columns.user]
    n_pos = labelled_truth.group_by(keys).agg(pl.len().cast(pl.Int64).alias(_N_POS))
    hits = (
        top.join(labelled_truth, on=[Columns.user, Columns.item], how="inner")
        .group_by(keys)
        .agg(
            pl.len().cast(pl.Int64).alias(_HITS),
            (1.0 / (pl.col(Columns.rank) + 1).log(2)).sum().alias(_DCG),
        )
    )
    return (
        # Left join from positives: users without positives drop out, users without hits keep 0.
        n_pos.join(hits, on=keys, how="left")
        .with_columns(
            pl.col(_HITS).fill_null(0),
            pl.col(_DCG).fill_null(0.0),
            pl.min_horizontal(pl.col(_N_POS), pl.lit(k, dtype=pl.Int64)).alias("_n_ideal"),
        )
        .join(_ideal_dcg(k), on="_n_ideal", how="left")
        .select(
            *keys,
            _N_POS,
            _HITS,
            (pl.col(_HITS) / pl.col(_N_POS)).alias("recall"),
            (pl.col(_DCG) / pl.col(_IDCG)).alias("ndcg"),
            (pl.col(_HITS) / k).alias("precision"),
            (pl.col(_HITS) > 0).cast(pl.Float64).alias("hit_rate"),
        )
    )


def per_user_accuracy(recs: pl.DataFrame, truth: pl.DataFrame, k: int) -> pl.DataFrame:
    """Per-user Recall, NDCG, Precision and HitRate at k, for every user with a test positive.

    Returns (user_id, n_pos, hits, recall, ndcg, precision, hit_rate), sorted by user_id. A user with
    positives but no recommendations has hits 0 and every metric 0; users without positives are absent.
    """
    top = _top(recs, k)
    labelled = _truth(truth).with_columns(pl.lit(Segments.overall).alias(Columns.segment))
    return _per_group_accuracy(top, labelled, k).drop(Columns.segment).sort(Columns.user)


def accuracy_metrics(
    recs: pl.DataFrame,
    truth: pl.DataFrame,
    k: int,
    item_segments: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Recall, NDCG, Precision and HitRate at k averaged over users, overall and per item segment.

    Returns long rows (segment, metric, k, value). Segment "overall" always; head/tail/cold too when
    `item_segments` is given, each only if some user has a test positive in it.
    """
    top = _top(recs, k)
    positives = _truth(truth)
    if positives.height == 0:
        raise MetricInputError("truth has no rows: no user has a test positive, so there is nothing to evaluate")
    labelled = [positives.with_columns(pl.lit(Segments.overall).alias(Columns.segment))]
    segments: tuple[str, ...] = (Segments.overall,)
    if item_segments is not None:
        seg = _item_segments(item_segments)
        unlabelled = positives.join(seg, on=Columns.item, how="anti")[Columns.item]
        if unlabelled.len():
            raise MetricInputError(
                f"item_segments has no segment for {unlabelled.n_unique()} test item(s), e.g. {_examples(unlabelled)}"
            )
        labelled.append(positives.join(seg, on=Columns.item, how="inner"))
        segments += _ITEM_SEGMENTS
    per_user = _per_group_accuracy(top, pl.concat(labelled, how="vertical"), k)
    # Explicit sort keys: group_by and unpivot do not promise an order, and readers expect a stable one.
    segment_order = pl.DataFrame({Columns.segment: list(segments), "_s": range(len(segments))})
    metric_order = pl.DataFrame({Columns.metric: list(ACCURACY_METRICS), "_m": range(len(ACCURACY_METRICS))})
    return (
        per_user.group_by(Columns.segment)
        .agg([pl.col(m).mean() for m in ACCURACY_METRICS])
        .unpivot(on=list(ACCURACY_METRICS), index=Columns.segment, variable_name=Columns.metric)
        .join(segment_order, on=Columns.segment, how="inner")
        .join(metric_order, on=Columns.metric, how="inner")
        .sort("_s", "_m")
        .select(
            Columns.segment,
            Columns.metric,
            pl.lit(k, dtype=pl.Int64).alias(Columns.k),
            pl.col("value").cast(pl.Float64),
        )
    )


# -------------------------------------------------------------------------------------- beyond accuracy
# Each public metric validates its inputs, then calls a private twin on the validated top-k rows, so that
# beyond_accuracy_metrics validates recs once rather than five times.


def _coverage(top: pl.DataFrame, k: int, catalog_size: int) -> float:
    _check_positive(catalog_size, "catalog_size")
    distinct = top[Columns.item].n_unique()
    if distinct > catalog_size:
        raise MetricInputError(
            f"recs has {distinct} distinct items in its top {k}, more than catalog_size={catalog_size}"
        )
    return distinct / catalog_size


def coverage(recs: pl.DataFrame, k: int, catalog_size: int) -> float:
    """Catalog coverage at k: distinct items in any top-k list / catalog_size (0.0 if nothing is listed)."""
    return _coverage(_top(recs, k), k, catalog_size)


def _gini(top: pl.DataFrame, catalog: pl.DataFrame) -> float:
    _require_rows(top, "gini")
    stray = top.join(catalog, on=Columns.item, how="anti")[Columns.item]
    if stray.len():
        raise MetricInputError(
            f"recs recommends {stray.n_unique()} item(s) not in catalog_items, e.g. {_examples(stray)}"
        )
    exposure = top.group_by(Columns.item).agg(pl.len().cast(pl.Float64).alias("_x"))
    counts = catalog.join(exposure, on=Columns.item, how="left").select(pl.col("_x").fill_null(0.0).sort())
    n = counts.height
    i = pl.int_range(1, pl.len() + 1, dtype=pl.Int64)
    weighted = counts.select(((2 * i - n - 1) * pl.col("_x")).sum()).item()
    return float(weighted / (n * counts["_x"].sum()))


def gini(recs: pl.DataFrame, k: int, catalog_items: Sequence[str] | pl.Series) -> float:
    """Gini index of top-k exposure over all catalog items, never-recommended ones counting 0.

    G = sum_i (2i - n - 1) x_i / (n * sum x) with counts sorted ascending (RecBole's GiniIndex):
    0 = every item equally exposed, (n-1)/n = one item takes all exposure.
    """
    top = _top(recs, k)
    return _gini(top, _item_frame(catalog_items, "catalog_items", top.schema[Columns.item]))


def _aplt(top: pl.DataFrame, tail: pl.DataFrame) -> float:
    _require_rows(top, "aplt")
    per_user = (
        top.join(tail.with_columns(pl.lit(True).alias(_IS_TAIL)), on=Columns.item, how="left")
        .group_by(Columns.user)
        # Mean of the flag = tail count / the user's list length min(k, candidates), not / k.
        .agg(pl.col(_IS_TAIL).fill_null(False).cast(pl.Float64).mean().alias("_share"))
    )
    return float(per_user["_share"].mean())


def aplt(recs: pl.DataFrame, k: int, tail_items: Sequence[str] | pl.Series) -> float:
    """Average Percentage of Long Tail items: mean over users of tail items in top k / len(top k)."""
    top = _top(recs, k)
    return _aplt(top, _item_frame(tail_items, "tail_items", top.schema[Columns.item]))


def _with_popularity(top: pl.DataFrame, popularity: pl.DataFrame) -> pl.DataFrame:
    """Top-k rows with their item's training interaction count, 0 for items absent from popularity."""
    return top.join(popularity, on=Columns.item, how="left").with_columns(pl.col(Columns.n_interactions).fill_null(0.0))


def _arp(top: pl.DataFrame, popularity: pl.DataFrame) -> float:
    _require_rows(top, "arp")
    per_user = (
        _with_popularity(top, popularity)
        .group_by(Columns.user)
        .agg(pl.col(Columns.n_interactions).mean().alias("_pop"))
    )
    return float(per_user["_pop"].mean())


def arp(recs: pl.DataFrame, k: int, item_popularity: pl.DataFrame) -> float:
    """Average Recommendation Popularity: mean over users of the mean training count of their top k."""
    return _arp(_top(recs, k), _popularity(item_popularity))


def _novelty(top: pl.DataFrame, popularity: pl.DataFrame, n_users: int) -> float:
    _require_rows(top, "novelty")
    _check_positive(n_users, "n_users")
    count = pl.col(Columns.n_interactions)
    p = pl.when(count > 0).then(pl.min_horizontal(count / n_users, pl.lit(1.0))).otherwise(1.0 / n_users)
    per_user = (
        _with_popularity(top, popularity)
        .group_by(Columns.user)
        # `0.0 - log2` rather than `-log2`: p == 1 must give 0.0, never -0.0.
        .agg((0.0 - p.log(2)).mean().alias("_nov"))
    )
    return float(per_user["_nov"].mean())


def novelty(recs: pl.DataFrame, k: int, item_popularity: pl.DataFrame, n_users: int) -> float:
    """Mean over users of the mean self-information -log2(p_i) of their top k, p_i = n_interactions / n_users.

    An item without training interactions gets p_i = 1/n_users (maximally novel yet finite); p_i is capped
    at 1 so that an item with more interactions than there are users scores 0, not a negative novelty.
    """
    return _novelty(_top(recs, k), _popularity(item_popularity), n_users)


def _long(values: dict[str, float], k: int) -> pl.DataFrame:
    """One (segment="overall", metric, k, value) row per entry of `values`, in insertion order."""
    return pl.DataFrame(
        {
            Columns.segment: [Segments.overall] * len(values),
            Columns.metric: list(values),
            Columns.k: [k] * len(values),
            "value": list(values.values()),
        },
        schema={Columns.segment: pl.String, Columns.metric: pl.String, Columns.k: pl.Int64, "value": pl.Float64},
    )


def beyond_accuracy_metrics(
    recs: pl.DataFrame,
    k: int,
    *,
    catalog_items: Sequence[str] | pl.Series,
    item_popularity: pl.DataFrame,
    tail_items: Sequence[str] | pl.Series,
    n_users: int,
) -> pl.DataFrame:
    """Coverage, Gini, APLT, ARP and novelty at k as (segment="overall", metric, k, value) rows.

    Coverage divides by the number of distinct `catalog_items`.
    """
    top = _top(recs, k)
    item_dtype = top.schema[Columns.item]
    catalog = _item_frame(catalog_items, "catalog_items", item_dtype)
    popularity = _popularity(item_popularity)
    values = {
        "coverage": _coverage(top, k, catalog.height),
        "gini": _gini(top, catalog),
        "aplt": _aplt(top, _item_frame(tail_items, "tail_items", item_dtype)),
        "arp": _arp(top, popularity),
        "novelty": _novelty(top, popularity, n_users),
    }
    return _long(values, k)


def evaluate_ranking(
    recs: pl.DataFrame,
    truth: pl.DataFrame,
    k: int,
    *,
    item_segments: pl.DataFrame,
    catalog_items: Sequence[str] | pl.Series,
    item_popularity: pl.DataFrame,
    n_users: int,
) -> pl.DataFrame:
    """All metrics at k: accuracy_metrics (overall + segments) then beyond_accuracy_metrics.

    The tail items for APLT are the items that `item_segments` labels "tail".
    """
    accuracy = accuracy_metrics(recs, truth, k, item_segments)
    tail_items = _item_segments(item_segments).filter(pl.col(Columns.segment) == Segments.tail)[Columns.item]
    beyond = beyond_accuracy_metrics(
        recs,
        k,
        catalog_items=catalog_items,
        item_popularity=item_popularity,
        tail_items=tail_items,
        n_users=n_users,
    )
    return pl.concat([accuracy, beyond], how="vertical")


def bootstrap_difference(
    first: np.ndarray, second: np.ndarray, *, samples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean difference, lower, upper): a paired percentile bootstrap over users of mean(first - second).

    `first[u]` and `second[u]` are two models' values of one metric for the same user u (e.g. per_user_accuracy's
    ndcg column, users aligned); users are resampled with replacement `samples` times.
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1 or first.size == 0:
        raise MetricInputError(f"bootstrap_difference needs two equal 1-d arrays, got {first.shape} and {second.shape}")
    if not 0 < level < 1:
        raise MetricInputError(f"level must be in (0, 1), got {level}")
    difference = first - second
    draws = np.random.default_rng(seed).integers(difference.size, size=(samples, difference.size))
    means = difference[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(difference.mean()), float(low), float(high)
