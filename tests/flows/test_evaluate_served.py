"""`warmstart evaluate --keep-version`: the version it keeps serves the held-out users of the protocols over users
the very lists its report scored (`warmstart recommend --users`, `serving.Recommender`), on a small real MovieLens
slice: real encoders, real LightGBM, the real workspace and registry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import training
from catalog import SPARSE_MAX, Columns, Dataset, Tables, Workspace, new_run_id
from flows import stages
from flows.cli import app
from ranker.evaluate import COLD_USERS, SPARSE_USERS
from ranker.metrics import accuracy_metrics
from serving import Recommender

runner = CliRunner()
K = 10


def _value(metrics: pl.DataFrame, metric: str) -> float:
    return metrics.filter(pl.col(Columns.segment) == "overall", pl.col(Columns.metric) == metric)["value"].item()


def test_the_kept_version_serves_what_evaluate_scored(
    user_files: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    """The cold-user protocol as the product runs it (the newcomer model serves users without events): the lists
    `recommend --users` serves from the kept version score what the report says."""
    space, out = tmp_path / "ws", tmp_path / "report.json"
    files = [f"--{name}={path}" for name, path in user_files.items()]
    env = {"WARMSTART_CACHE_DIR": str(cache_dir), "WARMSTART_RANKER": "lightgbm"}
    args = ["evaluate", "--protocol", "cold-user", "--k", str(K), "--max-epochs", "2", "--json", str(out)]
    result = runner.invoke(app, [*args, "--keep-version", "-w", str(space), *files], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    kept = report["kept_version"]
    assert f"kept as lightgbm version {kept['version']} (not promoted)" in result.output
    held_out = Path(kept["path"]) / stages.HELD_OUT

    served_out = tmp_path / "served.parquet"
    serve = ["recommend", "--users", str(held_out), "--version", kept["version"], "--ranker", "lightgbm"]
    result = runner.invoke(app, [*serve, "--k", str(K), "--out", str(served_out), "-w", str(space)], env=env)
    assert result.exit_code == 0, result.output
    served, truth = pl.read_parquet(served_out), pl.read_parquet(held_out)
    assert served[Columns.user].n_unique() == truth[Columns.user].n_unique() == report["n_users"] == 12
    measured = accuracy_metrics(served, truth, K)
    reported = {m["metric"]: m["value"] for m in report["metrics"] if m["segment"] == "overall"}
    for metric in ("ndcg", "recall"):
        assert _value(measured, metric) == pytest.approx(reported[metric], abs=1e-12), metric

    workspace = Workspace(space)
    assert workspace.models.current("lightgbm") is None  # kept, not promoted
    assert [v.version for v in workspace.models.versions("lightgbm")] == [kept["version"]]
    log = workspace.read(Tables.interactions)
    assert log.join(truth, on=[Columns.user, Columns.item], how="semi").is_empty()  # no held-out event is logged
    assert log.join(truth, on=Columns.user, how="semi").is_empty()  # nor any event of theirs
    assert workspace.read(Tables.users).height == 60  # their attributes are


def test_keep_version_refuses_a_workspace_holding_other_data(
    user_files: dict[str, Path], ml100k_dir: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """Its held-out users' events would be served as logged (seen, never recommended): refused before training; so
    is a protocol whose split is not drawn from one log."""
    space = tmp_path / "ws"
    env = {"WARMSTART_CACHE_DIR": str(cache_dir)}
    ingest = ["ingest", f"--interactions={user_files['train']}", f"--items={user_files['items']}"]
    result = runner.invoke(app, [*ingest, f"--users={user_files['users']}", "-w", str(space)], env=env)
    assert result.exit_code == 0, result.output
    files = [f"--{name}={path}" for name, path in user_files.items()]
    temporal = ["--dataset", "ml-100k", "--data", str(ml100k_dir)]
    for data, message in (
        (["--protocol", "cold-user", *files], "Give it a workspace of its own"),
        (["--protocol", "temporal", *temporal], "only the protocols over users (cold-user, sparse-user)"),
    ):
        evaluate = ["evaluate", *data, "--keep-version", "-w", str(space)]
        result = runner.invoke(app, evaluate, env=env, terminal_width=240)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not list((space / "models").glob("*/*"))  # nothing trained, nothing saved


@pytest.mark.parametrize(
    ("protocol", "history_n", "newcomers"),
    [
        # The ranker's own path for users without history (stand-ins from attributes, candidates without history,
        # cold places), which the newcomer model takes over on such small slices.
        (COLD_USERS, None, None),
        # Sparse users: their first three events are in the workspace's log, served as their history.
        (SPARSE_USERS, 3, None),  # by the ranker
        (SPARSE_USERS, 3, SPARSE_MAX),  # by the newcomer model, as the product routes them
    ],
)
def test_a_kept_version_serves_the_lists_evaluated(
    protocol: str, history_n: int | None, newcomers: int | None, ml100k: Dataset, tmp_path: Path, cache_dir: Path
) -> None:
    """Serving a kept version gives each held-out user the very top-k list evaluation ranked (users, items, ranks)."""
    users = ml100k.users.sort(Columns.user).head(60)
    log = ml100k.interactions.join(users, on=Columns.user, how="semi")
    items = ml100k.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi")
    dataset = Dataset(name="slice", interactions=log, items=items, users=users)
    plan = training.user_plan(dataset, protocol, history_n=history_n)
    settings = replace(training.ModelSettings.capped(0, 2), newcomers=newcomers)
    space, run_id = Workspace(tmp_path / "ws"), new_run_id()
    with space.models.saving("lightgbm", run_id) as directory:
        evaluation = training.evaluate_users(
            plan, k=K, cache_dir=cache_dir, settings=settings, model_dir=directory, cold_user_share=0.5
        )
        metrics, part = evaluation.report.metrics, training.training_part(plan)
        stages.keep_evaluated_version(space, plan, part, evaluation.fitted, metrics, directory, run_id)
    truth = plan.split.truth
    held = truth[Columns.user].unique().sort()
    logged = space.read(Tables.interactions).join(held.to_frame(), on=Columns.user, how="semi")
    counts = logged.group_by(Columns.user).len()["len"].to_list()
    assert counts == ([history_n] * held.len() if history_n else [])  # cold: none; sparse: their first n

    # Each held-out user asks when their first held-out event happened (held_out.parquet says when), as evaluation
    # scored them: the newcomer model's recent shares are those of the days before.
    requested = pl.read_parquet(directory / stages.HELD_OUT).select(Columns.user, Columns.requested_at).unique()
    assert requested.height == held.len() and requested[Columns.requested_at].null_count() == 0
    recommender = Recommender.load(space, run_id, ranker="lightgbm", cache_dir=cache_dir)
    served = recommender.as_of(requested, space.read(Tables.interactions)).recommend(held, K)
    assert set(served["user_segment"]) == {"cold" if history_n is None else "sparse"}
    columns = [Columns.user, Columns.item, Columns.rank]
    lists = served.select(Columns.user, Columns.item, pl.col(Columns.rank).cast(pl.Int64)).sort(columns)
    evaluated = evaluation.results["product"]
    assert lists.equals(evaluated.recs.select(columns).sort(columns))
    for metric in ("ndcg", "recall"):
        assert _value(accuracy_metrics(served, truth, K), metric) == pytest.approx(evaluated.value(metric), abs=1e-12)
