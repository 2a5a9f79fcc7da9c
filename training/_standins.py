"""Stand-ins: collaborative vectors for entities without history, made from their content and warmed by synthetic
interactions. One builder serves training (every split's inputs) and serving (entities added after training).

`StandInBuilder` is an estimator in scikit-learn's style: `fit` on warm entities (content features -> their
collaborative [vector | bias]), `transform` for any entity; `fit_out_of_fold` also gives the warm entities
stand-ins from mappers that never saw them, so the ranker learns from stand-ins like the ones it is served. Its
fitted attributes end in `_`; `save` / `load` keep it with a model version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import numpy as np
import polars as pl
import scipy.sparse as sp

from catalog import Columns, NotFittedError, atomic_write_bytes
from encoders import ContentMapper, WarmingConfig, simulated_interactions, warm_items
from ranker.evaluate import EvalIndex
from ranker.features import RankerInputs
from training._settings import StandInConfig

STANDINS_DIR = "standins"
_CONFIG = "standins.json"


class StandInBuilder:
    """Maps content features (text embeddings) of entities to stand-in collaborative [vector | bias] rows."""

    def __init__(self, config: StandInConfig | None = None) -> None:
        self.config = config or StandInConfig()
        self.mapper_: ContentMapper | None = None

    def __repr__(self) -> str:
        return f"StandInBuilder({self.config!r}, {'fitted' if self.is_fitted else 'not fitted'})"

    @property
    def is_fitted(self) -> bool:
        return self.mapper_ is not None

    def fit(self, features: np.ndarray, targets: np.ndarray) -> Self:
        """Fit on warm entities: row k of `features` is the content of the entity whose [vector | bias] is row k
        of `targets`."""
        self.mapper_ = self._mapper(features, targets)
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Stand-in [vector | bias] rows for the entities whose content features are the rows of `features`."""
        if self.mapper_ is None:
            raise NotFittedError(
                "this StandInBuilder is not fitted: call fit(features, targets) or StandInBuilder.load(directory)."
            )
        vectors, bias = self.mapper_.transform(features)
        return np.c_[vectors, bias]

    def fit_out_of_fold(self, features: np.ndarray, targets: np.ndarray, warm: np.ndarray) -> np.ndarray:
        """Fit on the `warm` rows and return a stand-in for every row: the others from the fitted mapper, the warm
        ones out-of-fold (each from a mapper fitted on the other `config.folds - 1` folds of warm rows)."""
        self.fit(features[warm], targets[warm])
        standins = np.zeros_like(targets)
        cold = np.flatnonzero(~np.isin(np.arange(features.shape[0]), warm))
        if cold.size:
            standins[cold] = self.transform(features[cold])
        assignment = np.random.default_rng(self.config.seed).integers(self.config.folds, size=warm.size)
        for fold in range(self.config.folds):
            held, fit = warm[assignment == fold], warm[assignment != fold]
            vectors, bias = self._mapper(features[fit], targets[fit]).transform(features[held])
            standins[held] = np.c_[vectors, bias]
        return standins

    def _mapper(self, features: np.ndarray, targets: np.ndarray) -> ContentMapper:
        return ContentMapper(self.config.mapper).fit(features, targets[:, :-1], targets[:, -1])

    def save(self, directory: Path) -> Path:
        """Write the fitted mapper and this builder's config under `directory`/standins (atomically)."""
        if self.mapper_ is None:
            raise NotFittedError("this StandInBuilder is not fitted: call fit(...) before save(...).")
        folder = Path(directory) / STANDINS_DIR
        self.mapper_.save(folder)
        atomic_write_bytes(folder / _CONFIG, json.dumps(self.config.model_dump()).encode())
        return folder

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The fitted builder `save` wrote under `directory`."""
        folder = Path(directory) / STANDINS_DIR
        builder = cls(StandInConfig.model_validate_json((folder / _CONFIG).read_bytes()))
        builder.mapper_ = ContentMapper.load(folder)
        return builder

    @classmethod
    def saved_in(cls, directory: Path) -> bool:
        """Whether `directory` holds a saved builder (versions saved before builders were kept do not)."""
        return (Path(directory) / STANDINS_DIR / _CONFIG).exists()


# ------------------------------------------------------------------------------------------------ warming


@dataclass(frozen=True, eq=False)
class Warmed:
    """What synthetic interactions did to one split's stand-ins (`warmed_standins`)."""

    standins: np.ndarray  # every item's stand-in after warming
    content: np.ndarray  # the stand-ins before: content alone
    items: np.ndarray  # mask of the items without history that synthetic interactions warmed
    judged: np.ndarray  # mask of those warmed from given (e.g. the judge's) interactions, not the simulator's
    synthetic: sp.csr_array  # (items x users) weights of the interactions that warmed items without history
    report: WarmingReport
    config: WarmingConfig
    # Given pairs that warmed each item (judged ones for items without history; judge-like ones for a share of
    # the others, in training): the ranker's `given_pairs` feature reads them through the cold view.
    given_pairs: np.ndarray


@dataclass(frozen=True)
class WarmingReport:
    """How many items and pairs warming touched."""

    cold_items_warmed: int
    cold_items_judged: int
    synthetic_pairs: int
    warm_items_simulated: int
    warm_items_given: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def synthetic_matrix(synthetic: pl.DataFrame, index: EvalIndex, warm: np.ndarray) -> sp.csr_array:
    """(items x users) weights of the synthetic interactions of items without history; rows naming a user or
    item outside the index, or an item with real history, are left out (real data always wins)."""
    known = synthetic.filter(
        pl.col(Columns.user).is_in(index.user_ids.implode()) & pl.col(Columns.item).is_in(index.item_ids.implode())
    )
    users, items = index.pairs(known)
    weights = known["weight"].to_numpy().astype(np.float32) if "weight" in known.columns else np.ones(users.size)
    cold = ~np.isin(items, warm)
    matrix = sp.coo_array((weights[cold], (items[cold], users[cold])), shape=(index.n_items, index.n_users))
    return sp.csr_array(matrix)  # a repeated pair sums its weights


def warmed_standins(
    standins: np.ndarray,
    user_cf: np.ndarray,
    item_cf: np.ndarray,
    warm: np.ndarray,
    given: sp.csr_array | None,
    config: WarmingConfig,
    takers: sp.csr_array | None = None,
) -> Warmed:
    """Stand-ins trained from synthetic interactions (encoders.warm_items), and what warmed them.

    Cold items take the `given` synthetic interactions (e.g. the language-model judge's) where they have any,
    else the embedding simulator's top `config.per_item` users by stand-in score. Warm items' out-of-fold
    stand-ins are warmed the same way from the simulator, so the ranker learns from what serving will show; where
    `takers` (users x items: the ranker's held-out labels) are given, a `config.given_share` of them from pairs
    a judge might give instead (`judged_like_pairs`), counted as given pairs: the ranker learns what pairs that
    name real takers, and pairs that do not, are worth.
    """
    n_items = standins.shape[0]
    is_cold = np.ones(n_items, dtype=bool)
    is_cold[warm] = False
    proposed = simulated_interactions(standins, user_cf, config.per_item, ann_min_users=config.ann_min_users)
    simulated = proposed if config.simulate else sp.csr_array(proposed.shape, dtype=proposed.dtype)
    judged = np.zeros(n_items, dtype=bool)
    pairs = sp.csr_array(simulated.shape, dtype=np.float32)
    if given is not None:
        judged = np.diff(given.indptr) > 0
        pairs = pairs + given
    if takers is not None and config.given_share > 0:
        pairs = pairs + judged_like_pairs(takers, proposed, warm, config)
    counts = np.diff(sp.csr_array(pairs).indptr).astype(np.float32)
    has_pairs = counts > 0
    if has_pairs.any():
        simulated = sp.csr_array(sp.diags_array((~has_pairs).astype(np.float32)) @ simulated) + pairs
        simulated.eliminate_zeros()  # an item with given pairs keeps only those
    warmed = warm_items(simulated, user_cf, standins, item_cf, config, among=warm)
    synthetic = sp.csr_array(sp.diags_array(is_cold.astype(np.float32)) @ simulated)
    synthetic.eliminate_zeros()
    items = np.diff(synthetic.indptr) > 0
    report = WarmingReport(
        cold_items_warmed=int(items.sum()),
        cold_items_judged=int(judged.sum()),
        synthetic_pairs=int(synthetic.nnz),
        warm_items_simulated=int((~has_pairs[warm]).sum()) if config.simulate else 0,
        warm_items_given=int(has_pairs[warm].sum()),
    )
    return Warmed(warmed, standins, items, judged, synthetic, report, config, counts)


def judged_like_pairs(
    takers: sp.csr_array, proposed: sp.csr_array, warm: np.ndarray, config: WarmingConfig
) -> sp.csr_array:
    """(items x users) weight-1 pairs for a seeded `config.given_share` of the `warm` items, as a judge of unknown
    quality would give them: 1 to `config.per_item` pairs per item, each naming one of the item's takers
    (`takers`, users x items: the ranker's held-out labels) with a precision drawn per item from U(0, 1), the
    others naming users the simulator proposed (`proposed`, items x users) who did not take it. The items are
    drawn whether or not they have takers, so that being given pairs tells the ranker nothing by itself."""
    rng = np.random.default_rng([config.seed, 31])
    chosen = np.sort(warm[rng.random(warm.size) < config.given_share])
    by_item = sp.csr_array(sp.csr_array(takers).T)
    rows, cols = [], []
    for item in chosen:
        took = by_item.indices[by_item.indptr[item] : by_item.indptr[item + 1]]
        others = proposed.indices[proposed.indptr[item] : proposed.indptr[item + 1]]
        others = others[~np.isin(others, took)]
        count = int(rng.integers(1, config.per_item + 1))
        right = min(int(rng.binomial(count, rng.random())), took.size)
        wrong = min(count - right, others.size)
        named = np.r_[rng.choice(took, size=right, replace=False), rng.choice(others, size=wrong, replace=False)]
        cols.append(named)
        rows.append(np.full(named.size, item))
    return pairs_matrix(rows, cols, (takers.shape[1], takers.shape[0]))


def pairs_matrix(rows: list[np.ndarray], cols: list[np.ndarray], shape: tuple[int, int]) -> sp.csr_array:
    """(items x users) weight-1 pairs from per-item pieces: `rows[i]` the item of each pair, `cols[i]` its user."""
    rows_, cols_ = (np.concatenate(part) if part else np.zeros(0, dtype=np.int64) for part in (rows, cols))
    return sp.csr_array((np.ones(rows_.size, dtype=np.float32), (rows_, cols_)), shape=shape)


def warm_added(
    standins: np.ndarray, user_cf: np.ndarray, warm_item_cf: np.ndarray, config: WarmingConfig | None
) -> np.ndarray:
    """Stand-ins of items added after training, warmed as the version warmed its own cold items (an added item has
    no judged pairs: only the embedding simulator can warm it, where the version used it); unchanged otherwise."""
    if config is None or not config.simulate:
        return standins
    # Every user scored exactly: a few items at a time, where building an index over the users would cost more.
    proposed = simulated_interactions(standins, user_cf, config.per_item)
    return warm_items(proposed, user_cf, standins, warm_item_cf, config)


def synthetic_precision(warmed: Warmed, truth: sp.csr_array) -> dict[str, float | None]:
    """Share of the synthetic pairs that warmed cold items found again among real held-out (users x items)
    pairs, for the embedding simulator's and the given (judged) pairs apart; None where there were none."""
    found = warmed.synthetic.multiply(truth.T.tocsr() > 0).tocsr()
    out: dict[str, float | None] = {}
    for name, rows in (("simulator", ~warmed.judged), ("judge", warmed.judged)):
        pairs = int(np.diff(warmed.synthetic.indptr)[rows].sum())
        hits = int(np.diff(found.indptr)[rows].sum())
        out[name] = hits / pairs if pairs else None
    return out


def fitted_on_inputs(inputs: RankerInputs, config: StandInConfig | None = None) -> StandInBuilder:
    """A builder fitted on the items with history of a version's served inputs: the fit training made for that
    version, for versions saved before their builder was kept beside them."""
    warm = np.flatnonzero(inputs.popularity > 0)
    return StandInBuilder(config).fit(inputs.text[warm], inputs.item_cf[warm])
