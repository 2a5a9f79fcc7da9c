"""MovieLens-100K under the temporal protocol: the ranker against popularity and recent popularity, per segment.

Every choice is made on a validation window: the test split's training log is itself cut at its 80% (its last fifth
of events is the validation window), the ranker and the baselines are fitted on what comes before, and the grid
(ranker settings x tail quota strength x cold-item slots, recent popularity's window) is scored there. The chosen
setting is then fitted on the whole training log and the test window is read once. Differences on test come with
paired 95% bootstrap intervals over users.

Run: `python benchmarks/ml100k_temporal.py [--json out.json]` (MovieLens-100K is fetched into .cache/ on first use).
"""

from __future__ import annotations

import copy
import itertools
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
from ranker.baselines import PopularityScorer, RecentPopularityScorer  # noqa: E402
from ranker.evaluate import (  # noqa: E402
    COLD_USER,
    WARM_USER,
    EvalResult,
    ProtocolSplit,
    Scorer,
    evaluate,
    interaction_matrix,
    temporal_split,
)
from ranker.lightgbm_ranker import LightGBMRanker  # noqa: E402
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402
from ranker.rerank import tail_rerank_scorer, tail_share_targets  # noqa: E402
from training import FittedRanker, ModelSettings, fit_ranker, holdout_plan  # noqa: E402

SEGMENTS = (Segments.overall, Segments.head, Segments.tail, Segments.cold, COLD_USER, WARM_USER)
# The grid, scored on the validation window only: where boosting starts (recent popularity's weight) x warming
# cold items' stand-ins by synthetic interactions (the default chosen on CiteULike) x tail re-ranking x cold places.
# (cold_user_share 0.3 lost to 0 on this window in the previous run of this script: dropped.)
RANKER_GRID: tuple[dict[str, Any], ...] = tuple(
    {"prior_weight": weight, "warming": warming} for weight in (0.0, 1.0, 2.0, 4.0, 8.0) for warming in (False, True)
)
TAIL_STRENGTHS = (0.0, 0.5)
COLD_SLOTS = (0, 1, 2)
RECENT_DAYS = (7, 14, 28)
# What the issue asks of the chosen setting, checked on validation before it is chosen.
COLD_FLOOR, TAIL_FLOOR = 0.0375, 0.02


def row(name: str, result: EvalResult) -> str:
    cells = [f"{result.value('recall', s):.4f} / {result.value('ndcg', s):.4f}" for s in SEGMENTS]
    beyond = " / ".join(f"{result.value(m):.3f}" for m in ("coverage", "gini", "aplt"))
    return f"| {name} | " + " | ".join(cells) + f" | {beyond} |"


def served(fitted: FittedRanker, split: ProtocolSplit, k: int, tail_strength: float, cold_slots: int) -> Scorer:
    """The fitted ranker's scorer with `cold_slots` places for the best-scored cold items (its config's option),
    its top k then re-ranked toward each user's tail share (ranker.rerank)."""
    inputs = fitted.served.inputs
    exclude = interaction_matrix(split.exclude, split.index)
    ranker = copy.copy(fitted.ranker)
    assert isinstance(ranker, LightGBMRanker) and ranker.config.eval_k == k
    ranker.config = ranker.config.model_copy(update={"cold_slots": cold_slots})
    scorer = ranker.scorer(inputs, exclude=exclude)
    tail_ids = split.item_segments.filter(pl.col(Columns.segment) == Segments.tail)[Columns.item]
    is_tail = np.isin(np.arange(split.index.n_items), split.index.items(tail_ids))
    if tail_strength > 0:
        targets = tail_share_targets(inputs.history, is_tail)
        scorer = tail_rerank_scorer(scorer, is_tail, targets, k=k, strength=tail_strength, exclude=exclude)
    return scorer


def settings_for(update: dict[str, Any]) -> ModelSettings:
    """The seeded defaults with the ranker's `update` (and `warming`: True for the default warming, False for none)."""
    update = dict(update)
    defaults = ModelSettings.seeded(0)
    warming = defaults.warming if update.pop("warming", True) else None
    ranker = defaults.ranker.model_copy(update=update)
    # timed=None: every setting is the grid's, not the product's choice for logs with times.
    return ModelSettings(cf=defaults.cf, standins=defaults.standins, ranker=ranker, warming=warming, timed=None)


def interval(first: EvalResult, second: EvalResult, split: ProtocolSplit, k: int, metric: str) -> str:
    """Mean difference over the evaluated users with its paired 95% bootstrap interval."""
    a = per_user_accuracy(first.recs, split.truth, k).select(Columns.user, metric)
    b = per_user_accuracy(second.recs, split.truth, k).select(Columns.user, metric)
    both = a.join(b, on=Columns.user, suffix="_b")
    mean, low, high = bootstrap_difference(both[metric].to_numpy(), both[f"{metric}_b"].to_numpy())
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def main(
    k: Annotated[int, typer.Option(help="Cut-off of every metric.")] = 20,
    cache: Annotated[Path, typer.Option(help="Cache of the data set and the text embeddings.")] = REPO / ".cache",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    started = time.perf_counter()
    dataset = load_movielens_100k(fetch_movielens_100k(cache))
    test = temporal_split(dataset.interactions, dataset.items)
    valid = temporal_split(test.train, dataset.items)
    header = f"| model (Recall@{k} / NDCG@{k}) | " + " | ".join(SEGMENTS) + " | coverage / Gini / APLT |"
    rule = "| --- |" + " --- |" * (len(SEGMENTS) + 1)
    results: list[dict[str, Any]] = []

    print(f"validation: {valid.name}, {valid.n_users} users\n\n{header}\n{rule}")
    scored: list[tuple[str, dict[str, Any], float, int, EvalResult]] = []
    for days in RECENT_DAYS:
        result = evaluate(valid, RecentPopularityScorer(days).fit(valid.train, valid.index), k=k)
        print(row(f"recent popularity {days}d", result))
        scored.append((f"recent{days}", {}, 0.0, days, result))
    popular = evaluate(valid, PopularityScorer().fit(valid.train, valid.index), k=k)
    print(row("popularity", popular))
    for update in RANKER_GRID:
        fitted = fit_ranker(holdout_plan(valid), cache_dir=cache, settings=settings_for(update))
        for strength, slots in itertools.product(TAIL_STRENGTHS, COLD_SLOTS):
            result = evaluate(valid, served(fitted, valid, k, strength, slots), k=k)
            print(row(f"ranker {update or 'default'}, tail {strength}, cold slots {slots}", result))
            scored.append(("ranker", update, strength, slots, result))
    for name, update, strength, extra, result in scored:
        results.append(
            {"window": "validation", "model": name, "ranker": update, "tail_strength": strength, "extra": extra}
            | {f"{m}/{s}": result.value(m, s) for m in ("recall", "ndcg") for s in SEGMENTS}
        )

    best_recent = max((s for s in scored if s[0].startswith("recent")), key=lambda s: s[4].value("ndcg"))
    recent_days, line = best_recent[3], best_recent[4].value("ndcg")
    rankers = [s for s in scored if s[0] == "ranker"]
    # The rule: the best NDCG among settings that meet the floors and beat recent popularity's NDCG; failing
    # that, among those that meet the floors; failing that, among all.
    floors = [
        s
        for s in rankers
        if s[4].value("recall", Segments.cold) >= COLD_FLOOR and s[4].value("recall", Segments.tail) > TAIL_FLOOR
    ]
    beating = [s for s in floors if s[4].value("ndcg") >= line]
    chosen = max(beating or floors or rankers, key=lambda s: s[4].value("ndcg"))
    _, update, strength, slots, _ = chosen
    tier = "floors and recent popularity" if beating else "floors only" if floors else "neither"
    print(
        f"\nchosen on validation: ranker {update or 'default'}, tail strength {strength}, cold slots {slots} "
        f"(meets {tier}: cold >= {COLD_FLOOR}, tail > {TAIL_FLOOR}, NDCG >= {line:.4f}); "
        f"recent popularity over {recent_days} days"
    )

    print(f"\ntest: {test.name}, {test.n_users} users (read once)\n\n{header}\n{rule}")
    baselines: dict[str, EvalResult] = {
        "popularity": evaluate(test, PopularityScorer().fit(test.train, test.index), k=k),
        f"recent popularity {recent_days}d": evaluate(
            test, RecentPopularityScorer(recent_days).fit(test.train, test.index), k=k
        ),
    }
    fitted = fit_ranker(holdout_plan(test), cache_dir=cache, settings=settings_for(update))
    plain = evaluate(test, served(fitted, test, k, 0.0, 0), k=k)
    final = evaluate(test, served(fitted, test, k, strength, slots), k=k)
    shown: list[tuple[str, EvalResult]] = [
        *baselines.items(),
        (f"ranker {update or 'default'}, no re-ranking", plain),
        (f"ranker {update or 'default'}, tail {strength}, cold slots {slots} (chosen)", final),
    ]
    for name, result in shown:
        print(row(name, result))
        results.append(
            {"window": "test", "model": name}
            | {f"{m}/{s}": result.value(m, s) for m in ("recall", "ndcg") for s in SEGMENTS}
        )
    print("\nDifferences on test, mean over users [95% paired bootstrap interval]:\n")
    print(f"| chosen ranker minus | Recall@{k} | NDCG@{k} |\n| --- | --- | --- |")
    comparisons: list[tuple[str, EvalResult]] = [*baselines.items(), ("the ranker without re-ranking", plain)]
    for name, other in comparisons:
        cells = [interval(final, other, test, k, metric) for metric in ("recall", "ndcg")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.0f} s")
    if json_out is not None:
        write_report(json_out, "ml100k_temporal", data=cache, k=k, seconds=seconds, results=results)


if __name__ == "__main__":
    typer.run(main)
