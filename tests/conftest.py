"""Shared fixtures: real data sets, fetched or read once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catalog import Dataset, fetch_movielens_100k, load_citeulike, load_movielens_100k

REPO = Path(__file__).resolve().parents[1]
CITEULIKE_DIR = Path(os.environ.get("WARMSTART_CITEULIKE", REPO.parent / "shared" / "datasets" / "citeulike-a"))


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where fetched data sets live between test runs (the repo's git-ignored .cache by default)."""
    return Path(os.environ.get("WARMSTART_TEST_CACHE", REPO / ".cache"))


@pytest.fixture(scope="session")
def ml100k_dir(cache_dir: Path) -> Path:
    return fetch_movielens_100k(cache_dir)


@pytest.fixture(scope="session")
def ml100k(ml100k_dir: Path) -> Dataset:
    return load_movielens_100k(ml100k_dir)


@pytest.fixture(scope="session")
def citeulike() -> Dataset:
    if not (CITEULIKE_DIR / "titles.txt").is_file():
        pytest.skip(f"CiteULike-a not found at {CITEULIKE_DIR} (set WARMSTART_CITEULIKE)")
    return load_citeulike(CITEULIKE_DIR)
