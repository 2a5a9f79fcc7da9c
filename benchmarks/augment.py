"""LLM augmentation measured against reality on CiteULike-a's ALDI split (bounded: sampled cold items).

Two questions, on seeded samples of cold items (the LLM writes ~100 tokens/s at best here, so describing
all 16,980 items or judging every candidate pair is out of reach):

A. Synthetic interactions: for each sampled `cold_item_val` item, the embedding filter proposes the top M
   users (cosine between the item's MiniLM title embedding and each user's mean title embedding over
   `warm_emb`); we keep n per item either by the filter's similarity alone or by the LLM judge's P(yes)
   (title only, or title + LLM description), and count how many kept pairs are real `cold_item_val`
   pairs: precision = real kept / kept, recall = real kept / all real pairs of the sampled items.
B. Ablation of cold Recall@20 / NDCG@20 on a sample of `cold_item_test` items, ranked by the MiniLM
   title kNN (mean of the top 3 similarities to the user's `warm_emb` items, the tuned cold baseline),
   with and without LLM descriptions in the item text and with and without synthetic interactions
   (score + w for a kept synthetic pair); descriptions enter either as text ("title. description") or as a
   vector mixed into the title's (weight alpha). n, w, alpha and the judge variant are chosen on the
   validation sample (by NDCG@K, then Recall@K); the test sample is read once. Every user with a positive
   among the sampled items is evaluated, ranking only the sampled items.

    .venv/bin/python benchmarks/augment.py [--val-items 80] [--test-items 80] [--top-m 8] [--backend local]
        [--json OUT]

Generated texts and judge scores are cached under .cache/generations by model (a rerun generates nothing). The
model is the product's default, SmolLM2 in llama.cpp with F16 weights; `--backend local` runs the transformers
fp32 reference (the runs before 2026-12-01 used it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _report import write_report  # noqa: E402

from augment import (  # noqa: E402
    DESCRIPTION,
    TITLES,
    GenerationCache,
    LlamaCppBackend,
    LocalBackend,
    candidate_users,
    describe_items,
    judge_pairs,
)
from catalog import Columns, load_citeulike  # noqa: E402
from encoders import EmbeddingCache, encode_texts  # noqa: E402
from ranker.metrics import accuracy_metrics  # noqa: E402

log = logging.getLogger("benchmarks.augment")
DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
KEEP_GRID = (1, 3, 5)
WEIGHT_GRID = (0.02, 0.05, 0.1, 0.2)
MIX_GRID = (0.1, 0.25, 0.5)


def unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def kept_pairs(scored: pl.DataFrame, column: str, n: int) -> pl.DataFrame:
    """The n best candidates per item by `column` (ties: higher similarity, then user id)."""
    return (
        scored.sort([Columns.item, column, "similarity", Columns.user], descending=[False, True, True, False])
        .group_by(Columns.item, maintain_order=True)
        .head(n)
        .select(Columns.user, Columns.item)
    )


def pair_quality(kept: pl.DataFrame, truth: pl.DataFrame) -> dict[str, float]:
    hits = kept.join(truth, on=[Columns.user, Columns.item], how="semi").height
    return {"kept": kept.height, "real": hits, "precision": hits / max(kept.height, 1), "recall": hits / truth.height}


def mean_item_auc(scored: pl.DataFrame, column: str, truth: pl.DataFrame) -> float:
    """Mean over items (with a real and a non-real candidate) of the AUC of `column` among the candidates."""
    labelled = scored.join(truth.with_columns(pl.lit(1).alias("_real")), on=[Columns.user, Columns.item], how="left")
    aucs = []
    for _, group in labelled.with_columns(pl.col("_real").fill_null(0)).group_by(Columns.item):
        real = group.filter(pl.col("_real") == 1)[column].to_numpy()
        other = group.filter(pl.col("_real") == 0)[column].to_numpy()
        if real.size and other.size:
            aucs.append(((real[:, None] > other[None, :]) + 0.5 * (real[:, None] == other[None, :])).mean())
    return float(np.mean(aucs)) if aucs else float("nan")


def knn_scores(
    user_history: list[np.ndarray], item_vectors: np.ndarray, pool: np.ndarray, neighbors: int = 3
) -> np.ndarray:
    """(users, pool) mean of the `neighbors` highest cosine similarities between a pool item and the user's items."""
    scores = np.zeros((len(user_history), pool.size), dtype=np.float32)
    for row, history in enumerate(user_history):
        if history.size:
            sims = item_vectors[history] @ item_vectors[pool].T  # (history, pool)
            top = np.sort(sims, axis=0)[-neighbors:]
            scores[row] = top.mean(axis=0)
    return scores


def ranking_metrics(
    scores: np.ndarray, users: list[str], pool_ids: np.ndarray, truth: pl.DataFrame, k: int
) -> dict[str, float]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    recs = pl.DataFrame(
        {
            Columns.user: np.repeat(np.asarray(users, dtype=object), order.shape[1]).tolist(),
            Columns.item: pool_ids[order].ravel().tolist(),
            Columns.rank: np.tile(np.arange(1, order.shape[1] + 1), len(users)),
        }
    )
    result = {}
    for cut in sorted({k, 5}):
        metrics = accuracy_metrics(recs, truth, cut).filter(pl.col(Columns.segment) == "overall")
        values = dict(zip(metrics[Columns.metric], metrics["value"], strict=True))
        result |= {f"recall@{cut}": values["recall"], f"ndcg@{cut}": values["ndcg"]}
    return result


class Sample:
    """One sampled set of cold items with its evaluated users, their histories and the real pairs."""

    def __init__(self, split: pl.DataFrame, items: np.ndarray, warm: pl.DataFrame, position: dict[str, int]) -> None:
        self.items = items
        self.truth = split.filter(pl.col(Columns.item).is_in(items.tolist())).select(Columns.user, Columns.item)
        self.users = sorted(self.truth[Columns.user].unique().to_list())
        grouped = dict(warm.group_by(Columns.user).agg(pl.col(Columns.item)).iter_rows())
        self.history = [np.array([position[i] for i in grouped.get(u, [])], dtype=np.int64) for u in self.users]
        self.pool = np.array([position[i] for i in items], dtype=np.int64)

    def evaluate(
        self, vectors: np.ndarray, k: int, boost: pl.DataFrame | None = None, weight: float = 0.0
    ) -> dict[str, float]:
        scores = knn_scores(self.history, vectors, self.pool)
        if boost is not None and weight:
            row = {u: r for r, u in enumerate(self.users)}
            col = {i: c for c, i in enumerate(self.items.tolist())}
            for user, item in boost.iter_rows():
                if user in row and item in col:
                    scores[row[user], col[item]] += weight
        result = ranking_metrics(scores, self.users, self.items, self.truth, k)
        return result | {"users": len(self.users), "items": int(self.items.size)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    dataset = load_citeulike(args.data)
    items = dataset.items
    splits = dataset.splits
    warm = splits["warm_emb"]
    position = {item: row for row, item in enumerate(items[Columns.item].to_list())}
    titles = items[Columns.title].to_list()
    log.info("MiniLM title embeddings for %d items (cached)", items.height)
    embeddings = EmbeddingCache(args.cache / "embeddings")
    title_vectors = unit(encode_texts(titles, cache=embeddings, show_progress=True))

    users = warm.group_by(Columns.user).agg(pl.col(Columns.item)).sort(Columns.user)
    user_ids = users[Columns.user].to_list()
    user_rows = [np.array([position[i] for i in row]) for row in users[Columns.item].to_list()]
    user_vectors = unit(np.stack([title_vectors[rows].mean(axis=0) for rows in user_rows]))
    # the judge sees each user's 5 most representative saved titles (closest to the user's mean vector)
    histories = pl.DataFrame(
        {
            Columns.user: user_ids,
            TITLES: [
                [titles[r] for r in rows[np.argsort(-(title_vectors[rows] @ vector), kind="stable")[: args.history]]]
                for rows, vector in zip(user_rows, user_vectors, strict=True)
            ],
        }
    )
    rng = np.random.default_rng(args.seed)
    samples = {}
    for name, split_name, size in (
        ("val", "cold_item_val", args.val_items),
        ("test", "cold_item_test", args.test_items),
    ):
        pool = np.array(sorted(splits[split_name][Columns.item].unique().to_list(), key=int), dtype=object)
        chosen = np.sort(rng.choice(pool.size, size=size, replace=False))
        samples[name] = Sample(splits[split_name], pool[chosen], warm, position)

    backend: LlamaCppBackend | LocalBackend = (
        LlamaCppBackend.smollm2(args.cache, batch_size=args.batch_size, threads=args.threads)
        if args.backend == "llamacpp"
        else LocalBackend.smollm2(args.cache, batch_size=args.batch_size, threads=args.threads)
    )
    cache = GenerationCache(args.cache / "generations")
    report: dict[str, Any] = {"sample": {}, "llm": {"model": backend.model_name}, "pairs": {}, "ablation": {}}

    # --- descriptions of every sampled item --------------------------------------------------------------
    sampled = np.concatenate([samples["val"].items, samples["test"].items])
    to_describe = items.filter(pl.col(Columns.item).is_in(sampled.tolist()))
    described, stats = describe_items(to_describe, backend, cache, max_new_tokens=args.max_new_tokens)
    report["llm"]["describe"] = stats.as_dict() | {"items": to_describe.height}
    log.info("descriptions: %s", stats.as_dict())
    description_of = dict(described.select(Columns.item, DESCRIPTION).iter_rows())
    with_text = [
        f"{title}. {description_of[item]}" if item in description_of else title
        for item, title in zip(items[Columns.item].to_list(), titles, strict=True)
    ]
    described_rows = [position[i] for i in description_of]
    described_vectors = title_vectors.copy()
    described_vectors[described_rows] = unit(
        encode_texts([with_text[r] for r in described_rows], cache=embeddings, show_progress=False)
    )
    # KAR-style alternative: the description as an auxiliary vector mixed into the title's, weight chosen on val
    description_only = unit(
        encode_texts([description_of[i] for i in description_of], cache=embeddings, show_progress=False)
    )

    def mixed(alpha: float) -> np.ndarray:
        vectors = title_vectors.copy()
        vectors[described_rows] = unit((1 - alpha) * title_vectors[described_rows] + alpha * description_only)
        return vectors

    judge_items = items.filter(pl.col(Columns.item).is_in(sampled.tolist())).select(Columns.item, Columns.title)
    judge_items_described = judge_items.join(described.select(Columns.item, DESCRIPTION), on=Columns.item, how="left")

    # --- A: synthetic pairs against the real pairs --------------------------------------------------------
    scored: dict[str, dict[str, pl.DataFrame]] = {}
    for name, sample in samples.items():
        candidates = candidate_users(
            sample.items.tolist(), title_vectors[sample.pool], user_ids, user_vectors, top_m=args.top_m
        )
        report["sample"][name] = {
            "items": int(sample.items.size),
            "real_pairs": sample.truth.height,
            "users_evaluated": len(sample.users),
            "candidates": candidates.height,
            "real_among_candidates": candidates.join(sample.truth, on=[Columns.user, Columns.item], how="semi").height,
        }
        variants = {"title": judge_items}
        if args.judge_descriptions:
            variants["title+description"] = judge_items_described
        if name == "test" and args.test_judge == "chosen":  # only the variant with the best validation AUC
            best = max(variants, key=lambda v: report["pairs"]["val"]["auc"][f"LLM judge ({v})"])
            variants = {best: variants[best]}
        scored[name] = {}
        for variant, frame in variants.items():
            result, stats = judge_pairs(candidates, frame, histories, backend, cache, max_history=args.history)
            report["llm"][f"judge_{name}_{variant}"] = stats.as_dict() | {"pairs": candidates.height}
            log.info("judge %s %s: %s", name, variant, stats.as_dict())
            scored[name][variant] = result
        report["pairs"][name] = {}
        for n in KEEP_GRID:
            base = next(iter(scored[name].values()))  # similarity is the same in every variant
            rows = {
                "embedding filter": pair_quality(kept_pairs(base, "similarity", n), sample.truth),
                "random among candidates": pair_quality(
                    kept_pairs(base.with_columns(pl.Series("r", rng.random(base.height))), "r", n), sample.truth
                ),
            }
            for variant, result in scored[name].items():
                rows[f"LLM judge ({variant})"] = pair_quality(kept_pairs(result, Columns.score, n), sample.truth)
            report["pairs"][name][f"n={n}"] = rows
        report["pairs"][name]["auc"] = {
            "embedding similarity": mean_item_auc(next(iter(scored[name].values())), "similarity", sample.truth)
        } | {
            f"LLM judge ({variant})": mean_item_auc(result, Columns.score, sample.truth)
            for variant, result in scored[name].items()
        }

    # --- B: ablation on the ranking of cold items --------------------------------------------------------
    k = args.k
    val, test = samples["val"], samples["test"]
    judge_variant = max(
        scored["test"],
        key=lambda v: report["pairs"]["val"]["auc"].get(f"LLM judge ({v})", -1.0),
    )
    choices: dict[str, Any] = {"judge_variant_for_test": judge_variant}
    sources = {
        "embedding filter": lambda name, n: kept_pairs(next(iter(scored[name].values())), "similarity", n),
        "LLM judge": lambda name, n: kept_pairs(scored[name][judge_variant], Columns.score, n),
    }

    def val_key(result: dict[str, float]) -> tuple[float, float]:
        return (result[f"ndcg@{k}"], result[f"recall@{k}"])  # Recall@K ties often on these small pools

    mix_grid = {alpha: val_key(val.evaluate(mixed(alpha), k)) for alpha in MIX_GRID}
    alpha = max(mix_grid, key=lambda a: (mix_grid[a], -a))
    choices["description mix weight"] = {"alpha": alpha, "val_grid (ndcg, recall)": mix_grid}
    text_variants = (
        ("title", title_vectors),
        ("title+description (concatenated text)", described_vectors),
        (f"title+description (vector mix, alpha={alpha})", mixed(alpha)),
    )
    for vectors_name, vectors in text_variants:
        base_val = val.evaluate(vectors, k)
        base_test = test.evaluate(vectors, k)
        report["ablation"][f"{vectors_name}, no synthetic"] = {"val": base_val, "test": base_test}
        for source, make in sources.items():
            grid = {
                (n, w): val_key(val.evaluate(vectors, k, make("val", n), w)) for n in KEEP_GRID for w in WEIGHT_GRID
            }
            (n, w), _ = max(grid.items(), key=lambda item: (item[1], -item[0][1], -item[0][0]))
            choices[f"{vectors_name}, {source}"] = {
                "n": n,
                "weight": w,
                "val_grid": {f"n={a},w={b}": v for (a, b), v in grid.items()},
            }
            report["ablation"][f"{vectors_name}, + synthetic ({source}, n={n}, w={w})"] = {
                "val": val.evaluate(vectors, k, make("val", n), w),
                "test": test.evaluate(vectors, k, make("test", n), w),
            }
    report["choices"] = choices
    return report


def markdown(report: dict[str, Any], k: int) -> str:
    lines = [
        "| split | n kept per item | method | kept | real | precision | recall |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split, by_n in report["pairs"].items():
        for n, rows in by_n.items():
            if n == "auc":
                continue
            for method, q in rows.items():
                cells = [split, n[2:], method, q["kept"], q["real"], f"{q['precision']:.4f}", f"{q['recall']:.4f}"]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| split | scorer | mean per-item AUC among candidates |", "| --- | --- | --- |"]
    for split, by_n in report["pairs"].items():
        for method, auc in by_n["auc"].items():
            lines.append(f"| {split} | {method} | {auc:.4f} |")
    lines += [
        "",
        f"| variant | val Recall@{k} | val NDCG@{k} | test Recall@{k} | test NDCG@{k} | test Recall@5 | test NDCG@5 "
        "| test users |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, result in report["ablation"].items():
        v, t = result["val"], result["test"]
        figures = [v[f"recall@{k}"], v[f"ndcg@{k}"], t[f"recall@{k}"], t[f"ndcg@{k}"], t["recall@5"], t["ndcg@5"]]
        lines.append(f"| {variant} | " + " | ".join(f"{x:.4f}" for x in figures) + f" | {t['users']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="cache root (embeddings, llm, generations)")
    parser.add_argument("--val-items", type=int, default=80, help="cold_item_val items sampled")
    parser.add_argument("--test-items", type=int, default=80, help="cold_item_test items sampled")
    parser.add_argument("--top-m", type=int, default=8, help="candidate users per item from the embedding filter")
    parser.add_argument("--history", type=int, default=5, help="titles of the user's history in the judge prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="token limit of a description")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per batch of the local model")
    parser.add_argument("--threads", type=int, default=2, help="threads of the language model")
    parser.add_argument(
        "--backend", choices=("llamacpp", "local"), default="llamacpp", help="llama.cpp F16, or transformers fp32"
    )
    parser.add_argument(
        "--test-judge",
        choices=("chosen", "both"),
        default="chosen",
        help="judge variants run on test (chosen: best val AUC)",
    )
    parser.add_argument(
        "--no-judge-descriptions",
        dest="judge_descriptions",
        action="store_false",
        help="judge from titles only (skip the title+description judge variant, which doubles the judge's cost)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    report = run(args)
    total = time.perf_counter() - started
    print(markdown(report, args.k))
    print(f"\ntotal {total:.0f} s")
    if args.json is not None:
        write_report(
            args.json,
            "augment",
            data=args.data,
            k=args.k,
            seconds=total,
            results=[report | {"args": {k: str(v) for k, v in vars(args).items()}}],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
