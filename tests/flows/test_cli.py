"""The `warmstart` CLI end to end on real files: exit codes, messages, workspace contents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Workspace
from flows.cli import app

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "items.csv").write_text("sku,title\ni1,Alpha\ni2,Beta\ni3,Gamma\n", encoding="utf-8")
    (tmp_path / "inter.csv").write_text(
        "customer,sku,ts\nu1,i1,2024-01-01\nu2,i1,2024-01-02\nu2,i2,2024-01-03\nu2,i2,2024-01-03\n", encoding="utf-8"
    )
    return {"items": tmp_path / "items.csv", "inter": tmp_path / "inter.csv", "ws": tmp_path / "ws"}


def test_help_everywhere() -> None:
    for command in ([], ["ingest"], ["detect"], ["demo"], ["api"], ["add-users"], ["add-items"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--workspace" in result.output or not command


def test_ingest_files_with_mapping_then_detect(files: dict[str, Path]) -> None:
    ingest = runner.invoke(
        app,
        [
            "ingest",
            "--interactions", str(files["inter"]),
            "--items", str(files["items"]),
            "--map", "user_id=customer",
            "--map", "item_id=sku",
            "--workspace", str(files["ws"]),
        ],
    )  # fmt: skip
    assert ingest.exit_code == 0, ingest.output
    space = Workspace(files["ws"])
    assert space.read("interactions").height == 3  # one exact duplicate collapsed
    provenance = space.provenance("interactions")["parameters"]
    assert (provenance["rows_read"], provenance["duplicates_collapsed"]) == (4, 1)
    assert "│ interactions │         4 │                    1 │         3 │" in ingest.output

    detect = runner.invoke(app, ["detect", "--sparse-max", "1", "--workspace", str(files["ws"])])
    assert detect.exit_code == 0, detect.output
    segments = space.read("segments")
    by_id = dict(segments.filter(pl.col("kind") == "item").select("entity_id", "segment").iter_rows())
    assert by_id == {"i1": "head", "i2": "sparse", "i3": "cold"}
    assert space.state()["watermark"].startswith("2024-01-03")

    # The next run counts as new only what appeared after the previous run's watermark.
    again = runner.invoke(app, ["detect", "--workspace", str(files["ws"])])
    assert again.exit_code == 0
    assert "first seen after 2024-01-03" in again.output


def test_workspace_from_environment(files: dict[str, Path]) -> None:
    result = runner.invoke(
        app,
        ["ingest", "--interactions", str(files["inter"]), "--items", str(files["items"]), "--map", "user_id=customer",
         "--map", "item_id=sku"],
        env={"WARMSTART_WORKSPACE": str(files["ws"])},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Workspace(files["ws"]).exists("interactions")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ingest"], "give either --dataset NAME or --interactions FILE"),
        (["ingest", "--dataset", "netflix"], "unknown data set 'netflix'"),
        (["ingest", "--dataset", "citeulike"], "needs --data DIR"),
        (["ingest", "--interactions", "{inter}", "--items", "{items}"], "missing column(s) ['user_id', 'item_id']"),
        (["ingest", "--interactions", "{inter}", "--items", "{items}", "--map", "user_id"], "must look like"),
        (["detect"], "has no table 'interactions'"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(files: dict[str, Path], arguments: list[str], message: str) -> None:
    argv = [arg.format(inter=files["inter"], items=files["items"]) for arg in arguments]
    result = runner.invoke(app, [*argv, "--workspace", str(files["ws"])])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1


def test_detect_refuses_tables_of_an_interrupted_ingest(files: dict[str, Path]) -> None:
    args = ["--interactions", str(files["inter"]), "--items", str(files["items"]), "--map", "user_id=customer"]
    assert runner.invoke(app, ["ingest", *args, "--map", "item_id=sku", "-w", str(files["ws"])]).exit_code == 0
    space = Workspace(files["ws"])
    # As if a second ingest had died after writing only its first table.
    space.write("interactions", space.read("interactions").head(1), run_id="later-run", source="custom")
    result = runner.invoke(app, ["detect", "-w", str(files["ws"])])
    assert result.exit_code == 1
    assert "an ingest was interrupted" in result.output
    # Rerunning the ingest repairs the workspace.
    assert runner.invoke(app, ["ingest", *args, "--map", "item_id=sku", "-w", str(files["ws"])]).exit_code == 0
    assert runner.invoke(app, ["detect", "-w", str(files["ws"])]).exit_code == 0


def test_detect_since_a_naive_iso_time_as_the_readme_shows(files: dict[str, Path]) -> None:
    args = ["--interactions", str(files["inter"]), "--items", str(files["items"]), "--map", "user_id=customer"]
    assert runner.invoke(app, ["ingest", *args, "--map", "item_id=sku", "-w", str(files["ws"])]).exit_code == 0
    result = runner.invoke(app, ["detect", "--since", "2024-01-01T12:00:00", "-w", str(files["ws"])])
    assert result.exit_code == 0, result.output
    assert "first seen after 2024-01-01T12:00:00+00:00" in result.output
    segments = Workspace(files["ws"]).read("segments").filter(pl.col("kind") == "item")
    assert dict(segments.select("entity_id", "is_new").iter_rows()) == {"i1": False, "i2": True, "i3": False}


def test_rollback_restores_the_previous_ingest_with_its_segments(files: dict[str, Path], tmp_path: Path) -> None:
    args = ["--interactions", str(files["inter"]), "--items", str(files["items"]), "--map", "user_id=customer"]
    assert runner.invoke(app, ["ingest", *args, "--map", "item_id=sku", "-w", str(files["ws"])]).exit_code == 0
    assert runner.invoke(app, ["detect", "-w", str(files["ws"])]).exit_code == 0
    (tmp_path / "few.csv").write_text("customer,sku\nu9,i1\n", encoding="utf-8")
    again = ["--interactions", str(tmp_path / "few.csv"), "--items", str(files["items"]), "--map", "user_id=customer"]
    assert runner.invoke(app, ["ingest", *again, "--map", "item_id=sku", "-w", str(files["ws"])]).exit_code == 0
    assert not Workspace(files["ws"]).exists("segments")
    result = runner.invoke(app, ["rollback", "-w", str(files["ws"])])
    assert result.exit_code == 0, result.output
    restored = Workspace(files["ws"])
    assert restored.read("interactions").height == 3
    assert restored.exists("segments") and "watermark" in restored.state()


def test_a_temporary_prefect_api_that_does_not_start_is_one_line_with_the_fix(files: dict[str, Path]) -> None:
    args = ["--interactions", str(files["inter"]), "--items", str(files["items"]), "--map", "user_id=customer"]
    assert runner.invoke(app, ["ingest", *args, "--map", "item_id=sku", "-w", str(files["ws"])]).exit_code == 0
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    # 0 s: the server can never answer in time, as on a machine too busy to start it within the limit.
    env |= {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0", "PREFECT_HOME": str(files["ws"].parent / "ph")}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "retrain", "-w", str(files["ws"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "error: Prefect's temporary API did not start within 0 s" in done.stderr
    assert "PREFECT_API_URL" in done.stderr


def test_tables_keep_their_full_width_when_piped() -> None:
    columns = {f"overall/{name}@20": [0.123456] for name in ("recall", "ndcg", "precision", "coverage", "gini")}
    code = (
        "import polars as pl; from flows.cli._common import print_frame; "
        f"print_frame(pl.DataFrame({columns!r} | {{'version': ['20261206T073425Z-0ea0e9']}}), 'versions')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "…" not in done.stdout  # a pipe is no 80-column terminal: nothing is cut
    assert "overall/coverage@20" in done.stdout and "20261206T073425Z-0ea0e9" in done.stdout


def test_models_lists_each_versions_data_window_as_json(tmp_path: Path) -> None:
    registry = Workspace(tmp_path / "ws").models
    metrics = [{"segment": "overall", "metric": "ndcg", "k": 20, "value": 0.25, "protocol": "temporal"}]
    for version, parent, end in (("v1", None, "1998-03-01"), ("v2", "v1", "1998-04-01")):
        directory = registry.path("lightgbm", version)
        directory.mkdir(parents=True)
        (directory / "metadata.json").write_text("{}", encoding="utf-8")
        report = {"parent": parent, "dataset": "ml-100k", "data_window": {"start": "1997-09-20", "end": end}}
        (directory / "report.json").write_text(json.dumps(report | {"metrics": metrics}), encoding="utf-8")
    registry.promote("lightgbm", "v2", reason="test")
    out = tmp_path / "models.json"
    result = runner.invoke(app, ["models", "--json", str(out), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    listed = json.loads(out.read_text())
    assert [(v["version"], v["current"], v["parent"], v["data_end"]) for v in listed] == [
        ("v1", False, None, "1998-03-01"),
        ("v2", True, "v1", "1998-04-01"),
    ]
    assert listed[1]["data_start"] == "1997-09-20" and listed[1]["metrics"] == metrics
    assert "1998-04-01" in result.output  # the table shows what each version trained up to
