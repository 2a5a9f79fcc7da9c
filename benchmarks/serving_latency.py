"""Serving latency of a workspace's promoted version: one user's top k in-process and over HTTP (`serving.create_app`
under uvicorn on loopback, httpx as the client over one kept-alive connection), every user as a batch, stated text, and
an item added with no retraining until it is served by `users_for_item`.

    .venv/bin/python benchmarks/serving_latency.py --workspace WORKSPACE [--cache-dir CACHE] [--k 20] [--users 200]
        [--batch-users N] [--precompute-k 0] [--no-add]

The API precomputes every served user's list in the background (`--precompute-k`, its default depth): a user whose
list is ready is a lookup. `--precompute-k 0` scores every request live, the in-process calls too.

Wall times on whatever else the machine runs: the script prints the load average beside them.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import uvicorn

from catalog import Columns
from serving import PRECOMPUTED_K, Recommender, create_app


@contextmanager
def _http_server(recommender: Recommender, precompute_k: int) -> Iterator[str]:
    """The API over `recommender` under uvicorn in a thread, on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(recommender, precompute_k=precompute_k)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def _one_user_latencies(
    recommender: Recommender, users: list[str], k: int, precompute_k: int
) -> tuple[list[float], list[float]]:
    """Wall time of each user's top k in-process and over HTTP (GET /recommend?user_id=U&k=K as a client sees it,
    the server in this process), user by user in turn, so that both see the same load on a shared machine."""
    direct, over_http = [], []
    with _http_server(recommender, precompute_k) as url, httpx.Client(base_url=url, timeout=60) as client:
        recommender.recommend(users[:1], k=k)  # warm-up
        client.get("/recommend", params={"user_id": users[0], "k": k}).raise_for_status()
        for user in users:
            started = time.perf_counter()
            recommender.recommend([user], k=k)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            client.get("/recommend", params={"user_id": user, "k": k}).raise_for_status()
            over_http.append(time.perf_counter() - started)
    return direct, over_http


def _adding(recommender: Recommender, k: int) -> str:
    """An item added with no retraining until `users_for_item` serves it, twice: the report's words."""
    new = pl.DataFrame(
        {Columns.item: ["bench-new"], Columns.title: ["A benchmark item"], Columns.text: ["added while serving"]}
    )
    started = time.perf_counter()
    added = recommender.add_items(new)
    added.users_for_item("bench-new", k=k)
    add = time.perf_counter() - started
    # A second item, as a running server adds one: without the first one's one-time costs (imports, MiniLM).
    another = new.with_columns(pl.lit("bench-new-2").alias(Columns.item), pl.lit("Another one").alias(Columns.title))
    started = time.perf_counter()
    added = added.add_items(another)
    added_at = time.perf_counter() - started
    added.users_for_item("bench-new-2", k=k)
    add_again = time.perf_counter() - started
    return (
        f" | add an item -> users_for_item {add:.2f} s (a second item: {add_again:.2f} s, of which add_items "
        f"{added_at:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "warmstart")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--users", type=int, default=200, help="Users timed one by one.")
    parser.add_argument(
        "--batch-users", type=int, default=None, help="Users of the batch (the first N; default: every user)."
    )
    parser.add_argument(
        "--precompute-k", type=int, default=PRECOMPUTED_K, help="The API's precomputed depth (0: every request live)."
    )
    parser.add_argument("--no-add", action="store_true", help="Leave out adding items (users_for_item ranks everyone).")
    args = parser.parse_args()

    started = time.perf_counter()
    recommender = Recommender.load(args.workspace, cache_dir=args.cache_dir)
    load = time.perf_counter() - started
    users = recommender.user_ids.to_list()
    single, over_http = _one_user_latencies(recommender, users[: args.users], args.k, args.precompute_k)
    batch_users = users[: args.batch_users] if args.batch_users is not None else users
    started = time.perf_counter()
    recommender.recommend(batch_users, k=args.k)
    batch = time.perf_counter() - started
    recommender.recommend_text("warm-up", k=args.k)
    texts = []
    for query in ("space adventure", "romantic comedy in paris", "gangster film", "animated family movie"):
        started = time.perf_counter()
        recommender.recommend_text(query, k=args.k)
        texts.append(time.perf_counter() - started)
    adding = "" if args.no_add else _adding(recommender, args.k)

    ms = 1000
    print(
        f"{recommender.ranker_name} {recommender.version}: {recommender.inputs.n_users:,} users x "
        f"{recommender.inputs.n_items:,} items, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
        f"load {load:.2f} s | one user top {args.k}: p50 {np.percentile(single, 50) * ms:.0f} ms, "
        f"p95 {np.percentile(single, 95) * ms:.0f} ms ({len(single)} users) | over HTTP: p50 "
        f"{np.percentile(over_http, 50) * ms:.0f} ms, p95 {np.percentile(over_http, 95) * ms:.0f} ms | a batch of "
        f"{len(batch_users):,} users: {batch:.1f} s"
        f" | stated text p50 {np.percentile(texts, 50) * ms:.0f} ms{adding}"
    )


if __name__ == "__main__":
    main()
