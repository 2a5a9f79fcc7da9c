"""The JSON report every benchmark script writes with --json: what ran, when, and each result row."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catalog import atomic_write_bytes


def write_report(path: Path, benchmark: str, *, data: Path, k: int, seconds: float, results: list[Any]) -> None:
    payload = {
        "benchmark": benchmark,
        "data": str(data),
        "k": k,
        "date": datetime.now(UTC).date().isoformat(),
        "total_seconds": round(seconds, 1),
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(payload, indent=2).encode())


def machine() -> str:
    """CPU model, cores and the SIMD flags that decide speed (avx2, avx512*, amx*): printed beside every figure."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.check_output(["lscpu"], text=True).splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    wanted = sorted(f for f in set(flags) if f == "avx2" or f.startswith(("avx512", "amx")))
    return f"{model}, {os.cpu_count()} CPUs, flags {' '.join(wanted) or 'none of avx2/avx512/amx'}"
