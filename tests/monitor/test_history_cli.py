"""`warmstart history` over the fixture store."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_history_prints_runs_and_trends(fixture_store: Path) -> None:
    result = runner.invoke(app, ["history", "--workspace", str(fixture_store)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "3 runs" in result.output and "run-3" in result.output
    assert "recall@20 per segment" in result.output
    assert "0.0430" in result.output  # cold recall@20 of the last point
    assert "0.2300" in result.output  # head recall@20 of the last point
    assert "┃ product ┃ popularity ┃" in result.output  # the lines side by side: 0.13 and 0.10 at the last point
    assert "0.1300" in result.output and "0.1000" in result.output
    # The users evaluated by their training interactions, over time like the item segments.
    assert "recall@20 per user segment" in result.output and "ndcg@20 per user segment" in result.output
    assert "┃ as_of      ┃ cold_user ┃ sparse_user ┃ warm_user ┃" in result.output
    assert "0.0770" in result.output  # sparse_user recall@20 of the last point
    # What the language model bought: the audit's change per run and output, and per 1,000 tokens spent.
    assert "what the language model bought" in result.output
    assert "0.0500" in result.output  # run-2's judged pairs: +0.02 for 400 tokens
    assert "off: no earlier audit measured it" in result.output


def test_history_writes_json(fixture_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "history.json"
    result = runner.invoke(app, ["history", "--workspace", str(fixture_store), "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [run["run_id"] for run in payload["runs"]] == ["run-1", "run-2", "run-3"]
    # 16 product rows of items, 6 of user segments and 2 of popularity per run; the later two runs also 2 without
    # augmentation
    assert len(payload["metrics"]) == 3 * (16 + 6 + 2) + 2 * 2
    assert {"run_id", "as_of", "protocol", "segment", "metric", "k", "value"} <= set(payload["metrics"][0])
    audit = payload["augmentation_audit"]
    assert [(row["run_id"], row["output"]) for row in audit] == [
        ("run-2", "judged_pairs"),
        ("run-3", "descriptions"),
        ("run-3", "judged_pairs"),
    ]
    keys = {"run_id", "output", "metric", "delta", "low", "high", "used", "tokens", "seconds"}
    assert keys <= set(audit[0]) and audit[0]["low"] == 0.005 and audit[2]["used"] is True


def test_history_without_a_store_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["history", "--workspace", str(tmp_path)])
    assert result.exit_code == 1
    assert "no metrics store" in result.output and result.output.count("error:") == 1
