"""User stand-ins: a collaborative [vector | 1] for a user without history (or with little), made from what the
user has: their attributes (the users table's `attributes` JSON: categorical one-hot, numeric standardised) and
the text of the items they took (the mean of those items' text embeddings). The item twin is `StandInBuilder`;
this wraps one for users, with the attribute encoding it was fitted with, so training and serving build a user's
features the same way.

Fitted on warm users (features -> their BPR-MF user vector); `fit_out_of_fold` gives warm users stand-ins from
mappers that never saw them, so the ranker learns from stand-ins like the ones a user without history is served.
A user without history has no text profile: it is imputed with the warm users' mean profile, where the centred
ridge mapper reads no signal from it, so their stand-in is what their attributes say.

Blending with fold-in (`blend_with_fold_in`): a user with n interactions since the version is served
w * fold-in + (1 - w) * stand-in with w = n / (n + FOLD_IN_PRIOR).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import polars as pl

from catalog import Columns, NotFittedError, atomic_write_bytes
from encoders import ContentMapper
from training._settings import StandInConfig
from training._standins import StandInBuilder

USER_STANDINS_DIR = "standins_users"
_ENCODING = "encoding.json"
_PROFILE = "profile_mean.npy"
# A categorical level seen for fewer users than this is not a feature (MovieLens-100K's zip codes: about 800
# levels, almost all held by one to three users; its 21 occupations all by at least 7).
MIN_LEVEL_USERS = 5
# Interactions at which fold-in and the stand-in weigh the same. Not chosen on validation (no user fold-in split
# exists yet): a user's own interactions beat demographics quickly (MovieLens-100K's temporal cold_user rows show
# attribute stand-ins moving little), so two interactions already give fold-in two thirds of the vector.
FOLD_IN_PRIOR = 1.0


def parse_attributes(attributes: pl.Series) -> list[dict[str, str]]:
    """Each user's attribute object (JSON text; null or not an object reads as no attributes), values as text."""
    out: list[dict[str, str]] = []
    for text in attributes.cast(pl.String).to_list():
        try:
            value = json.loads(text) if text else None
        except json.JSONDecodeError:
            value = None
        out.append({str(k): str(v) for k, v in value.items() if v is not None} if isinstance(value, dict) else {})
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


@dataclass(frozen=True)
class AttributeEncoding:
    """Which attributes are numbers (name -> mean, standard deviation) and which categories (name -> levels)."""

    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, rows: list[dict[str, str]], min_level_users: int = MIN_LEVEL_USERS) -> AttributeEncoding:
        """An attribute whose every value reads as a number is numeric; any other is categorical, with the levels
        at least `min_level_users` users hold (a rarer level is no feature: it would fit single users)."""
        names = sorted({name for row in rows for name in row})
        numeric: dict[str, tuple[float, float]] = {}
        categorical: dict[str, list[str]] = {}
        for name in names:
            values = [row[name] for row in rows if name in row]
            numbers = [_number(v) for v in values]
            if all(n is not None for n in numbers):
                array = np.asarray(numbers, dtype=np.float64)
                numeric[name] = (float(array.mean()), float(array.std() or 1.0))
                continue
            levels, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
            kept = sorted(levels[counts >= min_level_users].tolist())
            if kept:
                categorical[name] = kept
        return cls(numeric, categorical)

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(levels) for levels in self.categorical.values())

    def transform(self, rows: list[dict[str, str]]) -> np.ndarray:
        """(users x width): standardised numbers (0, the mean, where missing or unreadable), one-hot levels (all 0
        for a missing or unknown level)."""
        out = np.zeros((len(rows), self.width), dtype=np.float32)
        column = 0
        for name, (mean, std) in self.numeric.items():
            for r, row in enumerate(rows):
                value = _number(row[name]) if name in row else None
                out[r, column] = (value - mean) / std if value is not None else 0.0
            column += 1
        for name, levels in self.categorical.items():
            position = {level: column + j for j, level in enumerate(levels)}
            for r, row in enumerate(rows):
                if row.get(name) in position:
                    out[r, position[row[name]]] = 1.0
            column += len(levels)
        return out


class UserStandInBuilder:
    """Users' [attributes | text profile] -> stand-in collaborative [vector | 1] rows (StandInBuilder's twin)."""

    def __init__(self, config: StandInConfig | None = None) -> None:
        self.config = config or StandInConfig()
        self.encoding_: AttributeEncoding | None = None
        self.profile_mean_: np.ndarray | None = None
        self.builder_ = StandInBuilder(self.config)

    def __repr__(self) -> str:
        return f"UserStandInBuilder({self.config!r}, {'fitted' if self.is_fitted else 'not fitted'})"

    @property
    def is_fitted(self) -> bool:
        return self.encoding_ is not None and self.builder_.is_fitted

    def _features(self, attributes: pl.Series, profiles: np.ndarray) -> np.ndarray:
        assert self.encoding_ is not None and self.profile_mean_ is not None
        profiles = np.asarray(profiles, dtype=np.float32)
        missing = ~np.any(profiles != 0, axis=1)
        profiles = np.where(missing[:, None], self.profile_mean_[None, :], profiles)
        return np.c_[self.encoding_.transform(parse_attributes(attributes)), profiles].astype(np.float32)

    def fit_out_of_fold(
        self, attributes: pl.Series, profiles: np.ndarray, user_cf: np.ndarray, warm: np.ndarray
    ) -> np.ndarray:
        """Fit on the `warm` users (rows of `user_cf`, BPR-MF's [vector | 1]) and return a stand-in for every user:
        out-of-fold for the warm ones. `attributes` (JSON text per user) and `profiles` (normalised mean text
        embedding of each user's items, zero without any) are in the same row order."""
        self.encoding_ = AttributeEncoding.fit(parse_attributes(attributes.gather(warm)))
        width = np.asarray(profiles).shape[1]
        self.profile_mean_ = (
            np.asarray(profiles, dtype=np.float32)[warm].mean(axis=0)
            if warm.size
            else np.zeros(width, dtype=np.float32)
        )
        standins = self.builder_.fit_out_of_fold(self._features(attributes, profiles), user_cf, warm)
        standins[:, -1] = 1.0  # the user side's constant that carries the item bias, as user_cf has it
        return standins

    def attribute_rows(self, attributes: pl.Series) -> np.ndarray:
        """Users' attributes as numbers (the encoding's: standardised numbers, then one-hot levels)."""
        if self.encoding_ is None:
            raise NotFittedError("this UserStandInBuilder is not fitted: call fit_out_of_fold(...) first.")
        return self.encoding_.transform(parse_attributes(attributes))

    @property
    def numeric_columns(self) -> int:
        """How many of `attribute_rows`' columns (the first) are numbers."""
        return len(self.encoding_.numeric) if self.encoding_ is not None else 0

    def transform(self, attributes: pl.Series, profiles: np.ndarray) -> np.ndarray:
        """Stand-in [vector | 1] rows of users given their attributes and text profiles (zero rows: no items)."""
        if not self.is_fitted:
            raise NotFittedError(
                "this UserStandInBuilder is not fitted: call fit_out_of_fold(...) or UserStandInBuilder.load(dir)."
            )
        standins = self.builder_.transform(self._features(attributes, profiles))
        standins[:, -1] = 1.0
        return standins.astype(np.float32)

    def save(self, directory: Path) -> Path:
        """Write the mapper, the attribute encoding and the mean profile under `directory`/standins_users."""
        if not self.is_fitted:
            raise NotFittedError("this UserStandInBuilder is not fitted: call fit_out_of_fold(...) before save(...).")
        assert self.builder_.mapper_ is not None and self.encoding_ is not None and self.profile_mean_ is not None
        folder = Path(directory) / USER_STANDINS_DIR
        self.builder_.mapper_.save(folder)
        np.save(folder / _PROFILE, self.profile_mean_)
        record = {"config": self.config.model_dump(), "encoding": asdict(self.encoding_)}
        atomic_write_bytes(folder / _ENCODING, json.dumps(record).encode())
        return folder

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The fitted builder `save` wrote under `directory`."""
        folder = Path(directory) / USER_STANDINS_DIR
        record = json.loads((folder / _ENCODING).read_bytes())
        builder = cls(StandInConfig.model_validate(record["config"]))
        encoding = record["encoding"]
        builder.encoding_ = AttributeEncoding(
            {name: (float(m), float(s)) for name, (m, s) in encoding["numeric"].items()}, encoding["categorical"]
        )
        builder.profile_mean_ = np.load(folder / _PROFILE)
        builder.builder_.mapper_ = ContentMapper.load(folder)
        return builder

    @classmethod
    def saved_in(cls, directory: Path) -> bool:
        """Whether `directory` holds a saved builder (versions saved before user stand-ins do not)."""
        return (Path(directory) / USER_STANDINS_DIR / _ENCODING).exists()


def user_attributes(users: pl.DataFrame | None, user_ids: pl.Series) -> pl.Series:
    """The `attributes` JSON text of each of `user_ids` (in that order) from a users table; null where unknown."""
    if users is None or Columns.attributes not in users.columns:
        return pl.Series(Columns.attributes, [None] * user_ids.len(), dtype=pl.String)
    table = users.select(pl.col(Columns.user).cast(pl.String), pl.col(Columns.attributes).cast(pl.String))
    wanted = pl.DataFrame({Columns.user: user_ids.cast(pl.String)})
    return wanted.join(table.unique(Columns.user, keep="last"), on=Columns.user, how="left", maintain_order="left")[
        Columns.attributes
    ]


def blend_with_fold_in(folded: np.ndarray, standins: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[vector | 1] rows: w * fold-in + (1 - w) * stand-in, w = n / (n + FOLD_IN_PRIOR) for n interactions."""
    weight = (counts / (counts + FOLD_IN_PRIOR)).astype(np.float32)[:, None]
    vectors = weight * folded + (1 - weight) * standins[:, :-1]
    return np.c_[vectors, np.ones(vectors.shape[0], dtype=np.float32)].astype(np.float32)
