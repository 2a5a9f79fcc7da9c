"""What every learned ranker offers the entry layer: fit on tasks, score for `ranker.evaluate`, save with metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Self

import scipy.sparse as sp

from ranker.evaluate import Scorer
from ranker.features import RankerInputs, RankingTask


class Ranker(Protocol):
    """LightGBMRanker and DeepFMRanker: `fit`, `is_fitted`, `scorer`, `save` (and a `load` classmethod)."""

    metadata: dict[str, Any]

    @property
    def is_fitted(self) -> bool: ...

    def fit(self, inputs: RankerInputs, train: RankingTask, valid: RankingTask) -> Self:
        """Learn from `train`'s positives, stop early on `valid`'s."""
        ...

    def scorer(self, inputs: RankerInputs, exclude: sp.csr_array | None = None) -> Scorer:
        """A Scorer over `inputs`; training interactions and `exclude` pairs score -inf."""
        ...

    def save(self, directory: Path) -> Path:
        """Write the model and metadata.json into `directory` (atomically each); returns the directory."""
        ...
