"""The dashboard: its frames on a fixture store, and the page through streamlit's AppTest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from monitor import MetricsStore, dashboard_script
from monitor.dashboard import STORE_ENV
from monitor.views import (
    Filters,
    StoreFrames,
    accuracy_over_time,
    augmentation_effect_over_time,
    augmentation_over_time,
    cold_to_warm,
    current_segments,
    filter_choices,
    lines_over_time,
    runs_and_promotions,
    user_accuracy_over_time,
)

ALL = Filters(protocol="temporal", k=20, segments=("overall", "cold"))


def _frames(root: Path) -> StoreFrames:
    store = MetricsStore.for_workspace(root, read_only=True)
    try:
        return StoreFrames.read(store)
    finally:
        store.close()


def test_views_filter_by_segment_k_and_time(fixture_store: Path) -> None:
    frames = _frames(fixture_store)
    rows = accuracy_over_time(frames.metrics, ALL)
    assert set(rows["segment"]) == {"overall", "cold"} and set(rows["metric"]) == {"recall", "ndcg"}
    recall = rows.filter((pl.col("segment") == "cold") & (pl.col("metric") == "recall"))["value"].to_list()
    assert recall == [0.041, 0.042, 0.043]
    later = Filters("temporal", 20, ("overall",), start=datetime(1998, 1, 15, tzinfo=UTC))
    assert accuracy_over_time(frames.metrics, later)["as_of"].n_unique() == 2
    assert accuracy_over_time(frames.metrics, Filters("temporal", 10, ("head",)))["value"].to_list()[
        0
    ] == pytest.approx(0.07)


def test_user_segments_are_drawn_whatever_item_segments_are_chosen(fixture_store: Path) -> None:
    rows = user_accuracy_over_time(_frames(fixture_store).metrics, ALL)
    assert set(rows["segment"]) == {"cold_user", "sparse_user", "warm_user"}
    recall = rows.filter((pl.col("segment") == "sparse_user") & (pl.col("metric") == "recall"))["value"].to_list()
    assert recall == [0.071, 0.072, 0.077]
    # The item-segment view keeps to the segments chosen.
    assert not set(accuracy_over_time(_frames(fixture_store).metrics, ALL)["segment"]) & set(rows["segment"])


def test_lines_beside_the_product_and_protocol_choices(fixture_store: Path) -> None:
    frames = _frames(fixture_store)
    # The popularity line is drawn with the product's protocol, not offered as a protocol of its own.
    assert filter_choices(frames.metrics)["protocol"] == ["temporal"]
    lines = lines_over_time(frames.metrics, ALL)
    assert set(lines["line"]) == {"product", "popularity"}
    recall = lines.filter(pl.col("metric") == "recall").pivot(on="line", index="as_of", values="value")
    assert recall["product"].to_list() == [0.11, 0.12, 0.13] and recall["popularity"].to_list() == [0.10] * 3
    # The product's own accuracy rows leave the reference out.
    assert accuracy_over_time(frames.metrics, ALL).filter(pl.col("segment") == "overall").height == 6


def test_augmentation_effect_compares_the_runs_that_recorded_both(fixture_store: Path) -> None:
    frames = _frames(fixture_store)
    effect = augmentation_effect_over_time(frames.metrics, ALL)
    assert effect["as_of"].n_unique() == 2  # the first run recorded no line without augmentation
    cold = effect.filter(pl.col("segment") == "cold").pivot(on="line", index="as_of", values="value")
    assert cold["with augmentation"].to_list() == [0.042, 0.043]
    assert cold["without"].to_list() == pytest.approx([0.021, 0.0215])
    assert set(effect["segment"]) == {"cold", "tail"}
    # Lines without augmentation stay out of the product's own accuracy and out of the protocol choices.
    assert filter_choices(frames.metrics)["protocol"] == ["temporal"]
    own = accuracy_over_time(frames.metrics, ALL).filter((pl.col("segment") == "cold") & (pl.col("metric") == "recall"))
    assert own["value"].to_list() == [0.041, 0.042, 0.043]


def test_views_of_segments_augmentation_and_runs(fixture_store: Path) -> None:
    frames = _frames(fixture_store)
    assert current_segments(frames.segment_counts).filter(pl.col("segment") == "cold")["count"].item() == 98
    assert cold_to_warm(frames.transitions, ALL)["count"].to_list() == [7, 8, 9]  # head -> tail is not counted
    augmentation = augmentation_over_time(frames.augmentation, frames.runs, ALL)
    assert augmentation["cache_hit_rate"].to_list() == pytest.approx([0, 2 / 24, 4 / 24])
    table = runs_and_promotions(frames.runs, frames.promotions)
    assert table["run_id"].to_list() == ["run-3", "run-2", "run-1"]
    assert table["gate"].to_list() == ["refused", "promoted", "promoted"]


def _app(store_root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(STORE_ENV, MetricsStore.for_workspace(store_root, read_only=True).url)
    return AppTest.from_file(str(dashboard_script()), default_timeout=60)


def test_page_shows_every_section_of_the_fixture(fixture_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(fixture_store, monkeypatch).run()
    assert not app.exception, app.exception
    headers = [header.value for header in app.main.header]
    assert headers == [
        "Accuracy per segment",
        "Accuracy per user segment",
        "The product beside popularity",
        "What augmentation did",
        "Beyond accuracy",
        "Segments",
        "Language-model augmentation",
        "What the language model bought",
        "Runs and model promotions",
    ]
    assert app.sidebar.multiselect[0].value == ["overall", "head", "tail", "cold"]
    assert app.sidebar.selectbox[1].value == 20
    cards = {metric.label: metric.value for metric in app.metric}
    assert cards["Items augmented"] == "12" and cards["Synthetic pairs"] == "60"
    assert cards["Synthetic-pair precision"] == "0.100"
    bought, runs = (table.value for table in app.table)
    assert list(bought["output"]) == ["judged_pairs", "descriptions", "judged_pairs"]
    assert bought["delta_per_1k_tokens"].iloc[0] == pytest.approx(0.05)  # +0.02 for 400 tokens
    assert list(runs["run_id"]) == ["run-3", "run-2", "run-1"]
    assert list(runs["gate"]) == ["refused", "promoted", "promoted"]
    assert "regressed: cold" in list(runs["reason"])


def test_filters_change_what_the_page_draws(fixture_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(fixture_store, monkeypatch).run()
    app.sidebar.multiselect[0].set_value([]).run()
    assert not app.exception
    assert any("No accuracy rows" in info.value for info in app.info)
    app.sidebar.selectbox[1].set_value(10).run()
    assert any("No beyond-accuracy rows" in info.value for info in app.info)


def test_empty_store_shows_how_to_fill_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MetricsStore.for_workspace(tmp_path).close()
    app = _app(tmp_path, monkeypatch).run()
    assert not app.exception
    assert "holds no runs yet" in app.info[0].value
    assert not app.main.header


def test_missing_store_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, f"sqlite:///file:{tmp_path / 'absent.sqlite'}?mode=ro&uri=true")
    app = AppTest.from_file(str(dashboard_script()), default_timeout=60).run()
    assert not app.exception
    assert "cannot open the metrics store" in app.error[0].value
