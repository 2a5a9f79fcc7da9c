"""Users without (or with little) history on MovieLens-100K: the product against popularity, attribute-group
popularity, popularity at arrival (the share of the days before each user asks, the window the product's newcomer
model reads) and (sparse users) BPR-MF, on the cold-user protocol and the sparse-user protocol at n = 1, 3, 5; and
the same fitted product with each choice of its newcomer route undone (`--no-ablations` leaves those rows out).

Each protocol holds out a seeded 20% of users (189); the product's share of training users shown without history is
chosen on the same protocol drawn again among the training users (training.user_plan), never on the test users.
Every line is scored on the same split; each difference is the product minus the line with a 95% paired bootstrap
interval over the evaluated users. The product serves these users as it serves newcomers: by the newcomer model
(ranker.newcomers) where the route chosen on the training users' validation says so, else by the ranker.

Run: `PYTHONPATH=. .venv/bin/python benchmarks/cold_users.py [--history-n 1 --history-n 3 ...] [--json out.json]`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

import training  # noqa: E402
from benchmarks._report import write_report  # noqa: E402
from catalog import Columns, fetch_movielens_100k, load_movielens_100k  # noqa: E402
from ranker.evaluate import COLD_USERS, SPARSE_USERS  # noqa: E402
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402

METRICS = ("ndcg", "recall")
WITHOUT_ARRIVAL = "product without arrival time"
WITH_COLD_ITEMS = "product with newcomers' items without history"


def _rows(name: str, evaluation: training.UserEvaluation, k: int) -> list[dict]:
    """One row per model: its NDCG and Recall at k, and for each line the product minus it with its interval."""
    truth = evaluation.split.truth
    values = {model: per_user_accuracy(result.recs, truth, k) for model, result in evaluation.results.items()}
    product = values["product"]
    rows = []
    for model, frame in values.items():
        row: dict = {"protocol": name, "split": evaluation.split.name, "users": frame.height, "model": model}
        for metric in METRICS:
            row[f"{metric}@{k}"] = round(float(frame[metric].mean()), 4)
            if model != "product":
                both = product.select(Columns.user, metric).join(frame.select(Columns.user, metric), on=Columns.user)
                mean, low, high = bootstrap_difference(both[metric].to_numpy(), both[f"{metric}_right"].to_numpy())
                row[f"product_minus_{metric}"] = [round(mean, 4), round(low, 4), round(high, 4)]
        rows.append(row)
    return rows


def _ablations(evaluation: training.UserEvaluation, k: int) -> training.UserEvaluation:
    """The evaluation with the same fitted product scored again with one choice of its newcomer route undone: its
    arrival term (recent_weight 0) and, where the route left them out, newcomers' items without history (kept, as
    before that choice); the route is restored afterwards."""
    ranker = evaluation.fitted.ranker
    served = ranker.newcomers
    if served is None:
        return evaluation
    undone = {WITHOUT_ARRIVAL: {"recent_weight": 0.0}, WITH_COLD_ITEMS: {"cold_items": True}}
    results = dict(evaluation.results)
    try:
        for name, update in undone.items():
            if served.model_copy(update=update) == served:
                continue
            ranker.with_newcomers(served.model_copy(update=update))
            results[name] = dataclasses.replace(evaluation.fitted, report=None).evaluate(evaluation.split, k)
    finally:
        ranker.with_newcomers(served)
    return dataclasses.replace(evaluation, results=results)


def main(
    history_n: Annotated[list[int] | None, typer.Option(help="Sparse-user history lengths (repeatable).")] = None,
    cold: Annotated[bool, typer.Option(help="Run the cold-user protocol too.")] = True,
    k: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the held-out users and of every model.")] = 0,
    max_epochs: Annotated[int, typer.Option(min=1, help="Most BPR-MF epochs.")] = training.MAX_EPOCHS,
    cache: Annotated[Path, typer.Option(help="Cache of the data set and the text embeddings.")] = REPO / ".cache",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every row as JSON here.")] = None,
    ablations: Annotated[
        bool, typer.Option(help="Also score the same fitted product with each newcomer-route choice undone.")
    ] = True,
) -> None:
    started = time.perf_counter()
    data = fetch_movielens_100k(cache)
    dataset = load_movielens_100k(data)
    settings = training.ModelSettings.capped(seed, max_epochs)
    runs = [(COLD_USERS, None)] if cold else []
    runs += [(SPARSE_USERS, n) for n in history_n or (1, 3, 5)]
    results, choices = [], {}
    print(f"| protocol | users | model | NDCG@{k} | Recall@{k} | product - model, NDCG@{k} [95%] | Recall@{k} [95%] |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for protocol, n in runs:
        name = "cold-user" if n is None else f"sparse-user n={n}"
        plan = training.user_plan(dataset, protocol, history_n=n, seed=seed)
        evaluation = training.evaluate_users(plan, k=k, cache_dir=cache, settings=settings)
        if ablations:
            evaluation = _ablations(evaluation, k)
        newcomers = evaluation.report.models.newcomers
        choices[name] = {
            "cold_user_share": evaluation.choice.as_dict() if evaluation.choice is not None else None,
            "newcomers": newcomers.as_dict() if newcomers is not None else None,
        }
        rows = _rows(name, evaluation, k)
        for row in rows:
            row["seconds"] = evaluation.report.seconds
            cells = [f"{row[f'{metric}@{k}']:.4f}" for metric in METRICS]
            gaps = [
                "" if row["model"] == "product" else "{:+.4f} [{:+.4f}, {:+.4f}]".format(*row[f"product_minus_{m}"])
                for m in METRICS
            ]
            print(f"| {name} | {row['users']} | {row['model']} | " + " | ".join(cells + gaps) + " |")
        results.extend(rows)
        sys.stdout.flush()
    for name, choice in choices.items():
        print(f"{name}: {choice}")
    if json_out is not None:
        write_report(
            json_out,
            "cold_users",
            data=data,
            k=k,
            seconds=time.perf_counter() - started,
            results=[*results, {"choices": choices}],
        )


if __name__ == "__main__":
    typer.run(main)
