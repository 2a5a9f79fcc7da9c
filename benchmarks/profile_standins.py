"""Do the language model's user profiles help users with few events? MovieLens-100K's sparse-user protocol at
n = 1, 3, 5: the product against the product with each held-out user's LLM profile (written by the product's own
prompt and code path, `augment.profile_users` with the `user_profile` prompt, from the titles of the n events the
user kept, most recent first, as `flows.augmentation.profile_step` writes them) reaching their scores
(`training.profiled_scorer`: the newcomer model serves these users, and reads no stand-in; see training._profiles).

The profile's weight is chosen on validation, never on the test users: each protocol's `user_validation` (the same
protocol drawn again among the training users), whose held-out users are profiled from their own kept events the
same way, with the product fitted on that validation plan serving them by the newcomer model; one weight for every
n (the best mean validation NDCG@k over n; ties to the smaller weight). Then the test split is read once per
reported figure: the product (`training.evaluate_users`, as benchmarks/cold_users.py) and the product with the
profiles at the chosen weight (where validation chooses 0, no profile, at the best weight above 0: what turning them
on would cost), a 95% paired bootstrap over the held-out users on NDCG@k and Recall@k.

The cold-user protocol does not apply: a user without events has no titles to be profiled from (the product's
profile step skips them).

Run: `PYTHONPATH=. WARMSTART_CACHE_DIR=.cache .venv/bin/python benchmarks/profile_standins.py [--json F]`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

import training  # noqa: E402
from augment import profile_users  # noqa: E402
from augment._factory import make_backend  # noqa: E402
from benchmarks._report import write_report  # noqa: E402
from catalog import Columns, fetch_movielens_100k, load_movielens_100k  # noqa: E402
from flows.augmentation import PROFILE_MAX_NEW_TOKENS, generation_cache  # noqa: E402
from ranker.evaluate import SPARSE_USERS, EvalResult, ProtocolSplit  # noqa: E402
from ranker.evaluate import evaluate as evaluate_split  # noqa: E402
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402
from training.defaults import PROFILE_WEIGHT_GRID  # noqa: E402

METRICS = ("ndcg", "recall")


def kept_histories(split: ProtocolSplit, items: pl.DataFrame) -> pl.DataFrame:
    """(user_id, titles) of the split's held-out users from the events they kept (the split's training rows),
    most recent first: what `flows.augmentation.user_histories` gives the profile step for them."""
    held = split.truth.select(Columns.user).unique()
    return (
        split.train.join(held, on=Columns.user, how="semi")
        .join(items.select(Columns.item, Columns.title), on=Columns.item, how="left")
        .sort([Columns.user, Columns.ts, Columns.item], descending=[False, True, False], nulls_last=True)
        .group_by(Columns.user, maintain_order=True)
        .agg(pl.col(Columns.title).fill_null("").alias("titles"))
    )


def _profiles(split: ProtocolSplit, items: pl.DataFrame, backend, cache_dir: Path) -> tuple[pl.DataFrame, dict]:
    histories = kept_histories(split, items)
    started = time.perf_counter()
    frame, stats = profile_users(
        histories, backend, generation_cache(cache_dir), max_new_tokens=PROFILE_MAX_NEW_TOKENS, show_progress=False
    )
    cost = {
        "users": histories.height,
        "generated": stats.generated,
        "cached": stats.cached,
        "rejected": stats.rejected,
        "tokens": int(stats.tokens),
        "seconds": round(time.perf_counter() - started, 1),
        "tokens_in_table": int(frame["tokens"].sum()),
    }
    return frame, cost


def _per_user(result: EvalResult, split: ProtocolSplit, k: int) -> pl.DataFrame:
    return per_user_accuracy(result.recs, split.truth, k).select(Columns.user, *METRICS)


def _served_by_newcomers(fitted: training.FittedRanker, split: ProtocolSplit) -> int:
    """How many of the split's held-out users the fitted product's newcomer route serves."""
    route = fitted.ranker.newcomers
    if route is None:
        return 0
    activity = np.diff(fitted.served.inputs.history.indptr)
    users = np.unique(split.index.users(split.truth[Columns.user]))
    return int(((activity[users] >= route.min_events) & (activity[users] <= route.max_events)).sum())


def main(
    history_n: Annotated[list[int] | None, typer.Option(help="Sparse-user history lengths (repeatable).")] = None,
    k: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the held-out users and of every model.")] = 0,
    max_epochs: Annotated[int, typer.Option(min=1, help="Most collaborative-model epochs.")] = training.MAX_EPOCHS,
    threads: Annotated[int, typer.Option(min=1, help="llama.cpp threads (1 on shared cores).")] = 1,
    cache: Annotated[Path, typer.Option(help="Cache of the data set, embeddings, generations, LLM.")] = REPO / ".cache",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every row as JSON here.")] = None,
    validation_only: Annotated[bool, typer.Option(help="Stop after choosing the weight (no test split read).")] = False,
    weight: Annotated[
        float | None, typer.Option(help="Measure at this weight (chosen before, e.g. on seed 0's validation).")
    ] = None,
) -> None:
    started = time.perf_counter()
    data = fetch_movielens_100k(cache)
    dataset = load_movielens_100k(data)
    settings = training.ModelSettings.capped(seed, max_epochs)
    backend = make_backend("llamacpp", cache_dir=cache, threads=threads)
    ns = history_n or [1, 3, 5]
    plans = {n: training.user_plan(dataset, SPARSE_USERS, history_n=n, seed=seed) for n in ns}

    # 1. The weight, on validation only: each plan's user_validation, the product fitted on it serving its held-out
    #    users by the newcomer model (0 to 5 events, the route the user protocols choose), profiled from their kept
    #    events.
    validation: dict[int, dict] = {}
    for n, plan in plans.items() if weight is None else ():
        vplan = plan.user_validation
        assert vplan is not None
        fitted = training.fit_ranker(vplan, cache_dir=cache, settings=settings)
        assert fitted.report is not None and fitted.report.newcomers is not None
        fitted.ranker.with_newcomers(fitted.report.newcomers.chosen)  # every 0-5 event user, as on the test split
        frame, cost = _profiles(vplan.split, dataset.items, backend, cache)
        vectors = training.profile_vectors(frame, vplan.split.index.user_ids, cache_dir=cache)
        ndcg = {}
        for weight in PROFILE_WEIGHT_GRID:
            scorer = training.profiled_scorer(fitted, vplan.split, vectors, weight)
            ndcg[weight] = float(_per_user(evaluate_split(vplan.split, scorer, k=k), vplan.split, k)["ndcg"].mean())
        validation[n] = {
            "users": vplan.split.truth[Columns.user].n_unique(),
            "profiled": int(training.has_profile(vectors).sum()),
            "served_by_newcomer_model": _served_by_newcomers(fitted, vplan.split),
            f"ndcg@{k}": {f"{w:g}": round(v, 4) for w, v in ndcg.items()},
            "generation": cost,
        }
        print(f"validation n={n}: {validation[n]}")
        sys.stdout.flush()
    if weight is None:
        grid = PROFILE_WEIGHT_GRID
        mean = {w: float(np.mean([validation[n][f"ndcg@{k}"][f"{w:g}"] for n in ns])) for w in grid}
        chosen = max(grid, key=lambda w: (mean[w], -w))
        # The weight the test measures the profiles at: the chosen one, or where validation chose none (0), the
        # best weight that uses them (what turning them on would cost; the audit's weight, PROFILE_WEIGHT).
        measured = chosen or max((w for w in grid if w), key=lambda w: (mean[w], -w))
        shown = {f"{w:g}": round(v, 4) for w, v in mean.items()}
        print(f"chosen weight {chosen:g}, measured at {measured:g} (mean validation NDCG@{k}: {shown})")
    else:
        mean, chosen, measured = {}, weight, weight
        print(f"measured at the given weight {weight:g} (no validation run)")

    if validation_only:
        return
    # 2. The test split, read once per reported figure.
    rows = []
    print(
        f"| n | users | profiled | product NDCG@{k} | with profiles | difference [95%] | product Recall@{k} | "
        "with profiles | difference [95%] |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, plan in plans.items():
        evaluation = training.evaluate_users(plan, k=k, cache_dir=cache, settings=settings)
        split, fitted = evaluation.split, evaluation.fitted
        frame, cost = _profiles(split, dataset.items, backend, cache)
        vectors = training.profile_vectors(frame, split.index.user_ids, cache_dir=cache)
        # The control's lists are the product's own (no metric read): weight 0 changes nothing.
        control = evaluate_split(split, training.profiled_scorer(fitted, split, vectors, 0.0), k=k).recs
        product = evaluation.results["product"]
        assert control.sort(control.columns).equals(product.recs.sort(product.recs.columns))
        profiled = evaluate_split(split, training.profiled_scorer(fitted, split, vectors, measured), k=k)
        mine, theirs = _per_user(profiled, split, k), _per_user(product, split, k)
        both = mine.join(theirs, on=Columns.user, suffix="_product")
        changed = profiled.recs.join(product.recs, on=[Columns.user, Columns.item, "rank"], how="anti")
        row: dict = {
            "n": n,
            "users": both.height,
            "profiled": int(training.has_profile(vectors).sum()),
            "served_by_newcomer_model": _served_by_newcomers(fitted, split),
            "users_with_changed_lists": changed[Columns.user].n_unique(),
            "route": fitted.ranker.newcomers.model_dump() if fitted.ranker.newcomers is not None else None,
            "weight": measured,
            "generation": cost,
            "seconds": evaluation.report.seconds,
        }
        for metric in METRICS:
            delta, low, high = bootstrap_difference(both[metric].to_numpy(), both[f"{metric}_product"].to_numpy())
            row[metric] = {
                "product": round(float(both[f"{metric}_product"].mean()), 4),
                "with_profiles": round(float(both[metric].mean()), 4),
                "difference": [round(delta, 4), round(low, 4), round(high, 4)],
            }
        rows.append(row)
        cells = [
            f"{row[m]['product']:.4f} | {row[m]['with_profiles']:.4f} | "
            + "{:+.4f} [{:+.4f}, {:+.4f}]".format(*row[m]["difference"])
            for m in METRICS
        ]
        print(f"| {n} | {row['users']} | {row['profiled']} | " + " | ".join(cells) + " |")
        print(f"  n={n}: {row}")
        sys.stdout.flush()
    if json_out is not None:
        write_report(
            json_out,
            "profile_standins",
            data=data,
            k=k,
            seconds=time.perf_counter() - started,
            results=[
                *rows,
                {"validation": validation, "chosen_weight": chosen, "measured_weight": measured},
                {"mean_validation": mean},
            ],
        )
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    typer.run(main)
