"""Collaborative ID embeddings: BPR matrix factorisation (Rendle et al., 2009) trained in torch.

`BPRMF.fit` maps string ids to contiguous integers (sorted, so the mapping and the result do not depend on row
order), trains user and item embeddings plus an item bias with uniform negative sampling and Adam, optionally stops
early on Recall@K over a validation frame, and exposes the result as a frozen `CFEmbeddings`.

Saved layout (see `save_arrays`)::

    DIR/bprmf.npz    ids and arrays (no pickles)
    DIR/bprmf.json   kind, format version, config, training summary, SHA-256 of the .npz
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress

from catalog import Columns, DataError, NotFittedError, atomic_write_bytes, verified_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NEGATIVE_RESAMPLE_ROUNDS = 10  # after this many rounds the few remaining collisions stay (rare, harmless)
_EVAL_CHUNK = 1024  # users scored at once in validation: 1024 x 16,980 float32 is ~70 MB...
_EVAL_SCORES = 2**24  # ...and fewer where the catalogue is larger: at most 64 MB of scores at once
# Users a validation check scores at most; more than CiteULike-a's and MovieLens' whole populations, so their
# figures are those of every user.
VALIDATION_USERS = 10_000
# ...and fewer over a large catalogue, so that a check scores at most this many (user, item) pairs: every user of
# up to 107k items, 2,147 at 500k (where a check of 10,000 took minutes: docs/scaling.md), never fewer than
# MIN_VALIDATION_USERS (ALDI's scripts score 2,000 users).
VALIDATION_SCORES = 2**30
MIN_VALIDATION_USERS = 2_000


# --- persistence shared by the encoders' models -------------------------------------------------------------------


def save_arrays(directory: Path, stem: str, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> Path:
    """Write `stem.npz` then `stem.json` (each atomically); the JSON records the SHA-256 of the .npz.

    The JSON goes last and names the exact .npz it belongs with, so a crash between the two writes is detected
    on load instead of pairing new arrays with old metadata.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    payload = buffer.getvalue()
    atomic_write_bytes(directory / f"{stem}.npz", payload)
    record = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "saved_at": datetime.now(UTC).isoformat(),
        "arrays_sha256": hashlib.sha256(payload).hexdigest(),
    }
    atomic_write_bytes(directory / f"{stem}.json", json.dumps(record, indent=2).encode("utf-8"))
    return directory


def load_arrays(directory: Path, stem: str, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read what `save_arrays` wrote, checking the kind, the format version and the .npz digest."""
    directory = Path(directory)
    meta_path, array_path = directory / f"{stem}.json", directory / f"{stem}.npz"
    if not meta_path.is_file() or not array_path.is_file():
        raise DataError(
            f"{directory}: no saved {kind} ({stem}.json and {stem}.npz expected). Fit a {kind} and call "
            f"save({str(directory)!r}) first."
        )
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    if metadata.get("kind") != kind:
        raise DataError(f"{meta_path}: holds a {metadata.get('kind')!r}, not a {kind!r}; load it with its own class.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{meta_path}: format version {metadata.get('format_version')}, this code reads {FORMAT_VERSION}; "
            "refit and save the model again."
        )
    payload = verified_bytes(
        array_path, metadata.get("arrays_sha256"), manifest=meta_path.name, fix="save the model again."
    )
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return arrays, metadata


# --- inputs ---------------------------------------------------------------------------------------------------------


def check_pairs(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """Distinct (user_id, item_id) string pairs of `frame`, sorted; a DataError names a missing or bad column."""
    missing = [column for column in (Columns.user, Columns.item) if column not in frame.columns]
    if missing:
        raise DataError(f"{name} is missing column(s) {missing}; it has {frame.columns}.")
    pairs = frame.select(Columns.user, Columns.item)
    for column in (Columns.user, Columns.item):
        if pairs.schema[column] != pl.String:
            raise DataError(
                f"{name}.{column} is {pairs.schema[column]}, expected String (ids are strings); "
                "load the data through catalog or cast the column."
            )
        if pairs[column].null_count():
            raise DataError(f"{name}.{column} has {pairs[column].null_count()} null id(s); drop those rows first.")
    return pairs.unique().sort(Columns.user, Columns.item)


def _index_of(known: np.ndarray, ids: Sequence[str] | np.ndarray | pl.Series, what: str) -> np.ndarray:
    """Positions of `ids` in the sorted array `known`; a DataError quotes unknown ids."""
    query = np.asarray(ids.to_numpy() if isinstance(ids, pl.Series) else ids, dtype=str)
    if known.size == 0:
        positions = np.zeros(query.shape, dtype=np.int64)
        found = np.zeros(query.shape, dtype=bool)
    else:
        positions = np.searchsorted(known, query).clip(max=known.size - 1)
        found = known[positions] == query
    if not found.all():
        raise DataError(
            f"{int((~found).sum())} {what} id(s) unknown to these embeddings, e.g. {query[~found][:5].tolist()}; "
            f"filter them first (see `{what}_ids`) or give them stand-in vectors."
        )
    return positions.astype(np.int64)


def _frozen(array: np.ndarray, dtype: Any) -> np.ndarray:
    array = np.array(array, dtype=dtype, copy=True)
    array.flags.writeable = False
    return array


# --- embeddings -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CFEmbeddings:
    """User and item vectors and item biases; score(u, i) = user_vectors[u] . item_vectors[i] + item_bias[i].

    Ids are sorted strings; row k of a matrix belongs to the k-th id. Arrays are read-only copies.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_bias: np.ndarray

    def __post_init__(self) -> None:
        for name in ("user_ids", "item_ids"):
            ids = np.asarray(getattr(self, name), dtype=str)
            if ids.ndim != 1 or (ids.size and not (ids[1:] > ids[:-1]).all()):
                raise DataError(f"CFEmbeddings.{name} must be unique and sorted; sort rows with np.argsort first.")
            object.__setattr__(self, name, _frozen(ids, str))
        for name in ("user_vectors", "item_vectors", "item_bias"):
            object.__setattr__(self, name, _frozen(getattr(self, name), np.float32))
        users, items = self.user_vectors, self.item_vectors
        if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
            raise DataError(f"user vectors {users.shape} and item vectors {items.shape} must be 2-d and equally wide.")
        if users.shape[0] != self.user_ids.size or items.shape[0] != self.item_ids.size:
            raise DataError(
                f"{self.user_ids.size} user ids / {self.item_ids.size} item ids do not match vectors "
                f"{users.shape} / {items.shape}."
            )
        if self.item_bias.shape != (self.item_ids.size,):
            raise DataError(f"item_bias has shape {self.item_bias.shape}, expected ({self.item_ids.size},).")

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def user_index(self, ids: Sequence[str] | np.ndarray | pl.Series) -> np.ndarray:
        """Row of each user id; unknown ids raise a DataError."""
        return _index_of(self.user_ids, ids, "user")

    def item_index(self, ids: Sequence[str] | np.ndarray | pl.Series) -> np.ndarray:
        """Row of each item id; unknown ids raise a DataError."""
        return _index_of(self.item_ids, ids, "item")

    def score(self, user_idx: np.ndarray | None = None, item_idx: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 scores, shape (len(user_idx), len(item_idx)); None means every user / item."""
        users = self.user_vectors if user_idx is None else self.user_vectors[np.asarray(user_idx)]
        items = self.item_vectors if item_idx is None else self.item_vectors[np.asarray(item_idx)]
        bias = self.item_bias if item_idx is None else self.item_bias[np.asarray(item_idx)]
        return users @ items.T + bias

    def with_items(self, item_ids: Sequence[str] | np.ndarray, item_vectors: np.ndarray, item_bias: np.ndarray) -> Self:
        """The same users with other items (e.g. stand-in vectors of cold items); rows are re-sorted by id."""
        ids = np.asarray(item_ids, dtype=str)
        order = np.argsort(ids, kind="stable")
        return dataclasses.replace(
            self,
            item_ids=ids[order],
            item_vectors=np.asarray(item_vectors)[order],
            item_bias=np.asarray(item_bias)[order],
        )

    def with_users(self, user_ids: Sequence[str] | np.ndarray, user_vectors: np.ndarray) -> Self:
        """The same items with other users (e.g. stand-in vectors of sparse users); rows are re-sorted by id."""
        ids = np.asarray(user_ids, dtype=str)
        order = np.argsort(ids, kind="stable")
        return dataclasses.replace(self, user_ids=ids[order], user_vectors=np.asarray(user_vectors)[order])


# --- validation metric ----------------------------------------------------------------------------------------------


def recall_at_k(
    embeddings: CFEmbeddings,
    truth: tuple[np.ndarray, np.ndarray],
    exclude: tuple[np.ndarray, np.ndarray],
    k: int,
    *,
    most_users: int | None = None,
    seed: int = 0,
) -> float:
    """Mean Recall@k over users with a `truth` pair (a seeded sample of `most_users` of them where there are more,
    fewer over a large catalogue: VALIDATION_SCORES), ranking every item of `embeddings` minus `exclude` pairs.

    `truth` and `exclude` are (user rows, item rows) index arrays. Recall divides the hits by the user's truth
    pairs; candidates are all items the embeddings know, so callers drop truth pairs of unknown ids beforehand.
    """
    n_items = embeddings.item_ids.size
    truth_keys = np.unique(truth[0] * n_items + truth[1])
    exclude_keys = np.unique(exclude[0] * n_items + exclude[1])
    users = np.unique(truth[0])
    if users.size == 0:
        return 0.0
    if most_users is not None:
        most_users = min(most_users, max(MIN_VALIDATION_USERS, VALIDATION_SCORES // n_items))
    if most_users is not None and users.size > most_users:
        # Each check scores every item for every user: at 50k users and 100k items, minutes a check.
        users = np.sort(np.random.default_rng(seed).choice(users, most_users, replace=False))
    per_user = np.zeros(users.size)
    k = min(k, n_items)
    chunk_users = max(1, min(_EVAL_CHUNK, _EVAL_SCORES // n_items))
    for start in range(0, users.size, chunk_users):
        chunk = users[start : start + chunk_users]
        scores = embeddings.score(chunk)
        # Exclusions of this chunk: key ranges [u * n_items, (u + 1) * n_items) of the sorted exclude keys.
        # The chunk's users are sorted, so its exclusions lie in one slice of the sorted keys (plus other users').
        keys = exclude_keys[
            np.searchsorted(exclude_keys, chunk[0] * n_items) : np.searchsorted(exclude_keys, (chunk[-1] + 1) * n_items)
        ]
        rows = np.searchsorted(chunk, keys // n_items).clip(max=chunk.size - 1)
        mine = chunk[rows] == keys // n_items
        scores[rows[mine], keys[mine] % n_items] = -np.inf
        top = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()
        hits = _sorted_contains(truth_keys, chunk[:, None] * n_items + top).sum(axis=1)
        n_truth = np.searchsorted(truth_keys, (chunk + 1) * n_items) - np.searchsorted(truth_keys, chunk * n_items)
        per_user[start : start + chunk.size] = hits / n_truth
    return float(per_user.mean())


def _sorted_contains(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """np.isin(values, keys) for sorted `keys`, by binary search: isin sorts the keys again on every call, which
    for a large validation set (a million pairs) was most of a check's time."""
    if keys.size == 0:
        return np.zeros(values.shape, dtype=bool)
    return keys[np.minimum(np.searchsorted(keys, values), keys.size - 1)] == values


# --- the model ------------------------------------------------------------------------------------------------------


_Weights = TypeVar("_Weights")


@dataclass
class BestEpoch(Generic[_Weights]):
    """Early stopping's state (here and in the content mapper): the best validation score so far, its epoch, a
    copy of the weights then, and how many checks since have not beaten it. `score` stays None until a check."""

    score: float | None = None
    epoch: int = 0
    weights: _Weights | None = None
    stale: int = 0

    def check(self, score: float, epoch: int, snapshot: Callable[[], _Weights]) -> None:
        """Record a validation score; `snapshot` copies the weights, called only when they are the new best."""
        if self.score is None or score > self.score:
            self.score, self.epoch, self.weights, self.stale = score, epoch, snapshot(), 0
        else:
            self.stale += 1


class BPRConfig(BaseModel):
    """Hyperparameters of `BPRMF`. lr and reg defaults: best on CiteULike's warm_val (benchmarks/cf_mapper.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    dim: int = Field(64, ge=1)
    """Width of the user and item vectors."""
    epochs: int = Field(100, ge=1)
    """Most passes over the training pairs (fewer when early stopping triggers)."""
    lr: float = Field(0.0025, gt=0)
    """Adam learning rate."""
    reg: float = Field(0.005, ge=0)
    """L2 weight on the vectors and biases each minibatch touches, summed per triple and averaged over the batch."""
    batch_size: int = Field(2048, ge=1)
    """Training triples (user, positive, sampled negative) per Adam step."""
    init_std: float = Field(0.1, gt=0)
    """Standard deviation of the normal initialisation of the vectors (biases start at zero)."""
    seed: int = 0
    """Seeds initialisation (torch.Generator) and sampling (numpy default_rng): equal seeds, equal embeddings."""
    k: int = Field(20, ge=1)
    """Cut-off of the validation Recall@K used for early stopping."""
    validation_users: int = Field(VALIDATION_USERS, ge=1)
    """Most users the validation Recall@K scores (a seeded sample beyond): each check ranks every item for them."""
    patience: int = Field(5, ge=1)
    """Validation checks without improvement before training stops; the best epoch's vectors are kept."""
    threads: int = Field(1, ge=1)
    """torch CPU threads while fitting: each step's tensors are small, so one thread is fastest (30x faster than
    two here, with another process on the cores), and the caller's setting is restored afterwards."""


_Config = TypeVar("_Config", bound=BaseModel)


class CFModel(Generic[_Config]):
    """What every collaborative model shares: its config, the fitted `embeddings` (`score` through them), the fit's
    `summary` and `history`, and `save` / `load` of both. A subclass names its `kind`, file `_stem` and config class,
    and fills in `fit` and `_versions`."""

    kind: str
    _stem: str
    _config_class: type[_Config]

    def __init__(self, config: _Config | None = None) -> None:
        self.config: _Config = config or self._config_class()
        self._embeddings: CFEmbeddings | None = None
        self.history: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}({self.config!r}, {state})"

    @property
    def is_fitted(self) -> bool:
        return self._embeddings is not None

    @property
    def embeddings(self) -> CFEmbeddings:
        if self._embeddings is None:
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not fitted: call fit(interactions) or {name}.load(directory) first.")
        return self._embeddings

    def score(self, user_idx: np.ndarray | None = None, item_idx: np.ndarray | None = None) -> np.ndarray:
        """Dense scores for user rows x item rows (see CFEmbeddings.score)."""
        return self.embeddings.score(user_idx, item_idx)

    def _versions(self) -> dict[str, str]:
        """Versions of the libraries that trained it, saved beside the vectors."""
        return {"numpy": np.__version__}

    def save(self, directory: Path) -> Path:
        """Write STEM.npz and STEM.json under `directory` (atomically); returns the directory."""
        embeddings = self.embeddings
        arrays = {field.name: getattr(embeddings, field.name) for field in dataclasses.fields(CFEmbeddings)}
        metadata = {
            "kind": self.kind,
            "config": self.config.model_dump(),
            "summary": self.summary,
            "history": self.history,
            "versions": self._versions(),
        }
        return save_arrays(directory, self._stem, arrays, metadata)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """A fitted model from what `save` wrote."""
        arrays, metadata = load_arrays(directory, cls._stem, cls.kind)
        model = cls(cls._config_class.model_validate(metadata["config"]))
        model._embeddings = CFEmbeddings(**arrays)
        model.summary, model.history = metadata["summary"], metadata["history"]
        return model


class BPRMF(CFModel[BPRConfig]):
    """BPR matrix factorisation with item bias. Use `fit`, then `embeddings` or `score`; `save`/`load` persist it."""

    kind = "BPRMF"
    _stem = "bprmf"
    _config_class = BPRConfig

    def fit(
        self, interactions: pl.DataFrame, validation: pl.DataFrame | None = None, *, show_progress: bool = False
    ) -> Self:
        """Train on the (user_id, item_id) pairs of `interactions`; duplicates count once.

        With `validation`, Recall@k on its pairs (users and items seen in training only; training pairs excluded
        from the ranking) is measured after each epoch, training stops after `patience` epochs without
        improvement, and the best epoch's vectors are kept.
        """
        previous = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        started = time.perf_counter()
        try:
            self._fit(interactions, validation, show_progress)
        finally:
            torch.set_num_threads(previous)
        self.summary["seconds"] = round(time.perf_counter() - started, 2)
        return self

    def _fit(self, interactions: pl.DataFrame, validation: pl.DataFrame | None, show_progress: bool) -> Self:
        config = self.config
        pairs = check_pairs(interactions, "interactions")
        if pairs.height == 0:
            raise DataError("interactions is empty: BPRMF needs at least one (user_id, item_id) pair.")
        user_ids = np.asarray(pairs[Columns.user].unique().sort().to_numpy(), dtype=str)
        item_ids = np.asarray(pairs[Columns.item].unique().sort().to_numpy(), dtype=str)
        if item_ids.size < 2:
            raise DataError("interactions has a single item: BPR needs at least two items to sample negatives.")
        users = _index_of(user_ids, pairs[Columns.user], "user")
        items = _index_of(item_ids, pairs[Columns.item], "item")
        truth = self._validation_rows(validation, user_ids, item_ids) if validation is not None else None

        tables, best = self._train(user_ids, item_ids, users, items, truth, show_progress)
        self._embeddings = self._as_embeddings(user_ids, item_ids, *tables)
        self.summary = {
            "n_users": int(user_ids.size),
            "n_items": int(item_ids.size),
            "n_pairs": int(users.size),
            "epochs_run": len(self.history),
            "best_epoch": best.epoch if best.score is not None else len(self.history),
            f"best_val_recall@{config.k}": best.score,
        }
        return self

    def _train(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        truth: tuple[np.ndarray, np.ndarray] | None,
        show_progress: bool,
    ) -> tuple[list[torch.Tensor], BestEpoch[list[torch.Tensor]]]:
        """Epochs of Adam on the (users, items) pairs, filling `history`: the last epoch's (user, item, bias)
        tables, or with `truth` the best epoch's, and the early-stopping state."""
        config = self.config
        n_users, n_items, n_pairs = user_ids.size, item_ids.size, users.size
        positive_keys = users * n_items + items  # sorted, since pairs and ids are sorted
        generator = torch.Generator().manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        user_table = (torch.randn(n_users, config.dim, generator=generator) * config.init_std).requires_grad_()
        item_table = (torch.randn(n_items, config.dim, generator=generator) * config.init_std).requires_grad_()
        tables = [user_table, item_table, torch.zeros(n_items, requires_grad=True)]
        # fused: one kernel for the whole update, about 6x faster steps on CPU than the default.
        optimizer = torch.optim.Adam(tables, lr=config.lr, fused=True)
        users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)

        self.history = []
        best: BestEpoch[list[torch.Tensor]] = BestEpoch()
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("BPR-MF epochs", total=config.epochs)
            for epoch in range(1, config.epochs + 1):
                order = torch.from_numpy(rng.permutation(n_pairs))
                negatives = torch.from_numpy(_sample_negatives(rng, users, positive_keys, n_items))
                total = _bpr_epoch(tables, optimizer, (users_t, items_t, negatives), order, config)
                record = {"epoch": float(epoch), "loss": total / n_pairs}
                if truth is not None:
                    current = self._as_embeddings(user_ids, item_ids, *tables)
                    recall = recall_at_k(
                        current, truth, (users, items), config.k, most_users=config.validation_users, seed=config.seed
                    )
                    record[f"val_recall@{config.k}"] = recall
                    best.check(recall, epoch, lambda: [t.detach().clone() for t in tables])
                self.history.append(record)
                log.info("bprmf epoch %s", " ".join(f"{key}={value:.5g}" for key, value in record.items()))
                progress.update(task, advance=1, description=f"BPR-MF epoch {epoch} loss {record['loss']:.4f}")
                if truth is not None and best.stale >= config.patience:
                    break
        return (best.weights if best.weights is not None else tables), best

    @staticmethod
    def _validation_rows(
        validation: pl.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        pairs = check_pairs(validation, "validation")
        known = pairs.filter(
            pl.col(Columns.user).is_in(user_ids.tolist()) & pl.col(Columns.item).is_in(item_ids.tolist())
        )
        if known.height == 0:
            raise DataError(
                "validation shares no (user, item) with the training interactions' users and items; "
                "pass held-out pairs of warm users and items, or no validation."
            )
        return _index_of(user_ids, known[Columns.user], "user"), _index_of(item_ids, known[Columns.item], "item")

    @staticmethod
    def _as_embeddings(
        user_ids: np.ndarray, item_ids: np.ndarray, users: torch.Tensor, items: torch.Tensor, bias: torch.Tensor
    ) -> CFEmbeddings:
        return CFEmbeddings(
            user_ids=user_ids,
            item_ids=item_ids,
            user_vectors=users.detach().numpy(),
            item_vectors=items.detach().numpy(),
            item_bias=bias.detach().numpy(),
        )

    def _versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "numpy": np.__version__}


def _bpr_loss(
    tables: Sequence[torch.Tensor],
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    reg: float,
) -> torch.Tensor:
    """-log sigmoid(x_ui - x_uj), averaged, plus `reg` times the squared norms the triples touch, per triple."""
    user_table, item_table, bias = tables
    # F.embedding, not table[index]: its backward sums repeated rows in a fixed order, while advanced indexing's
    # backward is not deterministic with several CPU threads (equal seeds would give different embeddings).
    embed = torch.nn.functional.embedding
    u, i, j = embed(users, user_table), embed(positives, item_table), embed(negatives, item_table)
    b_i, b_j = embed(positives, bias[:, None])[:, 0], embed(negatives, bias[:, None])[:, 0]
    margin = (u * (i - j)).sum(dim=1) + b_i - b_j
    norms = sum(t.square().sum() for t in (u, i, j, b_i, b_j))
    return -torch.nn.functional.logsigmoid(margin).mean() + reg * norms / users.numel()


def _bpr_epoch(
    tables: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    triples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    order: torch.Tensor,
    config: BPRConfig,
) -> float:
    """One pass over the (user, positive, negative) `triples` in `order`, an Adam step per minibatch; returns
    the loss summed over the triples."""
    users, positives, negatives = triples
    total = 0.0
    for start in range(0, order.numel(), config.batch_size):
        batch = order[start : start + config.batch_size]
        loss = _bpr_loss(tables, users[batch], positives[batch], negatives[batch], config.reg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.numel()
    return total


def _sample_negatives(
    rng: np.random.Generator, users: np.ndarray, positive_keys: np.ndarray, n_items: int
) -> np.ndarray:
    """One uniform negative item per training pair, resampled (vectorised) where it hits a positive of the user."""
    negatives = rng.integers(n_items, size=users.size)
    for _ in range(_NEGATIVE_RESAMPLE_ROUNDS):
        keys = users * n_items + negatives
        slot = np.searchsorted(positive_keys, keys).clip(max=positive_keys.size - 1)
        clash = np.flatnonzero(positive_keys[slot] == keys)
        if clash.size == 0:
            break
        negatives[clash] = rng.integers(n_items, size=clash.size)
    return negatives
