"""What a kept version serves against what `warmstart evaluate` reported, on MovieLens-100K's protocols over users.

For each protocol: `warmstart evaluate --keep-version` (a fresh workspace of its own), then `warmstart recommend
--users V/held_out.parquet --version V --out F` serves the held-out users from the kept version, and the served
lists are scored with the project's metric (ranker.metrics.accuracy_metrics) on the same held-out pairs. Both
commands run as operators run them, each in its own process.

Run: `PYTHONPATH=. .venv/bin/python benchmarks/served_users.py [--history-n 3 ...] [--no-cold] [--json out.json]`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from benchmarks._report import write_report  # noqa: E402
from catalog import Columns, fetch_movielens_100k  # noqa: E402
from flows.stages import HELD_OUT  # noqa: E402
from ranker.metrics import accuracy_metrics  # noqa: E402

METRICS = ("ndcg", "recall")


def _warmstart(*args: str, cache: Path) -> float:
    """Run the CLI in its own process; its wall seconds."""
    started = time.perf_counter()
    environment = {"WARMSTART_CACHE_DIR": str(cache), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=os.environ | environment,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        said = f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        raise SystemExit(f"warmstart {' '.join(args)}: exit {done.returncode}\n{said}")
    return time.perf_counter() - started


def _row(name: str, options: list[str], data: Path, cache: Path, folder: Path, k: int) -> dict:
    space, report_path, served_path = folder / "workspace", folder / "report.json", folder / "served.parquet"
    evaluate = ["evaluate", "--dataset", "ml-100k", "--data", str(data), *options, "--k", str(k)]
    keep = ["--keep-version", "--json", str(report_path), "-w", str(space)]
    evaluate_seconds = _warmstart(*evaluate, *keep, cache=cache)
    report = json.loads(report_path.read_text())
    kept = report["kept_version"]
    held_out = Path(kept["path"]) / HELD_OUT
    serve = ["recommend", "--users", str(held_out), "--version", kept["version"], "--ranker", kept["ranker"]]
    serve_seconds = _warmstart(*serve, "--k", str(k), "--out", str(served_path), "-w", str(space), cache=cache)
    truth, served = pl.read_parquet(held_out), pl.read_parquet(served_path)
    measured = accuracy_metrics(served, truth, k).filter(pl.col(Columns.segment) == "overall")
    row: dict = {"protocol": name, "split": report["split"], "users": served[Columns.user].n_unique()}
    for metric in METRICS:
        evaluated = next(m["value"] for m in report["metrics"] if (m["segment"], m["metric"]) == ("overall", metric))
        value = measured.filter(pl.col(Columns.metric) == metric)["value"].item()
        row |= {f"evaluated_{metric}@{k}": evaluated, f"served_{metric}@{k}": value}
        row[f"{metric}_gap"] = value - evaluated
    return row | {"evaluate_seconds": round(evaluate_seconds, 1), "recommend_seconds": round(serve_seconds, 1)}


def main(
    history_n: Annotated[list[int] | None, typer.Option(help="Sparse-user history lengths (repeatable).")] = None,
    cold: Annotated[bool, typer.Option(help="Run the cold-user protocol.")] = True,
    k: Annotated[int, typer.Option(min=1)] = 20,
    cache: Annotated[Path, typer.Option(help="Cache of the data set and the text embeddings.")] = REPO / ".cache",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every row as JSON here.")] = None,
) -> None:
    started = time.perf_counter()
    data = fetch_movielens_100k(cache)
    runs = [("cold-user", ["--protocol", "cold-user"])] if cold else []
    runs += [(f"sparse-user n={n}", ["--protocol", "sparse-user", "--history-n", str(n)]) for n in history_n or (3,)]
    rows = []
    print(f"| protocol | users | NDCG@{k} evaluated | served | gap | Recall@{k} evaluated | served | gap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="served-users-") as scratch:
        for index, (name, options) in enumerate(runs):
            folder = Path(scratch) / str(index)
            row = _row(name, options, data, cache, folder, k)
            rows.append(row)
            cells = [f"{row[f'{side}_{metric}@{k}']:.4f}" for metric in METRICS for side in ("evaluated", "served")]
            gaps = [f"{row[f'{metric}_gap']:+.1e}" for metric in METRICS]
            shown = [name, str(row["users"]), cells[0], cells[1], gaps[0], cells[2], cells[3], gaps[1]]
            print(f"| {' | '.join(shown)} |")
    seconds = round(time.perf_counter() - started, 1)
    print(f"({seconds} s)")
    if json_out is not None:
        write_report(json_out, "served_users", data=data, k=k, seconds=seconds, results=rows)


if __name__ == "__main__":
    typer.run(main)
