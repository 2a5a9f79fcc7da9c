"""MovieLens-100K under the temporal protocol: popularity against warmstart's ranker, per segment.

Run: `.venv/bin/python benchmarks/ml100k_temporal.py [--cold-user-share 0.0 0.3]` (MovieLens-100K is fetched into
.cache/ on first use). Prints Recall@K and NDCG@K for overall, head, tail, cold items, cold and warm users.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from catalog import fetch_movielens_100k, load_movielens_100k  # noqa: E402
from flows.pipeline import ModelSettings, fit_ranker, holdout_plan  # noqa: E402
from ranker.baselines import PopularityScorer  # noqa: E402
from ranker.evaluate import EvalResult, evaluate, temporal_split  # noqa: E402

SEGMENTS = ("overall", "head", "tail", "cold", "cold_user", "warm_user")


def row(name: str, result: EvalResult) -> str:
    cells = [f"{result.value('recall', s):.4f} / {result.value('ndcg', s):.4f}" for s in SEGMENTS]
    return f"| {name} | " + " | ".join(cells) + " |"


def main(
    cold_user_share: Annotated[
        list[float] | None, typer.Option(help="Ranker settings to try (users shown as cold).")
    ] = None,
    k: Annotated[int, typer.Option(help="Cut-off of every metric.")] = 20,
    cache: Annotated[Path, typer.Option(help="Cache of the data set and the text embeddings.")] = REPO / ".cache",
) -> None:
    dataset = load_movielens_100k(fetch_movielens_100k(cache))
    split = temporal_split(dataset.interactions, dataset.items)
    print(f"| model (Recall@{k} / NDCG@{k}) | " + " | ".join(SEGMENTS) + " |")
    print("| --- |" + " --- |" * len(SEGMENTS))
    print(row("popularity", evaluate(split, PopularityScorer().fit(split.train, split.index), k=k)))
    for share in cold_user_share or [0.0, 0.3]:
        defaults = ModelSettings.seeded(0)
        settings = ModelSettings(
            cf=defaults.cf, mapper=defaults.mapper, ranker=defaults.ranker.model_copy(update={"cold_user_share": share})
        )
        fitted = fit_ranker(holdout_plan(split), cache_dir=cache, settings=settings)
        print(row(f"warmstart ranker, cold_user_share {share}", fitted.evaluate(split, k)))


if __name__ == "__main__":
    typer.run(main)
