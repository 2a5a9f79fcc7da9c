"""Speed of the local LLM backend (SmolLM2-135M-Instruct, fp32, CPU): generated tokens/s and judged pairs/s
against batch size, and what reusing the shared prompt prefix (a user's history, computed once as a key/value
cache for all of that user's candidate items) saves in the judge.

    .venv/bin/python benchmarks/augment_speed.py [--threads 2] [--users 8] [--items-per-user 8] [--json OUT]

Prompts are built from CiteULike-a titles: descriptions of the first titles; judge pairs of `--users` users
(their first `--history` saved titles) times `--items-per-user` cold items. Every configuration runs once
after one warm-up call; timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
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

from augment import LocalBackend, item_description_messages, judge_messages  # noqa: E402
from catalog import Columns, load_citeulike  # noqa: E402

DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")


def timed(function: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gen-batches", default="1,8,32", help="batch sizes of the generation runs")
    parser.add_argument("--judge-batches", default="1,8,32", help="batch sizes of the plain judge runs")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--items-per-user", type=int, default=8)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    dataset = load_citeulike(args.data)
    titles = dataset.items[Columns.title].to_list()
    warm = dataset.splits["warm_emb"]
    cold = dataset.splits["cold_item_test"][Columns.item].unique().sort().to_list()
    users = (
        warm.group_by(Columns.user)
        .agg(Columns.item)
        .filter(pl.col(Columns.item).list.len() >= args.history)
        .sort(Columns.user)
        .head(args.users)
    )
    backend = LocalBackend.smollm2(args.cache, threads=args.threads)
    results: list[dict[str, Any]] = []

    # --- generation: tokens/s against batch size ------------------------------------------------------
    backend.generate([item_description_messages(titles[0])], max_new_tokens=4)  # warm-up
    for batch in (int(b) for b in args.gen_batches.split(",")):
        prompts = [item_description_messages(t) for t in titles[: max(batch, 4)]]
        backend.batch_size = batch
        outputs, wall, cpu = timed(lambda p=prompts: backend.generate(p, max_new_tokens=args.max_new_tokens))
        tokens = sum(o.tokens for o in outputs)
        row = {
            "figure": "generate",
            "batch_size": batch,
            "prompts": len(prompts),
            "new_tokens": tokens,
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "tokens_per_s": round(tokens / wall, 1),
        }
        results.append(row)
        print(row, flush=True)

    # --- judge: pairs/s, plain batches against prefix reuse --------------------------------------------
    pairs = [
        judge_messages([titles[int(i)] for i in items[: args.history]], titles[int(cold[(u * 37 + j) % len(cold)])])
        for u, items in enumerate(users[Columns.item].to_list())
        for j in range(args.items_per_user)
    ]  # grouped by user, as judge_pairs orders them
    backend.reuse_prefix = False
    backend.yes_probability(pairs[:2])  # warm-up
    reference = None
    for batch in (int(b) for b in args.judge_batches.split(",")):
        backend.batch_size, backend.reuse_prefix = batch, False
        before = backend.prompt_tokens
        scores, wall, cpu = timed(lambda: backend.yes_probability(pairs))
        reference = scores if reference is None else reference
        row = {
            "figure": "judge, plain batches",
            "batch_size": batch,
            "pairs": len(pairs),
            "prompt_tokens_run": backend.prompt_tokens - before,
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "pairs_per_s": round(len(pairs) / wall, 2),
            "max_abs_diff_vs_first": float(np.abs(scores - reference).max()),
        }
        results.append(row)
        print(row, flush=True)
    for label, ordered in (
        ("judge, prefix reuse (grouped by user)", pairs),
        (
            "judge, prefix reuse (shuffled: only the system prompt is shared)",
            [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))],
        ),
    ):
        backend.batch_size, backend.reuse_prefix = args.items_per_user, True
        before = backend.prompt_tokens
        scores, wall, cpu = timed(lambda o=ordered: backend.yes_probability(o))
        if ordered is not pairs:
            scores = scores[np.argsort(np.random.default_rng(0).permutation(len(pairs)))]
        row = {
            "figure": label,
            "batch_size": args.items_per_user,
            "pairs": len(pairs),
            "prompt_tokens_run": backend.prompt_tokens - before,
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "pairs_per_s": round(len(pairs) / wall, 2),
            "max_abs_diff_vs_first": float(np.abs(scores - reference).max()),
        }
        results.append(row)
        print(row, flush=True)

    total = time.perf_counter() - started
    print(f"total {total:.0f} s")
    if args.json is not None:
        write_report(args.json, "augment_speed", data=args.data, k=0, seconds=total, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
