"""What every learned ranker shares: the public fit / scorer / recommend / save / load live here and do their checks
once (not fitted, bad task indices, one top-k with tie-breaking, one file format with a SHA-256 digest); a subclass
fills in `_fit`, `_scorer`, `_payload` and `_from_payload`.

A saved version is a directory with the model file (`model_file`) and metadata.json, written in that order and
atomically each: metadata.json names the kind, the format version and the model file's SHA-256, so a version whose
save was interrupted, or whose files were mixed, refuses to load instead of scoring with the wrong weights.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel

from catalog import DataError, NotFittedError, atomic_write_bytes, verified_bytes
from ranker.evaluate import Scorer
from ranker.features import RankerInputs, RankingTask
from ranker.newcomers import NewcomerConfig, newcomer_scores

METADATA = "metadata.json"


def check_task(task: RankingTask, inputs: RankerInputs, name: str) -> None:
    """Raise DataError unless the task's users and pool index into `inputs` and its matrices have their shape."""
    for what, values, bound in (
        ("users (user indices)", task.users, inputs.n_users),
        ("pool (item indices)", task.pool, inputs.n_items),
    ):
        values = np.asarray(values)
        if values.size == 0:
            raise DataError(f"the {name} task has no {what}.")
        if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() >= bound:
            raise DataError(f"the {name} task's {what} must be integers in [0, {bound}); got {values[:5]}.")
    for what, matrix in (("positives", task.positives), ("exclude", task.exclude)):
        if matrix is not None and matrix.shape != (inputs.n_users, inputs.n_items):
            raise DataError(
                f"the {name} task's {what} has shape {matrix.shape}; the inputs have "
                f"{(inputs.n_users, inputs.n_items)} (users x items)."
            )


def seeded_sample(users: np.ndarray, most: int | None, seed: int) -> np.ndarray:
    """`users` themselves, or a seeded sample of `most` of them (ascending) where there are more: a generator of
    their own (seed and count), so that users within the limit draw nothing."""
    if most is None or users.size <= most:
        return users
    return np.sort(np.random.default_rng([seed, users.size]).choice(users, most, replace=False))


def top_k(scores: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows' top k of a (users x pool) score matrix: (row, item) pairs in rank order. Equal scores go to the lower
    item index; -inf and NaN are never recommended."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.broadcast_to(pool, scores.shape), -scores), axis=1)[:, :k]
    finite = np.isfinite(np.take_along_axis(scores, order, axis=1))
    rows, ranks = np.nonzero(finite)
    return rows, pool[order[rows, ranks]]


class RankerBase(ABC):
    """A learned ranker over `RankerInputs`. Subclasses set the class attributes and implement the private parts."""

    kind: ClassVar[str]  # the registry's name, and `kind` in metadata.json
    model_file: ClassVar[str]
    format_version: ClassVar[int] = 1
    # Capability: a saved version scores only through the encoders it was trained with (its layers learned their
    # coordinates), so it cannot be re-scored over another run's inputs; the gate then compares recorded figures.
    tied_to_encoders: ClassVar[bool] = False

    metadata: dict[str, Any]
    # Users with `newcomers.min_events` to `max_events` events are scored by the newcomer model instead (saved with
    # the version; None: every user by this ranker). Set by `with_newcomers`, chosen on validation.
    newcomers: NewcomerConfig | None = None

    @property
    @abstractmethod
    def is_fitted(self) -> bool: ...

    @property
    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The configuration, JSON-ready (saved in metadata.json)."""

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load() first.")

    # ------------------------------------------------------------------------------------------------ learn

    def fit(self, inputs: RankerInputs, train: RankingTask, valid: RankingTask) -> Self:
        """Learn from `train`'s positives among its pool, stop early on `valid`'s."""
        for task, name in ((train, "training"), (valid, "validation")):
            check_task(task, inputs, name)
            if task.positives is None:
                raise DataError(f"the {name} task has no positives to learn from.")
        return self._fit(inputs, train, valid)

    @abstractmethod
    def _fit(self, inputs: RankerInputs, train: RankingTask, valid: RankingTask) -> Self: ...

    @abstractmethod
    def refit_config(self) -> BaseModel:
        """The configuration that trains this ranker again on more data for as long as this fit chose to (its
        early-stopped length fixed, no early stopping): a refit must not tune on what it trains on."""

    # ------------------------------------------------------------------------------------------------ serve

    def scorer(
        self,
        inputs: RankerInputs,
        exclude: sp.csr_array | None = None,
        *,
        placed: bool = True,
        model: Scorer | None = None,
    ) -> Scorer:
        """A Scorer for `ranker.evaluate` over `inputs`; training interactions and `exclude` pairs score -inf.
        `placed` orders the items as the ranker serves them (`place`); off, the values are the model's own scores
        (what serving shows beside the placed order). `model` stands for this ranker's own model scorer over the
        same inputs and pairs where one is shared with other rankers (`scorers_sharing_candidates`)."""
        self._require_fitted()
        if exclude is not None and exclude.shape != (inputs.n_users, inputs.n_items):
            raise DataError(f"exclude has shape {exclude.shape}; the inputs have {(inputs.n_users, inputs.n_items)}.")
        model = model or self._scorer(inputs, exclude)
        if self.newcomers is not None:
            model = routed(model, inputs, exclude, self.newcomers)
        if not placed:
            return model

        def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            return self.place(model(users, items), inputs, items)

        return score

    def place(self, scores: np.ndarray, inputs: RankerInputs, items: np.ndarray) -> np.ndarray:
        """A (users x `items`) matrix of this model's scores as values whose order is the one served (a ranker that
        reserves places, e.g. for new items, reorders; the values are then no longer scores). By default, as is."""
        return scores

    @abstractmethod
    def _scorer(self, inputs: RankerInputs, exclude: sp.csr_array | None) -> Scorer: ...

    def with_newcomers(self, config: NewcomerConfig | None) -> Self:
        """Serve users with at most `config.max_events` events by the newcomer model from now on (saved with the
        model; None: by this ranker)."""
        self.newcomers = config
        self.metadata["newcomers"] = config.model_dump() if config is not None else None
        return self

    def recommend(
        self,
        inputs: RankerInputs,
        users: np.ndarray,
        k: int,
        pool: np.ndarray | None = None,
        exclude: sp.csr_array | None = None,
        *,
        block: int = 512,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k (user, item, rank) for `users` among `pool` (default all items), scored `block` users at a time;
        training items and `exclude` pairs are never recommended; equal scores go to the lower item index."""
        users = np.asarray(users)
        pool = np.arange(inputs.n_items) if pool is None else np.asarray(pool)
        check_task(RankingTask(users, pool, exclude=exclude), inputs, "recommendation")
        score = self.scorer(inputs, exclude)
        parts = []
        for start in range(0, users.size, block):
            chunk = users[start : start + block]
            rows, items = top_k(score(chunk, pool), pool, k)
            ranks = np.arange(rows.size) - np.searchsorted(rows, rows, side="left") + 1
            parts.append((chunk[rows], items, ranks))
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------------ persist

    @abstractmethod
    def _payload(self) -> bytes:
        """The fitted model as bytes (the model file)."""

    @classmethod
    @abstractmethod
    def _from_payload(cls, payload: bytes, metadata: dict[str, Any]) -> Self:
        """A fitted ranker from `_payload`'s bytes and the saved metadata."""

    def save(self, directory: Path) -> Path:
        """Write the model file, then metadata.json with its SHA-256 (atomically each); returns `directory`."""
        self._require_fitted()
        payload = self._payload()
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / self.model_file, payload)
        metadata = self.metadata | {
            "kind": self.kind,
            "format_version": self.format_version,
            "config": self.config_dict,
            "model_sha256": hashlib.sha256(payload).hexdigest(),
        }
        atomic_write_bytes(directory / METADATA, json.dumps(metadata, indent=2).encode("utf-8"))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Self:
        """A fitted ranker from what `save` wrote, after checking its kind, format and digest."""
        meta_path, model_path = directory / METADATA, directory / cls.model_file
        if not meta_path.is_file() or not model_path.is_file():
            raise DataError(f"{directory}: no saved {cls.__name__} ({METADATA} and {cls.model_file} expected).")
        metadata = read_metadata(directory)
        if metadata.get("kind") != cls.kind or metadata.get("format_version") != cls.format_version:
            raise DataError(
                f"{meta_path}: holds {metadata.get('kind')!r} format {metadata.get('format_version')}, not "
                f"{cls.kind} format {cls.format_version}; fit and save the model again."
            )
        payload = verified_bytes(model_path, metadata.get("model_sha256"), manifest=METADATA, fix="save it again.")
        ranker = cls._from_payload(payload, metadata)
        newcomers = metadata.get("newcomers")
        return ranker.with_newcomers(NewcomerConfig(**newcomers) if newcomers else None)


def routed(model: Scorer, inputs: RankerInputs, exclude: sp.csr_array | None, config: NewcomerConfig) -> Scorer:
    """The newcomer model for the warm items of users with `config.min_events` to `config.max_events` events,
    `model` for everything else; a user's own items and `exclude` pairs score -inf either way.

    The newcomer model knows nothing of items without training interactions, so a newcomer's cold items keep the
    ranker's order, below every warm item: they reach the top only through the ranker's cold places (`place`), and
    a pool of cold items alone is ranked for newcomers exactly as the ranker ranks it. With `config.cold_items`
    False they are left out (-inf) for newcomers, so no cold place lifts one."""
    activity = np.diff(inputs.history.indptr)

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        scores = model(users, items)
        newcomer = (activity[users] >= config.min_events) & (activity[users] <= config.max_events)
        if not newcomer.any():
            return scores
        rows, warm = users[newcomer], ~inputs.is_cold[items]
        fresh = newcomer_scores(inputs, rows, items[warm], config)
        known = inputs.history[rows] if inputs.is_full(items) else inputs.history[rows][:, items]
        if exclude is not None:
            known = known + (exclude[rows] if inputs.is_full(items) else exclude[rows][:, items])
        floor = fresh.min(axis=1, keepdims=True) if warm.any() else np.zeros((rows.size, 1), np.float32)
        # Cold items by the ranker's order (equal scores to the lower column, as top_k breaks ties) into
        # (floor - 2, floor - 1): below every warm item. What the ranker left out stays out.
        ranker = scores[newcomer]
        # Only the ranker's finite scores are placed (the rest stay out): each one's place in its row's order,
        # found among them alone (a stable sort of every item of 33 rows of 500k took 3.3 s; this, 20 ms).
        row_of, columns = np.divmod(np.flatnonzero(np.isfinite(ranker)), items.size)
        order = np.lexsort((columns, -ranker[row_of, columns], row_of))
        in_order = row_of[order]
        position = np.empty(order.size, dtype=np.int64)
        position[order] = np.arange(order.size) - np.searchsorted(in_order, in_order, side="left")
        placed = np.full(ranker.shape, -np.inf, dtype=np.float32)
        placed[row_of, columns] = (floor[row_of, 0] - 1 - (position + 1) / (items.size + 1)).astype(np.float32)
        placed[:, warm] = fresh
        if not config.cold_items:
            placed[:, ~warm] = -np.inf  # no cold item for newcomers: the cold places find none to lift
        placed[known.toarray() > 0] = -np.inf
        scores[newcomer] = placed
        return scores

    return score


def read_metadata(directory: Path) -> dict[str, Any]:
    """A saved version's metadata.json."""
    path = directory / METADATA
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the model's metadata ({error}); save the model again.") from None
