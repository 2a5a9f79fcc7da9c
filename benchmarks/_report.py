"""The JSON report every benchmark script writes with --json: what ran, when, and each result row."""

from __future__ import annotations

import json
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
