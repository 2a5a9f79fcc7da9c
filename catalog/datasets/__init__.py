"""The built-in data sets, one module each (its loader and its protocol facts), registered here by name. Adding one
is a module and a line in `DATASETS`."""

from __future__ import annotations

from pathlib import Path

from catalog._loaders import Dataset
from catalog.datasets._spec import BuiltinDataset
from catalog.datasets.citeulike import CITEULIKE, load_citeulike
from catalog.datasets.movielens import MOVIELENS_100K, RECBOLE_REQUIREMENT, fetch_movielens_100k, load_movielens_100k
from catalog.errors import ConfigError

DATASETS: dict[str, BuiltinDataset] = {spec.name: spec for spec in (MOVIELENS_100K, CITEULIKE)}


def builtin_dataset(name: str) -> BuiltinDataset:
    """The registered data set `name`; a ConfigError naming the known ones otherwise."""
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")
    return DATASETS[name]


def dataset_item_kind(name: str) -> str:
    """The kind of thing the items of the data set called `name` are ("film" for ml-100k, "article" for citeulike
    or citeulike-a), by its registered name or the name its loaded data carries; "item" for any other."""
    for spec in DATASETS.values():
        if name in (spec.name, *spec.aliases):
            return spec.item_kind
    return "item"


def load_dataset(name: str, data_dir: Path | None, cache_dir: Path) -> Dataset:
    """Load the built-in data set `name` from `data_dir` (where it needs one) or its cache under `cache_dir`."""
    return builtin_dataset(name).load(data_dir, cache_dir)


__all__ = [
    "DATASETS",
    "RECBOLE_REQUIREMENT",
    "BuiltinDataset",
    "builtin_dataset",
    "dataset_item_kind",
    "fetch_movielens_100k",
    "load_citeulike",
    "load_dataset",
    "load_movielens_100k",
]
