"""The metrics history on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from catalog import WorkspaceError
from monitor import COMPLETED, FAILED, RUNNING, MetricsStore, RunRecord, sqlite_url

WHEN = datetime(1998, 3, 1, tzinfo=UTC)
PARAMETERS = {"every": "7d", "k": 20}


def _metrics(value: float = 0.25) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "protocol": ["temporal"] * 3,
            "segment": ["overall", "cold", "overall"],
            "metric": ["recall", "recall", "coverage"],
            "k": [20, 20, 20],
            "value": [value, value / 2, 0.3],
        }
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MetricsStore:
    if request.param == "sqlite":
        return MetricsStore.for_workspace(tmp_path)
    server = request.getfixturevalue("postgres_url")
    database = f"t{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    return MetricsStore(server.rsplit("/", 1)[0] + f"/{database}")


def test_a_finished_run_reads_back_with_its_rows(store: MetricsStore) -> None:
    store.start_run("r1", flow="backfill", dataset="ml-100k", parameters=PARAMETERS, window_end=WHEN)
    assert store.runs()["status"].to_list() == [RUNNING]
    counts = pl.DataFrame({"kind": ["item", "item"], "segment": ["cold", "head"], "count": [12, 300]})
    moves = pl.DataFrame({"kind": ["item"], "from_segment": ["cold"], "to_segment": ["sparse"], "count": [7]})
    store.finish_run(
        "r1",
        RunRecord(
            model_version="r1",
            timings={"retrain": 1.23456},
            metrics=_metrics(),
            as_of=WHEN,
            augmentation={"items_augmented": 4, "tokens": 321, "seconds": 2.5, "cache_hits": 1},
            segment_counts=counts,
            transitions=moves,
            promotion={
                "candidate_version": "r1",
                "incumbent_version": None,
                "promoted": True,
                "reason": "no current model",
                "gate": {"tolerance": 0.005},
                "candidate_metrics": {"overall/ndcg@20": 0.1},
                "incumbent_metrics": None,
            },
        ),
    )
    run = store.runs().row(0, named=True)
    assert (run["status"], run["model_version"], run["window_end"]) == (COMPLETED, "r1", WHEN)
    assert run["timings"] == '{"retrain": 1.235}'
    metrics = store.metrics()
    assert metrics.height == 3
    assert metrics.filter(pl.col("segment") == "cold")["value"].item() == pytest.approx(0.125)
    assert metrics["as_of"].unique().to_list() == [WHEN]
    assert store.augmentation()["tokens"].to_list() == [321]
    assert store.segment_counts()["count"].to_list() == [12, 300]
    assert store.transitions()["count"].to_list() == [7]
    assert store.promoted_version(flow="backfill", dataset="ml-100k") == "r1"
    assert store.completed_run(flow="backfill", dataset="ml-100k", window_end=WHEN, parameters=PARAMETERS) == "r1"
    other = {"every": "30d", "k": 20}
    assert store.completed_run(flow="backfill", dataset="ml-100k", window_end=WHEN, parameters=other) is None


def test_an_unfinished_run_has_no_rows_and_a_rerun_supersedes_it(store: MetricsStore) -> None:
    store.start_run("killed", flow="backfill", dataset="ml-100k", parameters=PARAMETERS, window_end=WHEN)
    assert store.metrics(completed_only=False).is_empty()
    assert store.completed_run(flow="backfill", dataset="ml-100k", window_end=WHEN, parameters=PARAMETERS) is None
    store.start_run("rerun", flow="backfill", dataset="ml-100k", parameters=PARAMETERS, window_end=WHEN)
    statuses = dict(zip(*store.runs().select("run_id", "status").to_dict(as_series=False).values(), strict=True))
    assert statuses == {"killed": FAILED, "rerun": RUNNING}
    store.finish_run("rerun", RunRecord(metrics=_metrics(), as_of=WHEN))
    assert store.metrics()["run_id"].unique().to_list() == ["rerun"]


def test_a_failed_finish_writes_nothing(store: MetricsStore) -> None:
    store.start_run("r1", flow="backfill", dataset="ml-100k", parameters=PARAMETERS, window_end=WHEN)
    duplicated = pl.concat([_metrics(), _metrics()])
    with pytest.raises(IntegrityError):
        store.finish_run("r1", RunRecord(metrics=duplicated, as_of=WHEN, augmentation={"tokens": 5}))
    assert store.runs()["status"].to_list() == [RUNNING]
    assert store.metrics(completed_only=False).is_empty()
    assert store.augmentation().is_empty()


def test_finishing_twice_replaces_rows_instead_of_doubling_them(store: MetricsStore) -> None:
    store.start_run("r1", flow="refresh", dataset="ml-100k", parameters={})
    store.finish_run("r1", RunRecord(metrics=_metrics(0.2), as_of=WHEN))
    store.finish_run("r1", RunRecord(metrics=_metrics(0.4), as_of=WHEN))
    overall = store.metrics().filter((pl.col("segment") == "overall") & (pl.col("metric") == "recall"))
    assert overall["value"].to_list() == [0.4]


def test_the_last_completed_run_is_the_latest_with_those_parameters(store: MetricsStore) -> None:
    for run_id, ranker in (("a", "lightgbm"), ("b", "deepfm"), ("c", "lightgbm")):
        store.start_run(run_id, flow="refresh", dataset="ml-100k", parameters={"ranker": ranker, "k": 20})
        store.finish_run(run_id, RunRecord(metrics=_metrics(), as_of=WHEN))
    store.start_run("d", flow="refresh", dataset="ml-100k", parameters={"ranker": "deepfm", "k": 20})
    store.fail_run("d", ValueError("killed"))

    def last(**parameters: object) -> str | None:
        return store.last_completed_run(flow="refresh", dataset="ml-100k", parameters=parameters)

    assert last() == "c"
    assert last(ranker="deepfm") == "b"  # (the failed "d" is no completed run)
    assert last(ranker="lightgbm", k=20) == "c"
    assert last(ranker="lightgbm", k=10) is None
    assert store.last_completed_run(flow="refresh", dataset="other") is None
    assert store.last_completed_run(flow="backfill", dataset="ml-100k") is None


def test_unknown_runs_and_naive_times_are_refused(store: MetricsStore) -> None:
    with pytest.raises(WorkspaceError, match="never started"):
        store.finish_run("nope", RunRecord())
    with pytest.raises(Exception, match="naive datetime"):
        store.start_run("r2", flow="backfill", dataset="x", parameters={}, window_end=datetime(1998, 1, 1))


def test_the_schema_version_is_checked(tmp_path: Path) -> None:
    MetricsStore.for_workspace(tmp_path).close()
    engine = create_engine(sqlite_url(tmp_path / "metrics.sqlite"))
    with engine.begin() as connection:
        connection.execute(text("UPDATE schema_version SET version = 99"))
    engine.dispose()
    with pytest.raises(WorkspaceError, match="schema version 99"):
        MetricsStore.for_workspace(tmp_path)


def test_a_version_1_store_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    store = MetricsStore.for_workspace(tmp_path)
    store.start_run("r1", flow="refresh", dataset="x", parameters={}, window_end=WHEN)
    store.finish_run("r1", RunRecord(as_of=WHEN, augmentation={"tokens": 7, "seconds": 1.5}))
    store.close()
    engine = create_engine(sqlite_url(tmp_path / "metrics.sqlite"))
    with engine.begin() as connection:  # what version 1 wrote: no backend column (2), no cold_items_warmed (3)
        connection.execute(text("ALTER TABLE augmentation DROP COLUMN backend"))
        connection.execute(text("ALTER TABLE augmentation DROP COLUMN cold_items_warmed"))
        connection.execute(text("ALTER TABLE augmentation DROP COLUMN simulator_precision"))
        connection.execute(text("DROP TABLE augmentation_audit"))  # (4)
        connection.execute(text("UPDATE schema_version SET version = 1"))
    engine.dispose()
    with pytest.raises(WorkspaceError, match=r"schema version 1.*upgraded when opened for writing"):
        MetricsStore.for_workspace(tmp_path, read_only=True)
    store = MetricsStore.for_workspace(tmp_path)
    assert store.augmentation()["tokens"].to_list() == [7]
    store.start_run("r2", flow="refresh", dataset="x", parameters={}, window_end=WHEN)
    augmentation = {"tokens": 9, "backend": "local/bf16/cpu:m", "cold_items_warmed": 4}
    store.finish_run("r2", RunRecord(as_of=WHEN, augmentation=augmentation))
    assert store.augmentation()["backend"].to_list() == [None, "local/bf16/cpu:m"]
    assert store.augmentation()["cold_items_warmed"].to_list() == [None, 4]
    assert store.augmentation_audit().is_empty()  # the table version 4 adds is there
    store.close()


def test_audit_rows_are_written_with_their_run_and_read_back_per_run(tmp_path: Path) -> None:
    store = MetricsStore.for_workspace(tmp_path)
    row = {"output": "judged_pairs", "metric": "cold/recall@20", "delta": 0.02, "low": 0.01, "high": 0.03}
    row |= {"users": 40, "entities": 5, "used": False, "reason": "off: no earlier audit measured it"}
    store.start_run("r1", flow="refresh", dataset="x", parameters={}, window_end=WHEN)
    store.finish_run("r1", RunRecord(as_of=WHEN, audit=[row | {"tokens": 120, "seconds": 3.5}]))
    store.start_run("r2", flow="refresh", dataset="x", parameters={}, window_end=WHEN)
    unmeasured = row | {"output": "descriptions", "delta": None, "low": None, "high": None, "users": 0}
    store.finish_run("r2", RunRecord(as_of=WHEN, audit=[unmeasured]))
    store.start_run("r3", flow="refresh", dataset="x", parameters={}, window_end=WHEN)  # never finished: not shown
    audit = store.augmentation_audit()
    assert audit["run_id"].to_list() == ["r1", "r2"] and audit["output"].to_list() == ["judged_pairs", "descriptions"]
    assert audit["tokens"].to_list() == [120, 0] and audit["delta"].to_list() == [0.02, None]
    assert store.augmentation_audit("r1").select("low", "used").row(0) == (0.01, False)
    store.close()


def test_read_only_store_needs_an_existing_file_and_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no metrics store"):
        MetricsStore.for_workspace(tmp_path, read_only=True)
    MetricsStore.for_workspace(tmp_path).close()
    reader = MetricsStore.for_workspace(tmp_path, read_only=True)
    assert reader.runs().is_empty()
    with pytest.raises(Exception, match="readonly"):
        reader.start_run("r1", flow="backfill", dataset="x", parameters={})


def test_many_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    import subprocess
    import sys

    opener = (
        f"from monitor import MetricsStore; MetricsStore.for_workspace(__import__('pathlib').Path({str(tmp_path)!r}))"
    )
    processes = [subprocess.Popen([sys.executable, "-c", opener], stderr=subprocess.PIPE) for _ in range(6)]
    failures = [p.stderr.read().decode() for p in processes if p.wait(timeout=120) != 0 and p.stderr]
    assert not failures, failures[0][-1500:]
    assert MetricsStore.for_workspace(tmp_path, read_only=True).runs().is_empty()


def test_a_failed_run_keeps_its_error_and_no_rows(store: MetricsStore) -> None:
    store.start_run("r1", flow="refresh", dataset="ml-100k", parameters={})
    store.fail_run("r1", ValueError("no held-out interactions"))
    run = store.runs().row(0, named=True)
    assert (run["status"], run["error"]) == (FAILED, "ValueError: no held-out interactions")
    assert store.metrics(completed_only=False).is_empty()


def test_the_run_context_owns_start_timings_failure_and_finish(store: MetricsStore) -> None:
    with store.run("ok", flow="refresh", dataset="ml-100k", parameters=PARAMETERS) as run:
        assert store.runs()["status"].to_list() == [RUNNING]
        with run.record.timed("retrain"):
            pass
        run.record.metrics, run.record.as_of = _metrics(), WHEN
    finished = store.runs().row(0, named=True)
    assert finished["status"] == COMPLETED
    assert set(json.loads(finished["timings"])) == {"retrain", "total"}
    assert store.run_metrics("ok").height == _metrics().height

    with (
        pytest.raises(KeyboardInterrupt),
        store.run("stopped", flow="refresh", dataset="ml-100k", parameters={}) as run,
    ):
        run.record.metrics, run.record.as_of = _metrics(), WHEN
        raise KeyboardInterrupt  # even an interrupt is recorded, and goes on
    stopped = store.runs().filter(pl.col("run_id") == "stopped").row(0, named=True)
    assert stopped["status"] == FAILED and stopped["error"].startswith("KeyboardInterrupt")
    assert store.run_metrics("stopped").is_empty()
