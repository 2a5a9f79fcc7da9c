"""The LightGBM ranker trained on a Dask cluster, through `lightgbm.dask.DaskLGBMRanker`.

The training pairs are built where they are learned from: the task's users are cut into partitions (a user's
group is never split), and each partition's candidates, labels and features are computed on a worker of the
cluster (`generate_candidates`, `pair_features`), kept there as dask arrays with each partition's group sizes,
and handed to DaskLGBMRanker. Which pairs are shown through the cold view is drawn exactly as the single-node fit
draws it (one seeded stream over the pairs in task order; each partition starts that stream where the pairs
before it end), so the pairs and their features equal the single-node fit's; what differs is the learning:
data-parallel LightGBM builds each tree from histograms summed over the workers, which gives different but
close trees.

DaskLGBMRanker cannot stop early: it trains a fixed number of rounds, those a single-node fit chose on
validation (`LightGBMRanker.refit_config`). The booster it returns is a plain `lightgbm.Booster`, saved and
served as the single-node one; the ranker's metadata names the trainer (`trainer`)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from catalog import ConfigError, DataError
from ranker.features import FEATURE_NAMES, RankerInputs, RankingTask, generate_candidates
from ranker.lightgbm_ranker import LightGBMRanker, LightGBMRankerConfig, _Groups, _sampled, pair_groups, prior_scores

if TYPE_CHECKING:
    from distributed import Client, Future

TRAINER = "lightgbm.dask.DaskLGBMRanker"


def fit_on_dask(
    ranker: LightGBMRanker,
    inputs: RankerInputs,
    train: RankingTask,
    client: Client,
    *,
    partitions: int | None = None,
    chosen_by: dict[str, Any] | None = None,
) -> LightGBMRanker:
    """`ranker` (unfitted; its configuration with a fixed round count: `early_stopping_rounds` None) trained on
    `train`'s positives by DaskLGBMRanker on `client`'s cluster, the pairs built per partition of users on the
    workers (`partitions`, one per worker by default, placed round-robin on the workers). `chosen_by`: what the
    single-node fit that chose the round count measured, kept in the metadata."""
    config = ranker.config
    if config.early_stopping_rounds is not None:
        raise ConfigError(
            "DaskLGBMRanker cannot stop early: train it for a fixed number of rounds, those a single-node fit "
            "chose (LightGBMRanker.refit_config(), early_stopping_rounds None)."
        )
    if config.cold_user_share > 0:
        raise ConfigError(
            f"training on Dask shows no user without history (cold_user_share {config.cold_user_share}); train "
            "this ranker on one machine (WARMSTART_TASK_RUNNER=threads)."
        )
    if train.positives is None:
        raise DataError("the training task has no positives to learn from.")
    task = _sampled(train, config.max_groups, config.seed)
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ConfigError("the Dask cluster has no worker; start one (dask worker SCHEDULER) and run again.")
    parts = [users for users in np.array_split(task.users, partitions or len(workers)) if users.size]
    where = [[workers[p % len(workers)]] for p in range(len(parts))]
    shared = client.scatter(inputs, broadcast=True)
    positives = client.scatter(task.positives, broadcast=True)
    exclude = client.scatter(task.exclude, broadcast=True) if task.exclude is not None else None
    candidates = [
        client.submit(
            _candidates,
            shared,
            users,
            task.pool,
            config.per_source,
            exclude,
            config.ann_min_items,
            workers=w,
            pure=False,
        )
        for users, w in zip(parts, where, strict=True)
    ]
    counts = client.gather([client.submit(_count, c, workers=w) for c, w in zip(candidates, where, strict=True)])
    # The single-node fit draws one value per candidate pair, in task order, from one seeded stream: partition p
    # starts it after the pairs of the partitions before it.
    offsets = np.r_[0, np.cumsum(counts)[:-1]].astype(int)
    state = np.random.default_rng(config.seed).bit_generator.state
    groups = [
        client.submit(_groups_of, shared, c, positives, state, int(start), config.cold_share, workers=w, pure=False)
        for c, start, w in zip(candidates, offsets, where, strict=True)
    ]
    shapes = client.gather([client.submit(_shape, part, workers=w) for part, w in zip(groups, where, strict=True)])
    kept = [(part, pairs, n) for part, (pairs, n) in zip(groups, shapes, strict=True) if n]
    if not kept:
        raise DataError("no training user has a positive among their candidates: nothing to learn from.")
    features, labels, sizes, init = _dask_arrays(kept, config)
    booster = _boosted(ranker, client, features, labels, sizes, init)
    metadata = {
        "config": config.model_dump(),
        "features": list(FEATURE_NAMES),
        "best_iteration": int(booster.current_iteration()),
        "trainer": TRAINER,
        "dask_workers": len(workers),
        "partitions": len(kept),
        "train_pairs": int(sum(pairs for _, pairs, _ in kept)),
        "train_groups": int(sum(n for _, _, n in kept)),
        "feature_importance_gain": dict(
            zip(FEATURE_NAMES, booster.feature_importance("gain").round(1).tolist(), strict=True)
        ),
    }
    if chosen_by is not None:
        metadata["single_node"] = chosen_by
    return ranker.with_booster(booster, metadata)


def _dask_arrays(kept: list[tuple[Future, int, int]], config: LightGBMRankerConfig) -> tuple[Any, Any, Any, Any]:
    """(features, labels, group sizes, initial scores) as dask arrays, one chunk per partition."""
    import dask
    import dask.array as da

    def column(part: Future, name: str, shape: tuple[int, ...], dtype: type) -> da.Array:
        return da.from_delayed(dask.delayed(_field)(part, name, config), shape=shape, dtype=dtype)

    width = len(FEATURE_NAMES)
    return (
        da.concatenate([column(part, "features", (pairs, width), np.float32) for part, pairs, _ in kept]),
        da.concatenate([column(part, "labels", (pairs,), np.float32) for part, pairs, _ in kept]),
        da.concatenate([column(part, "sizes", (n,), np.int64) for part, _, n in kept]),
        da.concatenate([column(part, "init", (pairs,), np.float64) for part, pairs, _ in kept]),
    )


def _boosted(ranker: LightGBMRanker, client: Client, features: Any, labels: Any, sizes: Any, init: Any) -> Any:
    """The booster DaskLGBMRanker trains for the ranker's configuration (its round count; threads: each worker's)."""
    from lightgbm.dask import DaskLGBMRanker

    params = {name: value for name, value in ranker.params().items() if name not in ("num_threads", "eval_at")}
    model = DaskLGBMRanker(client=client, n_estimators=ranker.config.n_estimators, **params)
    # lightgbm.dask waits on the default client; a flow's task runner does not set its own as the default.
    with client.as_current(), warnings.catch_warnings():
        # each worker trains with its own threads: the estimator's n_jobs has no say
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(features, labels, group=sizes, init_score=init, feature_name=list(FEATURE_NAMES))
    return model.to_local().booster_


# ------------------------------------------------------------------------------ run on the workers


def _candidates(
    inputs: RankerInputs,
    users: np.ndarray,
    pool: np.ndarray,
    per_source: int,
    exclude: sp.csr_array | None,
    ann_min_items: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    return generate_candidates(inputs, users, pool, per_source=per_source, exclude=exclude, ann_min_items=ann_min_items)


def _count(pairs: tuple[np.ndarray, np.ndarray]) -> int:
    return int(pairs[0].size)


def _groups_of(
    inputs: RankerInputs,
    pairs: tuple[np.ndarray, np.ndarray],
    positives: sp.csr_array,
    state: dict[str, Any],
    offset: int,
    cold_share: float,
) -> _Groups:
    """A partition's groups with a positive, the pairs shown cold drawn from the seeded stream at `offset`."""
    users, items = pairs
    bits = np.random.PCG64()
    bits.state = state
    bits.advance(offset)  # one 64-bit step per double drawn
    cold = np.random.Generator(bits).random(users.size) < cold_share
    return pair_groups(inputs, users, items, positives, cold, positive_only=True)


def _shape(groups: _Groups) -> tuple[int, int]:
    return int(groups.labels.size), int(groups.sizes.size)


def _field(groups: _Groups, name: str, config: LightGBMRankerConfig) -> np.ndarray:
    if name == "init":
        return prior_scores(config, groups.features)
    return np.asarray(getattr(groups, name))
