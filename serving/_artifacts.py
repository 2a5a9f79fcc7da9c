"""What a saved model version needs to serve on its own: the inputs its ranker scores from and their ids.

A version directory (WORKSPACE/models/RANKER/VERSION/) holds, besides the ranker's own files::

    serving.npz    every array of the served `RankerInputs` (sparse ones as CSR parts) and the index ids
    serving.json   format version, SHA-256 of serving.npz, shapes and the text model's name

Both are written atomically, the arrays first and the manifest last, so a manifest always names a complete
file; a digest that does not match (an interrupted or mixed write) refuses to load.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from catalog import Columns, DataError, atomic_write_bytes, verified_bytes
from encoders import MODEL_NAME
from ranker.features import RankerInputs
from ranker.temporal import TimeFeatures

SERVING_ARRAYS = "serving.npz"
SERVING_MANIFEST = "serving.json"
FORMAT_VERSION = 1

_DENSE = ("text", "user_cf", "item_cf", "item_standin", "popularity", "title_words")
_SPARSE = ("history", "tfidf", "categories")
# Saved where the inputs have them; a version saved before has none (RankerInputs' default then).
_OPTIONAL = ("user_standin", "user_attributes", "item_given")
WARMED = "warmed"
# The recency arrays of a time-ordered log, as of the version's cut (`TimeFeatures`); `time.now` in microseconds.
_TIME = ("recent", "age_days", "user_recent", "release_age_days")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, eq=False)
class ServingInputs:
    """A version's served inputs: row u of the user arrays is `user_ids[u]`, row i of the item arrays `item_ids[i]`."""

    inputs: RankerInputs
    user_ids: pl.Series
    item_ids: pl.Series
    manifest: dict[str, Any]
    # Items without history whose stand-in synthetic interactions warmed (all False for versions without any).
    warmed: np.ndarray | None = None


def save_serving_inputs(
    directory: Path,
    inputs: RankerInputs,
    user_ids: pl.Series,
    item_ids: pl.Series,
    *,
    text_model: str = MODEL_NAME,
    warmed: np.ndarray | None = None,
    warming: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write serving.npz then serving.json beside a saved version; returns the manifest. `warmed` marks the
    items synthetic interactions warmed (recommendations name that source) and `warming` their settings, with
    which items added later are warmed too."""
    if user_ids.len() != inputs.n_users or item_ids.len() != inputs.n_items:
        raise DataError(
            f"serving ids ({user_ids.len()} users, {item_ids.len()} items) do not match the inputs "
            f"({inputs.n_users} x {inputs.n_items}); save the index the inputs were built on."
        )
    arrays: dict[str, np.ndarray] = {
        name: np.asarray(getattr(inputs, name)) for name in (*_DENSE, *_OPTIONAL) if getattr(inputs, name) is not None
    }
    for name in _SPARSE:
        matrix = getattr(inputs, name)
        if matrix is None:
            continue
        matrix = sp.csr_array(matrix)
        arrays |= {
            f"{name}.data": matrix.data,
            f"{name}.indices": matrix.indices,
            f"{name}.indptr": matrix.indptr,
            f"{name}.shape": np.asarray(matrix.shape, dtype=np.int64),
        }
    if inputs.time is not None:  # the ranker read them in training: serving without them would be another model
        arrays |= {f"time.{name}": getattr(inputs.time, name) for name in _TIME}
        arrays["time.now"] = np.asarray((inputs.time.now - _EPOCH) // timedelta(microseconds=1), dtype=np.int64)
    # Fixed-width unicode arrays load without pickle (np.load(allow_pickle=False)).
    if warmed is not None:
        arrays[WARMED] = np.asarray(warmed, dtype=bool)
    arrays[Columns.user] = user_ids.cast(pl.String).to_numpy().astype(str)
    arrays[Columns.item] = item_ids.cast(pl.String).to_numpy().astype(str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    atomic_write_bytes(directory / SERVING_ARRAYS, payload)
    manifest = {
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "n_users": inputs.n_users,
        "n_items": inputs.n_items,
        "text_model": text_model,
        "text_dim": int(inputs.text.shape[1]),
        "warming": warming,
    }
    atomic_write_bytes(directory / SERVING_MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"))
    return manifest


def load_serving_inputs(directory: Path) -> ServingInputs:
    """The served inputs a version saved, after checking the manifest's format and digest."""
    manifest_path, arrays_path = directory / SERVING_MANIFEST, directory / SERVING_ARRAYS
    if not manifest_path.is_file() or not arrays_path.is_file():
        raise DataError(
            f"{directory}: the version has no serving inputs ({SERVING_MANIFEST} and {SERVING_ARRAYS}): saved by "
            "`warmstart evaluate` without --keep-version (its ranker alone), or before versions could serve. Run "
            "`warmstart refresh` (or retrain, or evaluate --keep-version) to save a servable version."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{manifest_path}: cannot read it ({error}); retrain to save the version again.") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{manifest_path}: serving format {manifest.get('format_version')}, this warmstart reads "
            f"{FORMAT_VERSION}; retrain to save the version again."
        )
    payload = verified_bytes(
        arrays_path, manifest.get("sha256"), manifest=SERVING_MANIFEST, fix="retrain to save the version again."
    )
    with np.load(io.BytesIO(payload), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    matrices: dict[str, sp.csr_array | None] = {}
    for name in _SPARSE:
        if f"{name}.data" not in arrays:
            matrices[name] = None
            continue
        parts = (arrays[f"{name}.data"], arrays[f"{name}.indices"], arrays[f"{name}.indptr"])
        matrices[name] = sp.csr_array(parts, shape=tuple(int(n) for n in arrays[f"{name}.shape"]))
    time = None
    if "time.now" in arrays:
        now = _EPOCH + timedelta(microseconds=int(arrays["time.now"]))
        time = TimeFeatures(now=now, **{name: arrays[f"time.{name}"] for name in _TIME})
    optional = {name: arrays[name] for name in _OPTIONAL if name in arrays}
    inputs = RankerInputs(**{name: arrays[name] for name in _DENSE}, **matrices, **optional, time=time)  # type: ignore[arg-type]
    return ServingInputs(
        inputs=inputs,
        user_ids=pl.Series(Columns.user, arrays[Columns.user], dtype=pl.String),
        item_ids=pl.Series(Columns.item, arrays[Columns.item], dtype=pl.String),
        manifest=manifest,
        warmed=arrays.get(WARMED),
    )
