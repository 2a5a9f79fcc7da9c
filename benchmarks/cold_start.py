"""Cold-start benchmark: baselines on CiteULike-a's ALDI split under the cold-item, warm and hybrid protocols.

Every choice (TF-IDF settings, kNN aggregation) is made on the validation splits (cold_item_val, warm_val, both val
splits for hybrid) by Recall@K; the test splits are read once, for the reported figures. Results go to stdout as a
Markdown table and, with --json, to a file.

    .venv/bin/python benchmarks/cold_start.py [--data DIR] [--k 20] [--json OUT] [--protocols cold,warm,hybrid]

MiniLM title embeddings come from `encoders.encode_texts`, cached under the repo's git-ignored .cache/embeddings
(the first run encodes 16,980 titles: about 70 s on 2 idle cores).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from _report import write_report  # noqa: E402

from catalog import Columns, Dataset, load_citeulike  # noqa: E402
from encoders import MODEL_NAME, EmbeddingCache, encode_texts  # noqa: E402
from ranker.baselines import ContentKNNScorer, PopularityScorer, RandomScorer, tfidf_item_vectors  # noqa: E402
from ranker.evaluate import (  # noqa: E402
    COLD_ITEM,
    EvalResult,
    ProtocolSplit,
    Scorer,
    cold_item_split,
    evaluate,
    hybrid_split,
    warm_split,
)
from training import ModelSettings, aldi_plan, fit_ranker  # noqa: E402

log = logging.getLogger("benchmarks.cold_start")

DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
COLD_TEST_USERS = 4846  # ALDI's cold_item_test: users with at least one cold-test interaction
# TF-IDF settings tried on cold_item_val (title vocabulary); the winner is used for every protocol.
TFIDF_GRID: tuple[dict[str, Any], ...] = tuple(
    {"ngram_range": ngrams, "min_df": min_df, "sublinear_tf": sublinear, "stop_words": "english"}
    for ngrams, min_df, sublinear in (((1, 1), 1, True), ((1, 2), 1, True), ((1, 2), 2, True), ((1, 2), 2, False))
)
# kNN aggregations: None = mean similarity to all of the user's items, n = mean of the n most similar.
COLD_NEIGHBORS: tuple[int | None, ...] = (None, 3, 5, 10, 20)
# Top-n scoring over 13,584+ candidates takes about a minute per run here, so warm/hybrid try fewer.
WIDE_NEIGHBORS: tuple[int | None, ...] = (None, 5)


@dataclass
class Row:
    """One model under one protocol: the chosen configuration, its validation Recall@K and its test metrics."""

    protocol: str
    model: str
    config: str
    val_recall: float
    test: EvalResult
    tried: dict[str, float] = field(default_factory=dict)

    def as_json(self, k: int) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "model": self.model,
            "config": self.config,
            f"val_recall@{k}": self.val_recall,
            "validation_grid": self.tried,
            "n_users": self.test.n_users,
            "seconds": round(self.test.seconds, 2),
            "metrics": self.test.metrics.to_dicts(),
        }


def minilm_vectors(titles: list[str], cache_root: Path) -> np.ndarray:
    """all-MiniLM-L6-v2 title embeddings (L2-normalised), through the project's encoder and its cache."""
    return encode_texts(titles, cache=EmbeddingCache(cache_root, MODEL_NAME), show_progress=False)


def choose(
    val: ProtocolSplit, test: ProtocolSplit, candidates: dict[str, Callable[[], Scorer]], k: int
) -> tuple[str, float, EvalResult, dict[str, float]]:
    """Evaluate each candidate model on `val`, keep the best by Recall@k, evaluate only that one on `test`."""
    tried: dict[str, float] = {}
    for config, make in candidates.items():
        tried[config] = evaluate(val, _fitted(make(), val), k).value("recall")
        log.info("val protocol=%s split=%s config=%s recall=%.4f", val.protocol, val.name, config, tried[config])
    best = max(tried, key=lambda c: tried[c])
    return best, tried[best], evaluate(test, _fitted(candidates[best](), test), k), tried


def _fitted(model: Any, split: ProtocolSplit) -> Scorer:
    # Fit on the split's own training part: for these protocols warm_emb, the same for val and test.
    return model.fit(split.train, split.index)


def _knn(vectors: Any, neighbors: int | None) -> Callable[[], ContentKNNScorer]:
    return lambda: ContentKNNScorer(vectors, neighbors=neighbors)


def _tfidf_label(options: dict[str, Any]) -> str:
    low, high = options["ngram_range"]
    tf = "sublinear tf" if options["sublinear_tf"] else "raw tf"
    return f"TF-IDF word {low}-{high}-grams, min_df {options['min_df']}, {tf}, {options['stop_words']} stop words"


def _label(neighbors: int | None) -> str:
    return "mean over all history" if neighbors is None else f"mean of top {neighbors}"


def run(dataset: Dataset, protocols: list[str], k: int, cache_root: Path, with_ranker: bool = True) -> list[Row]:
    builders = {
        "cold": lambda: (cold_item_split(dataset, "cold_item_val"), cold_item_split(dataset, "cold_item_test")),
        "warm": lambda: (warm_split(dataset, "warm_val"), warm_split(dataset, "warm_test")),
        "hybrid": lambda: (hybrid_split(dataset, "val"), hybrid_split(dataset, "test")),
    }
    splits = {p: builders[p]() for p in protocols}
    titles = dataset.items[Columns.title].to_list()

    # TF-IDF settings are a property of the text representation: choose them once, on cold_item_val.
    cold_val = splits["cold"][0] if "cold" in splits else cold_item_split(dataset, "cold_item_val")
    tfidf_grid = {}
    for options in TFIDF_GRID:
        scorer = ContentKNNScorer(tfidf_item_vectors(titles, **options))
        tfidf_grid[_tfidf_label(options)] = evaluate(cold_val, _fitted(scorer, cold_val), k).value("recall")
        log.info("tfidf on cold_item_val options=%s recall=%.4f", options, tfidf_grid[_tfidf_label(options)])
    tfidf_options = max(TFIDF_GRID, key=lambda o: tfidf_grid[_tfidf_label(o)])
    tfidf = tfidf_item_vectors(titles, **tfidf_options)
    started = time.perf_counter()
    minilm = minilm_vectors(titles, cache_root)
    log.info("minilm vectors shape=%s seconds=%.1f", minilm.shape, time.perf_counter() - started)

    rows: list[Row] = []
    for protocol, (val, test) in splits.items():
        if protocol == "cold" and test.n_users != COLD_TEST_USERS:
            raise AssertionError(f"cold_item_test evaluates {test.n_users} users; ALDI's protocol has 4,846.")
        neighbors = COLD_NEIGHBORS if protocol == "cold" else WIDE_NEIGHBORS
        # Under the cold protocol every candidate has 0 training rows: popularity is then one fixed list.
        popularity = "train counts (all 0: a fixed list)" if protocol == "cold" else "train counts"
        models: dict[str, dict[str, Callable[[], Any]]] = {
            "random": {"seed 0": lambda: RandomScorer(seed=0)},
            "popularity": {popularity: PopularityScorer},
            "TF-IDF title kNN": {_label(n): _knn(tfidf, n) for n in neighbors},
            "MiniLM title kNN": {_label(n): _knn(minilm, n) for n in neighbors},
        }
        for model, candidates in models.items():
            config, val_recall, result, tried = choose(val, test, candidates, k)
            if model == "TF-IDF title kNN":
                config = f"{config}; {_tfidf_label(tfidf_options)}"
                tried = {**tried, **{f"cold_item_val, mean over all history; {o}": r for o, r in tfidf_grid.items()}}
            rows.append(Row(protocol, model, config, val_recall, result, tried))
            log.info("test protocol=%s model=%s recall=%.4f", protocol, model, result.value("recall"))
    if with_ranker:
        rows.extend(ranker_rows(dataset, splits, k, cache_root.parent))
    return rows


def ranker_rows(
    dataset: Dataset, splits: dict[str, tuple[ProtocolSplit, ProtocolSplit]], k: int, cache_dir: Path
) -> list[Row]:
    """warmstart's LightGBM ranker, trained once (labels warm_val, early stopping on cold_item_val), on every
    protocol. Its val figures are optimistic for cold: early stopping read cold_item_val."""
    started = time.perf_counter()
    fitted = fit_ranker(aldi_plan(dataset, COLD_ITEM), cache_dir=cache_dir, settings=ModelSettings())
    log.info("ranker fitted seconds=%.1f metadata=%s", time.perf_counter() - started, fitted.ranker.metadata)
    config = (
        f"BPR-MF + ridge mapper stand-ins + MiniLM/TF-IDF features; {fitted.ranker.metadata['best_iteration']} trees"
    )
    rows = []
    for protocol, (val, test) in splits.items():
        val_recall = fitted.evaluate(val, k).value("recall")
        result = fitted.evaluate(test, k)
        rows.append(Row(protocol, "warmstart LightGBM ranker", config, val_recall, result))
        log.info("test protocol=%s model=warmstart recall=%.4f", protocol, result.value("recall"))
    return rows


def markdown(rows: list[Row], k: int) -> str:
    head = (
        f"| protocol | model | chosen on val | val Recall@{k} | test users | Recall@{k} | NDCG@{k} | Precision@{k} "
        f"| coverage@{k} | seconds |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [
        f"| {r.protocol} | {r.model} | {r.config} | {r.val_recall:.4f} | {r.test.n_users:,} "
        f"| {r.test.value('recall'):.4f} | {r.test.value('ndcg'):.4f} | {r.test.value('precision'):.4f} "
        f"| {r.test.value('coverage'):.4f} | {r.test.seconds:.1f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder (titles.txt, splits/)")
    parser.add_argument("--k", type=int, default=20, help="cut-off K of every metric")
    parser.add_argument("--json", type=Path, default=None, help="also write every metric to this JSON file")
    parser.add_argument("--protocols", default="cold,warm,hybrid", help="comma-separated: cold, warm, hybrid")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings", help="embedding cache folder")
    parser.add_argument("--no-ranker", action="store_true", help="baselines only, without warmstart's ranker")
    args = parser.parse_args(argv)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(protocols) - {"cold", "warm", "hybrid"})
    if unknown:
        parser.error(f"unknown protocol(s) {unknown}; choose from cold, warm, hybrid")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    started = time.perf_counter()
    rows = run(load_citeulike(args.data), protocols, args.k, args.cache, with_ranker=not args.no_ranker)
    total = time.perf_counter() - started
    print(markdown(rows, args.k))
    print(f"\ntotal {total:.0f} s")
    if args.json is not None:
        rows_json = [row.as_json(args.k) for row in rows]
        write_report(args.json, "cold_start", data=args.data, k=args.k, seconds=total, results=rows_json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
