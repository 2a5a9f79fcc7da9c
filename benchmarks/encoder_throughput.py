"""Text-encoder throughput on CiteULike titles: `model.encode` directly vs `encode_texts` (empty and warm cache).

    .venv/bin/python benchmarks/encoder_throughput.py [--titles PATH] [-n 2000] [--batch-size 64] [--repeats 3]

Each variant runs once as a warm-up (on other titles, into a throwaway cache), then `--repeats` times, (a) and
(b) alternating which goes first; the table shows the median wall time, and the process CPU time beside it.
(b) gets a new, empty cache directory each repeat; (c) reopens that directory with a new `EmbeddingCache`, so it
includes reading the cache from disk. On a shared machine other jobs' load moves wall times by more than the
encoder's own overhead, so the script also times the `model.encode` call inside (b): the rest of (b) is what
`encode_texts` adds (hashing, de-duplication, cache look-up and write), whatever the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from encoders import EmbeddingCache, encode_texts, load_text_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TITLES = REPO.parent / "shared" / "datasets" / "citeulike-a" / "titles.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--titles", type=Path, default=DEFAULT_TITLES, help="CiteULike-a titles.txt, one a line")
    parser.add_argument("-n", type=int, default=2000, help="encode the first N titles")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def timed(function: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """(wall seconds, process CPU seconds, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    args = parse_args()
    if not args.titles.is_file():
        raise SystemExit(f"{args.titles} not found; pass --titles PATH to CiteULike-a's titles.txt.")
    lines = args.titles.read_text(encoding="utf-8").splitlines()
    titles = lines[: args.n]
    warmup = lines[args.n : args.n + 2 * args.batch_size] or titles[: 2 * args.batch_size]

    load_seconds, _, _ = timed(lambda: load_text_model(args.device))
    model = load_text_model(args.device)
    print(
        f"{len(titles)} titles from {args.titles}, batch size {args.batch_size}, {args.repeats} repeats; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{platform.python_implementation()} {platform.python_version()}; model loaded in {load_seconds:.1f} s"
    )

    inner_seconds: list[float] = []
    real_encode = model.encode

    def direct(texts: list[str]) -> np.ndarray:
        return real_encode(texts, batch_size=args.batch_size, show_progress_bar=False)

    def timed_encode(*encode_args: object, **encode_kwargs: object) -> np.ndarray:
        start = time.perf_counter()
        result = real_encode(*encode_args, **encode_kwargs)
        inner_seconds.append(time.perf_counter() - start)
        return result

    def cached(texts: list[str], root: Path) -> np.ndarray:
        cache = EmbeddingCache(root)
        return encode_texts(texts, model=model, cache=cache, batch_size=args.batch_size, show_progress=False)

    wall: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    cpu: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    results: dict[str, np.ndarray] = {}
    model.encode = timed_encode  # an instance attribute over the class's method; removed below
    try:
        with tempfile.TemporaryDirectory(prefix="encoder-bench-") as scratch:
            root = Path(scratch)
            direct(warmup)
            cached(warmup, root / "warmup")
            cached(warmup, root / "warmup")
            inner_seconds.clear()
            max_difference = 0.0
            for repeat in range(args.repeats):
                runs = {
                    "a": lambda: direct(titles),
                    "b": lambda repeat=repeat: cached(titles, root / f"run{repeat}"),
                    "c": lambda repeat=repeat: cached(titles, root / f"run{repeat}"),
                }
                for key in ("a", "b", "c") if repeat % 2 == 0 else ("b", "a", "c"):
                    elapsed, used, results[key] = timed(runs[key])
                    wall[key].append(elapsed)
                    cpu[key].append(used)
                max_difference = max(
                    max_difference,
                    float(np.abs(results["b"] - results["a"]).max()),
                    float(np.abs(results["c"] - results["b"]).max()),
                )
    finally:
        del model.encode
    if len(inner_seconds) != args.repeats:
        raise SystemExit(f"expected one model.encode call per (b) run and none for (c), got {len(inner_seconds)}")

    rate = {key: len(titles) / statistics.median(values) for key, values in wall.items()}
    labels = {
        "a": "(a) model.encode directly",
        "b": "(b) encode_texts, empty cache",
        "c": "(c) encode_texts, warm cache",
    }
    print(f"\n{'variant':<32}{'median s':>10}{'sentences/s':>14}{'CPU s':>8}   wall runs (s)")
    for key, label in labels.items():
        runs_text = ", ".join(f"{value:.2f}" for value in wall[key])
        print(
            f"{label:<32}{statistics.median(wall[key]):>10.2f}{rate[key]:>14,.0f}"
            f"{statistics.median(cpu[key]):>8.2f}   {runs_text}"
        )
    overhead = [total - inner for total, inner in zip(wall["b"], inner_seconds, strict=True)]
    share = statistics.median(o / t for o, t in zip(overhead, wall["b"], strict=True))
    print(f"\nratio (b)/(a) throughput, wall: {rate['b'] / rate['a']:.3f}")
    print(f"ratio (b)/(a), CPU time: {statistics.median(cpu['a']) / statistics.median(cpu['b']):.3f}")
    print(f"(b) outside model.encode: median {statistics.median(overhead) * 1000:.0f} ms, {share:.2%} of (b)")
    print(f"ratio (c)/(a) throughput: {rate['c'] / rate['a']:.1f}")
    print(f"max |difference| between the variants' embeddings: {max_difference:.2e}")


if __name__ == "__main__":
    main()
