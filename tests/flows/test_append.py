"""`warmstart ingest --append` on MovieLens-100K: a month appended to the months before it is detected exactly,
a repeated append adds nothing, a refused one changes nothing, and rollback undoes it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, Dataset, Tables, Workspace
from flows.cli import app
from serving import Recommender

runner = CliRunner()
CUT, END = datetime(1998, 3, 1, tzinfo=UTC), datetime(1998, 4, 1, tzinfo=UTC)


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def files(ml100k: Dataset, tmp_path: Path) -> dict[str, Path]:
    """The log before March 1998, March's events, and every item and user (without first_seen)."""
    log = ml100k.interactions
    paths = {name: tmp_path / f"{name}.parquet" for name in ("before", "march", "items", "users")}
    log.filter(pl.col(Columns.ts) < CUT).write_parquet(paths["before"])
    log.filter(pl.col(Columns.ts).is_between(CUT, END, closed="left")).write_parquet(paths["march"])
    ml100k.items.drop(Columns.first_seen).write_parquet(paths["items"])
    ml100k.users.drop(Columns.first_seen).write_parquet(paths["users"])
    return paths | {"ws": tmp_path / "ws"}


def _first_seen_in_march(log: pl.DataFrame, key: str) -> list[str]:
    first = log.group_by(key).agg(pl.col(Columns.ts).min())
    return sorted(first.filter(pl.col(Columns.ts).is_between(CUT, END, closed="left"))[key].to_list())


def test_an_appended_month_is_detected_exactly(ml100k: Dataset, files: dict[str, Path], tmp_path: Path) -> None:
    ws = ["--workspace", str(files["ws"])]
    _invoke("ingest", "--interactions", str(files["before"]), "--items", str(files["items"]), "--users",
            str(files["users"]), *ws)  # fmt: skip
    _invoke("detect", *ws)
    space = Workspace(files["ws"])
    space.write(Tables.item_descriptions, pl.DataFrame({Columns.item: ["1"]}), run_id="r", source="test")
    appended = _invoke("ingest", "--append", "--interactions", str(files["march"]), *ws)
    march = pl.read_parquet(files["march"]).height
    assert f"│ interactions │ {march:>10,} │" in appended
    out = tmp_path / "detect.json"
    _invoke("detect", "--json", str(out), *ws)
    detected = json.loads(out.read_text())
    assert detected["new_items"] == _first_seen_in_march(ml100k.interactions, Columns.item)
    assert detected["new_users"] == _first_seen_in_march(ml100k.interactions, Columns.user)
    assert detected["counts"]["new"] == {"items": len(detected["new_items"]), "users": len(detected["new_users"])}
    assert len(detected["new_items"]) > 0 and len(detected["new_users"]) > 0
    space = Workspace(files["ws"])
    assert space.read(Tables.interactions).height == ml100k.interactions.filter(pl.col(Columns.ts) < END).height
    assert space.exists(Tables.item_descriptions)  # derived from ids the append left alone: carried

    # The same month again: every event is a duplicate of one held; nothing is new to the next detection.
    again = _invoke("ingest", "--append", "--interactions", str(files["march"]), *ws)
    assert f"│ interactions │          0 │ {march:>23,} │" in again
    _invoke("detect", "--json", str(out), *ws)
    assert json.loads(out.read_text())["new_items"] == []


def test_a_refused_append_changes_nothing_and_rollback_undoes_one(files: dict[str, Path], tmp_path: Path) -> None:
    ws = ["--workspace", str(files["ws"])]
    _invoke("ingest", "--interactions", str(files["before"]), "--items", str(files["items"]), *ws)
    generation = Workspace(files["ws"]).generation
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("user_id,item_id\n1,no-such-item\n", encoding="utf-8")
    refused = runner.invoke(app, ["ingest", "--append", "--interactions", str(unknown), *ws])
    assert refused.exit_code == 1 and "unknown item_id" in refused.output
    assert Workspace(files["ws"]).generation == generation
    _invoke("ingest", "--append", "--interactions", str(files["march"]), *ws)
    assert Workspace(files["ws"]).generation != generation
    _invoke("rollback", *ws)
    assert Workspace(files["ws"]).read(Tables.interactions).height == pl.read_parquet(files["before"]).height
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,item_id\n", encoding="utf-8")
    nothing = runner.invoke(app, ["ingest", "--append", "--interactions", str(empty), *ws])
    assert nothing.exit_code == 1 and "nothing to append" in nothing.output and "--allow-empty" not in nothing.output
    with_dataset = runner.invoke(app, ["ingest", "--append", "--dataset", "ml-100k", *ws])
    assert with_dataset.exit_code == 1 and "--append takes --interactions" in with_dataset.output


def test_a_full_re_ingest_keeps_the_last_detections_watermark(files: dict[str, Path]) -> None:
    ws = ["--workspace", str(files["ws"])]
    _invoke("ingest", "--interactions", str(files["before"]), "--items", str(files["items"]), *ws)
    _invoke("detect", *ws)
    watermark = Workspace(files["ws"]).state()["watermark"]
    _invoke("ingest", "--interactions", str(files["before"]), "--items", str(files["items"]), *ws)
    assert Workspace(files["ws"]).state()["watermark"] == watermark
    assert f"first seen after {datetime.fromisoformat(watermark).isoformat()}" in _invoke("detect", *ws)


def test_after_an_appended_month_the_served_version_has_seen_it(
    ml100k: Dataset, warmstart: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """A refresh after `ingest --append` serves a version refit on every event: its data ends at the appended
    month's last event, March's first-seen items are served from their own interactions, and no user active in
    March is shown an item they took in it (100 users of MovieLens-100K: the smallest slice with March events)."""
    users = ml100k.interactions.select(Columns.user).unique().sort(Columns.user).head(100)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi").filter(pl.col(Columns.ts) < END)
    items = ml100k.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi").drop(Columns.first_seen)
    before, march = log.filter(pl.col(Columns.ts) < CUT), log.filter(pl.col(Columns.ts) >= CUT)
    for name, frame in (("before", before), ("march", march), ("items", items)):
        frame.write_parquet(tmp_path / f"{name}.parquet")
    ws = ["--workspace", str(tmp_path / "ws")]
    _invoke("ingest", "--interactions", str(tmp_path / "before.parquet"), "--items", str(tmp_path / "items.parquet"),
            *ws)  # fmt: skip
    _invoke("ingest", "--append", "--interactions", str(tmp_path / "march.parquet"), *ws)
    warmstart("refresh", "--augment-limit", "0", "--max-epochs", "3", "--k", "20", "--no-reference-gate", *ws)

    space = Workspace(tmp_path / "ws")
    version = space.models.current("lightgbm")
    assert version is not None
    models = tmp_path / "models.json"
    _invoke("models", "--json", str(models), *ws)
    listed = {entry["version"]: entry for entry in json.loads(models.read_text())}
    assert listed[version]["data_end"] == str(march[Columns.ts].max())

    served = Recommender.load(space, version, ranker="lightgbm")
    first_seen_in_march = _first_seen_in_march(log, Columns.item)
    assert first_seen_in_march, "the slice has items first seen in March"
    position = {item: i for i, item in enumerate(served.item_ids.to_list())}
    popularity = served.inputs.popularity[[position[item] for item in first_seen_in_march]]
    assert (popularity > 0).all(), "March's new items are served from their own interactions"

    shown = space.read(Tables.recommendations).join(march.select(Columns.user).unique(), on=Columns.user, how="semi")
    assert shown.height > 0 and shown["model_version"].unique().to_list() == [version]
    taken = shown.join(march, on=[Columns.user, Columns.item], how="semi")
    assert taken.is_empty(), f"users were shown items they took in March: {taken.head(5)}"
