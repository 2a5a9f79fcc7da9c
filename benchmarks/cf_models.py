"""Collaborative models compared: the product's BPR-MF (torch) against implicit's ALS and BPR (multithreaded C++), alone
and inside the product, on CiteULike-a (ALDI split) and MovieLens-100K (temporal split).

Part `cf` (each model alone). Every configuration of a model's grid trains with early stopping on the validation
pairs; the best by validation Recall@K is the model's choice, and only it reads the test split, once.
- CiteULike: train `warm_emb`, choose on `warm_val`, test `warm_test` (warm items are the candidates; `warm_emb` and
  `warm_val` pairs excluded), as benchmarks/cf_mapper.py does.
- MovieLens-100K: the product's temporal plan (`training.dataset_plan`): train on its `fit_history`, choose on its
  `cf_validation` (the training log's latest 20%, cut at one time), refit on the whole training log for the chosen
  iterations (as `training.served_inputs` does) and test on the held-out window's users who have a training history
  (a CF model has no vector for the others).
BPR-MF runs the configuration the product ran (dim 256, lr 0.0025, reg 0.005, chosen on CiteULike's warm_val by
benchmarks/cf_mapper.py); its grid is not rerun here (each fit takes minutes). Times: the chosen configuration's
fit with validation (the product's first fit) and without it for the chosen iterations (the serving refit).

Part `product` (the decisive figure): `training.fit_ranker` on the plan `warmstart evaluate` builds, with the default
settings but the collaborative model replaced by each model's choice from part `cf` (read from that part's --json via
--chosen, or from the defaults below). CiteULike `cold-item` (ALDI's protocol, the content-to-ID mapper maps titles
into the CF space) and MovieLens-100K `temporal` (overall). Differences against BPR-MF: paired 95% bootstrap
intervals over users (`ranker.metrics.bootstrap_difference`, 2,000 draws).

    .venv/bin/python benchmarks/cf_models.py [--parts cf,product] [--datasets citeulike,ml-100k] [--k 20]
        [--json OUT] [--chosen CF_JSON] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from _report import write_report  # noqa: E402

from catalog import Columns, Dataset, fetch_movielens_100k, load_citeulike, load_movielens_100k  # noqa: E402
from encoders import BPRConfig, CFConfig, CFEmbeddings, ImplicitConfig, cf_model  # noqa: E402
from ranker.evaluate import (  # noqa: E402
    COLD_ITEM,
    TEMPORAL,
    EvalIndex,
    EvalResult,
    ProtocolSplit,
    Scorer,
    evaluate,
    warm_split,
)
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402
from training import MAX_EPOCHS, ModelSettings, dataset_plan, fit_ranker  # noqa: E402

log = logging.getLogger("benchmarks.cf_models")

DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
BPRMF_NAME, ALS_NAME, BPR_NAME = "BPR-MF (torch)", "implicit ALS", "implicit BPR"

# The grids (small: every configuration early-stops on validation, which sets the iterations).
_ALS = {"model": "als", "epochs": 30, "eval_every": 2, "patience": 3}
_BPR = {"model": "bpr", "epochs": 300, "eval_every": 20, "patience": 2}
GRIDS: dict[str, tuple[CFConfig, ...]] = {
    # BPR-MF as the product ran it before implicit's ALS (chosen on CiteULike's warm_val, benchmarks/cf_mapper.py).
    BPRMF_NAME: (BPRConfig(dim=256, epochs=MAX_EPOCHS),),
    ALS_NAME: tuple(
        ImplicitConfig(**_ALS, dim=dim, reg=reg, alpha=alpha)
        for dim in (64, 128, 256)
        for reg in (0.01, 0.1, 1.0)
        for alpha in (10.0, 40.0)
    ),
    BPR_NAME: tuple(
        ImplicitConfig(**_BPR, dim=dim, lr=lr, reg=reg) for dim in (128, 256) for lr in (0.01, 0.05) for reg in (0.01,)
    ),
}
METRICS = ("recall", "ndcg")


def label(config: CFConfig) -> str:
    keys = ("dim", "reg", "alpha") if getattr(config, "model", "") == "als" else ("dim", "lr", "reg")
    fields = config.model_dump()
    return ", ".join(f"{key}={fields[key]}" for key in keys)


@dataclass(frozen=True)
class Data:
    """One data set's CF task: training and validation pairs, the test split, and what the test model trains on."""

    name: str
    train: pl.DataFrame
    valid: pl.DataFrame
    test: ProtocolSplit
    refit_on: pl.DataFrame | None  # None: the validated fit is tested as it is


def citeulike_data(dataset: Dataset) -> Data:
    splits = dataset.splits
    return Data("citeulike", splits["warm_emb"], splits["warm_val"], warm_split(dataset, "warm_test"), None)


def ml100k_data(dataset: Dataset) -> Data:
    plan = dataset_plan(dataset, TEMPORAL)
    assert plan.cf_validation is not None
    split = plan.split
    known = split.train.select(Columns.user).unique()
    test = replace(
        split,
        truth=split.truth.join(known, on=Columns.user, how="semi"),
        exclude=split.exclude.join(known, on=Columns.user, how="semi"),
        user_segments=None,
    )
    return Data("ml-100k", plan.fit_history, plan.cf_validation, test, split.train)


def _rows(known: np.ndarray, ids: pl.Series) -> np.ndarray:
    """Row of each id in the sorted `known` ids, -1 where it is unknown."""
    names = ids.to_numpy().astype(str)
    slot = np.searchsorted(known, names).clip(max=known.size - 1)
    return np.where(known[slot] == names, slot, -1)


def cf_scorer(embeddings: CFEmbeddings, index: EvalIndex) -> Scorer:
    """An evaluate() scorer over `index` ids: items the embeddings lack score -inf; users they lack are never
    evaluated here (the splits keep users with a training history), so they get row 0's scores."""
    user_rows, item_rows = _rows(embeddings.user_ids, index.user_ids), _rows(embeddings.item_ids, index.item_ids)

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows = item_rows[items]
        scores = embeddings.score(user_rows[users].clip(min=0), rows.clip(min=0))
        scores[:, rows < 0] = -np.inf
        return scores

    return score


def per_user(result: EvalResult, split: ProtocolSplit, k: int) -> pl.DataFrame:
    return per_user_accuracy(result.recs, split.truth, k).select(Columns.user, *METRICS)


def differences(mine: pl.DataFrame, theirs: pl.DataFrame) -> dict[str, list[float]]:
    """Mean difference and 95% paired bootstrap interval per metric, users aligned (mine - theirs)."""
    both = mine.join(theirs, on=Columns.user, suffix="_ref")
    return {
        m: [round(v, 4) for v in bootstrap_difference(both[m].to_numpy(), both[f"{m}_ref"].to_numpy())] for m in METRICS
    }


def cf_part(data: Data, k: int) -> tuple[list[dict[str, Any]], dict[str, CFConfig]]:
    rows, chosen, users = [], {}, {}
    for name, grid in GRIDS.items():
        tried: dict[str, dict[str, Any]] = {}
        best = None
        for config in grid:
            model = cf_model(config).fit(data.train, data.valid)
            summary = model.summary
            tried[label(config)] = {
                f"val_recall@{k}": round(summary[f"best_val_recall@{config.k}"], 4),
                "best_iteration": summary["best_epoch"],
                "seconds": summary["seconds"],
            }
            log.info("%s %s %s %s", data.name, name, label(config), tried[label(config)])
            if best is None or summary[f"best_val_recall@{config.k}"] > best[1].summary[f"best_val_recall@{k}"]:
                best = (config, model)
        assert best is not None
        config, model = best
        fixed = config.model_copy(update={"epochs": model.summary["best_epoch"]})
        refit = cf_model(fixed).fit(data.refit_on if data.refit_on is not None else data.train)
        tested = refit if data.refit_on is not None else model
        result = evaluate(data.test, cf_scorer(tested.embeddings, data.test.index), k)
        users[name] = per_user(result, data.test, k)
        chosen[name] = fixed
        rows.append(
            {
                "part": "cf",
                "data": data.name,
                "model": name,
                "chosen": label(config),
                "best_iteration": model.summary["best_epoch"],
                f"val_recall@{k}": round(model.summary[f"best_val_recall@{k}"], 4),
                "fit_seconds_with_validation": model.summary["seconds"],
                "refit_seconds": refit.summary["seconds"],
                "test_users": result.n_users,
                **{f"{m}@{k}": round(result.value(m), 4) for m in METRICS},
                "grid": tried,
            }
        )
        log.info("%s", rows[-1])
    for row in rows:
        if row["model"] != BPRMF_NAME:
            row["minus_bprmf"] = differences(users[row["model"]], users[BPRMF_NAME])
    return rows, chosen


def product_part(
    dataset: Dataset,
    protocol: str,
    chosen: dict[str, CFConfig],
    k: int,
    cache: Path,
    done: list[dict[str, Any]],
    save: Callable[[], None],
) -> list[dict[str, Any]]:
    """Rows of the product trained with each chosen CF model; each row is appended to `done` and saved as it is
    measured (a long run that is stopped keeps the rows it finished)."""
    plan = dataset_plan(dataset, protocol)
    rows: list[dict[str, Any]] = []
    users = {}
    for name, config in chosen.items():
        # Early stopping on the plan's validation pairs as the product runs, up to the grid's most iterations.
        most = next(c for c in GRIDS[name]).epochs
        settings = replace(ModelSettings.seeded(0), cf=config.model_copy(update={"epochs": most, "seed": 0}))
        started = time.perf_counter()
        fitted = fit_ranker(plan, cache_dir=cache, settings=settings)
        seconds = time.perf_counter() - started
        result = fitted.evaluate(plan.split, k)
        users[name] = per_user(result, plan.split, k)
        assert fitted.report is not None
        cf_fit, cf_served = fitted.report.fit.bprmf, fitted.report.served.bprmf
        rows.append(
            {
                "part": "product",
                "data": dataset.name,
                "protocol": protocol,
                "model": name,
                "cf_config": label(config),
                "cf_best_iteration": cf_fit["best_epoch"],
                "cf_fit_seconds": cf_fit.get("seconds"),
                "cf_refit_seconds": cf_served.get("seconds") if cf_served is not cf_fit else None,
                "fit_ranker_seconds": round(seconds, 1),
                "test_users": result.n_users,
                **{f"{m}@{k}": round(result.value(m), 4) for m in METRICS},
            }
        )
        log.info("%s", rows[-1])
        done.append(rows[-1])
        save()
    for row in rows:
        if row["model"] != BPRMF_NAME and BPRMF_NAME in users:
            row["minus_bprmf"] = differences(users[row["model"]], users[BPRMF_NAME])
    save()
    return rows


def synthetic_log(n_events: int, n_users: int, n_items: int, seed: int = 0) -> pl.DataFrame:
    """Distinct (user_id, item_id) pairs of a seeded log of about `n_events` events: Zipf-like item popularity
    (exponent 1), lognormal user activity (each user at least one event)."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_users)
    users = rng.choice(n_users, size=n_events, p=activity / activity.sum())
    popularity = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, size=n_events, p=popularity / popularity.sum())
    frame = pl.DataFrame({Columns.user: users.astype(str), Columns.item: items.astype(str)})
    return frame.unique()


def scale_part(n_events: int, config: CFConfig) -> dict[str, Any]:
    """Seconds to fit `config` without validation (its full `epochs`) on a synthetic log of `n_events`, with users
    and items in the proportions of issue 30's size M (5M events, 200k users, 500k items)."""
    log_frame = synthetic_log(n_events, n_events // 25, n_events // 10)
    model = cf_model(config).fit(log_frame)
    return {
        "part": "scale",
        "events": n_events,
        "pairs": model.summary["n_pairs"],
        "users": model.summary["n_users"],
        "items": model.summary["n_items"],
        "model": config.model_dump(),
        "fit_seconds": model.summary["seconds"],
    }


def markdown(rows: list[dict[str, Any]], k: int) -> str:
    lines = []
    for row in rows:
        if row["part"] == "scale":
            continue
        diff = row.get("minus_bprmf", {})
        cells = [
            f"{row[f'{m}@{k}']:.4f}"
            + (f" ({diff[m][0]:+.4f} [{diff[m][1]:+.4f}, {diff[m][2]:+.4f}])" if m in diff else "")
            for m in METRICS
        ]
        if row["part"] == "cf":
            timing = f"{row['fit_seconds_with_validation']:.1f} / {row['refit_seconds']:.1f}"
            what = f"{row['chosen']}; {row['best_iteration']} it; val {row[f'val_recall@{k}']:.4f}"
        else:
            timing = f"{row['cf_fit_seconds']} / {row['cf_refit_seconds']} / {row['fit_ranker_seconds']}"
            what = f"{row['cf_config']}; {row['cf_best_iteration']} it"
        first = f"| {row['part']} | {row['data']} | {row['model']} | {what} | {row['test_users']:,}"
        lines.append(f"{first} | {' | '.join(cells)} | {timing} |")
    head = (
        f"| part | data | model | chosen on validation | test users | Recall@{k} (- BPR-MF [95%]) "
        f"| NDCG@{k} (- BPR-MF [95%]) | seconds |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    return "\n".join([head, *lines])


def read_chosen(path: Path) -> dict[str, dict[str, CFConfig]]:
    """The configurations part `cf` chose, per data set, from its --json."""
    payload = json.loads(path.read_text())
    out: dict[str, dict[str, CFConfig]] = {}
    for row in payload["results"]:
        if row.get("part") != "cf":
            continue
        grid = GRIDS[row["model"]]
        config = next(c for c in grid if label(c) == row["chosen"])
        out.setdefault(row["data"], {})[row["model"]] = config.model_copy(update={"epochs": row["best_iteration"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder (titles.txt, splits/)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="data set and embedding cache")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--parts", default="cf,product", help="comma-separated: cf, product, scale")
    parser.add_argument("--datasets", default="citeulike,ml-100k", help="comma-separated: citeulike, ml-100k")
    parser.add_argument("--models", default=",".join(GRIDS), help="comma-separated model names (product part)")
    parser.add_argument("--chosen", type=Path, default=None, help="a part-cf --json whose choices part product uses")
    parser.add_argument(
        "--chosen-data", default=None, help="use the choices --chosen made on this data set (default: each its own)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--scale-events", type=int, default=5_000_000, help="part scale: events of the synthetic log (ALS only)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    if parts == {"scale"}:
        args.datasets = ""
    models = [m.strip() for m in args.models.split(",")]
    loaders = {
        "citeulike": (lambda: load_citeulike(args.data), citeulike_data, COLD_ITEM),
        "ml-100k": (lambda: load_movielens_100k(fetch_movielens_100k(args.cache)), ml100k_data, TEMPORAL),
    }
    chosen_from_file = read_chosen(args.chosen) if args.chosen is not None else {}
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def save() -> None:
        if args.json is not None:
            seconds = time.perf_counter() - started
            write_report(args.json, "cf_models", data=args.data, k=args.k, seconds=seconds, results=rows)

    if "scale" in parts:
        # The product's ALS (its defaults) for the iterations early stopping chose on CiteULike.
        rows.append(scale_part(args.scale_events, ImplicitConfig(epochs=12)))
        log.info("%s", rows[-1])
        save()
    for name in filter(None, args.datasets.split(",")):
        load, cf_data, protocol = loaders[name]
        dataset = load()
        chosen = chosen_from_file.get(args.chosen_data or name, {})
        if "cf" in parts:
            cf_rows, chosen = cf_part(cf_data(dataset), args.k)
            rows.extend(cf_rows)
        if "product" in parts:
            if not chosen:
                raise SystemExit(f"no chosen configurations for {name}: run part cf first or pass --chosen")
            picked = {m: chosen[m] for m in models if m in chosen}
            product_part(dataset, protocol, picked, args.k, args.cache, rows, save)
        save()
    total = time.perf_counter() - started
    print(markdown(rows, args.k))
    print(f"\ntotal {total:.0f} s, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, torch threads {args.threads}")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
