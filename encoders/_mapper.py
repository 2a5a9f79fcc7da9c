"""Content-to-ID mapping: stand-in CF embeddings for cold items (and sparse users) from their text embeddings.

`ContentMapper` is trained on warm items: input = the item's text embedding (e.g. 384-d MiniLM), target = its CF
item vector and bias (from `BPRMF`). Two kinds:

- ``ridge``: closed-form ridge regression from text to [vector, bias], the linear baseline.
- ``mlp``: a one-hidden-layer MLP trained with Adam on (a) mean squared error to [vector, bias] and, with
  ``distill_weight > 0``, (b) ALDI-style ranking distillation: for teacher users, the softmax over a minibatch of
  items of the mapped scores (user . mapped vector + mapped bias) should match the softmax of the teacher's scores
  (KL divergence at temperature ``temperature``). (b) teaches the order among items, which is what cold-item ranking
  needs, rather than the exact coordinates of each vector. The users come from the items' own training positives
  when `fit` gets them (one per item of the step), else uniformly from all users.

Measured on CiteULike's cold_item_val, Recall@20 (benchmarks/cf_mapper.py, BPR-MF dim-256 teacher): ridge 0.359,
MLP regression 0.353, + distillation over uniform users 0.382, + distillation over each item's own users 0.425.

`stand_in_users` gives users with few interactions a vector from the item vectors (real or stand-in) of the items
they touched.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress

from catalog import Columns, ConfigError, DataError, NotFittedError
from encoders._cf import BestEpoch, CFEmbeddings, check_pairs, load_arrays, save_arrays

log = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Text embeddings (n, d_text) -> stand-in (vectors (n, dim), bias (n,))."""


# Rows of the ridge's float64 products at a time (the sums are the same; memory holds one block's copy).
RIDGE_ROWS = 2**15


class MapperConfig(BaseModel):
    """Hyperparameters of `ContentMapper`. The defaults are the product's mapper (`training.StandInConfig`): ridge
    with penalty 10, the mapper every ranker figure in docs/benchmarks.md was measured with. The MLP fields'
    defaults are the best MLP family alone on CiteULike's cold_item_val (distillation weights 1, 10 and 100 all
    reached about 0.42 cold-val Recall@20, plateauing after ~100 epochs; benchmarks/cf_mapper.py), not yet
    measured inside the ranker.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: Literal["ridge", "mlp"] = "ridge"
    """``ridge``: closed-form linear map; ``mlp``: one hidden layer trained with Adam (and optional distillation)."""
    alpha: float = Field(10.0, ge=0)
    """Ridge penalty (``ridge`` only), on centred features."""
    hidden: int = Field(512, ge=1)
    """Width of the MLP's hidden layer."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout after the hidden layer while training."""
    epochs: int = Field(100, ge=1)
    """Most passes over the warm items (``mlp``)."""
    lr: float = Field(1e-3, gt=0)
    """Adam learning rate (``mlp``)."""
    weight_decay: float = Field(0.0, ge=0)
    """Adam weight decay (``mlp``)."""
    batch_size: int = Field(256, ge=2)
    """Items per step (``mlp``); the distillation softmax runs over the items of one step."""
    distill_weight: float = Field(10.0, ge=0)
    """Weight of the ranking-distillation KL term next to the regression term; 0 turns distillation off."""
    distill_users: int = Field(256, ge=1)
    """Teacher users drawn uniformly per step for distillation when `fit` gets no `positives`."""
    temperature: float = Field(1.0, gt=0)
    """Softmax temperature of the distillation term (the loss is multiplied by its square, as in Hinton et al.)."""
    eval_every: int = Field(5, ge=1)
    """Epochs between calls of the `validation` function given to `fit` (``mlp``)."""
    patience: int = Field(3, ge=1)
    """Validation checks without improvement before training stops; the best checked epoch is kept."""
    seed: int = 0
    """Seeds the MLP's initialisation, dropout, shuffling and user sampling; equal seeds, equal mappers."""


class _MLP(torch.nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, n_out)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _as_matrix(array: np.ndarray, name: str, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    matrix = np.array(array, dtype=np.float32)  # a copy: torch.from_numpy needs writable memory
    if (
        matrix.ndim != 2
        or (rows is not None and matrix.shape[0] != rows)
        or (cols is not None and matrix.shape[1] != cols)
    ):
        raise DataError(f"{name} has shape {matrix.shape}, expected ({rows or 'n'}, {cols or 'd'}).")
    if not np.isfinite(matrix).all():
        raise DataError(f"{name} holds NaN or infinite values; fix or drop those rows first.")
    return matrix


def _targets(vectors: np.ndarray, bias: np.ndarray, rows: int) -> np.ndarray:
    """[vectors | bias]: the regression target, one row per item."""
    matrix = _as_matrix(vectors, "item_vectors", rows=rows)
    return np.hstack([matrix, _as_matrix(np.asarray(bias).reshape(-1, 1), "item_bias", rows=rows, cols=1)])


def _predict(net: _MLP, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()
    return out[:, :-1].copy(), out[:, -1].copy()


class ContentMapper:
    """Maps text embeddings of items to stand-in CF item vectors and biases; see the module docstring."""

    kind = "ContentMapper"
    _stem = "content_mapper"

    def __init__(self, config: MapperConfig | None = None) -> None:
        self.config = config or MapperConfig()
        self._arrays: dict[str, np.ndarray] | None = None  # ridge: weights; mlp: state dict
        self._net: _MLP | None = None
        self.n_features = 0
        self.dim = 0
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None

    def __repr__(self) -> str:
        return f"ContentMapper({self.config!r}, {'fitted' if self.is_fitted else 'not fitted'})"

    @property
    def is_fitted(self) -> bool:
        return self._arrays is not None

    def fit(
        self,
        features: np.ndarray,
        item_vectors: np.ndarray,
        item_bias: np.ndarray,
        user_vectors: np.ndarray | None = None,
        *,
        positives: tuple[np.ndarray, np.ndarray] | None = None,
        validation: Callable[[Transform], float] | None = None,
        show_progress: bool = False,
    ) -> Self:
        """Fit on warm items: row k of `features` is the text embedding of the item with vector/bias row k.

        `user_vectors` (the teacher's users) is needed when ``distill_weight > 0``; `positives` = (user rows, item
        rows) of the training interactions makes distillation draw, for each item of a step, one of the users who
        interacted with it (otherwise `distill_users` users are drawn uniformly). `validation` (``mlp`` only) is
        called every `eval_every` epochs with the current transform and returns a score, higher is better: the
        best epoch is kept and training stops after `patience` checks without improvement.
        """
        x = _as_matrix(features, "features")
        if x.shape[0] < 2:
            raise DataError("ContentMapper needs at least two warm items to fit.")
        y = _targets(item_vectors, item_bias, x.shape[0])
        self.n_features, self.dim = x.shape[1], y.shape[1] - 1
        self.history = []
        if self.config.kind == "ridge":
            self._arrays = self._fit_ridge(x, y)
            return self
        users = None if user_vectors is None else _as_matrix(user_vectors, "user_vectors", cols=self.dim)
        if self.config.distill_weight > 0 and users is None:
            raise ConfigError(
                "distill_weight > 0 needs the teacher's user vectors: pass user_vectors=cf.user_vectors, "
                "or set distill_weight=0."
            )
        sampler = None if positives is None or users is None else _PositiveSampler(positives, x.shape[0], len(users))
        net = self._fit_mlp(x, y, users, sampler, validation, show_progress)
        self._net = net
        self._arrays = {name: value.detach().numpy().copy() for name, value in net.state_dict().items()}
        return self

    def _fit_ridge(self, x: np.ndarray, y: np.ndarray, *, rows: int = RIDGE_ROWS) -> dict[str, np.ndarray]:
        # Centred closed form in float64: W = (Xc'Xc + alpha I)^-1 Xc'Yc, intercept = mean(Y) - mean(X) W. The
        # products are summed over blocks of `rows` rows: centred float64 copies of every row were 2 GB at 500k items.
        x_mean, y_mean = x.mean(axis=0, dtype=np.float64), y.mean(axis=0, dtype=np.float64)
        gram, cross = np.zeros((x.shape[1], x.shape[1])), np.zeros((x.shape[1], y.shape[1]))
        for start in range(0, x.shape[0], rows):
            xc, yc = x[start : start + rows] - x_mean, y[start : start + rows] - y_mean
            gram += xc.T @ xc
            cross += xc.T @ yc
        weights = np.linalg.solve(gram + self.config.alpha * np.eye(x.shape[1]), cross)
        return {"weights": weights.astype(np.float32), "intercept": (y_mean - x_mean @ weights).astype(np.float32)}

    def _fit_mlp(
        self,
        x: np.ndarray,
        y: np.ndarray,
        users: np.ndarray | None,
        sampler: _PositiveSampler | None,
        validation: Callable[[Transform], float] | None,
        show_progress: bool,
    ) -> _MLP:
        config = self.config
        distilling = users is not None and config.distill_weight > 0
        rng = np.random.default_rng(config.seed)
        x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
        teachers = torch.from_numpy(users) if distilling and users is not None else None
        best: BestEpoch[dict[str, torch.Tensor]] = BestEpoch()
        # fork_rng: seed initialisation and dropout without touching the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]), Progress(disable=not show_progress, transient=True) as progress:
            torch.manual_seed(config.seed)
            net = _MLP(x.shape[1], config.hidden, y.shape[1], config.dropout)
            optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            task = progress.add_task("mapper epochs", total=config.epochs)
            for epoch in range(1, config.epochs + 1):
                totals = self._mlp_epoch(net, optimizer, (x_t, y_t, teachers), sampler, rng)
                record = {"epoch": float(epoch), "mse": float(totals[0] / len(x)), "distill": float(totals[1] / len(x))}
                if validation is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                    net.eval()
                    record["validation"] = float(validation(functools.partial(_predict, net)))
                    best.check(record["validation"], epoch, lambda: copy.deepcopy(net.state_dict()))
                self.history.append(record)
                log.info("mapper epoch %s", " ".join(f"{key}={value:.5g}" for key, value in record.items()))
                progress.update(task, advance=1, description=f"mapper epoch {epoch} mse {record['mse']:.4f}")
                if best.stale >= config.patience:
                    break
        if best.weights is not None:
            net.load_state_dict(best.weights)
            self.best_epoch = best.epoch
        return net.eval()

    def _mlp_epoch(
        self,
        net: _MLP,
        optimizer: torch.optim.Optimizer,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        sampler: _PositiveSampler | None,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """One pass over the items (features, targets, and the teacher's users when distilling) in an order drawn
        from `rng`, an Adam step per minibatch; returns the (regression, distillation) losses summed over items."""
        config = self.config
        x_t, y_t, teachers = tensors
        net.train()
        order = torch.from_numpy(rng.permutation(x_t.shape[0]))
        totals = np.zeros(2)
        for start in range(0, x_t.shape[0], config.batch_size):
            batch = order[start : start + config.batch_size]
            predicted = net(x_t[batch])
            regression = torch.nn.functional.mse_loss(predicted, y_t[batch])
            distill = self._step_distillation(teachers, sampler, batch, predicted, y_t[batch], rng)
            loss = regression + config.distill_weight * distill
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += np.array([float(regression.detach()), float(distill.detach())]) * batch.numel()
        return totals

    def _step_distillation(
        self,
        teachers: torch.Tensor | None,
        sampler: _PositiveSampler | None,
        batch: torch.Tensor,
        predicted: torch.Tensor,
        target: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """The distillation term of one step, over teacher users drawn from `rng` (the items' own positives with a
        sampler, else uniformly); zero when not distilling."""
        if teachers is None or batch.numel() <= 1:  # a softmax over one item carries no ranking signal
            return torch.zeros(())
        chosen = (
            sampler.users_of(batch.numpy(), rng)
            if sampler is not None
            else rng.integers(len(teachers), size=self.config.distill_users)
        )
        if not chosen.size:  # no item of the step has a training positive
            return torch.zeros(())
        return _distillation(teachers[torch.from_numpy(chosen)], predicted, target, self.config.temperature)

    def transform(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stand-in (vectors, bias) for the items whose text embeddings are the rows of `features`."""
        if self._arrays is None:
            raise NotFittedError(
                "this ContentMapper is not fitted: call fit(features, item_vectors, item_bias) or "
                "ContentMapper.load(directory) first."
            )
        x = _as_matrix(features, "features", cols=self.n_features)
        if self._net is not None:
            return _predict(self._net, x)
        out = x @ self._arrays["weights"] + self._arrays["intercept"]
        return out[:, :-1].copy(), out[:, -1].copy()

    def stand_in_items(
        self, embeddings: CFEmbeddings, item_ids: np.ndarray | list[str], features: np.ndarray
    ) -> CFEmbeddings:
        """`embeddings`' users with stand-in vectors for `item_ids` (row k of `features` = item k's text)."""
        vectors, bias = self.transform(features)
        return embeddings.with_items(item_ids, vectors, bias)

    def save(self, directory: Path) -> Path:
        """Write content_mapper.npz and content_mapper.json under `directory` (atomically)."""
        if self._arrays is None:
            raise NotFittedError("this ContentMapper is not fitted: call fit(...) before save(...).")
        metadata: dict[str, Any] = {
            "kind": self.kind,
            "config": self.config.model_dump(),
            "n_features": self.n_features,
            "dim": self.dim,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
        }
        return save_arrays(directory, self._stem, self._arrays, metadata)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """A fitted ContentMapper from what `save` wrote."""
        arrays, metadata = load_arrays(directory, cls._stem, cls.kind)
        mapper = cls(MapperConfig.model_validate(metadata["config"]))
        mapper.n_features, mapper.dim, mapper.history = metadata["n_features"], metadata["dim"], metadata["history"]
        mapper.best_epoch, mapper._arrays = metadata["best_epoch"], arrays
        if mapper.config.kind == "mlp":
            net = _MLP(mapper.n_features, mapper.config.hidden, mapper.dim + 1, mapper.config.dropout)
            net.load_state_dict({name: torch.from_numpy(value.copy()) for name, value in arrays.items()})
            mapper._net = net.eval()
        return mapper


class _PositiveSampler:
    """Draws, for each item of a batch, one user uniformly among the item's training positives."""

    def __init__(self, positives: tuple[np.ndarray, np.ndarray], n_items: int, n_users: int) -> None:
        user_rows, item_rows = (np.asarray(rows, dtype=np.int64) for rows in positives)
        if user_rows.shape != item_rows.shape or user_rows.ndim != 1:
            raise DataError(f"positives must be two equally long 1-d arrays, got {user_rows.shape}, {item_rows.shape}.")
        if user_rows.size and (user_rows.min() < 0 or user_rows.max() >= n_users or item_rows.min() < 0
                               or item_rows.max() >= n_items):  # fmt: skip
            raise DataError(f"positives index outside user_vectors ({n_users}) or features ({n_items}) rows.")
        order = np.argsort(item_rows, kind="stable")
        self.users = user_rows[order]
        self.counts = np.bincount(item_rows, minlength=n_items)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def users_of(self, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        items = items[self.counts[items] > 0]
        offsets = np.floor(rng.random(items.size) * self.counts[items]).astype(np.int64)
        return self.users[self.starts[items] + offsets]


def _distillation(
    users: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) between per-user softmaxes over the batch's items, times temperature squared."""
    teacher = (users @ target[:, :-1].T + target[:, -1]) / temperature
    student = (users @ predicted[:, :-1].T + predicted[:, -1]) / temperature
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student, dim=1), torch.log_softmax(teacher, dim=1), log_target=True, reduction="batchmean"
    )
    return kl * temperature**2


def stand_in_users(
    interactions: pl.DataFrame,
    embeddings: CFEmbeddings,
    *,
    method: Literal["mean", "fold_in"] = "fold_in",
    steps: int = 100,
    lr: float = 0.05,
    reg: float = 0.01,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids, vectors): a vector for each user of `interactions` from the vectors of the items they touched.

    Items come from `embeddings` (warm items' CF vectors, and cold items' stand-ins via `ContentMapper.
    stand_in_items`); pairs whose item it lacks are ignored, and users left with no item get no vector.
    ``mean``: the mean of the items' vectors. ``fold_in``: BPR on the user vector alone, items frozen: `steps`
    full-batch Adam steps on every (user, positive, uniform negative) pair, L2 weight `reg`; vectorised over users.

    Measured on CiteULike's warm_val (Recall@20; trained user vectors 0.250): from 3 random items per user, fold-in
    0.191 and mean 0.172 with CF item vectors, 0.135 and 0.134 with vectors mapped from titles; from all of a
    user's items, fold-in 0.238, mean 0.192 (benchmarks/cf_mapper.py). Hence fold-in by default.
    """
    pairs = check_pairs(interactions, "interactions")
    known = pairs.filter(pl.col(Columns.item).is_in(embeddings.item_ids.tolist()))
    user_ids = np.asarray(known[Columns.user].unique().sort().to_numpy(), dtype=str)
    if user_ids.size == 0:
        return user_ids, np.zeros((0, embeddings.dim), dtype=np.float32)
    users = np.searchsorted(user_ids, np.asarray(known[Columns.user].to_numpy(), dtype=str))
    items = embeddings.item_index(known[Columns.item])
    counts = np.bincount(users, minlength=user_ids.size).astype(np.float32)
    mean = np.zeros((user_ids.size, embeddings.dim), dtype=np.float32)
    np.add.at(mean, users, embeddings.item_vectors[items])
    mean /= counts[:, None]
    if method == "mean":
        return user_ids, mean
    if method != "fold_in":
        raise ConfigError(f"unknown stand-in method {method!r}; use 'mean' or 'fold_in'.")
    folded = fold_in_users(
        users, items, embeddings.item_vectors, embeddings.item_bias, start=mean, steps=steps, lr=lr, reg=reg, seed=seed
    )
    return user_ids, folded


def fold_in_users(
    users: np.ndarray,
    items: np.ndarray,
    item_vectors: np.ndarray,
    item_bias: np.ndarray,
    *,
    start: np.ndarray | None = None,
    steps: int = 100,
    lr: float = 0.05,
    reg: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """User vectors solved against fixed item vectors: BPR on the user vectors alone (as implicit's
    `recalculate_user` re-solves one ALS user at request time), `steps` full-batch Adam steps on every (user row
    `users[p]`, positive `items[p]`, uniform negative) pair, L2 weight `reg`. Users are rows 0..max(users); one
    without a pair keeps its `start` row (zero by default). Each user weighs the same however many items they took.

    Starting from the mean of the user's item vectors, this is `stand_in_users(method="fold_in")`; serving uses it
    for users whose interactions arrived after the version was trained, so the list follows them without a retrain.
    """
    n_users = int(users.max()) + 1 if users.size else 0
    dim = item_vectors.shape[1]
    if start is None:
        start = np.zeros((n_users, dim), dtype=np.float32)
        counts = np.bincount(users, minlength=n_users).astype(np.float32)
        np.add.at(start, users, np.asarray(item_vectors, dtype=np.float32)[items])
        start /= np.maximum(counts, 1.0)[:, None]
    if users.size == 0:
        return np.array(start, dtype=np.float32)
    rng = np.random.default_rng(seed)
    vectors_t = torch.tensor(np.asarray(item_vectors, dtype=np.float32))
    bias_t = torch.tensor(np.asarray(item_bias, dtype=np.float32))
    counts = np.bincount(users, minlength=start.shape[0]).astype(np.float32)
    users_t, items_t = torch.from_numpy(np.asarray(users, dtype=np.int64)), torch.from_numpy(np.asarray(items))
    vectors = torch.tensor(np.asarray(start, dtype=np.float32)).requires_grad_()  # fewer steps from the mean
    optimizer = torch.optim.Adam([vectors], lr=lr)
    weights = torch.from_numpy(1.0 / counts[users])
    for _ in range(steps):
        negatives = torch.from_numpy(rng.integers(vectors_t.shape[0], size=users.size))
        u = torch.nn.functional.embedding(users_t, vectors)  # deterministic backward, unlike vectors[users_t]
        margin = (u * (vectors_t[items_t] - vectors_t[negatives])).sum(dim=1)
        margin = margin + bias_t[items_t] - bias_t[negatives]
        loss = -(torch.nn.functional.logsigmoid(margin) * weights).sum() + reg * vectors.square().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vectors.detach().numpy().copy()
