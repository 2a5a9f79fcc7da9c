"""Evaluation plans: how the ranker is trained, early-stopped and evaluated on one split. One plan per kind of
split: predefined splits in ALDI's layout, a held-out split of any log (temporal or given as files)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from catalog import (
    SPARSE_MAX,
    Columns,
    ConfigError,
    DataError,
    Dataset,
    check_references,
    conform_interactions,
    conform_items,
    conform_users,
    fully_timed,
    read_table,
)
from ranker.evaluate import (
    COLD_ITEM,
    COLD_USERS,
    HYBRID,
    SPARSE_USERS,
    TEMPORAL,
    WARM,
    ProtocolSplit,
    cold_item_split,
    cold_user_split,
    frames_split,
    hold_out_labels,
    hybrid_split,
    sparse_user_split,
    split_validation,
    temporal_split,
    warm_split,
    whole_log_split,
)
from training.defaults import CALIBRATION_USERS, EVALUATION_USERS, USER_GROUP_ATTRIBUTES, USER_HOLDOUT_SHARE


@dataclass(frozen=True, eq=False)
class EvaluationPlan:
    """How the ranker is trained and early-stopped for one evaluated split.

    The ranker learns from `fit_labels` (held-out positives of warm items) with encoders fitted on
    `fit_history`, stops early on `valid_labels` ranked against `valid_pool`, and is evaluated on `split`,
    with the encoders refitted on `split.train` when `refit_for_serving` (the labels were cut out of it).
    """

    split: ProtocolSplit
    fit_history: pl.DataFrame
    fit_labels: pl.DataFrame
    valid_labels: pl.DataFrame
    valid_pool: np.ndarray
    valid_exclude: pl.DataFrame | None = None
    cf_validation: pl.DataFrame | None = None
    refit_for_serving: bool = False
    # Synthetic interactions (user_id, item_id, weight) for items without history, e.g. the judge's.
    synthetic: pl.DataFrame | None = None
    # A validation split ranking cold and warm items together, on which the ranker's cold places are chosen.
    calibration: ProtocolSplit | None = None
    # The users table (user_id, attributes): users' stand-ins are built from their attributes (none: from the text
    # of their items alone).
    users: pl.DataFrame | None = None
    # The protocols over users: their split drawn again among the training users only, on which the share of users
    # the ranker is shown without history is chosen (the test users never choose anything).
    user_validation: EvaluationPlan | None = None
    # The user attributes attribute-group popularity groups by (None: every categorical attribute).
    group_attributes: tuple[str, ...] | None = None
    # The data set the split was drawn from, where it was drawn from one log (the protocols over users): what a
    # version fitted on the plan serves from is its training part (`training_part`).
    source: Dataset | None = None


def sampled_users(split: ProtocolSplit, n: int, *, seed: int, named: bool = False) -> ProtocolSplit:
    """The split restricted to a seeded sample of `n` of its evaluated users (all of them when fewer); `named` adds
    the sample to the split's name ("temporal@...:users=20000of51234"), so no figure passes for the population's."""
    users = split.truth.select(Columns.user).unique().sort(Columns.user)
    if users.height <= n:
        return split
    chosen = users.sample(n, seed=seed)
    truth = split.truth.join(chosen, on=Columns.user, how="semi")
    name = f"{split.name}:users={n}of{users.height}" if named else split.name
    return replace(split, name=name, truth=truth, exclude=split.exclude.join(chosen, on=Columns.user, how="semi"))


def aldi_plan(dataset: Dataset, protocol: str) -> EvaluationPlan:
    """A data set with splits in ALDI's layout (catalog.ALDI_SPLITS: CiteULike's): encoders on warm_emb, ranker labels
    warm_val, early stopping on cold_item_val (cold items only), cold places chosen on the hybrid validation split."""
    builders = {
        COLD_ITEM: lambda: cold_item_split(dataset, "cold_item_test"),
        WARM: lambda: warm_split(dataset, "warm_test"),
        HYBRID: lambda: hybrid_split(dataset, "test"),
    }
    if protocol not in builders:
        raise ConfigError(
            f"protocol {protocol!r} does not apply to {dataset.name}'s predefined splits: "
            "use cold-item, warm or hybrid."
        )
    split = builders[protocol]()
    splits = dataset.splits
    cold_pool = cold_item_split(dataset, "cold_item_val").candidates
    # The model is the same whatever protocol evaluates it, and it serves cold and warm items together.
    calibration = sampled_users(hybrid_split(dataset, "val"), CALIBRATION_USERS, seed=0)
    return EvaluationPlan(
        split=split,
        fit_history=splits["warm_emb"],
        fit_labels=splits["warm_val"],
        valid_labels=splits["cold_item_val"],
        valid_pool=cold_pool,
        valid_exclude=splits["cold_item_test"],
        cf_validation=splits["warm_val"],
        calibration=calibration,
    )


def holdout_plan(
    split: ProtocolSplit, valid: pl.DataFrame | None = None, *, share: float = 0.2, seed: int = 0
) -> EvaluationPlan:
    """Labels and early stopping for a split without predefined ones (ranker.evaluate.hold_out_labels chooses:
    on a log with times, one time cut for every user, so the ranker learns to serve users without history too).

    Validation pairs of warm users and items are the labels, and training keeps the whole history; without
    them, each user's latest (or random) `share` of training interactions is held out of the encoders'
    history. Validation pairs of cold items (or users) stop the ranker early, ranked among the items cold in
    history; without them, a fifth of the label users' pairs do, ranked among all items."""
    warm, other = split_validation(valid, split.train) if valid is not None else (None, None)
    if warm is not None and warm.height:
        labels, history = warm, split.train
    else:
        history, labels = hold_out_labels(split.train, share=share, seed=seed)
    if other is not None and other.height:
        fit_labels, valid_labels = labels, other
        cold = np.setdiff1d(np.arange(split.index.n_items), split.index.items(history[Columns.item].unique()))
        pool = cold if other.join(history, on=Columns.item, how="semi").is_empty() else np.arange(split.index.n_items)
    else:
        stop_users = labels.select(Columns.user).unique().sort(Columns.user).sample(fraction=0.2, seed=seed)
        fit_labels = labels.join(stop_users, on=Columns.user, how="anti")
        valid_labels = labels.join(stop_users, on=Columns.user, how="semi")
        pool = np.arange(split.index.n_items)
    return EvaluationPlan(
        split=split,
        fit_history=history,
        fit_labels=fit_labels,
        valid_labels=valid_labels,
        valid_pool=pool,
        cf_validation=labels,
        refit_for_serving=history is not split.train,
    )


PROTOCOLS = {
    "cold-item": COLD_ITEM,
    "warm": WARM,
    "hybrid": HYBRID,
    "temporal": TEMPORAL,
    "cold-user": COLD_USERS,
    "sparse-user": SPARSE_USERS,
}
USER_PROTOCOLS = (COLD_USERS, SPARSE_USERS)


def user_plan(
    dataset: Dataset,
    protocol: str,
    *,
    history_n: int | None = None,
    share: float = USER_HOLDOUT_SHARE,
    seed: int = 0,
    sparse_max: int = SPARSE_MAX,
) -> EvaluationPlan:
    """The cold-user (a seeded `share` of users held out whole) or sparse-user (held out but for their first
    `history_n` events) protocol on any data set with a users table, trained as `holdout_plan` trains. Its
    `user_validation` is the same protocol drawn again (seed + 1) among the training users alone, with the test
    users' every row left out: what the ranker's handling of users without history is chosen on."""
    if protocol == COLD_USERS:

        def build(data: Dataset, draw: int) -> ProtocolSplit:
            return cold_user_split(data, share, draw, sparse_max=sparse_max)
    elif protocol == SPARSE_USERS:
        if history_n is None:
            raise ConfigError("the sparse-user protocol needs the events each held-out user keeps: --history-n N.")

        def build(data: Dataset, draw: int) -> ProtocolSplit:
            return sparse_user_split(data, history_n, share, draw, sparse_max=sparse_max)
    else:
        raise ConfigError(f"user_plan builds the protocols {list(USER_PROTOCOLS)}, not {protocol!r}.")
    split = build(dataset, seed)
    test_users = split.truth.select(Columns.user).unique()
    training_only = replace(dataset, interactions=dataset.interactions.join(test_users, on=Columns.user, how="anti"))
    return replace(
        holdout_plan(split),
        user_validation=replace(holdout_plan(build(training_only, seed + 1)), users=dataset.users),
        group_attributes=USER_GROUP_ATTRIBUTES.get(dataset.name),
        users=dataset.users,
        source=dataset,
    )


def training_part(plan: EvaluationPlan) -> Dataset:
    """The data a version fitted on `plan` serves from, as a data set: the source's items and users whole (the
    held-out users with their attributes) and its interactions less the held-out ones (the rows of the split's
    `train`: none of a cold user's, a sparse user's first n). For plans drawn from one log (`user_plan`)."""
    source = plan.source
    if source is None:
        raise ConfigError(
            f"{plan.split.name} was not drawn from one log, so it has no training part to serve from: "
            "only the protocols over users (cold-user, sparse-user) keep a servable version."
        )
    train = plan.split.train
    interactions = source.interactions.join(train.unique(), on=train.columns, how="semi", nulls_equal=True)
    if interactions.height < train.height:
        raise DataError(f"{plan.split.name}: {train.height - interactions.height} training row(s) are not in the log.")
    return Dataset(name=source.name, interactions=interactions, items=source.items, users=source.users)


def _read_pairs(path: Path) -> pl.DataFrame:
    frame, _ = conform_interactions(read_table(path), str(path))
    return frame


def files_plan(
    protocol: str,
    *,
    train: Path,
    test: Path | None,
    items: Path,
    valid: Path | None = None,
    users: Path | None = None,
    history_n: int | None = None,
    sparse_max: int = SPARSE_MAX,
) -> EvaluationPlan:
    """A split given as files (CSV or Parquet; interactions: user_id, item_id[, ts, value]; items: item_id,
    title[, text, categories]). `temporal` needs times: the test file's first event is the cut. The protocols over
    users draw their own split from the train and test files' events together (`user_plan`) and need `users`
    (user_id and attribute columns)."""
    item_frame, _ = conform_items(read_table(items), str(items))
    if protocol in USER_PROTOCOLS:
        if users is None:
            raise ConfigError(f"--protocol {protocol} needs --users FILE: the attributes of users without history.")
        user_frame = conform_users(read_table(users), str(users))[0]
        frames = [_read_pairs(path) for path in (train, test) if path is not None]
        for frame, path in zip(frames, (train, test), strict=False):
            check_references(frame, item_frame, user_frame, str(path))
        log = pl.concat(frames, how="diagonal_relaxed")
        dataset = Dataset(name=f"files:{train.name}", interactions=log, items=item_frame, users=user_frame)
        return user_plan(dataset, protocol, history_n=history_n, sparse_max=sparse_max)
    if test is None:
        raise ConfigError("--train needs --test FILE too (only the protocols over users draw their own test).")
    train_frame, test_frame = _read_pairs(train), _read_pairs(test)
    valid_frame = _read_pairs(valid) if valid is not None else None
    user_frame = conform_users(read_table(users), str(users))[0] if users is not None else None
    for frame, path in ((train_frame, train), (test_frame, test), (valid_frame, valid)):
        if frame is not None:
            check_references(frame, item_frame, user_frame, str(path))
    user_ids = user_frame[Columns.user].sort() if user_frame is not None else None
    if protocol == TEMPORAL:
        if not (fully_timed(test_frame) and fully_timed(train_frame)):
            raise DataError(f"--protocol temporal needs a 'ts' on every row of {train} and {test}.")
        log = pl.concat([train_frame, test_frame])
        split = temporal_split(log, item_frame, cut=test_frame[Columns.ts].min(), sparse_max=sparse_max)
    else:
        split = frames_split(
            train_frame,
            test_frame,
            item_frame,
            protocol=protocol,
            valid=valid_frame,
            users=user_ids,
            sparse_max=sparse_max,
        )
    return replace(holdout_plan(split, valid_frame), users=user_frame)


def whole_log_plan(dataset: Dataset, plan: EvaluationPlan) -> EvaluationPlan | None:
    """The plan that refits a judged candidate on every event of a time-ordered log (nothing held out to
    evaluate on: the candidate's own figures stand for it): labels and history cut as `holdout_plan` cuts them,
    over the whole log. None where the log is not one (predefined splits, or events without times): the version
    served is then the evaluated one."""
    log = dataset.interactions
    if dataset.splits or not fully_timed(log) or plan.split.protocol != TEMPORAL:
        return None
    whole = whole_log_split(log, dataset.items, dataset.users[Columns.user])
    return replace(holdout_plan(whole), synthetic=plan.synthetic, users=plan.users)


def dataset_plan(
    dataset: Dataset,
    protocol: str,
    *,
    history_n: int | None = None,
    sparse_max: int = SPARSE_MAX,
    most_users: int = EVALUATION_USERS,
) -> EvaluationPlan:
    """The plan for a data set: the protocols over users where asked (any data set with a users table), its
    predefined splits where it has them (ALDI's layout), else its temporal split, scored for a seeded sample of
    `most_users` of its test users where it has more."""
    if protocol in USER_PROTOCOLS:
        return user_plan(dataset, protocol, history_n=history_n, sparse_max=sparse_max)
    if dataset.splits:
        return replace(aldi_plan(dataset, protocol), users=dataset.users)
    if protocol != TEMPORAL:
        raise ConfigError(f"{dataset.name} has no predefined split: use --protocol temporal, cold-user or sparse-user.")
    split = temporal_split(dataset.interactions, dataset.items, sparse_max=sparse_max)
    split = sampled_users(split, most_users, seed=0, named=True)
    return replace(holdout_plan(split), users=dataset.users)
