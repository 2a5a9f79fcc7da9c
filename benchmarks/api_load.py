"""The HTTP API under concurrent clients: `warmstart api` in its own process on loopback, C clients (asyncio, one
httpx connection pool) sending N `GET /recommend?user_id=U&k=K` in all (users in turn), while a sampler times
`GET /health` every 50 ms. Prints, per client count, the requests' p50 / p95 / max, errors (any reply but 200) and
throughput, and /health's p50 / max over the run.

    PYTHONPATH=. .venv/bin/python benchmarks/api_load.py --workspace WS --cache-dir CACHE \\
        [--clients 16 64] [--requests 1000] [--k 20] [--scoring-threads 2] [--precompute-k 100]

With a precomputed depth (the API's default, 100), the load starts once every user's list is ready; k past it, or
--precompute-k 0, measures live scoring.

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
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _api(workspace: Path, cache_dir: Path, scoring_threads: int, precompute_k: int) -> Iterator[tuple[str, int]]:
    """`warmstart api` (no key, loopback) in its own process, as an operator runs it; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "WARMSTART_CACHE_DIR": str(cache_dir),
        "WARMSTART_API_SCORING_THREADS": str(scoring_threads),
        "WARMSTART_API_PRECOMPUTE_K": str(precompute_k),
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
        yield url, process.pid
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

        # One untimed request per client first: the timed ones reuse open connections, as a service's clients do.
        await asyncio.gather(*(client.get("/health") for _ in range(clients)))
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


_WRK_SCRIPT = """
users = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/recommend?user_id=" .. users[(counter %% #users) + 1] .. "&k=%d")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %%d %%d %%d %%d %%d %%d %%d\\n", latency:percentile(50), latency:percentile(95),
    latency.max, summary.requests, e.connect + e.read + e.write + e.timeout, e.status, summary.duration))
end
"""


def _load_wrk(url: str, users: list[str], clients: int, seconds: int, k: int) -> dict[str, object]:
    """wrk (C, one thread, `clients` keep-alive connections) for `seconds`, users in turn; /health sampled every
    50 ms from this process meanwhile. wrk's client costs a fraction of httpx's CPU, which on a 2-core machine
    otherwise competes with the server it measures."""
    health: list[float] = []
    running = True

    def sample() -> None:
        with httpx.Client(base_url=url, timeout=120) as own:
            while running:
                started = time.perf_counter()
                own.get("/health").raise_for_status()
                health.append(time.perf_counter() - started)
                time.sleep(0.05)

    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_SCRIPT % (", ".join(f'"{quote(user)}"' for user in users), k))
        script.flush()
        sampler = threading.Thread(target=sample)
        sampler.start()
        command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "60s", "-s", script.name, url]
        try:
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        finally:
            running = False
            sampler.join()
    p50, p95, worst, done, errors, status, micros = (int(v) for v in out.split("WRK ", 1)[1].split()[:7])
    return {
        "clients": clients,
        "requests": done,
        "p50": p50 / 1000,
        "p95": p95 / 1000,
        "max": worst / 1000,
        "errors": errors + status,
        "5xx": status,  # wrk counts statuses over 399 together; the server log tells 4xx from 5xx
        "per_s": done / (micros / 1e6),
        "health_p50": float(np.percentile(health, 50) * 1000),
        "health_max": float(max(health) * 1000),
        "health_samples": len(health),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "warmstart")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument(
        "--driver",
        choices=["httpx", "wrk"],
        default="httpx",
        help="httpx: asyncio clients in this process, --requests in all; wrk (Debian's `wrk`): --seconds per count.",
    )
    parser.add_argument("--seconds", type=int, default=10, help="How long wrk sends, per client count.")
    parser.add_argument("--scoring-threads", type=int, default=2)
    parser.add_argument(
        "--precompute-k",
        type=int,
        default=100,
        help="WARMSTART_API_PRECOMPUTE_K for the server (0: every request scored live); with it, the load starts once "
        "/health says every user's list is ready, and the time that took is printed.",
    )
    args = parser.parse_args()
    users = Workspace(args.workspace).read(Tables.interactions)[Columns.user].unique().sort().to_list()
    print(
        f"{_cpu_model()}, {os.cpu_count()} CPUs; scoring threads {args.scoring_threads}; precomputed depth "
        f"{args.precompute_k}; {len(users)} users; load average {os.getloadavg()[0]:.1f} (1 min) at the start"
    )
    print(
        "| clients | requests | p50 ms | p95 ms | max ms | errors (5xx) | req/s | /health p50 / max ms (samples) "
        "| CPU s, server / clients |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with _api(args.workspace, args.cache_dir, args.scoring_threads, args.precompute_k) as (url, pid):
        if args.precompute_k:
            started = time.perf_counter()
            while (health := httpx.get(f"{url}/health").json())["precomputed_users"] < health["users"]:
                time.sleep(0.1)
            print(
                f"every user's top {args.precompute_k} ready {time.perf_counter() - started:.1f} s after /health "
                "first answered"
            )
        asyncio.run(_load(url, users, 4, 20, args.k))  # warm-up: first calls, connections
        for clients in args.clients:
            server, own = _cpu_seconds(pid), time.process_time()
            r = (
                _load_wrk(url, users, clients, args.seconds, args.k)
                if args.driver == "wrk"
                else asyncio.run(_load(url, users, clients, args.requests, args.k))
            )
            server, own = _cpu_seconds(pid) - server, time.process_time() - own
            print(
                f"| {r['clients']} | {r['requests']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['max']:.0f} "
                f"| {r['errors']} ({r['5xx']}) | {r['per_s']:.1f} "
                f"| {r['health_p50']:.1f} / {r['health_max']:.1f} ({r['health_samples']}) "
                f"| {server:.1f} / {own:.1f} |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.1f} (1 min) at the end")


if __name__ == "__main__":
    main()
