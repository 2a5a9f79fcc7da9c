"""CF and stand-in benchmark on CiteULike-a's ALDI split: BPR-MF warm Recall@K, content mapper cold Recall@K.

1. BPR-MF on warm_emb; each configuration of BPR_GRID stops early on warm_val Recall@K; the best one is evaluated on
   warm_test (ranker.evaluate's warm protocol: warm candidates, warm_emb and warm_val positives excluded).
2. Content mappers (MiniLM title embedding -> BPR item vector and bias) trained on the warm items: ridge, MLP
   regression, and MLP regression + ranking distillation with users drawn uniformly or from each item's own
   warm_emb positives (see encoders/_mapper.py). Every configuration of MAPPER_GRID is scored on cold_item_val
   (candidates: the cold_item_val items only, so that no test interaction is read while tuning); the best of each
   family is evaluated once on cold_item_test (ALDI's protocol: all cold items are candidates, each user's
   cold_item_val positives excluded; 4,846 users).
3. Stand-in users (validation only): warm_val Recall@K when users' trained vectors are replaced by vectors built
   from the items they touched in warm_emb (all of them, or 3 drawn at random to mimic sparse users).

    .venv/bin/python benchmarks/cf_mapper.py [--data DIR] [--k 20] [--threads 1] [--json OUT] [--quick]

Titles are encoded with `encoders.encode_texts` into the repo's git-ignored .cache/embeddings (first run: 16,980
titles, about 70 s on 2 idle cores). `--quick` skips the grids and runs the chosen configurations only.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from _report import write_report  # noqa: E402

from catalog import Columns, Dataset, load_citeulike  # noqa: E402
from encoders import (  # noqa: E402  # noqa: E402  # noqa: E402
    BPRMF,
    MODEL_NAME,
    BPRConfig,
    CFEmbeddings,
    ContentMapper,
    EmbeddingCache,
    MapperConfig,
    Transform,
    encode_texts,
    item_text,
    stand_in_users,
)
from encoders._cf import check_pairs, recall_at_k  # noqa: E402
from ranker.evaluate import EvalIndex, EvalResult, Scorer, cold_item_split, evaluate, warm_split  # noqa: E402

log = logging.getLogger("benchmarks.cf_mapper")

DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
COLD_TEST_USERS = 4846
REFERENCE = {"warm": 0.220, "cold": 0.236}  # BPR-MF and BPR-MF + ridge mapper, measured here earlier (Recall@20)

_BPR = {"epochs": 150, "patience": 5, "lr": 0.0025}
# First = the --quick choice. Development runs on warm_val (Recall@20): lr 0.01 -> 0.005 -> 0.0025 helped at every
# width (dim 128, reg 0.01: 0.199 / 0.219 / 0.228), and reg 0.01 -> 0.005 (0.241); lr 0.001 gave 0.230.
BPR_GRID: tuple[BPRConfig, ...] = (
    BPRConfig(dim=256, reg=0.005, **_BPR),
    BPRConfig(dim=128, reg=0.005, **_BPR),
    BPRConfig(dim=128, reg=0.002, **_BPR),
    BPRConfig(dim=64, reg=0.005, **_BPR),
)
_MLP = {"kind": "mlp", "epochs": 200, "eval_every": 5, "patience": 3}


@dataclass(frozen=True)
class Family:
    """Mapper configurations compared on cold_item_val; the first is the --quick choice."""

    configs: tuple[MapperConfig, ...]
    positives: bool = True  # distillation draws each item's users from its warm_emb positives (else uniformly)


MAPPER_GRID: dict[str, Family] = {
    "ridge": Family(tuple(MapperConfig(kind="ridge", alpha=alpha) for alpha in (1.0, 0.1, 10.0))),
    "MLP, regression": Family(
        (MapperConfig(**_MLP, distill_weight=0.0), MapperConfig(**_MLP, distill_weight=0.0, hidden=1024))
    ),
    "MLP, regression + distillation (uniform users)": Family(
        (MapperConfig(**_MLP, distill_weight=10.0),), positives=False
    ),
    "MLP, regression + distillation (item's users)": Family(
        tuple(MapperConfig(**_MLP, distill_weight=weight) for weight in (10.0, 1.0, 100.0))
    ),
}
SPARSE_ITEMS = 3


@dataclass
class Row:
    """One model on one split: its chosen configuration, validation Recall@K and (for test rows) all metrics."""

    stage: str
    model: str
    config: str
    val_recall: float
    test: EvalResult | None = None
    seconds: float = 0.0
    tried: dict[str, float] = field(default_factory=dict)

    def as_json(self, k: int) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "model": self.model,
            "config": self.config,
            f"val_recall@{k}": self.val_recall,
            "validation_grid": self.tried,
            "fit_seconds": round(self.seconds, 1),
            "n_users": self.test.n_users if self.test else None,
            "metrics": self.test.metrics.to_dicts() if self.test else None,
        }


_SHOWN = {
    "BPRConfig": ("dim", "lr", "reg", "batch_size"),
    "ridge": ("alpha",),
    "mlp": ("hidden", "lr", "dropout", "batch_size", "distill_weight", "temperature"),
}


def _label(config: BPRConfig | MapperConfig) -> str:
    """The hyperparameters that define a configuration (defaults included, so labels outlive default changes)."""
    keys = _SHOWN[config.kind if isinstance(config, MapperConfig) else "BPRConfig"]
    fields = config.model_dump()
    return ", ".join(f"{key}={fields[key]}" for key in keys)


def cf_scorer(embeddings: CFEmbeddings, index: EvalIndex) -> Scorer:
    """An evaluate() scorer over `index` ids; items the embeddings lack score -inf (they never reach candidates)."""
    user_rows = embeddings.user_index(index.user_ids)
    item_ids = index.item_ids.to_numpy().astype(str)
    slot = np.searchsorted(embeddings.item_ids, item_ids).clip(max=embeddings.item_ids.size - 1)
    item_rows = np.where(embeddings.item_ids[slot] == item_ids, slot, -1)

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows = item_rows[items]
        scores = embeddings.score(user_rows[users], rows.clip(min=0))
        scores[:, rows < 0] = -np.inf
        return scores

    return score


def fit_bpr(dataset: Dataset, grid: tuple[BPRConfig, ...], k: int) -> tuple[BPRMF, Row]:
    tried: dict[str, float] = {}
    best: BPRMF | None = None
    started = time.perf_counter()
    for config in grid:
        model = BPRMF(config).fit(dataset.splits["warm_emb"], dataset.splits["warm_val"], show_progress=True)
        tried[_label(config)] = model.summary[f"best_val_recall@{config.k}"]
        log.info("bpr config=%s summary=%s", _label(config), model.summary)
        if best is None or tried[_label(config)] > tried[_label(best.config)]:
            best = model
    assert best is not None
    label = f"{_label(best.config)}; best epoch {best.summary['best_epoch']}"
    row = Row("warm", "BPR-MF", label, tried[_label(best.config)], seconds=time.perf_counter() - started, tried=tried)
    return best, row


def fit_mappers(
    dataset: Dataset, cf: CFEmbeddings, features: np.ndarray, grid: dict[str, Family], k: int
) -> list[tuple[ContentMapper, Row]]:
    """Fit every mapper configuration; keep each family's best by cold_item_val Recall@k (val items only)."""
    row_of = {item: row for row, item in enumerate(dataset.items[Columns.item].to_list())}
    warm_features = features[[row_of[item] for item in cf.item_ids]]
    warm_pairs = check_pairs(dataset.splits["warm_emb"], "warm_emb")
    positives = (cf.user_index(warm_pairs[Columns.user]), cf.item_index(warm_pairs[Columns.item]))
    cold_val = check_pairs(dataset.splits["cold_item_val"], "cold_item_val")
    val_items = np.sort(cold_val[Columns.item].unique().to_numpy().astype(str))
    val_features = features[[row_of[item] for item in val_items]]
    none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def cold_val_recall(transform: Transform) -> float:
        stand_ins = cf.with_items(val_items, *transform(val_features))
        truth = (stand_ins.user_index(cold_val[Columns.user]), stand_ins.item_index(cold_val[Columns.item]))
        return recall_at_k(stand_ins, truth, none, k)

    chosen = []
    for family, members in grid.items():
        tried: dict[str, float] = {}
        best: tuple[float, ContentMapper] | None = None
        started = time.perf_counter()
        for config in members.configs:
            mapper = ContentMapper(config).fit(
                warm_features,
                cf.item_vectors,
                cf.item_bias,
                cf.user_vectors,
                positives=positives if members.positives else None,
                validation=cold_val_recall,
                show_progress=True,
            )
            label = _label(config) + (f"; best epoch {mapper.best_epoch}" if mapper.best_epoch else "")
            tried[label] = cold_val_recall(mapper.transform)
            log.info("mapper family=%s config=%s cold_val_recall=%.4f", family, label, tried[label])
            if best is None or tried[label] > best[0]:
                best = (tried[label], mapper)
        assert best is not None
        label = max(tried, key=lambda key: tried[key])
        chosen.append(
            (best[1], Row("cold", family, label, best[0], seconds=time.perf_counter() - started, tried=tried))
        )
    return chosen


def stand_in_user_rows(
    dataset: Dataset, cf: CFEmbeddings, mapper: ContentMapper, features: np.ndarray, k: int
) -> list[Row]:
    """warm_val Recall@k with trained user vectors replaced by stand-ins from warm_emb items (validation only)."""
    warm = check_pairs(dataset.splits["warm_emb"], "warm_emb")
    val = check_pairs(dataset.splits["warm_val"], "warm_val")
    truth = (cf.user_index(val[Columns.user]), cf.item_index(val[Columns.item]))
    seen = (cf.user_index(warm[Columns.user]), cf.item_index(warm[Columns.item]))
    sparse = warm.sample(fraction=1.0, shuffle=True, seed=0).group_by(Columns.user).head(SPARSE_ITEMS)
    row_of = {item: row for row, item in enumerate(dataset.items[Columns.item].to_list())}
    text_items = cf.with_items(cf.item_ids, *mapper.transform(features[[row_of[i] for i in cf.item_ids]]))
    bias_only = cf.with_users(cf.user_ids, np.zeros_like(cf.user_vectors))
    rows = [
        Row("users", "trained BPR-MF user vectors", "all warm_emb items", recall_at_k(cf, truth, seen, k)),
        Row("users", "zero user vectors (item bias only)", "none", recall_at_k(bias_only, truth, seen, k)),
    ]
    for history, frame in (("all warm_emb items", warm), (f"{SPARSE_ITEMS} random warm_emb items", sparse)):
        for items_label, items in (("CF item vectors", cf), ("mapped title vectors", text_items)):
            for method in ("mean", "fold_in"):
                started = time.perf_counter()
                user_ids, vectors = stand_in_users(frame, items, method=method)
                users = cf.with_users(user_ids, vectors)
                recall = recall_at_k(users, truth, seen, k)
                model = f"stand-in users: {method} of {items_label}"
                rows.append(Row("users", model, history, recall, seconds=time.perf_counter() - started))
                log.info("stand-in users %s from %s: warm_val recall=%.4f", model, history, recall)
    return rows


def run(dataset: Dataset, k: int, cache_root: Path, quick: bool) -> list[Row]:
    started = time.perf_counter()
    texts = item_text(dataset.items).to_list()
    features = encode_texts(texts, cache=EmbeddingCache(cache_root, MODEL_NAME), show_progress=True)
    log.info("title embeddings shape=%s seconds=%.1f", features.shape, time.perf_counter() - started)

    bpr, bpr_row = fit_bpr(dataset, BPR_GRID[:1] if quick else BPR_GRID, k)
    cf = bpr.embeddings
    warm = warm_split(dataset, "warm_test")
    bpr_row.test = evaluate(warm, cf_scorer(cf, warm.index), k)
    log.info("warm_test recall=%.4f", bpr_row.test.value("recall"))

    grid = {name: Family(f.configs[:1], f.positives) for name, f in MAPPER_GRID.items()} if quick else MAPPER_GRID
    mappers = fit_mappers(dataset, cf, features, grid, k)
    cold = cold_item_split(dataset, "cold_item_test")
    if cold.n_users != COLD_TEST_USERS:
        raise AssertionError(f"cold_item_test evaluates {cold.n_users} users; ALDI's protocol has {COLD_TEST_USERS}.")
    cold_ids = cold.index.item_ids.gather(cold.candidates).to_numpy().astype(str)
    cold_features = features[cold.candidates]  # the index's items are dataset.items, in order
    for mapper, row in mappers:
        row.test = evaluate(cold, cf_scorer(mapper.stand_in_items(cf, cold_ids, cold_features), cold.index), k)
        log.info("cold_item_test family=%s recall=%.4f", row.model, row.test.value("recall"))

    best_mapper = max(mappers, key=lambda pair: pair[1].val_recall)[0]
    return [bpr_row, *(row for _, row in mappers), *stand_in_user_rows(dataset, cf, best_mapper, features, k)]


def markdown(rows: list[Row], k: int) -> str:
    head = (
        f"| split | model | chosen on validation | val Recall@{k} | test users | Recall@{k} | NDCG@{k} "
        f"| Precision@{k} | reference Recall@{k} | fit s |\n" + "| --- " * 10 + "|"
    )
    lines = []
    for r in rows:
        split = {"warm": "warm_test", "cold": "cold_item_test", "users": "warm_val only"}[r.stage]
        reference = f"{REFERENCE[r.stage]:.3f}" if r.model in ("BPR-MF", "ridge") else "-"
        test = (
            f"{r.test.n_users:,} | {r.test.value('recall'):.4f} | {r.test.value('ndcg'):.4f} "
            f"| {r.test.value('precision'):.4f}"
            if r.test
            else "- | - | - | -"
        )
        lines.append(
            f"| {split} | {r.model} | {r.config} | {r.val_recall:.4f} | {test} | {reference} | {r.seconds:.0f} |"
        )
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder (titles.txt, splits/)")
    parser.add_argument("--k", type=int, default=20, help="cut-off K of every metric")
    # One thread by default: these models' small steps gain little from two, and lose several-fold when another
    # process shares the two cores (measured: 1.5 s vs 7 s per BPR epoch under load).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--quick", action="store_true", help="skip the grids: first configuration of each only")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings", help="embedding cache folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    rows = run(load_citeulike(args.data), args.k, args.cache, args.quick)
    total = time.perf_counter() - started
    print(markdown(rows, args.k))
    print(f"\ntotal {total:.0f} s, {datetime.now(UTC):%Y-%m-%d}, torch threads {args.threads}")
    if args.json is not None:
        rows_json = [row.as_json(args.k) for row in rows]
        write_report(args.json, "cf_mapper", data=args.data, k=args.k, seconds=total, results=rows_json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
