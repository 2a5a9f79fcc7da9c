"""Does a judge fine-tuned on warm interactions beat the embedding filter it starts from? (CiteULike-a, ALDI split)

Training pairs: sampled `warm_val` pairs (label 1; the users' histories come from `warm_emb`) and, for each,
negatives of the same item (label 0): hard ones from the embedding filter's top 20 candidate users of the item,
or uniform ones; never a known pair. Evaluation: seeded cold items of `cold_item_val`, split into a tuning subset
(chooses the settings: negatives x lr x weight decay) and a disjoint report subset (read once, with the chosen
settings). For each item the embedding filter (MiniLM title vs the user's mean `warm_emb` title vector) proposes
its top M users; a pair is real when it is in `cold_item_val`. Scores compared: the filter's similarity, the
zero-shot SmolLM2 judge's P(yes), the fine-tuned judge's P(yes), and the rank average of similarity and tuned
judge within each item. Reported: mean per-item ROC AUC among the candidates, pooled ROC AUC, and precision of
the top 5 kept per item, with 95% bootstrap intervals over report items for the differences.

The fine-tuned judge is the method "head" (augment.experimental.finetune_judge): it learns on the base model's
final hidden state at the answer position, so one pass of the base model per pair gives the zero-shot score and
every grid point's score. The chosen setting is then trained by finetune_judge, saved, reloaded by LocalBackend,
and its P(yes) on a sample of report pairs is checked against the scores used here.

    .venv/bin/python benchmarks/judge_finetune.py [--train-positives 80] [--tune-items 30] [--report-items 60]

Answer states are cached under CACHE/generations (a rerun reads them), the tuned judge under CACHE/llm.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _report import write_report  # noqa: E402

from augment import (  # noqa: E402
    SIMILARITY,
    TITLES,
    GenerationCache,
    LocalBackend,
    candidate_users,
    judge_pairs,
)
from augment.experimental import (  # noqa: E402
    LABEL,
    JudgeTuning,
    finetune_judge,
    fit_head,
    judge_states,
    judge_training_pairs,
)
from catalog import Columns, load_citeulike  # noqa: E402
from encoders import EmbeddingCache, encode_texts  # noqa: E402

log = logging.getLogger("benchmarks.judge_finetune")
DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
LR_GRID = (0.003, 0.01, 0.03)
DECAY_GRID = (0.0, 0.01, 0.1)
NEGATIVES = ("hard", "uniform")
SCORERS = ("embedding filter", "zero-shot judge", "fine-tuned judge", "rank average (filter + tuned)")


def unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Inputs:
    """Titles, MiniLM vectors, users' mean vectors and the judge's history titles (5 most representative)."""

    def __init__(self, args: argparse.Namespace) -> None:
        dataset = load_citeulike(args.data)
        self.splits = dataset.splits
        self.items = dataset.items.select(Columns.item, Columns.title)
        titles = self.items[Columns.title].to_list()
        self.position = {item: row for row, item in enumerate(self.items[Columns.item].to_list())}
        self.vectors = unit(encode_texts(titles, cache=EmbeddingCache(args.cache / "embeddings"), show_progress=True))
        warm = self.splits["warm_emb"].group_by(Columns.user).agg(Columns.item).sort(Columns.user)
        self.users = warm[Columns.user].to_list()
        rows = [np.array([self.position[i] for i in row]) for row in warm[Columns.item].to_list()]
        self.user_vectors = unit(np.stack([self.vectors[r].mean(axis=0) for r in rows]))
        closest = [
            r[np.argsort(-(self.vectors[r] @ v), kind="stable")[: args.history]]
            for r, v in zip(rows, self.user_vectors, strict=True)
        ]
        self.histories = pl.DataFrame({Columns.user: self.users, TITLES: [[titles[i] for i in r] for r in closest]})
        self.known = pl.concat([self.splits[s].select(Columns.user, Columns.item) for s in self.splits])

    def candidates(self, items: list[str], top_m: int) -> pl.DataFrame:
        rows = [self.position[i] for i in items]
        return candidate_users(items, self.vectors[rows], self.users, self.user_vectors, top_m=top_m)


def training_pairs(inputs: Inputs, args: argparse.Namespace) -> dict[str, pl.DataFrame]:
    """The same sampled positives with hard or with uniform negatives."""
    later = inputs.splits["warm_val"].filter(pl.col(Columns.user).is_in(inputs.users))
    rng = np.random.default_rng(args.seed)
    positives = later[np.sort(rng.choice(later.height, args.train_positives, replace=False)).tolist()]
    pool = inputs.candidates(positives[Columns.item].unique().sort().to_list(), args.negative_pool)
    return {
        kind: judge_training_pairs(
            positives,
            inputs.users,
            known=inputs.known,
            candidates=pool if kind == "hard" else None,
            negatives_per_positive=args.negatives,
            seed=args.seed,
        )
        for kind in NEGATIVES
    }


def evaluation_pairs(inputs: Inputs, args: argparse.Namespace) -> dict[str, pl.DataFrame]:
    """Tuning and report subsets of cold_item_val items (disjoint), each item with its top-M candidates."""
    split = inputs.splits["cold_item_val"]
    pool = np.array(sorted(split[Columns.item].unique().to_list(), key=int), dtype=object)
    chosen = np.random.default_rng(args.seed + 1).choice(pool.size, args.tune_items + args.report_items, replace=False)
    subsets = {"tune": pool[chosen[: args.tune_items]], "report": pool[chosen[args.tune_items :]]}
    real = split.select(Columns.user, Columns.item).with_columns(pl.lit(1, pl.Int8).alias(LABEL))
    return {
        name: inputs.candidates(sorted(items.tolist(), key=int), args.top_m)
        .join(real, on=[Columns.user, Columns.item], how="left")
        .with_columns(pl.col(LABEL).fill_null(0))
        for name, items in subsets.items()
    }


def per_item(frame: pl.DataFrame, score: str, keep: int) -> pl.DataFrame:
    """Per item: ROC AUC of `score` among its candidates (null without both labels) and precision of its top `keep`."""
    rows = []
    for (item,), group in frame.group_by(Columns.item, maintain_order=True):
        labels, values = group[LABEL].to_numpy(), group[score].to_numpy()
        auc = roc_auc_score(labels, values) if 0 < labels.sum() < labels.size else None
        top = np.argsort(-values, kind="stable")[:keep]
        rows.append((item, auc, float(labels[top].mean())))
    return pl.DataFrame(
        rows, schema={Columns.item: pl.String, "auc": pl.Float64, "precision": pl.Float64}, orient="row"
    )


def summary(frame: pl.DataFrame, scores: dict[str, str], keep: int, boot: int, seed: int) -> dict[str, Any]:
    """Each scorer's mean per-item AUC, pooled AUC and precision@keep; bootstrap intervals of the differences."""
    tables = {name: per_item(frame, column, keep) for name, column in scores.items()}
    result: dict[str, Any] = {
        name: {
            "item_auc": table["auc"].drop_nulls().mean(),
            "pooled_auc": roc_auc_score(frame[LABEL].to_numpy(), frame[scores[name]].to_numpy()),
            f"precision@{keep}": table["precision"].mean(),
        }
        for name, table in tables.items()
    }
    rng = np.random.default_rng(seed)
    n = tables[next(iter(tables))].height
    draws = rng.integers(0, n, size=(boot, n))
    differences = {}
    for better, worse in (
        ("fine-tuned judge", "embedding filter"),
        ("fine-tuned judge", "zero-shot judge"),
        ("rank average (filter + tuned)", "embedding filter"),
        ("zero-shot judge", "embedding filter"),
    ):
        for measure in ("auc", "precision"):
            a, b = tables[better][measure].to_numpy(), tables[worse][measure].to_numpy()
            valid = ~(np.isnan(a) | np.isnan(b))
            delta = np.where(valid, np.nan_to_num(a) - np.nan_to_num(b), 0.0)
            sampled = (delta[draws] * valid[draws]).sum(axis=1) / np.maximum(valid[draws].sum(axis=1), 1)
            low, high = np.percentile(sampled, [2.5, 97.5])
            point = float(delta[valid].mean())
            differences[f"{better} - {worse} ({measure})"] = {"diff": point, "ci95": [float(low), float(high)]}
    result["differences"] = differences
    result["items"] = n
    result["items_with_auc"] = int(tables["embedding filter"]["auc"].drop_nulls().len())
    result["pairs"], result["real_pairs"] = frame.height, int(frame[LABEL].sum())
    return result


def with_scores(frame: pl.DataFrame, margins: np.ndarray, tuned: np.ndarray) -> pl.DataFrame:
    scored = frame.with_columns(pl.Series("zero_shot", sigmoid(margins)), pl.Series("tuned", sigmoid(tuned)))
    ranks = [pl.col(c).rank("average").over(Columns.item) for c in (SIMILARITY, "tuned")]
    return scored.with_columns(((ranks[0] + ranks[1]) / 2).alias("rank_average"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    inputs = Inputs(args)
    backend = LocalBackend.smollm2(args.cache, batch_size=args.batch_size, threads=args.threads)
    cache = GenerationCache(args.cache / "generations")
    train = training_pairs(inputs, args)
    evaluation = evaluation_pairs(inputs, args)

    def states(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return judge_states(frame, inputs.items, inputs.histories, backend, cache, max_history=args.history)

    timings: dict[str, float] = {}
    features = {}
    for name, frame in [*train.items(), *evaluation.items()]:
        clock = time.perf_counter()
        features[name] = states(frame)
        timings[f"answer states, {name} ({frame.height} pairs)"] = round(time.perf_counter() - clock, 1)
        log.info("%s: %s", name, timings)

    grid: dict[str, float] = {}
    for kind, lr, decay in itertools.product(NEGATIVES, LR_GRID, DECAY_GRID):
        config = JudgeTuning(
            method="head",
            lr=lr,
            weight_decay=decay,
            steps=args.steps,
            max_history=args.history,
            negatives_per_positive=args.negatives,
            hard_negatives=kind == "hard",
            seed=args.seed,
        )
        direction, _ = fit_head(*features[kind], train[kind][LABEL].to_numpy(), config)
        margins, state = features["tune"]
        scored = evaluation["tune"].with_columns(pl.Series("tuned", margins + state @ direction))
        grid[f"{kind},lr={lr},wd={decay}"] = per_item(scored, "tuned", args.keep)["auc"].drop_nulls().mean()
    best = max(grid, key=lambda key: grid[key])
    kind, lr, decay = best.split(",")
    chosen = JudgeTuning(
        method="head",
        lr=float(lr[3:]),
        weight_decay=float(decay[3:]),
        steps=args.steps,
        max_history=args.history,
        negatives_per_positive=args.negatives,
        hard_negatives=kind == "hard",
        seed=args.seed,
    )
    zero_tune = per_item(with_scores(evaluation["tune"], features["tune"][0], features["tune"][0]), "zero_shot", 5)
    tune_filter = per_item(evaluation["tune"], SIMILARITY, args.keep)["auc"].drop_nulls().mean()

    clock = time.perf_counter()
    path = finetune_judge(
        backend,
        train[kind],
        inputs.items,
        inputs.histories,
        chosen,
        out_dir=args.cache / "llm",
        cache=cache,
        show_progress=True,
    )
    timings["finetune_judge (states cached)"] = round(time.perf_counter() - clock, 1)
    direction = _direction_of(path, backend)
    margins, state = features["report"]
    report_frame = with_scores(evaluation["report"], margins, margins + state @ direction)
    scores = {SCORERS[0]: SIMILARITY, SCORERS[1]: "zero_shot", SCORERS[2]: "tuned", SCORERS[3]: "rank_average"}
    result = summary(report_frame, scores, args.keep, args.boot, args.seed)

    clock = time.perf_counter()
    check = report_frame.head(args.verify_pairs)
    tuned_backend = LocalBackend(path, batch_size=args.batch_size, threads=args.threads)
    judged, _ = judge_pairs(
        check.select(Columns.user, Columns.item),
        inputs.items,
        inputs.histories,
        tuned_backend,
        cache,
        max_history=args.history,
        show_progress=False,
    )
    gap = float(np.abs(judged[Columns.score].to_numpy() - check["tuned"].to_numpy()).max())
    timings[f"reloaded tuned judge on {check.height} report pairs"] = round(time.perf_counter() - clock, 1)
    return {
        "report": result,
        "tuning": {
            "grid (mean per-item AUC on the tuning items)": grid,
            "chosen": best,
            "zero-shot judge": zero_tune["auc"].drop_nulls().mean(),
            "embedding filter": tune_filter,
            "items": args.tune_items,
            "pairs": evaluation["tune"].height,
            "real_pairs": int(evaluation["tune"][LABEL].sum()),
        },
        "training_pairs": {kind: frame.height for kind, frame in train.items()},
        "tuned_model": {"name": path.name, "reloaded_max_abs_gap": gap, "checked_pairs": check.height},
        "timings": timings,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _direction_of(path: Path, backend: LocalBackend) -> np.ndarray:
    """The tuned head's direction, read back from the saved weights: (yes row - base yes row) * 2."""
    from safetensors.numpy import load_file

    tuned = {}
    for file in path.glob("*.safetensors"):
        tuned |= load_file(file)
    yes = backend._yes_ids[0]
    base = backend.model.get_output_embeddings().weight.detach().numpy()
    return 2.0 * (tuned["lm_head.weight"][yes].astype(np.float64) - base[yes].astype(np.float64))


def markdown(report: dict[str, Any], keep: int) -> str:
    result = report["report"]
    lines = [
        f"| scorer | mean per-item AUC | pooled AUC | precision@{keep} per item |",
        "| --- | --- | --- | --- |",
    ]
    for name in SCORERS:
        row = result[name]
        lines.append(f"| {name} | {row['item_auc']:.4f} | {row['pooled_auc']:.4f} | {row[f'precision@{keep}']:.4f} |")
    lines += ["", "| difference | value | 95% bootstrap interval (items) |", "| --- | --- | --- |"]
    for name, value in result["differences"].items():
        lines.append(f"| {name} | {value['diff']:+.4f} | [{value['ci95'][0]:+.4f}, {value['ci95'][1]:+.4f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="cache root (embeddings, llm, generations)")
    parser.add_argument("--train-positives", type=int, default=80, help="warm_val pairs sampled as positives")
    parser.add_argument("--negatives", type=int, default=2, help="negatives per positive")
    parser.add_argument("--negative-pool", type=int, default=20, help="filter candidates per item for hard negatives")
    parser.add_argument("--tune-items", type=int, default=30, help="cold_item_val items that choose the settings")
    parser.add_argument("--report-items", type=int, default=60, help="cold_item_val items reported (disjoint)")
    parser.add_argument("--top-m", type=int, default=8, help="candidate users per item from the embedding filter")
    parser.add_argument("--keep", type=int, default=5, help="pairs kept per item for precision")
    parser.add_argument("--history", type=int, default=5, help="history titles in the judge prompt")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of the head")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples of the report items")
    parser.add_argument("--verify-pairs", type=int, default=48, help="report pairs rerun through the saved model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = run(args)
    print(markdown(report, args.keep))
    print({key: report[key] for key in ("tuning", "training_pairs", "tuned_model", "timings", "seconds")})
    if args.json is not None:
        write_report(
            args.json,
            "judge_finetune",
            data=args.data,
            k=args.keep,
            seconds=report["seconds"],
            results=[report | {"args": {k: str(v) for k, v in vars(args).items()}}],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
