"""`warmstart encode` and `warmstart retrain` (a refresh without augmentation) on a small real MovieLens slice."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Workspace
from encoders import choose_text_backend, text_model_name
from flows.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(ml100k_slice_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("retrain") / "ws"
    shutil.copytree(ml100k_slice_workspace, target)
    return target


def test_encode_writes_item_embeddings_and_reuses_the_cache(workspace: Path, cache_dir: Path) -> None:
    env = {"WARMSTART_CACHE_DIR": str(cache_dir)}
    first = runner.invoke(app, ["encode", "-w", str(workspace)], env=env)
    assert first.exit_code == 0, first.output
    space = Workspace(workspace)
    table = space.read("item_embeddings")
    assert table.height == space.read("items").height
    assert table.schema["embedding"] == pl.Array(pl.Float32, 384)
    second = runner.invoke(app, ["encode", "-w", str(workspace)], env=env)
    assert second.exit_code == 0
    stats = space.provenance("item_embeddings")["parameters"]
    assert stats["cache_misses"] == 0 and stats["cache_hits"] > 0
    assert "0 encoded" in second.output
    # WARMSTART_TEXT_BACKEND unset: the backend this CPU gets, whose embeddings and cache the table names
    assert stats["model"] == text_model_name(choose_text_backend("torch"))  # the default backend


def test_retrain_saves_versions_with_parent_and_metrics(warmstart: Callable[..., object], workspace: Path) -> None:
    for _ in range(2):  # (the defaults: a rolling choice could serve other timed settings the second time)
        warmstart("retrain", "--k", "10", "--no-reference-gate", "--no-choose-timed", "-w", str(workspace))
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


def test_retrain_deepfm_versions_apart_from_lightgbm(warmstart: Callable[..., object], workspace: Path) -> None:
    args = ["retrain", "--k", "10", "--no-reference-gate", "-w", str(workspace)]
    warmstart(*args, "--ranker", "deepfm")
    warmstart(*args, env={"WARMSTART_RANKER": "deepfm"})
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
