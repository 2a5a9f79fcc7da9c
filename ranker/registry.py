"""The rankers warmstart can train, by name, with their capabilities (see RankerBase's class attributes)."""

from __future__ import annotations

from pathlib import Path

from catalog import ConfigError
from ranker.base import RankerBase, read_metadata
from ranker.deepfm import DeepFMRanker
from ranker.lightgbm_ranker import LightGBMRanker

RANKERS: dict[str, type[RankerBase]] = {cls.kind: cls for cls in (LightGBMRanker, DeepFMRanker)}


def ranker_class(name: str) -> type[RankerBase]:
    """The ranker class registered as `name`."""
    if name not in RANKERS:
        raise ConfigError(f"unknown ranker {name!r}; choose one of {', '.join(RANKERS)}.")
    return RANKERS[name]


def load_ranker(directory: Path) -> RankerBase:
    """A saved version, whatever its kind (read from its metadata.json)."""
    kind = str(read_metadata(directory).get("kind"))
    return ranker_class(kind).load(directory)
