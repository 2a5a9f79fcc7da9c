"""`warmstart encode` and `warmstart retrain` on a workspace holding a small real MovieLens slice."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, Dataset, Workspace
from flows.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("retrain")
    users = ml100k.interactions.select(Columns.user).unique().sort(Columns.user).head(100)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi")
    items = ml100k.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi")
    log.write_parquet(folder / "interactions.parquet")
    items.drop(Columns.first_seen).write_parquet(folder / "items.parquet")
    result = runner.invoke(
        app,
        [
            "ingest",
            f"--interactions={folder / 'interactions.parquet'}",
            f"--items={folder / 'items.parquet'}",
            f"--workspace={folder / 'ws'}",
        ],
    )
    assert result.exit_code == 0, result.output
    return folder / "ws"


def test_encode_writes_item_embeddings_and_reuses_the_cache(workspace: Path) -> None:
    first = runner.invoke(app, ["encode", "-w", str(workspace)])
    assert first.exit_code == 0, first.output
    space = Workspace(workspace)
    table = space.read("item_embeddings")
    assert table.height == space.read("items").height
    assert table.schema["embedding"] == pl.Array(pl.Float32, 384)
    second = runner.invoke(app, ["encode", "-w", str(workspace)])
    assert second.exit_code == 0
    stats = space.provenance("item_embeddings")["parameters"]
    assert stats["cache_misses"] == 0 and stats["cache_hits"] > 0
    assert "0 encoded" in second.output


def test_retrain_saves_versions_with_parent_and_metrics(workspace: Path, cache_dir: Path) -> None:
    env = {"WARMSTART_CACHE_DIR": str(cache_dir)}
    first = runner.invoke(app, ["retrain", "--k", "10", "-w", str(workspace)], env=env)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["retrain", "--k", "10", "-w", str(workspace)], env=env)
    assert second.exit_code == 0, second.output
    versions = sorted((workspace / "models" / "lightgbm").iterdir())
    assert len(versions) == 2
    older, newer = (json.loads((v / "report.json").read_text()) for v in versions)
    assert older["parent"] is None
    assert newer["parent"] == versions[0].name
    assert newer["protocol"] == "temporal"
    assert newer["data_window"]["start"] < newer["data_window"]["end"]
    recall = {m["segment"]: m["value"] for m in newer["metrics"] if m["metric"] == "recall"}
    assert recall["overall"] > 0
    # Same data, same seed: the second version reproduces the first one's figures (to the last float bits:
    # polars may sum in another order).
    assert [(m["segment"], m["metric"]) for m in newer["metrics"]] == [
        (m["segment"], m["metric"]) for m in older["metrics"]
    ]
    assert [m["value"] for m in newer["metrics"]] == pytest.approx([m["value"] for m in older["metrics"]], rel=1e-12)


def test_retrain_without_data_says_what_to_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["retrain", "-w", str(tmp_path)])
    assert result.exit_code == 1
    assert "warmstart ingest" in result.output


def test_retrain_deepfm_versions_apart_from_lightgbm(workspace: Path, cache_dir: Path) -> None:
    env = {"WARMSTART_CACHE_DIR": str(cache_dir)}
    args = ["retrain", "--k", "10", "-w", str(workspace)]
    runs = [
        runner.invoke(app, [*args, "--ranker", "deepfm"], env=env),
        runner.invoke(app, args, env=env | {"WARMSTART_RANKER": "deepfm"}),
    ]
    for run in runs:
        assert run.exit_code == 0, run.output
    versions = sorted((workspace / "models" / "deepfm").iterdir())
    assert len(versions) == 2
    older, newer = (json.loads((v / "report.json").read_text()) for v in versions)
    assert older["models"]["ranker"] == "deepfm" and (versions[0] / "model.pt").is_file()
    # The parent is the previous DeepFM version, whatever LightGBM versions exist beside it.
    assert newer["parent"] == versions[0].name
    recall = {m["segment"]: m["value"] for m in newer["metrics"] if m["metric"] == "recall"}
    assert recall["overall"] > 0
    # Seeded torch on one machine: the second version reproduces the first one's figures.
    assert [m["value"] for m in newer["metrics"]] == pytest.approx([m["value"] for m in older["metrics"]], rel=1e-9)
