"""Every error warmstart raises on purpose. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

import re


class WarmstartError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class DataError(WarmstartError):
    """Input data breaks a contract (schema, ids, encoding, timestamps...)."""


class UnknownIdError(DataError):
    """An id (user or item) that the data or the served model does not know; an HTTP API answers it with 404."""


class ConfigError(WarmstartError):
    """A setting or option is missing, unknown or inconsistent."""


class NotFittedError(WarmstartError):
    """A model was used before `fit` was called."""


class WorkspaceError(WarmstartError):
    """The workspace lacks a table that a step needs, or holds one that is inconsistent."""


class BackendError(WarmstartError):
    """A language-model backend failed (server unreachable, bad answer) after its retries."""


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):[^@\s'\"/]*@")
_SECRET_PARAMETER = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|key)=)[^&;\s'\"]*", re.IGNORECASE
)


def redact(text: str) -> str:
    """`text` with the passwords of URLs (scheme://user:PASSWORD@host) and secret query parameters
    (?password=, token=, api_key=...) replaced by ***: for every message, log line and page that may show a URL."""
    return _SECRET_PARAMETER.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>:***@", text))
