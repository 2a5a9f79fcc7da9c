"""`warmstart augment` pointed by WARMSTART_LLM_* settings at a real OpenAI-compatible server (llama-cpp-python's
`llama_cpp.server` on loopback) that is killed mid-run: one clear error line, the workspace's tables as they were,
and a rerun once the server is back that resumes from the generation cache without duplicates."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from catalog import Columns, Workspace
from flows.cli import app
from tests.flows.tiny_catalog import ingest_titles

runner = CliRunner()
TITLES = {
    "i1": "Collaborative filtering for implicit feedback datasets",
    "i2": "Latent Dirichlet allocation",
    "i3": "Matrix factorization techniques for recommender systems",
    "i4": "Probabilistic topic models",
    "i5": "Bird song learning in zebra finches",
}
DESCRIBE = ["augment", "--items", "--no-simulate"]  # (simulation would load the text encoder: not the point here)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Five cold or sparse items (all to be described) and three users, ingested and detected."""
    ws = ingest_titles(tmp_path, TITLES)
    assert runner.invoke(app, ["detect", "-w", str(ws)]).exit_code == 0
    return ws


@pytest.fixture
def server(start_llama_server: Callable[..., Any]) -> Iterator[Any]:
    """llama_cpp.server serving the F16 SmolLM2 file on loopback (tests/conftest.py), stopped after the test."""
    started = start_llama_server()
    yield started
    started.stop()


def test_a_server_killed_mid_run_leaves_the_tables_as_they_were_and_a_rerun_resumes(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Any
) -> None:
    settings = {
        "BACKEND": "http",
        "BASE_URL": server.url,
        "MODEL": "smollm2",
        "RETRIES": "2",
        "CONCURRENCY": "2",
        "MAX_NEW_TOKENS": "24",
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"WARMSTART_LLM_{name}", value)
    monkeypatch.setenv("WARMSTART_CACHE_DIR", str(tmp_path / "cache"))
    space = Workspace(workspace)

    limited = [*DESCRIBE, "--limit", "2", "--json", str(tmp_path / "first.json"), "-w", str(workspace)]
    first = runner.invoke(app, limited)
    assert first.exit_code == 0, first.output
    described = json.loads((tmp_path / "first.json").read_text())["steps"]["describe"]
    assert described["requested"] == 2 and described["generated"] + described["rejected"] == 2
    table, history = space.read("item_descriptions"), space.history()
    assert table.height == described["generated"] and (table["model"] == "smollm2").all()

    server.kill_after(1)  # the rest are asked for in one chunk, two at a time: the second may be in flight
    killed = runner.invoke(app, [*DESCRIBE, "--json", str(tmp_path / "killed.json"), "-w", str(workspace)])
    assert killed.exit_code == 1 and server.kills == 1
    assert "failed 3 times" in killed.output and "Is the server up?" in killed.output  # the retries, then one line
    assert "Traceback" not in killed.output
    assert space.read("item_descriptions").equals(table) and space.history() == history
    assert not (tmp_path / "killed.json").exists() and not list(workspace.rglob("*.tmp"))

    server.start()
    again = runner.invoke(app, [*DESCRIBE, "--json", str(tmp_path / "again.json"), "-w", str(workspace)])
    assert again.exit_code == 0, again.output
    resumed = json.loads((tmp_path / "again.json").read_text())["steps"]["describe"]
    assert resumed["requested"] == len(TITLES) and resumed["cached"] == described["generated"]
    assert resumed["cached"] + resumed["generated"] + resumed["rejected"] == len(TITLES)
    final = space.read("item_descriptions")
    assert final[Columns.item].is_unique().all() and final.height == resumed["cached"] + resumed["generated"]
    assert set(table[Columns.item]) <= set(final[Columns.item])
