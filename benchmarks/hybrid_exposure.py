"""Cold items next to warm ones (CiteULike's hybrid protocol): how many of the top K the ranker should keep for its
best-scored cold items, chosen on validation, and the warm figure beside BPR-MF refitted on the ranker's data.

The default product (warming on) is fitted once as `warmstart evaluate --protocol hybrid` fits it. The LightGBM
ranker's `cold_slots` (places of the top K kept for the best-scored items without history where it ranked fewer
there) is searched on `hybrid_val`; the chosen value has the best overall NDCG@K. The test split is read once
for 0 slots and once for the chosen value, with 95% paired bootstrap intervals over users. The warm reference:
BPR-MF refitted on warm_emb + warm_val (what the ranker learns from), for as many epochs as early stopping chose
on warm_emb, scored on warm_test against the ranker's warm figure.

Run: `.venv/bin/python benchmarks/hybrid_exposure.py --data ../shared/datasets/citeulike-a [--json out.json]`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from benchmarks._report import write_report  # noqa: E402
from benchmarks.cf_mapper import cf_scorer  # noqa: E402
from benchmarks.warming import _differences, _figures, _row  # noqa: E402
from catalog import load_citeulike  # noqa: E402
from encoders import BPRMF  # noqa: E402
from ranker.evaluate import EvalResult, evaluate, hybrid_split, warm_split  # noqa: E402
from training import FittedRanker, ModelSettings, aldi_plan, fit_ranker  # noqa: E402

SLOTS = (0, 2, 4, 6, 8)


def _with_slots(fitted: FittedRanker, slots: int) -> FittedRanker:
    ranker = fitted.ranker
    ranker.config = ranker.config.model_copy(update={"cold_slots": slots})  # type: ignore[attr-defined]
    return fitted


def main(
    data: Annotated[Path, typer.Option(help="Folder of CiteULike-a (titles.txt, users.dat, ALDI splits).")],
    k: Annotated[int, typer.Option(help="Cut-off of every metric.")] = 20,
    cache: Annotated[Path, typer.Option(help="Cache of the text embeddings.")] = REPO / ".cache",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    started = time.perf_counter()
    dataset = load_citeulike(data)
    plan = aldi_plan(dataset, "hybrid")
    fitted = fit_ranker(plan, cache_dir=cache, settings=ModelSettings.seeded(0))
    print(f"fitted in {time.perf_counter() - started:.0f} s", flush=True)
    valid = hybrid_split(dataset, "val")
    on_valid: dict[int, dict[str, float]] = {}
    for slots in SLOTS:
        on_valid[slots] = _figures(_with_slots(fitted, slots).evaluate(valid, k))
        print(_row(f"cold_slots {slots}", on_valid[slots]), flush=True)
    chosen = max(SLOTS, key=lambda slots: (on_valid[slots]["ndcg"], -slots))
    print(f"chosen on hybrid_val: cold_slots {chosen}")

    test = plan.split
    results: dict[int, EvalResult] = {slots: _with_slots(fitted, slots).evaluate(test, k) for slots in {0, chosen}}
    on_test: dict[str, Any] = {str(slots): _figures(result) for slots, result in results.items()}
    for slots, result in results.items():
        print(_row(f"test cold_slots {slots}", _figures(result)))
    if chosen:
        on_test["difference"] = _differences(results[0], results[chosen], test.truth, k)
        for metric, diff in on_test["difference"].items():
            low, high = diff["ci95"]
            print(f"  {metric}@{k} cold_slots {chosen} - 0: {diff['difference']:+.4f} [{low:+.4f}, {high:+.4f}]")

    warm = warm_split(dataset, "warm_test")
    ranker_warm = _with_slots(fitted, 0).evaluate(warm, k)
    epochs = max(int(fitted.report.fit.bprmf["best_epoch"]), 1)
    refit = BPRMF(ModelSettings.seeded(0).cf.model_copy(update={"epochs": epochs}))
    refit.fit(pl.concat([dataset.splits["warm_emb"], dataset.splits["warm_val"]]), show_progress=True)
    bpr_warm = evaluate(warm, cf_scorer(refit.embeddings, warm.index), k=k)
    warm_figures = {"ranker": _figures(ranker_warm), "bprmf_refit": _figures(bpr_warm), "bpr_epochs": epochs}
    warm_figures["difference"] = _differences(bpr_warm, ranker_warm, warm.truth, k)
    print(_row("warm test, ranker", warm_figures["ranker"]))
    print(_row(f"warm test, BPR-MF on warm_emb + warm_val ({epochs} epochs)", warm_figures["bprmf_refit"]))
    for metric, diff in warm_figures["difference"].items():
        low, high = diff["ci95"]
        print(f"  warm {metric}@{k} ranker - BPR-MF refit: {diff['difference']:+.4f} [{low:+.4f}, {high:+.4f}]")
    seconds = time.perf_counter() - started
    print(f"{seconds:.0f} s")
    if json_out is not None:
        results_out = [{"validation": on_valid, "chosen": chosen}, {"test": on_test}, {"warm": warm_figures}]
        write_report(json_out, "hybrid_exposure", data=data, k=k, seconds=seconds, results=results_out)


if __name__ == "__main__":
    typer.run(main)
