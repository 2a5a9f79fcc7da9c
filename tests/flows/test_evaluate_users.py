"""`warmstart evaluate --protocol cold-user / sparse-user` end to end on a small real MovieLens slice given as files:
the product beside popularity, attribute-group popularity, popularity at arrival (the files have times) and BPR-MF
for sparse users, on the same split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
BOTH = {"popularity", "attribute_popularity", "arrival_popularity"}


@pytest.mark.parametrize(
    ("protocol", "options", "lines"),
    [
        # Every test user is a newcomer (no events): the route is chosen, not the ranker's share.
        ("cold-user", [], BOTH),
        # A share given: nothing chosen, one ranker trained.
        (
            "sparse-user",
            ["--history-n", "3", "--cold-user-share", "0.5"],
            {*BOTH, "bprmf"},
        ),
        # Test users with more events than a newcomer has: the ranker serves them, its share chosen.
        ("sparse-user", ["--history-n", "8"], {*BOTH, "bprmf"}),
    ],
)
def test_user_protocols_print_the_product_beside_its_lines(
    protocol: str, options: list[str], lines: set[str], user_files: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    out = tmp_path / "report.json"
    args = ["evaluate", "--protocol", protocol, "--k", "10", "--max-epochs", "2", "--json", str(out)]
    files = [f"--{name}={path}" for name, path in user_files.items()]
    env = {"WARMSTART_CACHE_DIR": str(cache_dir), "WARMSTART_RANKER": "lightgbm"}
    result = runner.invoke(app, [*args, *options, "-w", str(tmp_path / "ws"), *files], env=env, terminal_width=240)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    segment = "cold_user" if protocol == "cold-user" else "sparse_user" if "8" not in options else "warm_user"
    product = {(m["segment"], m["metric"]) for m in report["metrics"]}
    assert {("overall", "ndcg"), (segment, "ndcg"), (segment, "recall")} <= product
    assert report["n_users"] == 12  # a fifth of the 60 users
    protocol_name = {"cold-user": "cold_users", "sparse-user": "sparse_users"}[protocol]
    recorded = {row["protocol"] for row in report["lines"]}
    assert recorded == {f"{protocol_name}:{line}" for line in lines}
    for line in lines:  # each line is printed, with its own user segment's figures
        assert f"beside it, {protocol_name}:{line}: overall recall@10" in result.output
        assert f"{segment} ndcg@10" in result.output
    choice = report["cold_user_share"]
    if "--cold-user-share" in options:
        assert choice is None and report["models"]["lightgbm"]["config"]["cold_user_share"] == 0.5
        return
    if protocol == "cold-user":
        # Which newcomers the newcomer model serves, chosen on the training users' own cold-user validation (10
        # users without history: too few to decide, so it serves them), and said so.
        route = report["models"]["newcomers"]["route"]
        assert choice is None and route["cold"]["users"] == 10 and route["served"] == [0, 5]
        assert report["models"]["lightgbm"]["newcomers"]["max_events"] == 5
        assert "the newcomer model serves users with 0-5 events" in result.output
        return
    # The share of users shown without history was chosen on training users, every share tried recorded.
    assert set(choice["ndcg@20"]) == {"0", "0.2", "0.5"} and choice["chosen"] in (0.0, 0.2, 0.5)
    assert choice["validation"]["users"] == 10  # a fifth of the 48 training users
    assert report["models"]["lightgbm"]["config"]["cold_user_share"] == choice["chosen"]
