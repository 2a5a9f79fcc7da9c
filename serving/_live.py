"""A served recommender that follows its workspace, so that a running `warmstart api` sees what the CLI does
meanwhile: items and users added by `warmstart add-items` / `add-users` are folded into the served recommender
(as `Recommender.load` folds them in at start), and a newly promoted version, a new ingest (generation) or a rollback
makes it load again.

Noticing is cheap: a few `stat` calls (the generation pointer, models/current.json and the items, users and
interactions tables of the current generation; tables are replaced by rename, so each write changes the file's
inode and mtime) and one read of the small generation pointer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from catalog import SPARSE_MAX, Tables, WarmstartError, Workspace
from ranker.ann import ANN_MIN_ITEMS
from serving._recommender import Recommender

_log = logging.getLogger(__name__)

Stamp = tuple[int, int, int] | None  # (mtime_ns, inode, size) of a file, None when it does not exist


def _stamp(path: Path) -> Stamp:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_ino, stat.st_size)


@dataclass(frozen=True)
class Marks:
    """What a served recommender was built from, as far as the file system tells."""

    model: Stamp  # models/current.json: which version is promoted
    generation: str | None  # the workspace's current generation
    interactions: Stamp
    items: Stamp
    users: Stamp

    @classmethod
    def of(cls, root: Path) -> Marks:
        space = Workspace(root)  # a new object: one pins the generation current when it is first used
        tables = space.tables
        return cls(
            model=_stamp(root / "models" / "current.json"),
            generation=space.generation,
            interactions=_stamp(tables / f"{Tables.interactions}.parquet"),
            items=_stamp(tables / f"{Tables.items}.parquet"),
            users=_stamp(tables / f"{Tables.users}.parquet"),
        )

    def needs_load(self, since: Marks, *, pinned: bool) -> bool:
        """Whether going from `since` to these marks takes a full load (not only appended items or users)."""
        model_moved = self.model != since.model and not pinned
        return model_moved or self.generation != since.generation or self.interactions != since.interactions


class WorkspaceFollower:
    """Loads a workspace's recommender, then brings a served one up to date with the workspace on `update`."""

    def __init__(
        self,
        root: Path,
        version: str | None = None,
        *,
        ranker: str | None = None,
        cache_dir: Path | None = None,
        sparse_max: int = SPARSE_MAX,
        ann_min_items: int | None = ANN_MIN_ITEMS,
    ) -> None:
        self.root = Path(root)
        self.version = version  # a pinned version stays served whatever is promoted
        self.ranker = ranker
        self.cache_dir = cache_dir
        self.sparse_max = sparse_max
        self.ann_min_items = ann_min_items
        self._marks: Marks | None = None

    def load(self) -> Recommender:
        """The recommender as the workspace stands now (marks read first: a write meanwhile is seen next time)."""
        marks = Marks.of(self.root)
        recommender = Recommender.load(
            Workspace(self.root),
            self.version,
            ranker=self.ranker,
            cache_dir=self.cache_dir,
            sparse_max=self.sparse_max,
            ann_min_items=self.ann_min_items,
        )
        self._marks = marks
        return recommender

    def update(self, current: Recommender) -> Recommender | None:
        """`current` brought up to date, or None when the workspace did not change. A failure is logged and
        `current` stays served (until the workspace changes again)."""
        marks = Marks.of(self.root)
        since = self._marks
        if since is None or marks == since:
            return None
        try:
            if marks.needs_load(since, pinned=self.version is not None):
                return self.load()
            self._marks = marks
            updated = current.with_additions(Workspace(self.root))
            return updated if updated is not current else None
        except WarmstartError as error:
            self._marks = marks
            _log.warning("kept serving %s %s: %s", current.ranker_name, current.version, error)
            return None


__all__ = ["Marks", "WorkspaceFollower"]
