"""DeepFM beside the LightGBM ranker: CiteULike-a's ALDI split (cold, warm, hybrid) and MovieLens-100K temporal.

CiteULike: the encoders are fitted once (BPR-MF on warm_emb, ridge stand-ins, MiniLM, TF-IDF, exactly as
`warmstart evaluate` fits them), then each ranker is trained on the same inputs (labels warm_val, early stopping
on cold_item_val) and evaluated under the cold-item, warm and hybrid protocols on the test splits. DeepFM runs
twice: with stand-ins (cold items served through their content-to-ID stand-in) and without (cold items served
through one learned 'unknown item' vector; text, categories and segment fields only).

MovieLens-100K: the temporal protocol of `warmstart evaluate --dataset ml-100k`, one fit_ranker per model.

Also measured: DeepFM's training seconds per epoch, and scoring latency per 1,000 users (the cold protocol's
3,396 candidates and the warm protocol's 13,584), both wall clock on a shared machine.

    .venv/bin/python benchmarks/deepfm.py [--data DIR] [--cache DIR] [--json OUT] [--skip-lightgbm] [--skip-ml100k]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from _report import write_report  # noqa: E402

from catalog import fetch_movielens_100k, load_citeulike, load_movielens_100k  # noqa: E402
from ranker.evaluate import (  # noqa: E402
    COLD_ITEM,
    EvalResult,
    cold_item_split,
    hybrid_split,
    interaction_matrix,
    temporal_split,
    warm_split,
)
from training import (  # noqa: E402
    FittedRanker,
    ModelSettings,
    aldi_plan,
    encode_inputs,
    fit_ranker,
    holdout_plan,
    train_ranker,
)

log = logging.getLogger("benchmarks.deepfm")
DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")


def _without_standins(settings: ModelSettings) -> ModelSettings:
    return ModelSettings(
        cf=settings.cf,
        standins=settings.standins,
        ranker=settings.ranker,
        deepfm=settings.deepfm.model_copy(update={"use_standins": False}),
        ranker_name="deepfm",
        seed=settings.seed,
    )


def models_to_run(seed: int, with_lightgbm: bool) -> dict[str, ModelSettings]:
    deepfm = ModelSettings.seeded(seed, "deepfm")
    models = {"DeepFM with stand-ins": deepfm, "DeepFM without stand-ins": _without_standins(deepfm)}
    if with_lightgbm:
        models["LightGBM"] = ModelSettings.seeded(seed)
    return models


def scoring_latency(fitted: FittedRanker, users: np.ndarray, pool: np.ndarray, exclude: Any) -> float:
    """Seconds to score 1,000 users against `pool` (the first 1,000 of `users`), after one warm-up batch."""
    scorer = fitted.ranker.scorer(fitted.served.inputs, exclude=exclude)
    chosen = users[:1000]
    scorer(chosen[:10], pool)
    started = time.perf_counter()
    for start in range(0, chosen.size, 250):
        scorer(chosen[start : start + 250], pool)
    return (time.perf_counter() - started) * 1000 / chosen.size


def row(model: str, protocol: str, result: EvalResult, extra: dict[str, Any]) -> dict[str, Any]:
    segments = sorted(set(result.metrics["segment"].to_list()))
    values = {f"{m}/{segment}": result.value(m, segment) for m in ("recall", "ndcg") for segment in segments}
    return {"model": model, "protocol": protocol, "n_users": result.n_users, "metrics": values} | extra


def citeulike(data: Path, cache: Path, k: int, models: dict[str, ModelSettings]) -> list[dict[str, Any]]:
    dataset = load_citeulike(data)
    plan = aldi_plan(dataset, COLD_ITEM)
    first = next(iter(models.values()))
    started = time.perf_counter()
    encoded = encode_inputs(
        plan.split.index,
        plan.split.items,
        plan.fit_history,
        cache_dir=cache,
        cf_config=first.cf,
        standin_config=first.standins,
        cf_validation=plan.cf_validation,
    )
    log.info("encoded in %.1f s", time.perf_counter() - started)
    splits = {
        "cold": cold_item_split(dataset, "cold_item_test"),
        "warm": warm_split(dataset, "warm_test"),
        "hybrid": hybrid_split(dataset, "test"),
    }
    rows = []
    for name, settings in models.items():
        started = time.perf_counter()
        ranker = train_ranker(plan, encoded, settings)
        fit_seconds = time.perf_counter() - started
        fitted = FittedRanker(ranker, encoded, {})
        meta = ranker.metadata
        extra: dict[str, Any] = {"fit_seconds": round(fit_seconds, 1)}
        if settings.ranker_name == "deepfm":
            extra |= {
                "seconds_per_epoch": meta["seconds_per_epoch"],
                "epochs_run": len(meta["epochs"]),
                "best_epoch": meta["best_epoch"],
                f"valid_ndcg@{k}": meta[f"valid_ndcg@{settings.deepfm.eval_k}"],
            }
        else:
            extra |= {"best_iteration": meta["best_iteration"]}
        for protocol, split in splits.items():
            exclude = interaction_matrix(split.exclude, split.index)
            result = fitted.evaluate(split, k)
            protocol_extra = dict(extra, eval_seconds=round(result.seconds, 1))
            protocol_extra["ms_per_1000_users"] = round(
                1000 * scoring_latency(fitted, split.users, split.candidates, exclude), 1
            )
            rows.append(row(name, protocol, result, protocol_extra))
            log.info("%s %s %s", name, protocol, rows[-1])
    return rows


def movielens(cache: Path, k: int, models: dict[str, ModelSettings]) -> list[dict[str, Any]]:
    dataset = load_movielens_100k(fetch_movielens_100k(cache))
    split = temporal_split(dataset.interactions, dataset.items)
    rows = []
    for name, settings in models.items():
        started = time.perf_counter()
        fitted = fit_ranker(holdout_plan(split), cache_dir=cache, settings=settings)
        extra = {"fit_seconds": round(time.perf_counter() - started, 1)}
        if settings.ranker_name == "deepfm":
            extra |= {"seconds_per_epoch": fitted.ranker.metadata["seconds_per_epoch"]}
        result = fitted.evaluate(split, k)
        rows.append(row(name, "ml100k-temporal", result, extra))
        log.info("%s %s", name, rows[-1])
    return rows


def markdown(rows: list[dict[str, Any]], k: int) -> str:
    lines = [
        f"| data / protocol | model | users | Recall@{k} (overall / cold / warm-or-head) | NDCG@{k} (same) | extra |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        m = r["metrics"]
        segments = [s for s in ("overall", "cold", "head", "tail") if f"recall/{s}" in m]
        recall = " / ".join(f"{s} {m[f'recall/{s}']:.4f}" for s in segments)
        ndcg = " / ".join(f"{s} {m[f'ndcg/{s}']:.4f}" for s in segments)
        extra = {key: value for key, value in r.items() if key not in ("model", "protocol", "n_users", "metrics")}
        lines.append(f"| {r['protocol']} | {r['model']} | {r['n_users']:,} | {recall} | {ndcg} | {extra} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="data set and embedding cache")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--skip-lightgbm", action="store_true", help="DeepFM only")
    parser.add_argument("--skip-citeulike", action="store_true")
    parser.add_argument("--skip-ml100k", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    models = models_to_run(args.seed, not args.skip_lightgbm)
    rows: list[dict[str, Any]] = []
    if not args.skip_citeulike:
        rows += citeulike(args.data, args.cache, args.k, models)
    if not args.skip_ml100k:
        rows += movielens(args.cache, args.k, models)
    print(markdown(rows, args.k))
    if args.json is not None:
        write_report(args.json, "deepfm", data=args.data, k=args.k, seconds=time.perf_counter() - started, results=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
