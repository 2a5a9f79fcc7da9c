"""The HTTP backend against a real loopback server that answers badly: not JSON, no choices, no logprobs,
top tokens without yes or no; and what it refuses before sending anything (plain http off loopback)."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import polars as pl
import pytest

from augment import GenerationCache, HttpBackend, item_description_messages, judge_messages, judge_pairs
from catalog import BackendError, ConfigError

PASSWORD = "hunter2-Sup3rSecret"


class ScriptedServer:
    """Answers every POST with `body` (bytes) and status 200."""

    def __init__(self) -> None:
        self.body = b"{}"
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(scripted.body)))
                self.end_headers()
                self.wfile.write(scripted.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self.httpd.server_address[:2]
        # Credentials in the URL, as some proxies take them: they must never appear in a message.
        self.url = f"http://user:{PASSWORD}@{host}:{port}/v1"

    def answer(self, value: object) -> None:
        self.body = value if isinstance(value, bytes) else json.dumps(value).encode()


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()


def _top(*tokens: tuple[str, float]) -> dict[str, Any]:
    entries = [{"token": token, "logprob": logprob} for token, logprob in tokens]
    return {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"top_logprobs": entries}]}}]}


JUDGE = [judge_messages(["Topic models"], "Deep learning")]
DESCRIBE = [item_description_messages("Deep learning")]


@pytest.mark.parametrize(
    ("reply", "call", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "generate", "not a JSON object: '<html>502"),
        (b"[1, 2]", "generate", "not a JSON object"),
        ({"choices": []}, "generate", "without choices[0].message"),
        ({"id": "x"}, "generate", "without choices[0].message"),
        ({"choices": [{"message": {"content": "yes"}}]}, "judge", "no usable logprobs"),
        ({"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "yes"}]}]}}]}, "judge", "no usable"),
        (b"not json at all", "judge", "not a JSON object"),
    ],
)
def test_a_malformed_reply_is_a_clear_error_without_the_password(
    scripted: ScriptedServer, reply: object, call: str, message: str
) -> None:
    scripted.answer(reply)
    backend = HttpBackend(scripted.url, "m", retries=0)
    with pytest.raises(BackendError, match=re.escape(message)) as raised:
        if call == "generate":
            backend.generate(DESCRIBE, max_new_tokens=4)
        else:
            backend.yes_probability(JUDGE)
    assert PASSWORD not in str(raised.value)
    assert "user:***@127.0.0.1" in str(raised.value)


def test_yes_and_no_from_the_top_tokens(scripted: ScriptedServer) -> None:
    scripted.answer(_top((" Yes", math.log(0.6)), ("no", math.log(0.2)), ("maybe", math.log(0.2))))
    np.testing.assert_allclose(HttpBackend(scripted.url, "m").yes_probability(JUDGE), [0.75])


def test_top_tokens_without_yes_or_no_are_an_unknown_judgement_not_a_half(
    scripted: ScriptedServer, tmp_path: Any
) -> None:
    scripted.answer(_top(("maybe", math.log(0.5)), ("perhaps", math.log(0.3))))
    backend = HttpBackend(scripted.url, "m")
    assert np.isnan(backend.yes_probability(JUDGE)).all()

    pairs = pl.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i1"]})
    items = pl.DataFrame({"item_id": ["i1"], "title": ["Deep learning"]})
    histories = pl.DataFrame({"user_id": ["u1", "u2"], "titles": [["Topic models"], ["Gene expression"]]})
    cache = GenerationCache(tmp_path)
    scored, stats = judge_pairs(pairs, items, histories, backend, cache, show_progress=False)
    assert scored["score"].is_nan().all()
    assert stats.reasons == {"unknown judgement": 2}
    assert not list(tmp_path.rglob("*.json")), "an unknown answer is not cached: a later run asks again"


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:8000/v1", "http://llm.example.com/v1", f"http://u:{PASSWORD}@192.168.0.5/v1"]
)
def test_plain_http_off_loopback_is_refused_unless_allowed(url: str) -> None:
    with pytest.raises(ConfigError, match="--allow-insecure") as raised:
        HttpBackend(url, "m")
    assert PASSWORD not in str(raised.value)
    HttpBackend(url, "m", allow_insecure=True).close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"])
def test_plain_http_on_loopback_and_https_anywhere_are_accepted(url: str) -> None:
    HttpBackend(url, "m").close()
    HttpBackend("https://llm.example.com/v1", "m").close()
