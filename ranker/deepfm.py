"""DeepFM (Guo et al., 2017) over user and item fields, where a cold or sparse id is served by its stand-in.

Fields, each an embedding of width `embedding_dim`:

- user side: ``user_id`` (a learned ID embedding; for a sparse or cold user, a learned projection of the
  encoders' collaborative user vector instead, and for a user without history a projection of their stand-in made
  from attributes and text), ``user_text`` (the projected, normalised sum of the titles the
  user interacted with), ``user_segment`` (warm / sparse / cold);
- item side: ``item_id`` (a learned ID embedding; for a cold or sparse item, a learned projection of the item's
  content-to-ID *stand-in* instead, so one network serves warm and cold items), ``item_text`` (the projected
  text embedding; the same projection as ``user_text``), ``item_categories`` (mean of category embeddings),
  ``item_segment`` (head / tail / served by stand-in).

The score of a pair is DeepFM's: a first-order term, the FM's pairwise inner products of all field
embeddings, and an MLP over their concatenation. Both terms split into a user part, an item part and a
cross part, so scoring a user against a whole pool computes each side once.

Training samples each known positive (training history and the task's labels) against `negatives` items drawn
uniformly from the task's pool, with a softmax over the group. DropoutNet's idea makes the stand-in path learn:
each training group (a positive and its negatives) is shown through the items' stand-ins with probability
`item_dropout`, each user through theirs with
`user_dropout` (and as a user without history with `cold_user_share`). The user's text profile leaves out the
positive it is trained on (else the network would learn that an item is always similar to a profile that
contains it). Early stopping keeps the epoch with the best NDCG@k on the validation task.

Saved layout: ``model.pt`` (a state dict, read back with ``torch.load(weights_only=True)``) and ``metadata.json``
(config, shapes, training history and the SHA-256 of model.pt).
"""

from __future__ import annotations

import copy
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import nn

from catalog import HEAD_SHARE, DataError, NotFittedError
from ranker.base import RankerBase, check_task
from ranker.evaluate import Scorer
from ranker.features import RankerInputs, RankingTask

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
USER_FIELDS = ("user_id", "user_text", "user_segment")
ITEM_FIELDS = ("item_id", "item_text", "item_categories", "item_segment")
# Segment rows of the segment embeddings.
USER_WARM, USER_SPARSE, USER_COLD = 0, 1, 2
ITEM_HEAD, ITEM_TAIL, ITEM_STANDIN = 0, 1, 2
_SCORE_ELEMENTS = 1 << 24  # floats of the (users x items x hidden) block scored at once: 64 MB
_NEGATIVE_RESAMPLE_ROUNDS = 10


class DeepFMConfig(BaseModel):
    """Hyperparameters of the DeepFM ranker (chosen on validation splits only)."""

    model_config = ConfigDict(extra="forbid")

    embedding_dim: int = Field(64, ge=2, description="Width of every field embedding.")
    hidden: tuple[int, ...] = Field((128, 64), min_length=1, description="Widths of the DNN's hidden layers.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each hidden layer while training.")
    use_standins: bool = Field(
        True,
        description="Serve cold and sparse items through their stand-ins; False: through one learned "
        "'unknown item' vector (the ablation without stand-ins).",
    )
    sparse_max: int = Field(
        0, ge=0, description="Ids with at most this many training positives are served through the stand-in path."
    )
    item_dropout: float = Field(0.5, ge=0, le=1, description="Share of training items shown through the stand-in.")
    user_dropout: float = Field(0.1, ge=0, le=1, description="Share of training users shown through the stand-in.")
    cold_user_share: float = Field(
        0.0, ge=0, le=1, description="Share of training users shown as users without history."
    )
    init_from_encoders: bool = Field(
        True,
        description="Start the ID tables and the stand-in and text projections from the encoders' vectors, "
        "mapped by their top principal directions; False: random starts.",
    )
    head_share: float = Field(HEAD_SHARE, gt=0, le=1, description="Share of interactions the head items hold.")
    negatives: int = Field(8, ge=1, description="Items sampled from the pool against each positive.")
    epochs: int = Field(8, ge=1, description="Most passes over the training positives.")
    patience: int | None = Field(
        2,
        ge=1,
        description="Epochs without a better validation NDCG before stopping (the best epoch is kept); None runs "
        "every epoch and keeps the last (a refit with the epoch count an evaluated fit chose).",
    )
    batch_size: int = Field(4096, ge=1, description="Positives per optimiser step.")
    lr: float = Field(5e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    eval_k: int = Field(20, ge=1, description="K of the validation NDCG used for early stopping.")
    valid_users: int = Field(2000, ge=1, description="Most validation users scored per epoch (a seeded sample).")
    seed: int = Field(0, description="Seed of initialisation, sampling and dropout.")
    threads: int = Field(2, ge=1, description="torch threads while fitting and scoring.")


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class _Side:
    """One side's (user's or item's) share of DeepFM: field sum, FM self-interactions, first order, first layer."""

    total: torch.Tensor
    fm: torch.Tensor
    linear: torch.Tensor
    deep: torch.Tensor


class _DeepFMNet(nn.Module):
    def __init__(
        self, shapes: dict[str, int], config: DeepFMConfig, *, trained_users: torch.Tensor, trained_items: torch.Tensor
    ) -> None:
        super().__init__()
        k = config.embedding_dim
        self.user_id = nn.Embedding(shapes["n_users"], k)
        self.item_id = nn.Embedding(shapes["n_items"], k)
        self.user_standin = nn.Linear(shapes["cf_dim"], k)
        self.item_standin = nn.Linear(shapes["cf_dim"], k)
        self.unknown_item = nn.Parameter(torch.zeros(k))
        self.text = nn.Linear(shapes["text_dim"], k, bias=False)
        self.categories = nn.Parameter(torch.randn(shapes["n_categories"] + 1, k) * 0.01)  # row 0: no category
        self.user_segment = nn.Embedding(3, k)
        self.item_segment = nn.Embedding(3, k)
        # Small starting embeddings: N(0, 1) rows would make the FM's products start in the hundreds.
        for table in (self.user_id, self.item_id, self.user_segment, self.item_segment):
            nn.init.normal_(table.weight, std=0.01)
        self.user_linear = nn.Linear(len(USER_FIELDS) * k, 1)
        self.item_linear = nn.Linear(len(ITEM_FIELDS) * k, 1, bias=False)
        self.user_deep = nn.Linear(len(USER_FIELDS) * k, config.hidden[0])
        self.item_deep = nn.Linear(len(ITEM_FIELDS) * k, config.hidden[0], bias=False)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(config.hidden, (*config.hidden[1:], 1), strict=True):
            layers += [nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(width_in, width_out)]
        self.deep = nn.Sequential(*layers)
        # Which ids have a trained ID embedding (more than sparse_max training positives); part of the state.
        self.register_buffer("trained_users", trained_users)
        self.register_buffer("trained_items", trained_items)

    def side(self, fields: torch.Tensor, user: bool) -> _Side:
        """`fields` (..., n_fields, k) of one side."""
        total = fields.sum(dim=-2)
        fm = 0.5 * (total.square() - fields.square().sum(dim=-2)).sum(dim=-1)
        flat = fields.flatten(-2)
        linear, deep = (self.user_linear, self.user_deep) if user else (self.item_linear, self.item_deep)
        return _Side(total, fm, linear(flat).squeeze(-1), deep(flat))

    def combine(self, users: _Side, items: _Side) -> torch.Tensor:
        """Scores of every user row against its item rows; shapes broadcast as (B, 1, ...) with (B or 1, M, ...)."""
        cross = (users.total * items.total).sum(dim=-1)
        deep = self.deep(users.deep + items.deep).squeeze(-1)
        return users.linear + items.linear + users.fm + items.fm + cross + deep


@dataclass(frozen=True)
class _Data:
    """RankerInputs as tensors, in the form the network reads them."""

    text: torch.Tensor
    profile_sums: torch.Tensor
    user_cf: torch.Tensor
    user_standin: torch.Tensor
    item_cf: torch.Tensor
    item_standin: torch.Tensor
    categories: torch.Tensor
    head: torch.Tensor
    user_has_history: torch.Tensor

    @classmethod
    def of(cls, inputs: RankerInputs, head_share: float) -> _Data:
        text = np.asarray(inputs.text, dtype=np.float32)
        n_categories = inputs.categories.shape[1] if inputs.categories is not None else 0
        categories = np.zeros((inputs.n_items, n_categories + 1), dtype=np.float32)
        if inputs.categories is not None:
            categories[:, 1:] = (sp.csr_array(inputs.categories) > 0).toarray()
        categories[categories.sum(axis=1) == 0, 0] = 1.0
        categories /= categories.sum(axis=1, keepdims=True)
        return cls(
            text=torch.from_numpy(text),
            profile_sums=torch.from_numpy(np.asarray(inputs.history @ text, dtype=np.float32)),
            user_cf=torch.from_numpy(np.asarray(inputs.user_cf, dtype=np.float32)),
            user_standin=torch.from_numpy(np.asarray(inputs.user_standin, dtype=np.float32)),
            item_cf=torch.from_numpy(np.asarray(inputs.item_cf, dtype=np.float32)),
            item_standin=torch.from_numpy(np.asarray(inputs.item_standin, dtype=np.float32)),
            categories=torch.from_numpy(categories),
            head=torch.from_numpy(head_items(inputs.popularity, head_share)),
            user_has_history=torch.from_numpy(np.diff(inputs.history.indptr) > 0),
        )


@dataclass(frozen=True)
class _Pairs:
    """The (user, item) rows DeepFM trains on: every known positive, from the history and the training labels."""

    users: np.ndarray
    items: np.ndarray
    in_history: np.ndarray  # the pair is in the history, so its item is part of the user's text profile
    known_keys: np.ndarray  # sorted user * n_items + item, which sampled negatives must avoid

    @classmethod
    def of(cls, inputs: RankerInputs, positives: sp.csr_array) -> _Pairs:
        history = sp.csr_array(inputs.history > 0, dtype=np.float32)
        # Every known positive trains: the history (whose own pair leaves the text profile) and the labels.
        known = sp.csr_array((history + sp.csr_array(positives > 0, dtype=np.float32)) > 0, dtype=np.float32)
        known = known.tocoo()
        pair_users, pair_items = known.row.astype(np.int64), known.col.astype(np.int64)
        in_history = np.asarray(history[pair_users, pair_items]).ravel() > 0
        known_keys = np.sort(pair_users * inputs.n_items + pair_items)
        if pair_users.size == 0:
            raise DataError("DeepFMRanker.fit got no positives: the history and the training task are empty.")
        return cls(pair_users, pair_items, in_history, known_keys)


def head_items(popularity: np.ndarray, head_share: float) -> np.ndarray:
    """Mask of the most popular items that together hold `head_share` of the interactions (the head)."""
    popularity = np.asarray(popularity, dtype=np.float64)
    head = np.zeros(popularity.size, dtype=bool)
    total = popularity.sum()
    if total <= 0:
        return head
    order = np.argsort(-popularity, kind="stable")
    before = np.cumsum(popularity[order]) - popularity[order]  # interactions held by more popular items
    head[order[(before < head_share * total) & (popularity[order] > 0)]] = True
    return head


def _principal_directions(rows: torch.Tensor, k: int) -> torch.Tensor:
    """(k, d): the top-k right singular vectors of `rows` (zero rows beyond its rank)."""
    _, _, vt = torch.linalg.svd(rows, full_matrices=False)
    out = torch.zeros(k, rows.shape[1])
    out[: min(k, vt.shape[0])] = vt[:k]
    return out


@torch.no_grad()
def _start_from_encoders(net: _DeepFMNet, data: _Data, warm_items: np.ndarray) -> None:
    """ID tables = the encoders' collaborative vectors mapped by their top principal directions, and the
    stand-in projections = the same map, so a cold item's stand-in path starts where a warm item's ID path is
    (the stand-in approximates the ID vector); the text projection starts as the text's principal directions."""
    k = net.user_id.weight.shape[1]
    warm = torch.from_numpy(warm_items)
    if warm.numel() == 0:
        return
    directions = _principal_directions(data.item_cf[warm], k)  # (k, cf_dim)
    net.item_id.weight.copy_(data.item_cf @ directions.T)
    net.user_id.weight.copy_(data.user_cf @ directions.T)
    for layer in (net.item_standin, net.user_standin):
        layer.weight.copy_(directions)
        layer.bias.zero_()
    net.text.weight.copy_(_principal_directions(data.text[warm], k))


def _normalised(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _shapes(inputs: RankerInputs) -> dict[str, int]:
    return {
        "n_users": inputs.n_users,
        "n_items": inputs.n_items,
        "cf_dim": int(inputs.user_cf.shape[1]),
        "text_dim": int(inputs.text.shape[1]),
        "n_categories": int(inputs.categories.shape[1]) if inputs.categories is not None else 0,
    }


def _sample_negatives(
    rng: np.random.Generator, users: np.ndarray, pool: np.ndarray, known_keys: np.ndarray, n_items: int, count: int
) -> np.ndarray:
    """`count` uniform pool items per positive row, resampled where they hit a known positive of the user."""
    negatives = pool[rng.integers(pool.size, size=(users.size, count))]
    for _ in range(_NEGATIVE_RESAMPLE_ROUNDS):
        keys = users[:, None] * n_items + negatives
        slot = np.searchsorted(known_keys, keys).clip(max=known_keys.size - 1)
        clash = known_keys[slot] == keys
        if not clash.any():
            break
        negatives[clash] = pool[rng.integers(pool.size, size=int(clash.sum()))]
    return negatives


def ndcg_at_k(scores: np.ndarray, positives: sp.csr_array, k: int) -> np.ndarray:
    """Binary NDCG@k of each row of `scores` against the same rows of `positives` (docs/metrics.md)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable"), 1)
    hits = np.take_along_axis(positives.toarray() > 0, top, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    n_positive = np.minimum(np.asarray(positives.sum(axis=1)).ravel().astype(int), k)
    ideal = np.r_[0.0, np.cumsum(discounts)][n_positive]
    return (hits @ discounts) / np.maximum(ideal, 1e-12)


class DeepFMRanker(RankerBase):
    """DeepFM over user and item fields with stand-ins for cold ids (the base's fit / scorer / recommend / save /
    load; `score` here)."""

    kind = "deepfm"
    model_file = "model.pt"
    format_version = FORMAT_VERSION
    tied_to_encoders = True

    def __init__(self, config: DeepFMConfig | None = None) -> None:
        self.config = config or DeepFMConfig()
        self._network: _DeepFMNet | None = None
        self._shapes: dict[str, int] = {}
        self.metadata: dict[str, Any] = {}

    @property
    def is_fitted(self) -> bool:
        return self._network is not None

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump()

    def refit_config(self) -> DeepFMConfig:
        """This configuration with the epoch count early stopping kept, run in full."""
        epochs = int(self.metadata.get("best_epoch") or self.config.epochs)
        return self.config.model_copy(update={"epochs": epochs, "patience": None})

    @property
    def network(self) -> _DeepFMNet:
        if self._network is None:
            raise NotFittedError("DeepFMRanker is not fitted; call fit() or DeepFMRanker.load() first.")
        return self._network

    # ------------------------------------------------------------------------------------------------ fields

    def _user_fields(
        self, data: _Data, users: torch.Tensor, standin: torch.Tensor, profiles: torch.Tensor, cold: torch.Tensor
    ) -> torch.Tensor:
        """(B, user fields, k). `standin`: serve through the stand-in path; `cold`: a user without history."""
        net = self.network
        standin = standin | cold | ~net.trained_users[users]
        # A user without history is seen through their stand-in (attributes and text; out-of-fold in training).
        collaborative = torch.where(cold[:, None], data.user_standin[users], data.user_cf[users])
        identity = torch.where(standin[:, None], net.user_standin(collaborative), net.user_id(users))
        segment = torch.where(cold, USER_COLD, torch.where(standin, USER_SPARSE, USER_WARM))
        return torch.stack([identity, net.text(profiles), net.user_segment(segment)], dim=-2)

    def _item_fields(self, data: _Data, items: torch.Tensor, standin: torch.Tensor) -> torch.Tensor:
        """(..., item fields, k) of `items` (any shape); `standin`: serve through the stand-in path."""
        net = self.network
        standin = standin | ~net.trained_items[items]
        # Project each distinct item once (a training batch repeats many), then spread to the rows through
        # F.embedding, whose backward sums repeated rows in a fixed order (advanced indexing's may not, with
        # several threads, and equal seeds would then give different models).
        distinct, rows = torch.unique(items, return_inverse=True)
        spread = nn.functional.embedding
        if self.config.use_standins:
            replacement = spread(rows, net.item_standin(data.item_standin[distinct]))
        else:
            replacement = net.unknown_item.expand(*items.shape, -1)
        identity = torch.where(standin[..., None], replacement, net.item_id(items))
        segment = torch.where(standin, ITEM_STANDIN, torch.where(data.head[items], ITEM_HEAD, ITEM_TAIL))
        categories = spread(rows, data.categories[distinct] @ net.categories)
        text = spread(rows, net.text(data.text[distinct]))
        return torch.stack([identity, text, categories, net.item_segment(segment)], dim=-2)

    # --------------------------------------------------------------------------------------------------- fit

    def _check_inputs(self, inputs: RankerInputs) -> None:
        shapes = _shapes(inputs)
        if self._shapes and shapes != self._shapes:
            changed = {n: (self._shapes[n], shapes[n]) for n in shapes if shapes[n] != self._shapes[n]}
            raise DataError(
                f"these RankerInputs do not match the ones DeepFM was fitted on (fitted, given): {changed}. "
                "Score with inputs over the same index and encoders, or fit again."
            )

    def _fit(self, inputs: RankerInputs, train: RankingTask, valid: RankingTask) -> Self:
        """Learn from the training history and `train`'s positives against negatives from `train.pool`; keep
        the epoch with the best NDCG@k on `valid` (its users ranked against `valid.pool`)."""
        with _torch_threads(self.config.threads):
            return self._train(inputs, train, valid)

    def _train(self, inputs: RankerInputs, train: RankingTask, valid: RankingTask) -> Self:
        config = self.config
        assert train.positives is not None
        rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        pairs = _Pairs.of(inputs, train.positives)
        data = self._new_network(inputs, pairs)
        net = self.network
        # fused: one kernel for the whole update, much faster steps on CPU (as in encoders' BPR-MF).
        optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
        valid_users = np.asarray(valid.users)
        if valid_users.size > config.valid_users:
            valid_users = np.sort(rng.choice(valid_users, config.valid_users, replace=False))
        pool = np.asarray(train.pool, dtype=np.int64)

        epochs: list[dict[str, float]] = []
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        with Progress(transient=True) as progress:
            bar = progress.add_task("DeepFM epochs", total=config.epochs)
            for epoch in range(1, config.epochs + 1):
                started = time.perf_counter()
                loss = self._epoch(data, pairs, pool, optimizer, rng)
                train_seconds = time.perf_counter() - started
                ndcg = self._validation_ndcg(inputs, data, valid, valid_users)
                epochs.append(
                    {
                        "epoch": epoch,
                        "loss": round(loss, 5),
                        f"valid_ndcg@{config.eval_k}": round(ndcg, 5),
                        "train_seconds": round(train_seconds, 2),
                        "valid_seconds": round(time.perf_counter() - started - train_seconds, 2),
                    }
                )
                log.info("deepfm epoch %d loss %.4f valid ndcg %.4f (%.1f s)", epoch, loss, ndcg, train_seconds)
                progress.update(bar, advance=1, description=f"DeepFM epoch {epoch} valid NDCG {ndcg:.4f}")
                if best is None or ndcg > best[0] or config.patience is None:
                    best = (ndcg, epoch, copy.deepcopy(net.state_dict()))
                elif epoch - best[1] >= config.patience:
                    break
        assert best is not None
        net.load_state_dict(best[2])
        net.eval()
        self.metadata = self._training_metadata(best[:2], int(valid_users.size), int(pairs.users.size), epochs)
        return self

    def _new_network(self, inputs: RankerInputs, pairs: _Pairs) -> _Data:
        """A fresh network, whose ids with more than `sparse_max` training positives get trained ID embeddings,
        started from the encoders' vectors when `init_from_encoders`; returns `inputs` as the network reads them."""
        config = self.config
        user_counts = np.bincount(pairs.users, minlength=inputs.n_users)
        item_counts = np.bincount(pairs.items, minlength=inputs.n_items)
        self._shapes = _shapes(inputs)
        self._network = _DeepFMNet(
            self._shapes,
            config,
            trained_users=torch.from_numpy(user_counts > config.sparse_max),
            trained_items=torch.from_numpy(item_counts > config.sparse_max),
        )
        data = _Data.of(inputs, config.head_share)
        if config.init_from_encoders:
            _start_from_encoders(self._network, data, np.flatnonzero(item_counts > 0))
        return data

    def _training_metadata(
        self, best: tuple[float, int], valid_users: int, train_pairs: int, epochs: list[dict[str, float]]
    ) -> dict[str, Any]:
        """What a fit records: the config, the fields and shapes, the kept (best) epoch and each epoch's line."""
        config, net = self.config, self.network
        ndcg, epoch = best
        return {
            "config": config.model_dump(),
            "fields": {"user": list(USER_FIELDS), "item": list(ITEM_FIELDS)},
            "shapes": self._shapes,
            "best_epoch": epoch,
            f"valid_ndcg@{config.eval_k}": ndcg,
            "valid_users": valid_users,
            "train_pairs": train_pairs,
            "trained_users": int(net.trained_users.sum()),
            "trained_items": int(net.trained_items.sum()),
            "seconds_per_epoch": round(float(np.mean([e["train_seconds"] for e in epochs])), 2),
            "epochs": epochs,
        }

    def _epoch(
        self, data: _Data, pairs: _Pairs, pool: np.ndarray, optimizer: torch.optim.Optimizer, rng: np.random.Generator
    ) -> float:
        config, net = self.config, self.network
        net.train()
        n_items = int(data.text.shape[0])
        order = rng.permutation(pairs.users.size)
        negatives = _sample_negatives(rng, pairs.users, pool, pairs.known_keys, n_items, config.negatives)
        total = 0.0
        for start in range(0, order.size, config.batch_size):
            batch = order[start : start + config.batch_size]
            users = torch.from_numpy(pairs.users[batch])
            items = torch.from_numpy(np.c_[pairs.items[batch], negatives[batch]])
            cold = torch.from_numpy(rng.random(batch.size) < config.cold_user_share)
            user_standin = torch.from_numpy(rng.random(batch.size) < config.user_dropout)
            # A whole group (positive and its negatives) takes one path, as serving ranks cold items against
            # cold items (cold protocol) and warm against warm.
            item_standin = torch.from_numpy(rng.random((batch.size, 1)) < config.item_dropout).expand(items.shape)
            # The user's profile as if the positive were held out (it is part of the history sum when known).
            leave_out = torch.from_numpy(pairs.in_history[batch].astype(np.float32))[:, None] * data.text[items[:, 0]]
            profiles = _normalised(data.profile_sums[users] - leave_out) * (~cold)[:, None]
            user_side = net.side(self._user_fields(data, users, user_standin, profiles, cold)[:, None], user=True)
            item_side = net.side(self._item_fields(data, items, item_standin), user=False)
            logits = net.combine(user_side, item_side)
            loss = nn.functional.cross_entropy(logits, torch.zeros(batch.size, dtype=torch.long))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.size
        return total / order.size

    def _validation_ndcg(self, inputs: RankerInputs, data: _Data, valid: RankingTask, users: np.ndarray) -> float:
        assert valid.positives is not None
        pool = np.asarray(valid.pool)
        scores = self._masked_scores(inputs, data, users, pool, valid.exclude)
        positives = sp.csr_array(valid.positives[users][:, pool])
        has_positive = np.asarray(positives.sum(axis=1)).ravel() > 0
        if not has_positive.any():
            raise DataError("the validation task has no positive among its users and pool; early stopping needs some.")
        return float(ndcg_at_k(scores[has_positive], positives[has_positive], self.config.eval_k).mean())

    # ------------------------------------------------------------------------------------------------- score

    def _masked_scores(
        self,
        inputs: RankerInputs,
        data: _Data,
        users: np.ndarray,
        items: np.ndarray,
        exclude: sp.csr_array | None,
    ) -> np.ndarray:
        """(users x items) float32 scores; training interactions and `exclude` pairs -inf."""
        net = self.network
        net.eval()
        scores = np.empty((users.size, items.size), dtype=np.float32)
        block = max(1, _SCORE_ELEMENTS // max(items.size * self.config.hidden[0], 1))
        with torch.no_grad():
            items_t = torch.from_numpy(np.asarray(items, dtype=np.int64))
            fields = self._item_fields(data, items_t, torch.zeros(items.size, dtype=torch.bool))
            item_side = net.side(fields[None], user=False)  # one row of items, broadcast against every user
            for start in range(0, users.size, block):
                chunk = torch.from_numpy(np.asarray(users[start : start + block], dtype=np.int64))
                no = torch.zeros(chunk.numel(), dtype=torch.bool)
                cold = ~data.user_has_history[chunk]
                fields = self._user_fields(data, chunk, no, _normalised(data.profile_sums[chunk]), cold)
                user_side = net.side(fields[:, None], user=True)
                scores[start : start + chunk.numel()] = net.combine(user_side, item_side).numpy()
        known = inputs.history[users][:, items]
        if exclude is not None:
            known = known + exclude[users][:, items]
        rows, cols = known.nonzero()
        scores[rows, cols] = -np.inf
        return scores

    def score(
        self, inputs: RankerInputs, users: np.ndarray, items: np.ndarray, exclude: sp.csr_array | None = None
    ) -> np.ndarray:
        """(len(users) x len(items)) scores, float32; training interactions and `exclude` pairs are -inf."""
        self.network  # noqa: B018 (raises NotFittedError first)
        self._check_inputs(inputs)
        check_task(RankingTask(np.asarray(users), np.asarray(items), exclude=exclude), inputs, "scoring")
        with _torch_threads(self.config.threads):
            data = _Data.of(inputs, self.config.head_share)
            return self._masked_scores(inputs, data, np.asarray(users), np.asarray(items), exclude)

    def _scorer(self, inputs: RankerInputs, exclude: sp.csr_array | None) -> Scorer:
        """Tensors prepared once for every batch the Scorer is called with."""
        self._check_inputs(inputs)
        data = _Data.of(inputs, self.config.head_share)

        def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            with _torch_threads(self.config.threads):
                return self._masked_scores(inputs, data, np.asarray(users), np.asarray(items), exclude)

        return score

    # ----------------------------------------------------------------------------------------------- persist

    def _payload(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.network.state_dict(), buffer)
        self.metadata = self.metadata | {
            "shapes": self._shapes,
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
        }
        return buffer.getvalue()

    @classmethod
    def _from_payload(cls, payload: bytes, metadata: dict[str, Any]) -> Self:
        """Weights only: no pickled code is run."""
        state = torch.load(io.BytesIO(payload), weights_only=True)
        ranker = cls(DeepFMConfig(**metadata["config"]))
        ranker._shapes = {name: int(value) for name, value in metadata["shapes"].items()}
        ranker._network = _DeepFMNet(
            ranker._shapes,
            ranker.config,
            trained_users=state["trained_users"],
            trained_items=state["trained_items"],
        )
        ranker._network.load_state_dict(state)
        ranker._network.eval()
        ranker.metadata = metadata
        return ranker
