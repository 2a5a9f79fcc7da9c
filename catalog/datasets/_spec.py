"""What every built-in data set module declares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from catalog._loaders import Dataset


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in data set: its name, how to load it, and the evaluation protocols that apply to it (the first is
    its default), the kind of thing its items are (what a description calls them: "film", "article"), and the
    other names its loaded `Dataset` goes by (the name a workspace's state records)."""

    name: str
    description: str
    load: Callable[[Path | None, Path], Dataset]  # (data_dir or None, cache_dir) -> the data set
    protocols: tuple[str, ...]
    item_kind: str = "item"
    aliases: tuple[str, ...] = ()
