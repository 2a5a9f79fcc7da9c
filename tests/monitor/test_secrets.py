"""No secret in output: the metrics store URL's password never appears in errors, in the dashboard's command
line (`ps`), in its output or on its page, nor in Prefect's logs and database; a SQLite path holding `#` or `?`
opens that very file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from sqlalchemy import make_url
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


# Passwords SQLAlchemy accepts that the first redact let through whole or in part (it stopped at '/', spaces and
# quotes), raw or percent-encoded.
HOSTILE_PASSWORDS = ["Pw/S3cretD", "two words", "it's", 'say "x"', "p%40ss%2Fw%20rd", "a:b;c&d?e=f#g"]


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_redact_hides_what_sqlalchemy_reads_as_the_password(password: str) -> None:
    url = f"postgresql+psycopg2://audit:{password}@db.example:5432/metrics?sslmode=require"
    assert make_url(url).password is not None  # SQLAlchemy itself reads this as a URL with a password
    assert redact(url) == make_url(url).render_as_string(hide_password=True)
    for shown in (f"cannot use metrics store URL {url!r}: no driver", f"(at {url})\nnext line"):
        assert password not in redact(shown)
        assert "audit:***@db.example:5432/metrics" in redact(shown)


def test_redact_hides_a_password_holding_a_raw_at_sign() -> None:
    # SQLAlchemy would read host 'ss@db' (the operator should write %40); the whole password is hidden anyway.
    assert redact("postgresql://audit:p@ss@db/metrics") == "postgresql://audit:***@db/metrics"
    assert redact("pg://a:b@h and pg://c:d/e f@h2/x") == "pg://a:***@h and pg://c:***@h2/x"


@pytest.mark.parametrize("unit", ["a", "a://u:", "ab://c:d e@", "a@", "x/", "postgresql://u:p@"], ids=lambda u: repr(u))
def test_redact_is_linear_in_the_length_of_its_text(unit: str) -> None:
    # The first redact took 12.6 s on 60,000 letters (quadratic: every letter restarted a scheme scan); a
    # linear one takes milliseconds on 1,000,000 characters, so a second is a bound no busy machine reaches.
    text = unit * (1_000_000 // len(unit))
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 1.0


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


def _prefect_records() -> str:
    """Every flow run (parameters, state and its message) and every log line Prefect's server holds, as text."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        texts = [run.model_dump_json() for run in client.read_flow_runs(limit=200)]
        offset = 0
        while page := client.read_logs(limit=200, offset=offset):
            texts += [log.model_dump_json() for log in page]
            offset += len(page)
    return "\n".join(texts)


def test_retrain_never_shows_the_password_to_prefect(
    ml100k_slice_workspace: Path, prefect_api: str, tmp_path: Path
) -> None:
    # The operator's case: psycopg2 is not installed, so the store fails inside the refresh flow and Prefect logs
    # the error, its state message and the traceback; the password held '/', a space, a quote and '%'.
    password = "Pw/S3cretD 'x%2F"
    url = f"postgresql+psycopg2://audit:{password}@127.0.0.1:9/metrics"
    workspace = tmp_path / "ws"
    shutil.copytree(ml100k_slice_workspace, workspace)
    env = os.environ | {"PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api, "WARMSTART_METRICS_URL": url}
    command = [sys.executable, "-m", "flows.cli", "retrain", "-w", str(workspace)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "cannot use metrics store URL 'postgresql+psycopg2://audit:***@127.0.0.1:9/metrics'" in done.stderr
    records = _prefect_records()
    assert "audit:***@127.0.0.1" in records  # the flow ran and Prefect logged its error
    for fragment in ("Pw/S3cretD", "S3cretD", "x%2F"):
        assert fragment not in done.stdout + done.stderr
        assert fragment not in records
