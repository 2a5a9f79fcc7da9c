"""Generation cache: outputs keyed by (model, prompt version, input hash), so a rerun generates nothing twice.

Layout::

    ROOT/<model slug>/<first two hex digits>/<key>.json    {"model", "prompt", "input_hash", "value", ...}

One small JSON file per entry, each written atomically (temporary file, then rename): concurrent writers of
the same key write the same content, a crash leaves no half entry, and an unreadable entry is a miss.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catalog import atomic_write_bytes

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def input_hash(payload: Any) -> str:
    """SHA-256 of the canonical JSON of `payload` (e.g. the rendered chat messages)."""
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class GenerationCache:
    """Generated values (text or scores) on disk under `root`; `hits` and `misses` count look-ups."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"GenerationCache({str(self.root)!r})"

    def _path(self, model: str, prompt: str, digest: str) -> Path:
        slug = _UNSAFE.sub("_", model).strip("._") or "model"
        key = hashlib.sha256(f"{model}\n{prompt}\n{digest}".encode()).hexdigest()
        return self.root / f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}" / key[:2] / f"{key}.json"

    def get(self, model: str, prompt: str, digest: str) -> dict[str, Any] | None:
        """The stored entry for (model, prompt id, input hash), or None."""
        path = self._path(model, prompt, digest)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            self.misses += 1
            return None
        if entry.get("model") != model or entry.get("prompt") != prompt or entry.get("input_hash") != digest:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, model: str, prompt: str, digest: str, value: Any, **extra: Any) -> None:
        entry = {
            "model": model,
            "prompt": prompt,
            "input_hash": digest,
            "value": value,
            "created_at": datetime.now(UTC).isoformat(),
            **extra,
        }
        atomic_write_bytes(self._path(model, prompt, digest), json.dumps(entry, ensure_ascii=False).encode("utf-8"))
