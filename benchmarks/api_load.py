"""The HTTP API under concurrent clients: `warmstart api` in its own process on loopback, C clients (asyncio, one
httpx connection pool) sending N `GET /recommend?user_id=U&k=K` in all (users in turn), while a sampler times
`GET /health` every 50 ms. Prints, per client count, the requests' p50 / p95 / max, errors (any reply but 200) and
throughput, and /health's p50 / max over the run.

    PYTHONPATH=. .venv/bin/python benchmarks/api_load.py --workspace WS --cache-dir CACHE \\
        [--clients 16 64] [--requests 200] [--k 20] [--scoring-threads 2]

A bounded loop (N requests per client count), not a soak test. Wall times on whatever else the machine runs: the
script prints the load average and the CPU model beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from catalog import Columns, Tables, Workspace

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")


@contextmanager
def _api(workspace: Path, cache_dir: Path, scoring_threads: int) -> Iterator[str]:
    """`warmstart api` (no key, loopback) in its own process, as an operator runs it; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "WARMSTART_CACHE_DIR": str(cache_dir),
        "WARMSTART_API_SCORING_THREADS": str(scoring_threads),
    }
    env.pop("WARMSTART_API_KEY", None)
    command = [sys.executable, "-m", "flows.cli", "api", "-w", str(workspace), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"warmstart api exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _load(url: str, users: list[str], clients: int, requests: int, k: int) -> dict[str, object]:
    """`requests` GETs from `clients` concurrent workers, and /health sampled every 50 ms meanwhile."""
    todo = iter(range(requests))
    latencies: list[float] = []
    statuses: list[int] = []
    health: list[float] = []
    running = True
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for i in todo:
                started = time.perf_counter()
                answer = await client.get("/recommend", params={"user_id": users[i % len(users)], "k": k})
                latencies.append(time.perf_counter() - started)
                statuses.append(answer.status_code)

        async def sampler() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=120) as own:
                while running:
                    started = time.perf_counter()
                    (await own.get("/health")).raise_for_status()
                    health.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)

        sampling = asyncio.create_task(sampler())
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
        running = False
        await sampling
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": requests,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "max": float(ms.max()),
        "errors": sum(code != 200 for code in statuses),
        "5xx": sum(code >= 500 for code in statuses),
        "per_s": requests / wall,
        "health_p50": float(np.percentile(health, 50) * 1000),
        "health_max": float(max(health) * 1000),
        "health_samples": len(health),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "warmstart")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--scoring-threads", type=int, default=2)
    args = parser.parse_args()
    users = Workspace(args.workspace).read(Tables.interactions)[Columns.user].unique().sort().to_list()
    print(f"{_cpu_model()}, {os.cpu_count()} CPUs; scoring threads {args.scoring_threads}; {len(users)} users")
    print("| clients | requests | p50 ms | p95 ms | max ms | errors (5xx) | req/s | /health p50 / max ms (samples) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with _api(args.workspace, args.cache_dir, args.scoring_threads) as url:
        asyncio.run(_load(url, users, 4, 20, args.k))  # warm-up: first calls, connections
        for clients in args.clients:
            r = asyncio.run(_load(url, users, clients, args.requests, args.k))
            print(
                f"| {r['clients']} | {r['requests']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['max']:.0f} "
                f"| {r['errors']} ({r['5xx']}) | {r['per_s']:.1f} "
                f"| {r['health_p50']:.1f} / {r['health_max']:.1f} ({r['health_samples']}) |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.1f} (1 min) at the end")


if __name__ == "__main__":
    main()
