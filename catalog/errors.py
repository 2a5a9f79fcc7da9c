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


# The password of a URL's userinfo: scheme://USER:PASSWORD@HOST. SQLAlchemy accepts '/', spaces and quotes in a
# password (its own parser reads it as "anything up to '@'"), so the password runs, lazily, to the first '@' that
# ends the userinfo: one followed by a host (no further '@' before the host ends). It never crosses a line or the
# next URL's '://'. A raw '@' inside the password (it should be %40) is thus hidden too.
# Linear time: a match starts only where a scheme starts (the lookbehind refuses the middle of a word, where the
# old pattern rescanned the rest of the word at every letter), and the lazy password scan stops at the next '://'
# or line end, so each character is scanned by at most two candidate matches.
_URL_PASSWORD = re.compile(
    r"(?<![A-Za-z0-9+.\-])(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):"
    r"(?:(?!://)[^\n])*?@(?![^\s/:?#'\"@]*@)"
)
_SECRET_PARAMETER = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|key)=)[^&;#\s'\"]*", re.IGNORECASE
)


def redact(text: str) -> str:
    """`text` with the passwords of URLs (scheme://user:PASSWORD@host) and secret query parameters
    (?password=, token=, api_key=...) replaced by ***: for every message, log line and page that may show a URL.
    Where a message holds a URL and, later on the same line, another '@' (an e-mail address), more than the
    password may be hidden: a leak is worse than an over-cautious message. In time linear in len(text) (an error
    message may quote a caller's 100,000-character input)."""
    return _SECRET_PARAMETER.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>:***@", text))
