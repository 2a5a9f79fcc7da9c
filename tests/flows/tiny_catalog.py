"""A tiny catalogue ingested by the CLI, shared by the augmentation tests."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app


def ingest_titles(tmp_path: Path, titles: dict[str, str]) -> Path:
    """A workspace under `tmp_path`/ws holding `titles` as items and five interactions of three users with i1-i3
    (i4 and i5 cold), ingested by the CLI; returns its root."""
    (tmp_path / "items.csv").write_text(
        "item_id,title\n" + "".join(f'{item},"{title}"\n' for item, title in titles.items()), encoding="utf-8"
    )
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,ts\nu1,i1,2024-01-01\nu1,i2,2024-01-02\nu2,i3,2024-01-03\nu2,i1,2024-01-04\nu3,i2,2024-01-05\n",
        encoding="utf-8",
    )
    ws = tmp_path / "ws"
    ingest = ["ingest", "--interactions", str(tmp_path / "inter.csv"), "--items", str(tmp_path / "items.csv")]
    assert CliRunner().invoke(app, [*ingest, "-w", str(ws)]).exit_code == 0
    return ws
