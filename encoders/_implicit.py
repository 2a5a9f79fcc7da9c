"""Collaborative ID embeddings from the `implicit` library's CPU models: ALS (Hu, Koren and Volinsky, 2008, with the
conjugate-gradient solver) and BPR (SGD, Hogwild over threads), behind `BPRMF`'s interface (`fit`, `embeddings`,
`score`, `save`/`load`, `summary` with `best_epoch`) so that training can take either.

Training runs in chunks of `eval_every` iterations whether or not there is validation, so a refit without
validation for the chosen number of iterations takes exactly the path the validated fit took.

Saved layout: DIR/implicitmf.npz and DIR/implicitmf.json (see `save_arrays`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, Self

import numpy as np
import polars as pl
import scipy.sparse as sp
import threadpoolctl
from pydantic import BaseModel, ConfigDict, Field

from catalog import Columns, DataError
from encoders._cf import (
    BPRMF,
    VALIDATION_USERS,
    BestEpoch,
    BPRConfig,
    CFEmbeddings,
    CFModel,
    _index_of,
    check_pairs,
    recall_at_k,
)

log = logging.getLogger(__name__)


class ImplicitConfig(BaseModel):
    """Hyperparameters of `ImplicitMF` (implicit's ALS or BPR on CPU). Field names follow `BPRConfig` where they
    mean the same (`epochs`, `seed`, `k`, `patience`, `threads`), so training code sets either alike.

    The defaults are ALS's best on CiteULike's warm_val of dim {64, 128, 256} x reg {0.01, 0.1, 1} x alpha {10, 40}
    (benchmarks/cf_models.py, docs/benchmarks.md); early stopping chose 12 iterations there."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model: Literal["als", "bpr"] = "als"
    """implicit's AlternatingLeastSquares ("als") or BayesianPersonalizedRanking ("bpr")."""
    dim: int = Field(256, ge=1)
    """Latent factors (BPR adds an item-bias column on top)."""
    epochs: int = Field(30, ge=1)
    """Most iterations (ALS sweeps or BPR epochs); fewer when early stopping triggers."""
    reg: float = Field(0.01, ge=0)
    """L2 regularisation (implicit's `regularization`)."""
    alpha: float = Field(40.0, gt=0)
    """ALS only: the confidence of an observed pair (implicit scales the binary matrix by it; unobserved pairs
    weigh 1)."""
    lr: float = Field(0.01, gt=0)
    """BPR only: SGD learning rate."""
    seed: int = 0
    """Seeds initialisation (and BPR's sampling, chunk by chunk)."""
    k: int = Field(20, ge=1)
    """Cut-off of the validation Recall@K used for early stopping."""
    validation_users: int = Field(VALIDATION_USERS, ge=1)
    """Most users the validation Recall@K scores (a seeded sample beyond): each check ranks every item for them."""
    eval_every: int = Field(2, ge=1)
    """Iterations between validation checks (and the chunk training runs in, validated or not)."""
    patience: int = Field(3, ge=1)
    """Validation checks without improvement before training stops; the best check's vectors are kept."""
    threads: int = Field(1, ge=0)
    """implicit's OpenMP threads (0: every core). ALS solves each user and item on its own, so its vectors are the
    same whatever the threads; BPR is Hogwild SGD: with more than one thread equal seeds no longer give equal
    vectors. BLAS stays on one thread while fitting (its calls inside the solvers are small)."""


CFConfig = BPRConfig | ImplicitConfig
"""What trains the collaborative vectors: BPRMF's config or implicit's."""


class ImplicitMF(CFModel[ImplicitConfig]):
    """implicit's ALS or BPR with `BPRMF`'s interface. Use `fit`, then `embeddings` or `score`; `save`/`load`."""

    kind = "ImplicitMF"
    _stem = "implicitmf"
    _config_class = ImplicitConfig

    def fit(
        self, interactions: pl.DataFrame, validation: pl.DataFrame | None = None, *, show_progress: bool = False
    ) -> Self:
        """Train on the (user_id, item_id) pairs of `interactions` (duplicates count once). With `validation`,
        Recall@k on its pairs of known users and items (training pairs excluded) is measured every `eval_every`
        iterations; training stops after `patience` checks without improvement and the best check's vectors stay."""
        config = self.config
        started = time.perf_counter()
        pairs = check_pairs(interactions, "interactions")
        if pairs.height == 0:
            raise DataError("interactions is empty: ImplicitMF needs at least one (user_id, item_id) pair.")
        user_ids = np.asarray(pairs[Columns.user].unique().sort().to_numpy(), dtype=str)
        item_ids = np.asarray(pairs[Columns.item].unique().sort().to_numpy(), dtype=str)
        if config.model == "bpr" and item_ids.size < 2:
            raise DataError("interactions has a single item: BPR needs at least two items to sample negatives.")
        users = _index_of(user_ids, pairs[Columns.user], "user")
        items = _index_of(item_ids, pairs[Columns.item], "item")
        truth = BPRMF._validation_rows(validation, user_ids, item_ids) if validation is not None else None
        matrix = sp.csr_matrix(
            (np.ones(users.size, dtype=np.float32), (users, items)), shape=(user_ids.size, item_ids.size)
        )
        _import_implicit()  # before the limits: a BLAS library loaded inside them would escape them
        # implicit's solvers run on their own OpenMP threads and call BLAS inside them: BLAS threads on top took two
        # ALS iterations on 1.2M pairs of scale M's log from 5.1 s to 13.3 s on two threads (9.7 s on one).
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            best = self._train(matrix, user_ids, item_ids, (users, items), truth)
        self.summary = {
            "model": f"implicit-{config.model}",
            "n_users": int(user_ids.size),
            "n_items": int(item_ids.size),
            "n_pairs": int(users.size),
            "epochs_run": int(self.history[-1]["epoch"]) if self.history else 0,
            "best_epoch": best.epoch if best.score is not None else config.epochs,
            f"best_val_recall@{config.k}": best.score,
            "seconds": round(time.perf_counter() - started, 2),
        }
        return self

    def _new_model(self) -> Any:
        config = self.config
        implicit = _import_implicit()
        if config.model == "als":
            return implicit.cpu.als.AlternatingLeastSquares(
                factors=config.dim,
                regularization=config.reg,
                alpha=config.alpha,
                iterations=config.eval_every,
                num_threads=config.threads,
                random_state=config.seed,
            )
        return implicit.cpu.bpr.BayesianPersonalizedRanking(
            factors=config.dim,
            learning_rate=config.lr,
            regularization=config.reg,
            iterations=config.eval_every,
            num_threads=config.threads,
            random_state=config.seed,
        )

    def _train(
        self,
        matrix: sp.csr_matrix,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        seen: tuple[np.ndarray, np.ndarray],
        truth: tuple[np.ndarray, np.ndarray] | None,
    ) -> BestEpoch[CFEmbeddings]:
        config = self.config
        model = self._new_model()
        self.history = []
        best: BestEpoch[CFEmbeddings] = BestEpoch()
        done, chunk = 0, 0
        while done < config.epochs:
            model.iterations = min(config.eval_every, config.epochs - done)
            # A later fit continues from the current factors; BPR's sampling is reseeded per chunk so that chunks
            # draw different negatives, deterministically.
            model.random_state = config.seed + chunk
            model.fit(matrix, show_progress=False)
            done, chunk = done + model.iterations, chunk + 1
            current = self._as_embeddings(model, user_ids, item_ids)
            record = {"epoch": float(done)}
            if truth is not None:
                recall = recall_at_k(
                    current, truth, seen, config.k, most_users=config.validation_users, seed=config.seed
                )
                record[f"val_recall@{config.k}"] = recall
                best.check(recall, done, lambda current=current: current)
            self.history.append(record)
            log.info("implicit-%s iteration %d %s", config.model, done, record)
            if truth is not None and best.stale >= config.patience:
                break
        self._embeddings = best.weights if best.weights is not None else current
        return best

    def _as_embeddings(self, model: Any, user_ids: np.ndarray, item_ids: np.ndarray) -> CFEmbeddings:
        users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
        if self.config.model == "bpr":
            # implicit's BPR keeps the item bias as the last item column against a constant 1 on the user side.
            return CFEmbeddings(user_ids, item_ids, users[:, :-1], items[:, :-1], items[:, -1])
        return CFEmbeddings(user_ids, item_ids, users, items, np.zeros(item_ids.size, dtype=np.float32))

    def _versions(self) -> dict[str, str]:
        return {"implicit": _import_implicit().__version__, "numpy": np.__version__}


def _import_implicit() -> Any:
    """The implicit package with its CPU models loaded (imported on first use: BPRMF alone does not need it)."""
    import implicit
    import implicit.cpu.als
    import implicit.cpu.bpr

    return implicit


def cf_model(config: CFConfig) -> BPRMF | ImplicitMF:
    """An unfitted collaborative model of the kind `config` configures."""
    return ImplicitMF(config) if isinstance(config, ImplicitConfig) else BPRMF(config)
