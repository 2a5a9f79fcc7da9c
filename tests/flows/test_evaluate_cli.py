"""`warmstart evaluate` end to end on a small real split given as files: the JSON contract and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, Dataset
from flows.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def split_files(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """120 MovieLens users: each one's ratings before a common cut train, after it test; 20 movies held out
    of training entirely, so they are cold."""
    folder = tmp_path_factory.mktemp("split")
    users = ml100k.interactions.select(Columns.user).unique().sort(Columns.user).head(120)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi")
    cut = log[Columns.ts].quantile(0.8)
    train = log.filter(pl.col(Columns.ts) < cut)
    test = log.filter(pl.col(Columns.ts) >= cut)
    cold = test.select(Columns.item).unique().sort(Columns.item).head(20)
    train = train.join(cold, on=Columns.item, how="anti")
    items = ml100k.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi")
    paths = {"train": folder / "train.csv", "test": folder / "test.parquet", "items": folder / "items.parquet"}
    train.write_csv(paths["train"])
    test.write_parquet(paths["test"])
    items.write_parquet(paths["items"])
    return paths


@pytest.mark.parametrize(
    ("ranker", "option", "model_file"),
    [
        ("lightgbm", [], "model.txt"),
        ("deepfm", ["--ranker", "deepfm"], "model.pt"),
        ("deepfm", [], "model.pt"),  # chosen by WARMSTART_RANKER
    ],
)
def test_evaluate_files_writes_the_report(
    ranker: str, option: list[str], model_file: str, split_files: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    out = tmp_path / "report.json"
    args = ["evaluate", "--protocol", "hybrid", "--k", "10", "--json", str(out), "-w", str(tmp_path / "ws"), *option]
    files = [f"--{name}={path}" for name, path in split_files.items()]
    env = {"WARMSTART_CACHE_DIR": str(cache_dir), "WARMSTART_RANKER": ranker}
    result = runner.invoke(app, [*args, *files], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) >= {"protocol", "k", "metrics", "models", "seconds"}
    assert (report["protocol"], report["k"]) == ("hybrid", 10)
    rows = {(m["segment"], m["metric"]): m["value"] for m in report["metrics"]}
    assert all(m["k"] == 10 for m in report["metrics"])
    for segment in ("overall", "head", "tail", "cold"):
        assert 0 <= rows[(segment, "recall")] <= 1
    assert rows[("overall", "recall")] > 0  # it finds some of the held-out movies
    assert {"coverage", "gini", "aplt", "arp", "novelty"} <= {metric for _, metric in rows}
    assert report["models"]["ranker"] == ranker
    assert report["models"][ranker]["config"]["seed"] == 0
    saved = Path(report["models"]["saved_to"])
    assert saved.parent.name == ranker
    assert (saved / model_file).is_file() and (saved / "metadata.json").is_file()


def test_evaluate_runs_the_chain_with_augmentation_unless_told_not_to(
    split_files: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    # Without times, so that the embedding simulator warms the cold movies (on a log with times only judged pairs
    # do, and this run has none).
    files = []
    for name, path in split_files.items():
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
        timeless = tmp_path / f"{name}.parquet"
        frame.drop(Columns.ts, strict=False).write_parquet(timeless)
        files.append(f"--{name}={timeless}")
    env = {"WARMSTART_CACHE_DIR": str(cache_dir), "WARMSTART_RANKER": "lightgbm"}
    reports = {}
    for option in ("--augment", "--no-augment"):
        out = tmp_path / f"{option}.json"
        args = ["evaluate", "--protocol", "hybrid", "--k", "10", "--json", str(out), "-w", str(tmp_path / "ws"), option]
        result = runner.invoke(app, [*args, *files], env=env)
        assert result.exit_code == 0, result.output
        reports[option] = json.loads(out.read_text())
    warming = reports["--augment"]["models"]["encoders"]["served"]["warming"]
    assert warming["cold_items_warmed"] >= 20  # the 20 movies held out of training (and any first seen in test)
    assert "warming" not in reports["--no-augment"]["models"]["encoders"]["served"]


def test_evaluate_rejects_unknown_items(split_files: dict[str, Path], tmp_path: Path) -> None:
    bad_test = tmp_path / "test.csv"
    bad_test.write_text("user_id,item_id\n1,999999\n", encoding="utf-8")
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--train",
            str(split_files["train"]),
            "--test",
            str(bad_test),
            "--items",
            str(split_files["items"]),
        ],
    )
    assert result.exit_code == 1
    assert "unknown item_id(s), e.g. ['999999']" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "ml-100k", "--protocol", "warm"], "use --protocol temporal"),
        (["--ranker", "deepfm", "--dataset", "ml-100k", "--protocol", "hybrid"], "use --protocol temporal"),
        (["--train", "x.csv"], "--train needs --test FILE and --items FILE"),
        ([], "give either --dataset NAME or --train FILE"),
    ],
)
def test_evaluate_option_errors(arguments: list[str], message: str, ml100k_dir: Path, cache_dir: Path) -> None:
    result = runner.invoke(app, ["evaluate", *arguments], env={"WARMSTART_CACHE_DIR": str(cache_dir)})
    assert result.exit_code == 1, result.output
    assert message in result.output


def test_evaluate_rejects_an_unknown_ranker_setting(cache_dir: Path) -> None:
    env = {"WARMSTART_CACHE_DIR": str(cache_dir), "WARMSTART_RANKER": "xgboost"}
    result = runner.invoke(app, ["evaluate", "--dataset", "ml-100k", "--protocol", "temporal"], env=env)
    assert result.exit_code == 1, result.output
    assert "invalid WARMSTART_* environment setting" in result.output and "deepfm" in result.output
