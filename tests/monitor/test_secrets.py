"""No secret in output: the metrics store URL's password never appears in errors, in the dashboard's command
line (`ps`), in its output or on its page; a SQLite path holding `#` or `?` opens that very file."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from catalog import ConfigError, WorkspaceError, redact
from flows.cli import app
from monitor import DASHBOARD_STORE_ENV, MetricsStore, dashboard_script

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-Sup3rSecret"
CLOSED = f"postgresql+psycopg://warmstart:{PASSWORD}@127.0.0.1:9/metrics"


def test_redact_hides_url_passwords_and_secret_parameters() -> None:
    assert redact(f"at {CLOSED} now") == "at postgresql+psycopg://warmstart:***@127.0.0.1:9/metrics now"
    assert redact(f"'https://h/v1?api_key={PASSWORD}&x=1'") == "'https://h/v1?api_key=***&x=1'"
    for plain in ("http://localhost:8000/v1", "postgresql://u@h/db", "sqlite:///file:/a?mode=ro&uri=true"):
        assert redact(plain) == plain


def test_store_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as bad_driver:
        MetricsStore(f"postgresql+nosuchdriver://warmstart:{PASSWORD}@127.0.0.1/metrics")
    with pytest.raises(WorkspaceError, match="cannot open the metrics store") as unreachable:
        MetricsStore(CLOSED)
    for raised in (bad_driver, unreachable):
        assert PASSWORD not in str(raised.value) and "***" in str(raised.value)


def test_cli_error_line_never_shows_the_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["history", "-w", str(tmp_path)], env={"WARMSTART_METRICS_URL": CLOSED})
    assert result.exit_code == 1
    assert "cannot open the metrics store" in result.stderr
    assert PASSWORD not in result.output + result.stderr


def test_dashboard_page_error_never_shows_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DASHBOARD_STORE_ENV, CLOSED)
    page = AppTest.from_file(str(dashboard_script()), default_timeout=60).run()
    shown = " ".join(str(element.value) for element in page.error)
    assert "cannot open the metrics store" in shown
    assert PASSWORD not in shown


def test_a_sqlite_path_with_hash_and_question_mark_opens_that_file(tmp_path: Path) -> None:
    root = tmp_path / "runs #1?draft"
    MetricsStore.for_workspace(root).close()
    assert [p.name for p in tmp_path.rglob("*.sqlite")] == ["metrics.sqlite"]
    assert (root / "metrics.sqlite").is_file()
    MetricsStore.for_workspace(root, read_only=True).close()


def test_dashboard_gets_the_store_url_through_the_environment_not_ps(
    postgres_url: str, tmp_path: Path, dashboard_process: Callable[..., AbstractContextManager[tuple[int, str]]]
) -> None:
    url = postgres_url.replace("warmstart@", f"warmstart:{PASSWORD}@")  # trust auth: any password is accepted
    MetricsStore(url).close()  # create the schema
    env = os.environ | {"PYTHONPATH": str(REPO), "WARMSTART_METRICS_URL": url}
    command = [sys.executable, "-c", "from flows.cli import main; main()", "dashboard", "-w", str(tmp_path)]
    log = tmp_path / "dashboard.log"
    with dashboard_process(command, log, env) as (pid, _):
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert "streamlit" in command_line and PASSWORD not in command_line
        assert f"{DASHBOARD_STORE_ENV}={url}" in Path(f"/proc/{pid}/environ").read_bytes().decode()
    output = log.read_text()
    assert "warmstart:***@" in output and PASSWORD not in output
