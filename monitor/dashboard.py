"""The warmstart dashboard: long-tail health over time, read-only from the metrics store.

Started by `warmstart dashboard` (`streamlit run monitor/dashboard.py`); the store URL comes from the environment
(WARMSTART_DASHBOARD_STORE), never the command line, where `ps` would show its password to every user.
"""

from __future__ import annotations

import os
from datetime import datetime, time

import altair as alt
import polars as pl
import streamlit as st

from catalog import WarmstartError, redact
from monitor.store import DASHBOARD_STORE_ENV, MetricsStore
from monitor.views import (
    Filters,
    StoreFrames,
    accuracy_over_time,
    augmentation_effect_over_time,
    augmentation_over_time,
    beyond_accuracy_over_time,
    cold_to_warm,
    current_segments,
    filter_choices,
    language_model_bought,
    lines_over_time,
    runs_and_promotions,
    user_accuracy_over_time,
)

DEFAULT_SEGMENTS = ("overall", "head", "tail", "cold")
STORE_ENV = DASHBOARD_STORE_ENV


def store_url() -> str | None:
    return os.environ.get(STORE_ENV)


def line_chart(frame: pl.DataFrame, *, color: str, title: str, y_title: str, legend: bool = True) -> alt.Chart:
    return (
        alt.Chart(frame.to_pandas(), title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("as_of:T", title="as of"),
            y=alt.Y("value:Q", title=y_title),
            color=alt.Color(f"{color}:N", legend=alt.Legend() if legend else None),
            tooltip=["as_of:T", f"{color}:N", alt.Tooltip("value:Q", format=".4f")],
        )
    )


def sidebar_filters(frames: StoreFrames) -> Filters:
    choices = filter_choices(frames.metrics)
    st.sidebar.header("Filters")
    protocol = st.sidebar.selectbox("Protocol", choices["protocol"], index=0) if choices["protocol"] else None
    ks = choices["k"] or [20]
    k = st.sidebar.selectbox("K", ks, index=ks.index(20) if 20 in ks else 0)
    available = choices["segment"]
    defaults = [segment for segment in DEFAULT_SEGMENTS if segment in available]
    segments = st.sidebar.multiselect("Segments", available, default=defaults)
    start = end = None
    times = frames.metrics["as_of"]
    if times.len() and times.min() != times.max():
        first, last = times.min().date(), times.max().date()
        picked = st.sidebar.slider("Time range", min_value=first, max_value=last, value=(first, last))
        tz = times.min().tzinfo
        start = datetime.combine(picked[0], time.min, tzinfo=tz)
        end = datetime.combine(picked[1], time.max, tzinfo=tz)
    return Filters(protocol=protocol, k=int(k), segments=tuple(segments), start=start, end=end)


def accuracy_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("Accuracy per segment")
    rows = accuracy_over_time(frames.metrics, filters)
    if rows.is_empty():
        st.info("No accuracy rows for these filters.")
        return
    _recall_and_ndcg(rows, filters.k, color="segment")


def user_accuracy_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("Accuracy per user segment")
    rows = user_accuracy_over_time(frames.metrics, filters)
    if rows.is_empty():
        st.info("No user-segment rows for these filters.")
        return
    st.caption(
        "Evaluated users by their training interactions: none (cold_user), 1 to sparse_max (sparse_user), more "
        "(warm_user)."
    )
    _recall_and_ndcg(rows, filters.k, color="segment", suffix=", per user segment")


def _recall_and_ndcg(rows: pl.DataFrame, k: int, *, color: str, suffix: str = "") -> None:
    """Recall@K and NDCG@K of `rows` (as_of, COLOR, metric, value) side by side, one line per `color` value."""
    left, right = st.columns(2)
    for column, metric in zip((left, right), ("recall", "ndcg"), strict=True):
        chart = line_chart(
            rows.filter(pl.col("metric") == metric),
            color=color,
            title=f"{metric.upper() if metric == 'ndcg' else 'Recall'}@{k}{suffix}",
            y_title=f"{metric}@{k}",
        )
        column.altair_chart(chart, width="stretch")


def lines_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("The product beside popularity")
    rows = lines_over_time(frames.metrics, filters)
    if rows["line"].n_unique() < 2:
        st.info("No reference line recorded beside the product for these filters.")
        return
    st.caption(
        "Overall, each line measured on the same held-out data as the product; "
        "the gate refuses a model below recent popularity."
    )
    _recall_and_ndcg(rows, filters.k, color="line", suffix=", overall")


def augmentation_effect_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("What augmentation did")
    rows = augmentation_effect_over_time(frames.metrics, filters)
    if rows.is_empty():
        st.info("No run recorded its model both with and without synthetic interactions for these filters.")
        return
    st.caption("Cold and tail Recall@K of the same model, serving cold items warmed by synthetic interactions or not.")
    left, right = st.columns(2)
    for column, segment in zip((left, right), ("cold", "tail"), strict=True):
        chart = line_chart(
            rows.filter(pl.col("segment") == segment),
            color="line",
            title=f"Recall@{filters.k}, {segment} items",
            y_title=f"recall@{filters.k}",
        )
        column.altair_chart(chart, width="stretch")


def beyond_accuracy_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("Beyond accuracy")
    rows = beyond_accuracy_over_time(frames.metrics, filters)
    if rows.is_empty():
        st.info("No beyond-accuracy rows for these filters.")
        return
    columns = st.columns(4)
    for column, metric in zip(columns, ("coverage", "gini", "aplt", "novelty"), strict=True):
        chosen = rows.filter(pl.col("metric") == metric)
        if chosen.is_empty():
            column.caption(f"{metric}: not measured")
            continue
        chart = line_chart(chosen, color="metric", title=f"{metric}@{filters.k}", y_title=metric, legend=False)
        column.altair_chart(chart, width="stretch")


def segments_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("Segments")
    left, right = st.columns(2)
    sizes = current_segments(frames.segment_counts)
    if sizes.is_empty():
        left.info("No segment counts recorded yet.")
    else:
        left.subheader("Current sizes")
        bars = (
            alt.Chart(sizes.to_pandas())
            .mark_bar()
            .encode(x="segment:N", y="count:Q", color="kind:N", xOffset="kind:N", tooltip=["kind", "segment", "count"])
        )
        left.altair_chart(bars, width="stretch")
    moved = cold_to_warm(frames.transitions, filters)
    right.subheader("Cold to warm between runs")
    if moved.is_empty():
        right.info("No cold-to-warm transitions recorded.")
    else:
        chart = line_chart(moved.rename({"count": "value"}), color="kind", title="", y_title="entities")
        right.altair_chart(chart, width="stretch")


def augmentation_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("Language-model augmentation")
    rows = augmentation_over_time(frames.augmentation, frames.runs, filters)
    if rows.is_empty():
        st.info("No augmentation recorded yet.")
        return
    total = rows.select(pl.col("items_augmented", "synthetic_rows", "tokens", "seconds").sum()).row(0)
    precision = rows["synthetic_precision"].drop_nulls()
    cards = st.columns(4)
    cards[0].metric("Items augmented", f"{total[0]:,}")
    cards[1].metric("Synthetic pairs", f"{total[1]:,}")
    cards[2].metric("LLM time", f"{total[3]:,.0f} s", help=f"{total[2]:,} tokens")
    cards[3].metric("Synthetic-pair precision", f"{precision.mean():.3f}" if precision.len() else "n/a")
    long = rows.unpivot(
        index="as_of", on=["items_augmented", "users_augmented", "synthetic_rows", "cache_hit_rate", "seconds"]
    ).rename({"variable": "measure"})
    left, right = st.columns(2)
    volume = long.filter(pl.col("measure").is_in(["items_augmented", "users_augmented", "synthetic_rows"]))
    left.altair_chart(line_chart(volume, color="measure", title="Volume", y_title="rows"), width="stretch")
    rates = long.filter(pl.col("measure").is_in(["cache_hit_rate"])).vstack(
        rows.select("as_of", pl.lit("synthetic_precision").alias("measure"), pl.col("synthetic_precision"))
        .rename({"synthetic_precision": "value"})
        .drop_nulls("value")
        .cast({"value": pl.Float64})
    )
    right.altair_chart(line_chart(rates, color="measure", title="Rates", y_title="share"), width="stretch")


def audit_section(frames: StoreFrames, filters: Filters) -> None:
    st.header("What the language model bought")
    rows = language_model_bought(frames.audit, filters)
    if rows.is_empty():
        st.info("No augmentation audit recorded yet: a refresh records one where the workspace has LLM outputs.")
        return
    st.caption(
        "Each output against its no-LLM control on the run's own held-out data (95% paired bootstrap interval "
        "over users); a refresh uses an output only when the audit before found its interval above zero."
    )
    chart = line_chart(rows.rename({"delta": "value"}), color="output", title="Metric change", y_title="delta")
    st.altair_chart(chart, width="stretch")
    st.table(rows.with_columns(pl.col(pl.Datetime).dt.strftime("%Y-%m-%d %H:%M")).to_pandas())


def runs_section(frames: StoreFrames, shown: int = 50) -> None:
    st.header("Runs and model promotions")
    table = runs_and_promotions(frames.runs, frames.promotions)
    if table.height > shown:
        st.caption(f"the latest {shown} of {table.height:,} runs")
    # A static table: its values are in the page's HTML (readable, searchable, testable in a browser).
    st.table(table.head(shown).with_columns(pl.col(pl.Datetime).dt.strftime("%Y-%m-%d %H:%M")).to_pandas())


def main() -> None:
    st.set_page_config(page_title="warmstart: long-tail health", layout="wide")
    st.title("warmstart: long-tail health")
    url = store_url()
    if not url:
        st.error("No metrics store given: start the page with `warmstart dashboard`.")
        st.stop()
    try:
        store = MetricsStore(url, read_only=True)
        frames = StoreFrames.read(store)
        store.close()
    except WarmstartError as error:
        st.error(redact(str(error)))
        st.stop()
    if frames.empty:
        st.info(
            "The metrics store holds no runs yet. Run `warmstart backfill --dataset ml-100k` (or `make demo`), "
            "or let the `nightly-refresh` deployment run, then reload this page."
        )
        st.stop()
    filters = sidebar_filters(frames)
    st.caption(
        f"{frames.runs.height:,} runs, {frames.metrics.height:,} metric rows; "
        f"protocol {filters.protocol}, K={filters.k}"
    )
    accuracy_section(frames, filters)
    user_accuracy_section(frames, filters)
    lines_section(frames, filters)
    augmentation_effect_section(frames, filters)
    beyond_accuracy_section(frames, filters)
    segments_section(frames, filters)
    augmentation_section(frames, filters)
    audit_section(frames, filters)
    runs_section(frames)


if __name__ == "__main__":  # streamlit runs the page as __main__; importing it draws nothing
    main()
