"""`warmstart evaluate` on a user's own sparse split given as files, built from real MovieLens-100K ratings:
users with 2-6 training interactions and no times, cold movies, no validation file; and the same split with
a validation file of cold-movie pairs, as ALDI-style splits ship them. Both run to their metrics."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, Dataset, conform_interactions, conform_items
from flows.cli import app
from ranker.evaluate import frames_split
from training import EvaluationPlan, holdout_plan

runner = CliRunner()


@pytest.fixture(scope="module")
def sparse_files(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """150 users, each with their first 2-6 ratings (by time) as training pairs written without times, their
    next 3 as test pairs; 30 movies never in training: half of them validate (valid_cold), half are tested."""
    folder = tmp_path_factory.mktemp("sparse")
    users = ml100k.interactions.select(Columns.user).unique().sort(Columns.user).head(150)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi").sort(Columns.user, Columns.ts, Columns.item)
    cold = log.group_by(Columns.item).len().filter(pl.col("len") >= 5).sort(Columns.item).head(30)[Columns.item]
    valid_cold, test_cold = cold.head(15), cold.tail(15)
    warm = log.filter(~pl.col(Columns.item).is_in(cold.implode())).with_columns(
        _pos=pl.int_range(pl.len()).over(Columns.user), _k=2 + pl.col(Columns.user).cast(pl.Int64) % 5
    )
    train = warm.filter(pl.col("_pos") < pl.col("_k")).select(Columns.user, Columns.item)
    test_warm = warm.filter((pl.col("_pos") >= pl.col("_k")) & (pl.col("_pos") < pl.col("_k") + 3))
    test = pl.concat(
        [
            test_warm.select(Columns.user, Columns.item),
            log.filter(pl.col(Columns.item).is_in(test_cold.implode())).select(Columns.user, Columns.item),
        ]
    )
    valid = log.filter(pl.col(Columns.item).is_in(valid_cold.implode())).select(Columns.user, Columns.item)
    used = pl.concat([train, test, valid]).select(Columns.item).unique()
    items = ml100k.items.join(used, on=Columns.item, how="semi").select(Columns.item, Columns.title, Columns.categories)
    paths = {name: folder / f"{name}.parquet" for name in ("train", "test", "valid_cold", "items")}
    for name, frame in (("train", train), ("test", test), ("valid_cold", valid), ("items", items)):
        frame.write_parquet(paths[name])
    return paths


def _plan(files: dict[str, Path], valid: bool) -> EvaluationPlan:
    read = {name: pl.read_parquet(path) for name, path in files.items()}
    train, test = (conform_interactions(read[n], n)[0] for n in ("train", "test"))
    valid_frame = conform_interactions(read["valid_cold"], "valid")[0] if valid else None
    items = conform_items(read["items"], "items")[0]
    return holdout_plan(frames_split(train, test, items, valid=valid_frame), valid_frame)


def test_the_split_is_as_sparse_as_the_case_it_stands_for(sparse_files: dict[str, Path]) -> None:
    train = pl.read_parquet(sparse_files["train"])
    per_user = train.group_by(Columns.user).len()["len"]
    assert (per_user.min(), per_user.max()) == (2, 6) and Columns.ts not in train.columns


def test_without_validation_every_model_gets_warm_pairs_to_learn_and_stop_on(sparse_files: dict[str, Path]) -> None:
    plan = _plan(sparse_files, valid=False)
    history, labels = plan.fit_history, plan.cf_validation
    # one pair of nearly every user (all have two or more; a user of only movies nobody else has keeps them)
    assert labels[Columns.user].n_unique() >= 0.9 * 150
    # every label's user and item keep training pairs, so BPR-MF can validate on them and the ranker learn
    assert labels.join(history, on=Columns.user, how="anti").is_empty()
    assert labels.join(history, on=Columns.item, how="anti").is_empty()
    assert history.group_by(Columns.user).len()["len"].min() >= 1
    assert plan.valid_labels.height > 0 and plan.fit_labels.height > 0 and plan.refit_for_serving


def test_cold_validation_pairs_stop_the_ranker_and_warm_holdouts_validate_bprmf(sparse_files: dict[str, Path]) -> None:
    plan = _plan(sparse_files, valid=True)
    valid = pl.read_parquet(sparse_files["valid_cold"]).with_columns(pl.col(Columns.user).cast(pl.String))
    assert plan.valid_labels.sort(Columns.user, Columns.item).equals(valid.unique().sort(Columns.user, Columns.item))
    cold_pool = set(plan.split.index.item_ids.gather(plan.valid_pool).to_list())
    assert set(valid[Columns.item]) <= cold_pool
    assert cold_pool.isdisjoint(set(plan.fit_history[Columns.item]))
    assert plan.cf_validation.join(plan.fit_history, on=Columns.item, how="anti").is_empty()


@pytest.mark.parametrize("with_valid", [False, True], ids=["no-valid", "cold-valid"])
def test_evaluate_runs_to_its_metrics(
    with_valid: bool, sparse_files: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    out = tmp_path / "report.json"
    files = [f"--{name}={sparse_files[name]}" for name in ("train", "test", "items")]
    files += [f"--valid={sparse_files['valid_cold']}"] if with_valid else []
    args = ["evaluate", "--protocol", "hybrid", "--json", str(out), "-w", str(tmp_path / "ws"), *files]
    result = runner.invoke(app, args, env={"WARMSTART_CACHE_DIR": str(cache_dir), "WARMSTART_RANKER": "lightgbm"})
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = {(m["segment"], m["metric"]): m["value"] for m in report["metrics"]}
    assert report["n_users"] == 150
    for segment in ("overall", "cold"):
        assert 0 <= rows[(segment, "recall")] <= 1
    assert rows[("overall", "recall")] > 0
    bprmf = report["models"]["encoders"]["fit"]["bprmf"]
    assert bprmf["best_val_recall@20"] is not None  # BPR-MF had warm pairs to validate on
    assert report["models"]["lightgbm"]["valid_groups"] > 0  # and the ranker had pairs to stop on
