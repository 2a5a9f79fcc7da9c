"""The dashboard in a real headless Chromium: `warmstart dashboard` serves the fixture store on loopback, the page
renders its charts and the runs table with the fixture's values, and a screenshot is saved."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NoReturn

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def dashboard_url(
    fixture_store: Path, tmp_path: Path, dashboard_process: Callable[..., AbstractContextManager[tuple[int, str]]]
) -> Iterator[str]:
    command = [str(Path(sys.executable).with_name("warmstart")), "dashboard", "--workspace", str(fixture_store)]
    with dashboard_process(command, tmp_path / "dashboard.log") as (_, url):
        yield url


@pytest.fixture
def browser(tmp_path: Path, missing_component: Callable[[str], NoReturn]) -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing_component("Debian chromium and chromium-driver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,2600",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_renders_charts_and_runs_in_chromium(dashboard_url: str, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(dashboard_url)  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 90)
    # Vega-Lite draws each chart into a canvas (or svg): 2 accuracy + 4 beyond-accuracy + 2 segment + 2 augmentation.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")) >= 10)
    wait.until(lambda d: "run-3" in d.find_element(By.TAG_NAME, "body").text)
    charts = driver.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")  # type: ignore[attr-defined]
    assert all(chart.size["width"] > 100 and chart.size["height"] > 50 for chart in charts)
    text = driver.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
    for expected in ("Accuracy per segment", "run-1", "run-2", "refused", "regressed: cold", "Items augmented"):
        assert expected in text
    # The table's cells hold the fixture's figures: the gate's figures of run-3 (cold recall@20 0.043).
    assert "0.043" in text
    time.sleep(1)  # let the last chart finish its transition before the picture
    target = Path(os.environ.get("WARMSTART_SCREENSHOT_DIR", tmp_path)) / "dashboard.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(target))  # type: ignore[attr-defined]
    assert target.stat().st_size > 20_000
    shutil.copy(target, tmp_path / "dashboard-copy.png")
