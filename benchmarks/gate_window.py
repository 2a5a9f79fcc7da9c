"""The backfill gate's comparison for two consecutive MovieLens-100K windows, taken apart per user segment.

`make demo`'s gate once kept the ranker of 1997-11-19 in service: scored over the 1997-12-19 window's features it
beat the booster trained for that window (overall NDCG@20 0.2097 against 0.0594). This script replays exactly that
comparison (the backfill's windows, plan, settings and scoring) and prints each model per segment, beside
popularity and recent popularity on the same split, so the cause shows where it lives (users without history).

Run: `.venv/bin/python benchmarks/gate_window.py [--every 30d] [--window 2]` (MovieLens-100K is fetched into .cache/).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

import training  # noqa: E402
from catalog import Columns, fetch_movielens_100k, load_movielens_100k  # noqa: E402
from flows.backfill import parse_every, time_windows  # noqa: E402
from ranker.baselines import PopularityScorer, RecentPopularityScorer  # noqa: E402
from ranker.evaluate import COLD_USER, WARM_USER, EvalResult, evaluate, temporal_split  # noqa: E402

SEGMENTS = ("overall", "tail", "cold", COLD_USER, WARM_USER)


def row(name: str, result: EvalResult) -> str:
    cells = []
    for segment in SEGMENTS:
        try:
            cells.append(f"{result.value('recall', segment):.4f} / {result.value('ndcg', segment):.4f}")
        except KeyError:  # no held-out positive in this segment
            cells.append("n/a")
    return f"| {name} | " + " | ".join(cells) + " |"


def main(
    every: Annotated[str, typer.Option(help="Window length, as the backfill's --every.")] = "30d",
    window: Annotated[int, typer.Option(min=1, help="Index of the later window (the earlier is window - 1).")] = 2,
    max_epochs: Annotated[int, typer.Option(help="Most BPR-MF epochs, as the backfill's --max-epochs.")] = 150,
    cache: Annotated[Path, typer.Option(help="Cache of the data set and the text embeddings.")] = REPO / ".cache",
) -> None:
    dataset = load_movielens_100k(fetch_movielens_100k(cache))
    times = dataset.interactions[Columns.ts]
    windows = time_windows(times.min(), times.max(), parse_every(every))
    models = training.ModelSettings.capped(0, max_epochs)
    fitted = {}
    for position in (window - 1, window):
        w = windows[position]
        split = temporal_split(dataset.interactions, dataset.items, cut=w.end, end=w.next_end)
        fitted[position] = (split, training.fit_ranker(training.holdout_plan(split), cache_dir=cache, settings=models))
    split, candidate = fitted[window]
    earlier = fitted[window - 1][1]
    end, before = windows[window].end, windows[window - 1].end
    users = split.user_segments
    n_cold = users.filter(users[Columns.segment] == COLD_USER).height if users is not None else 0
    print(f"window ending {end:%Y-%m-%d}: {split.n_users} evaluated users, {n_cold} without history")
    print("| model (Recall@20 / NDCG@20) | " + " | ".join(SEGMENTS) + " |")
    print("| --- |" + " --- |" * len(SEGMENTS))
    print(row(f"candidate trained for {end:%Y-%m-%d}", candidate.evaluate(split, 20)))
    incumbent = training.FittedRanker(earlier.ranker, candidate.served)
    print(row(f"incumbent of {before:%Y-%m-%d} on the same features", incumbent.evaluate(split, 20)))
    print(row("popularity", evaluate(split, PopularityScorer().fit(split.train, split.index), k=20)))
    print(
        row(
            "recent popularity (28 days)", evaluate(split, RecentPopularityScorer().fit(split.train, split.index), k=20)
        )
    )


if __name__ == "__main__":
    typer.run(main)
