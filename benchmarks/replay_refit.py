"""What refitting the served version on the whole log buys: MovieLens-100K replayed month by month.

At each month start M (1997-12-01 .. 1998-04-01) the workspace holds every event before M. A refresh trains the
candidate as the gate judges it (the first 80% of that log; its held-out window is the last 20%) and, once let
through, the version served is refit on every event before M with what the candidate chose (training.refit_ranker:
its BPR-MF epochs, boosting rounds, cold places, timed choice). Both are saved as versions and served through
`serving.Recommender` exactly as `warmstart recommend` serves them (the workspace's logged items excluded for both),
then scored on the month after M: real events, pairs not already in the log; cold = items with no event before M.
Paired 95% bootstrap intervals over users (refit minus evaluated), per month and over all months (user-months).
No language model runs (augment_limit 0); settings are the refresh's defaults (ModelSettings.capped, the default
timed choice).

Run: `.venv/bin/python benchmarks/replay_refit.py [--json results/replay_refit.json]` (about 2 minutes on two cores).
"""

from __future__ import annotations

import itertools
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

import training  # noqa: E402
from benchmarks._report import write_report  # noqa: E402
from catalog import Columns, Dataset, Workspace, fetch_movielens_100k, load_movielens_100k  # noqa: E402
from flows import stages  # noqa: E402
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402
from serving import Recommender  # noqa: E402

MONTHS = [datetime(1997, 12, 1), datetime(1998, 1, 1), datetime(1998, 2, 1), datetime(1998, 3, 1)]
MONTHS += [datetime(1998, 4, 1), datetime(1998, 5, 1)]
K = 20
PAIR = [Columns.user, Columns.item]


def _served(space: Workspace, name: str, fitted: training.FittedRanker, plan: training.EvaluationPlan) -> Recommender:
    """`fitted` saved as version `name` of the workspace and loaded as `warmstart recommend` loads it."""
    directory = space.models.path("lightgbm", name)
    stages.save_serving(directory, fitted, plan.split.index)
    fitted.ranker.save(directory)
    return Recommender.load(space, name, ranker="lightgbm")


def _per_user(recommender: Recommender, truth: pl.DataFrame) -> pl.DataFrame:
    """(user_id, recall, ndcg) at K of the recommender's served lists for the users of `truth`."""
    users = truth[Columns.user].unique().sort()
    recs = recommender.recommend(users, K)
    return per_user_accuracy(recs, truth, K).select(Columns.user, "recall", "ndcg")


def _difference(refit: pl.DataFrame, evaluated: pl.DataFrame, metric: str) -> dict[str, float]:
    paired = refit.join(evaluated, on=Columns.user, suffix="_evaluated")
    mean, low, high = bootstrap_difference(paired[metric].to_numpy(), paired[f"{metric}_evaluated"].to_numpy())
    return {
        "refit": float(paired[metric].mean()),
        "evaluated": float(paired[f"{metric}_evaluated"].mean()),
        "delta": mean,
        "low": low,
        "high": high,
        "users": paired.height,
    }


def main(
    max_epochs: Annotated[int, typer.Option(help="Most BPR-MF epochs, as refresh's --max-epochs.")] = 150,
    cache: Annotated[Path, typer.Option(help="Cache of the data set and the text embeddings.")] = REPO / ".cache",
    work: Annotated[Path, typer.Option(help="Folder for the month-by-month workspaces.")] = Path("/tmp/replay"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    started = time.perf_counter()
    full = load_movielens_100k(fetch_movielens_100k(cache))
    settings = training.ModelSettings.capped(0, max_epochs)
    rows, pooled = [], {"ndcg": [], "cold_recall": []}
    for month, following in itertools.pairwise(MONTHS):
        cut, end = month.replace(tzinfo=UTC), following.replace(tzinfo=UTC)
        log = full.interactions.filter(pl.col(Columns.ts) < cut)
        dataset = Dataset(name="ml-100k", interactions=log, items=full.items, users=full.users)
        shutil.rmtree(work / month.strftime("%Y-%m"), ignore_errors=True)
        space = Workspace(work / month.strftime("%Y-%m"))
        stages.ingest(space, dataset, run_id=f"replay-{month:%Y%m}")
        plan = training.dataset_plan(dataset, "temporal")
        whole = training.whole_log_plan(dataset, plan)
        assert whole is not None
        tick = time.perf_counter()
        evaluated = training.fit_ranker(plan, cache_dir=cache, settings=settings)
        fit_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        refit = training.refit_ranker(whole, evaluated, cache_dir=cache, settings=settings)
        refit_seconds = time.perf_counter() - tick

        following_events = full.interactions.filter(pl.col(Columns.ts).is_between(cut, end, closed="left"))
        truth = following_events.select(PAIR).unique().join(log.select(PAIR), on=PAIR, how="anti")
        cold_truth = truth.join(log.select(Columns.item).unique(), on=Columns.item, how="anti")
        served = {
            "evaluated": _served(space, "evaluated", evaluated, plan),
            "refit": _served(space, "refit", refit, whole),
        }
        scores = {name: _per_user(recommender, truth) for name, recommender in served.items()}
        cold = (
            {name: _per_user(recommender, cold_truth) for name, recommender in served.items()}
            if cold_truth.height
            else {}
        )
        row = {
            "month_start": str(month.date()),
            "evaluated_on": f"{month.date()} .. {following.date()}",
            "log_events": log.height,
            "evaluated_train_end": str(plan.split.train[Columns.ts].max()),
            "refit_train_end": str(log[Columns.ts].max()),
            "test_pairs": truth.height,
            "cold_test_pairs": cold_truth.height,
            "fit_seconds": round(fit_seconds, 1),
            "refit_seconds": round(refit_seconds, 1),
            "ndcg": _difference(scores["refit"], scores["evaluated"], "ndcg"),
            "cold_recall": _difference(cold["refit"], cold["evaluated"], "recall") if cold else None,
        }
        rows.append(row)
        pooled["ndcg"].append(
            scores["refit"]
            .join(scores["evaluated"], on=Columns.user, suffix="_evaluated")
            .select(pl.col("ndcg"), pl.col("ndcg_evaluated"))
        )
        if cold:
            pooled["cold_recall"].append(
                cold["refit"]
                .join(cold["evaluated"], on=Columns.user, suffix="_evaluated")
                .select(pl.col("recall"), pl.col("recall_evaluated"))
            )
        print(row, flush=True)

    summary = {}
    for metric, frames in pooled.items():
        both = pl.concat(frames)
        first, second = both.columns
        mean, low, high = bootstrap_difference(both[first].to_numpy(), both[second].to_numpy())
        summary[metric] = {
            "refit": float(both[first].mean()),
            "evaluated": float(both[second].mean()),
            "delta": mean,
            "low": low,
            "high": high,
            "user_months": both.height,
        }
    print("all months:", summary)
    print(
        "\n| month scored | test pairs (cold) | NDCG@20 evaluated -> refit, delta [95% CI] | "
        "cold Recall@20 evaluated -> refit, delta [95% CI] |"
    )
    print("|---|---|---|---|")
    for row in rows:
        n, c = row["ndcg"], row["cold_recall"]
        cold_text = (
            f"{c['evaluated']:.4f} -> {c['refit']:.4f}, {c['delta']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
            if c
            else "n/a"
        )
        print(
            f"| {row['evaluated_on']} | {row['test_pairs']:,} ({row['cold_test_pairs']:,}) | "
            f"{n['evaluated']:.4f} -> {n['refit']:.4f}, {n['delta']:+.4f} [{n['low']:+.4f}, {n['high']:+.4f}] | "
            f"{cold_text} |"
        )
    if json_out is not None:
        results = [*rows, {"all_months": summary}]
        write_report(json_out, "replay_refit", data=cache, k=K, seconds=time.perf_counter() - started, results=results)


if __name__ == "__main__":
    typer.run(main)
