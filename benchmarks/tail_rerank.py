"""Calibrated tail exposure (ranker.rerank) on MovieLens-100K's temporal split: what it buys and what it costs.

Strengths are compared on a validation split (the training log cut again at its own 80% event, the ranker
refitted there) by two rules: what the product should serve, the largest strength whose validation overall
NDCG@K stays within 0.005 (the gate's tolerance) of the ranker as it is; and the tail option, the strength with
the best validation tail Recall@K. The test split is read once per strength of the grid, every figure printed,
nothing chosen on it; differences from strength 0 get a 95% paired bootstrap interval over users.

Run: `.venv/bin/python benchmarks/tail_rerank.py [--json out.json]` (MovieLens-100K is fetched into .cache/).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import polars as pl
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from benchmarks._report import write_report  # noqa: E402
from catalog import Columns, Segments, fetch_movielens_100k, load_movielens_100k  # noqa: E402
from ranker.evaluate import EvalResult, ProtocolSplit, evaluate, interaction_matrix, temporal_split  # noqa: E402
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402
from ranker.rerank import tail_rerank_scorer, tail_share_targets  # noqa: E402
from training import ModelSettings, fit_ranker, holdout_plan  # noqa: E402

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
TOLERANCE = 0.005
SHOWN = ("recall", "ndcg", "tail recall", "coverage", "gini", "aplt")


def _mask(split: ProtocolSplit, segment: str) -> np.ndarray:
    members = split.item_segments.filter(pl.col(Columns.segment) == segment)[Columns.item]
    return np.isin(split.index.item_ids.to_numpy(), members.to_numpy())


def _figures(result: EvalResult) -> dict[str, float]:
    return {
        "recall": result.value("recall"),
        "ndcg": result.value("ndcg"),
        "tail recall": result.value("recall", Segments.tail),
        "coverage": result.value("coverage"),
        "gini": result.value("gini"),
        "aplt": result.value("aplt"),
    }


def _runs(split: ProtocolSplit, cache: Path, k: int, strengths: tuple[float, ...]) -> dict[float, EvalResult]:
    """Fit the default ranker for `split` once; evaluate it re-ranked at each strength."""
    fitted = fit_ranker(holdout_plan(split), cache_dir=cache, settings=ModelSettings.seeded(0))
    exclude = interaction_matrix(split.exclude, split.index)
    base = fitted.ranker.scorer(fitted.served.inputs, exclude=exclude)
    is_tail, is_cold = _mask(split, Segments.tail), _mask(split, Segments.cold)
    targets = tail_share_targets(interaction_matrix(split.train, split.index), is_tail)
    return {  # tail items displace head items only, as in training.tail_calibrated
        strength: evaluate(
            split, tail_rerank_scorer(base, is_tail, targets, k=k, strength=strength, protect=is_cold), k=k
        )
        for strength in strengths
    }


def _per_user(result: EvalResult, truth: pl.DataFrame, k: int) -> pl.DataFrame:
    return per_user_accuracy(result.recs, truth, k).select(Columns.user, "recall", "ndcg")


def main(
    k: Annotated[int, typer.Option(help="Cut-off of every metric.")] = 20,
    cache: Annotated[Path, typer.Option(help="Cache of the data set and the text embeddings.")] = REPO / ".cache",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    started = time.perf_counter()
    dataset = load_movielens_100k(fetch_movielens_100k(cache))
    test = temporal_split(dataset.interactions, dataset.items)
    valid = temporal_split(test.train, dataset.items)  # the training log cut at its own 80% event

    print(f"validation ({valid.name}, {valid.n_users} users): strength | " + " | ".join(SHOWN))
    on_valid = {s: _figures(r) for s, r in _runs(valid, cache, k, GRID).items()}
    for strength, figures in on_valid.items():
        print(f"| {strength} | " + " | ".join(f"{figures[m]:.4f}" for m in SHOWN) + " |")
    floor = on_valid[0.0]["ndcg"] - TOLERANCE
    served = max(s for s, figures in on_valid.items() if figures["ndcg"] >= floor)
    option = max(on_valid, key=lambda s: (on_valid[s]["tail recall"], -s))
    print(f"served strength {served} (largest with validation NDCG@{k} >= {floor:.4f}); tail option {option}")

    on_test = _runs(test, cache, k, GRID)
    print(f"test ({test.name}, {test.n_users} users): strength | " + " | ".join(SHOWN))
    for strength, result in on_test.items():
        figures = _figures(result)
        print(f"| {strength} | " + " | ".join(f"{figures[m]:.4f}" for m in SHOWN) + " |")
    tail_items = test.item_segments.filter(pl.col(Columns.segment) == Segments.tail).select(Columns.item)
    tail_truth = test.truth.join(tail_items, on=Columns.item, how="semi")
    differences: dict[str, Any] = {}
    for strength in GRID[1:]:
        for label, truth, metric in (
            ("overall ndcg", test.truth, "ndcg"),
            ("overall recall", test.truth, "recall"),
            ("tail recall", tail_truth, "recall"),
        ):
            before, after = (_per_user(on_test[s], truth, k) for s in (0.0, strength))
            paired = before.join(after, on=Columns.user, suffix="_after")  # the same users, aligned
            mean, low, high = bootstrap_difference(paired[f"{metric}_after"].to_numpy(), paired[metric].to_numpy())
            differences[f"{strength} {label}"] = {"difference": mean, "ci95": [low, high], "users": before.height}
            print(f"strength {strength} - 0, {label}@{k}: {mean:+.4f} [{low:+.4f}, {high:+.4f}], {before.height} users")
    seconds = time.perf_counter() - started
    print(f"{seconds:.0f} s")
    if json_out is not None:
        results = [
            {"validation": {str(s): f for s, f in on_valid.items()}, "served": served, "tail_option": option},
            {"test": {str(s): _figures(r) for s, r in on_test.items()}, "differences": differences},
        ]
        write_report(json_out, "tail_rerank", data=cache / "ml-100k", k=k, seconds=seconds, results=results)


if __name__ == "__main__":
    typer.run(main)
