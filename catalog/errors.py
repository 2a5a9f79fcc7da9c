"""Every error warmstart raises on purpose. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class WarmstartError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class DataError(WarmstartError):
    """Input data breaks a contract (schema, ids, encoding, timestamps...)."""


class ConfigError(WarmstartError):
    """A setting or option is missing, unknown or inconsistent."""


class NotFittedError(WarmstartError):
    """A model was used before `fit` was called."""


class WorkspaceError(WarmstartError):
    """The workspace lacks a table that a step needs, or holds one that is inconsistent."""


class BackendError(WarmstartError):
    """A language-model backend failed (server unreachable, bad answer) after its retries."""
