"""A missing PostgreSQL, Chromium or data set skips a test with the reason locally, and fails it under CI=true,
so that CI cannot pass without running those tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import pytest


def test_skips_with_the_reason_locally(
    missing_component: Callable[[str], NoReturn], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL is not installed"):
        missing_component("PostgreSQL is not installed")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_fails_with_the_reason_under_ci(
    missing_component: Callable[[str], NoReturn], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"Chromium is not installed \(CI=true: .* fails the run"):
        missing_component("Chromium is not installed")
