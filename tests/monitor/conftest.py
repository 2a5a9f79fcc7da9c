"""A metrics store with known values, written through the store's own API (what the flows write)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from monitor import MetricsStore, RunRecord

POINTS = [datetime(1998, month, 1, tzinfo=UTC) for month in (1, 2, 3)]
RECALL = {
    "overall": [0.11, 0.12, 0.13],
    "head": [0.21, 0.22, 0.23],
    "tail": [0.031, 0.032, 0.033],
    "cold": [0.041, 0.042, 0.043],
}
USER_RECALL = {
    "cold_user": [0.061, 0.062, 0.063],
    "sparse_user": [0.071, 0.072, 0.077],
    "warm_user": [0.151, 0.152, 0.153],
}


def _metrics(point: int) -> pl.DataFrame:
    rows = []
    for segment, values in RECALL.items():
        rows.append(("temporal", segment, "recall", 20, values[point]))
        rows.append(("temporal", segment, "ndcg", 20, values[point] / 2))
        rows.append(("temporal", segment, "recall", 10, values[point] / 3))
    for segment, values in USER_RECALL.items():
        rows.append(("temporal", segment, "recall", 20, values[point]))
        rows.append(("temporal", segment, "ndcg", 20, values[point] / 2))
    for metric, value in {"coverage": 0.25, "gini": 0.9, "aplt": 0.05, "novelty": 5.0}.items():
        rows.append(("temporal", "overall", metric, 20, value + point / 100))
    # A reference line recorded beside the product on the same split.
    rows.append(("temporal:popularity", "overall", "recall", 20, 0.10))
    rows.append(("temporal:popularity", "overall", "ndcg", 20, 0.05))
    if point:  # the later runs also recorded their model without augmentation
        rows.append(("temporal:without_augmentation", "cold", "recall", 20, RECALL["cold"][point] / 2))
        rows.append(("temporal:without_augmentation", "tail", "recall", 20, RECALL["tail"][point]))
    return pl.DataFrame(rows, schema=["protocol", "segment", "metric", "k", "value"], orient="row")


# What the later runs' augmentation audits found (training.AuditRow): the second run's judged pairs helped, so
# the third used them (and found them within noise); its descriptions did not help.
AUDIT = {
    1: [("judged_pairs", 0.02, 0.005, 0.035, False, "off: no earlier audit measured it", 400, 10.0)],
    2: [
        ("judged_pairs", 0.01, -0.004, 0.024, True, "used: cold/recall@20 +0.0200 [+0.0050, +0.0350]", 0, 1.0),
        ("descriptions", -0.003, -0.01, 0.004, False, "off: no earlier audit measured it", 300, 8.0),
    ],
}


def _audit(point: int) -> list[dict[str, object]]:
    names = ("output", "delta", "low", "high", "used", "reason", "tokens", "seconds")
    rows = [dict(zip(names, values, strict=True)) for values in AUDIT.get(point, [])]
    return [row | {"metric": "cold/recall@20", "users": 40, "entities": 5} for row in rows]


def build_fixture_store(root: Path) -> Path:
    store = MetricsStore.for_workspace(root)
    for point, as_of in enumerate(POINTS):
        run_id = f"run-{point + 1}"
        store.start_run(run_id, flow="backfill", dataset="ml-100k", parameters={"every": "30d"}, window_end=as_of)
        promoted = point != 2
        store.finish_run(
            run_id,
            RunRecord(
                model_version=run_id,
                metrics=_metrics(point),
                as_of=as_of,
                timings={"retrain": 10.0 + point},
                audit=_audit(point),
                augmentation={
                    "items_augmented": 4,
                    "synthetic_rows": 20,
                    "cache_hits": point * 2,
                    "tokens": 500,
                    "seconds": 12.5,
                    "synthetic_precision": 0.05 * (point + 1),
                },
                segment_counts=pl.DataFrame(
                    {
                        "kind": ["item", "item", "item"],
                        "segment": ["cold", "tail", "head"],
                        "count": [100 - point, 50, 30],
                    }
                ),
                transitions=pl.DataFrame(
                    {
                        "kind": ["item", "item"],
                        "from_segment": ["cold", "head"],
                        "to_segment": ["sparse", "tail"],
                        "count": [7 + point, 3],
                    }
                ),
                promotion={
                    "candidate_version": run_id,
                    "incumbent_version": f"run-{point}" if point else None,
                    "promoted": promoted,
                    "reason": "no current model"
                    if point == 0
                    else ("no regression" if promoted else "regressed: cold"),
                    "gate": {"tolerance": 0.005},
                    "candidate_metrics": {"cold/recall@20": RECALL["cold"][point]},
                    "incumbent_metrics": None,
                },
            ),
        )
    store.close()
    return root / "metrics.sqlite"


@pytest.fixture
def fixture_store(tmp_path: Path) -> Path:
    """The workspace directory holding the fixture's metrics.sqlite."""
    build_fixture_store(tmp_path)
    return tmp_path


@contextmanager
def running_dashboard(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[tuple[int, str]]:
    """Run `command` (a `warmstart dashboard` command line, without --port) on a free loopback port, its output
    going to `log`; yields (pid, url) once the page answers its health check, and stops it afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        server = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the dashboard never answered its health check"
            time.sleep(0.5)
        yield server.pid, url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def dashboard_process() -> Callable[..., AbstractContextManager[tuple[int, str]]]:
    """`running_dashboard`, for test modules (they cannot import a conftest by name)."""
    return running_dashboard
