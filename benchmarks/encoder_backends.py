"""Text-encoder backends on CiteULike-a titles: throughput and quality of ONNX Runtime fp32 and int8 against torch.

    .venv/bin/python benchmarks/encoder_backends.py speed [-n 2000] [--backends torch,onnx,onnx-int8]
        [--batch-size 64[,16,...]] [--repeats 3]
    .venv/bin/python benchmarks/encoder_backends.py quality [--backends onnx,onnx-int8] [--k 20]

speed: `model.encode` of each backend (at each batch size) on the first N titles; one warm-up run each, then
`--repeats` rounds, the order of the variants reversed every other round; medians of the wall time, process CPU
time beside them, and the cosine between each variant's embeddings and torch's (its first batch size). Other jobs
share these cores, so the load average and the CPU (model, VNNI) are printed with the figures: compare variants
within one run only.

quality: every CiteULike-a title encoded by each backend through `encode_texts` and its own embedding cache
(`--cache`, one directory per backend), then the cold-item protocol (ALDI's cold_item_test, 4,846 users ranked
against the 3,396 cold items) scored by MiniLM title kNN (mean of the top 3 similarities to the user's warm_emb items,
the configuration cold_item_val chose for fp32 in docs/benchmarks.md). Recall@K and NDCG@K per backend, and each
backend minus torch with a 95% paired bootstrap interval over users.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from catalog import Columns, load_citeulike  # noqa: E402
from encoders import TEXT_BACKENDS, EmbeddingCache, encode_texts, load_text_model, text_model_name  # noqa: E402
from encoders._text import cpu_flags  # noqa: E402
from ranker.baselines import ContentKNNScorer  # noqa: E402
from ranker.evaluate import cold_item_split, evaluate  # noqa: E402
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "citeulike-a"
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2")


def machine() -> str:
    """CPU model, core count, the flags that matter to int8, and the load average: printed beside every figure."""
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = cpu_flags()
    present = ", ".join(flag for flag in INT8_FLAGS if flag in flags) or "none of " + ", ".join(INT8_FLAGS)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs ({present}); load average {load}"


def speed(args: argparse.Namespace) -> None:
    lines = (args.data / "titles.txt").read_text(encoding="utf-8").splitlines()
    titles, warmup = lines[: args.n], lines[args.n : args.n + 128]
    models = {backend: load_text_model(backend=backend) for backend in args.backends}
    variants = [(backend, size) for backend in args.backends for size in args.batch_size]
    import onnxruntime
    import torch

    print(
        f"{len(titles)} titles, batch sizes {args.batch_size}, {args.repeats} rounds; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}\nbefore: {machine()}"
    )

    def encode(variant: tuple[str, int], texts: list[str]) -> np.ndarray:
        backend, size = variant
        return np.asarray(
            models[backend].encode(texts, batch_size=size, show_progress_bar=False, normalize_embeddings=True),
            dtype=np.float32,
        )

    for variant in variants:
        encode(variant, warmup)
    wall: dict[tuple[str, int], list[float]] = {variant: [] for variant in variants}
    cpu: dict[tuple[str, int], list[float]] = {variant: [] for variant in variants}
    vectors: dict[tuple[str, int], np.ndarray] = {}
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else list(reversed(variants)):
            started, used = time.perf_counter(), time.process_time()
            vectors[variant] = encode(variant, titles)
            wall[variant].append(time.perf_counter() - started)
            cpu[variant].append(time.process_time() - used)
    print(f"after: {machine()}\n")
    reference = next((vectors[v] for v in variants if v[0] == "torch"), None)
    print(
        f"{'backend':<12}{'batch':>6}{'median s':>10}{'titles/s':>10}{'CPU s':>8}{'cos min':>9}{'cos mean':>10}"
        "   wall runs (s)"
    )
    for variant in variants:
        median = statistics.median(wall[variant])
        if reference is not None:
            cosine = (vectors[variant] * reference).sum(axis=1)
            agreement = f"{cosine.min():>9.4f}{cosine.mean():>10.5f}"
        else:
            agreement = f"{'-':>9}{'-':>10}"
        runs = ", ".join(f"{value:.2f}" for value in wall[variant])
        print(
            f"{variant[0]:<12}{variant[1]:>6}{median:>10.2f}{len(titles) / median:>10,.0f}"
            f"{statistics.median(cpu[variant]):>8.2f}{agreement}   {runs}"
        )


def quality(args: argparse.Namespace) -> None:
    dataset = load_citeulike(args.data)
    titles = dataset.items[Columns.title].to_list()
    split = cold_item_split(dataset, "cold_item_test")
    backends = ["torch", *[b for b in args.backends if b != "torch"]]
    print(f"{len(titles):,} titles; cold_item_test: {split.n_users:,} users\nbefore: {machine()}")
    per_user = {}
    results = {}
    for backend in backends:
        started = time.perf_counter()
        cache = EmbeddingCache(args.cache, text_model_name(backend))
        vectors = encode_texts(titles, cache=cache, show_progress=False)
        encoded = time.perf_counter() - started
        scorer = ContentKNNScorer(vectors, neighbors=args.neighbors).fit(split.train, split.index)
        results[backend] = evaluate(split, scorer, args.k)
        per_user[backend] = per_user_accuracy(results[backend].recs, split.truth, args.k)
        recall, ndcg = results[backend].value("recall"), results[backend].value("ndcg")
        print(
            f"{backend}: {cache.misses:,} titles encoded, {cache.hits:,} from its cache, {encoded:.0f} s; "
            f"Recall@{args.k} {recall:.4f}, NDCG@{args.k} {ndcg:.4f}"
        )
        if backend != "torch":
            reference = encode_texts(titles, cache=EmbeddingCache(args.cache, text_model_name("torch")))
            cosine = (vectors * reference).sum(axis=1)
            print(f"  cosine to torch over all titles: min {cosine.min():.4f}, mean {cosine.mean():.5f}")
    print(f"after: {machine()}\n")
    base = per_user["torch"]
    print(f"| backend | Recall@{args.k} | NDCG@{args.k} | Recall difference [95% CI] | NDCG difference [95% CI] |")
    print("| --- | --- | --- | --- | --- |")
    for backend in backends:
        ours = per_user[backend]
        if ours[Columns.user].to_list() != base[Columns.user].to_list():
            raise AssertionError("the backends were evaluated on different users")
        cells = []
        for metric in ("recall", "ndcg"):
            mean, low, high = bootstrap_difference(ours[metric].to_numpy(), base[metric].to_numpy())
            cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]")
        print(
            f"| {backend} | {results[backend].value('recall'):.4f} | {results[backend].value('ndcg'):.4f} "
            f"| {cells[0]} | {cells[1]} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "quality"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder (titles.txt, splits/)")
    parser.add_argument("--backends", default=",".join(TEXT_BACKENDS), help=f"comma-separated of {TEXT_BACKENDS}")
    parser.add_argument("-n", type=int, default=2000, help="speed: encode the first N titles")
    parser.add_argument("--batch-size", default="64", help="speed: comma-separated batch sizes, each a variant")
    parser.add_argument("--repeats", type=int, default=3, help="speed: timed rounds (median reported)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--neighbors", type=int, default=3, help="quality: kNN aggregation, mean of the top N")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings", help="embedding cache folder")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.batch_size = [int(size) for size in args.batch_size.split(",") if size.strip()]
    unknown = sorted(set(args.backends) - set(TEXT_BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {TEXT_BACKENDS}")
    speed(args) if args.what == "speed" else quality(args)


if __name__ == "__main__":
    main()
