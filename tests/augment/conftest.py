"""Fixtures of the augmentation tests: the real local model (loaded once) and a real OpenAI-compatible server
on loopback that wraps it."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from augment import LlamaCppBackend, LocalBackend

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def llm_cache() -> Path:
    """Where the converted SmolLM2 checkpoint, its F16 GGUF and its tokenizer live between runs (made on first
    use, about 40 s in all)."""
    return Path(os.environ.get("WARMSTART_TEST_LLM_CACHE", REPO / ".cache"))


@pytest.fixture(scope="session")
def local_llm(llm_cache: Path) -> LocalBackend:
    return LocalBackend.smollm2(llm_cache, batch_size=8, threads=1)


@pytest.fixture(scope="session")
def llamacpp_llm(llm_cache: Path) -> LlamaCppBackend:
    """The same model run by llama.cpp with F16 weights (re-encoded into the cache on first use, about 3 s)."""
    return LlamaCppBackend.smollm2(llm_cache, batch_size=8, threads=1)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for answers still being computed (none outlives the session)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left (the timeout tests) is expected: without this, the late answer's broken
        # pipe is printed from a server thread into whatever test runs next in this process, e.g. a CLI's output.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ChatServer:
    """A small OpenAI chat-completions server over a LocalBackend: `fail_next` answers that many requests with
    503 first, `delay` sleeps before answering; `headers` records the Authorization headers it saw."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.fail_next = 0
        self.delay = 0.0
        self.headers: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.headers.append(self.headers.get("Authorization"))
                with server.lock:
                    if server.fail_next > 0:
                        server.fail_next -= 1
                        self._send(503, {"error": {"message": "overloaded"}})
                        return
                    if server.delay:
                        threading.Event().wait(server.delay)
                    self._send(200, server.answer(body))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        if body.get("logprobs"):
            top = self.backend.next_token_logprobs([messages], int(body.get("top_logprobs", 5)))[0]
            token, logprob = top[0]
            alternatives = [{"token": t, "logprob": p} for t, p in top]
            content = [{"token": token, "logprob": logprob, "top_logprobs": alternatives}]
            choice = {"index": 0, "message": {"role": "assistant", "content": token}, "logprobs": {"content": content}}
            usage = {"completion_tokens": 1}
            return {"object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage}
        generation = self.backend.generate(
            [messages],
            max_new_tokens=int(body.get("max_tokens", 64)),
            seed=int(body.get("seed", 0)),
            temperature=float(body.get("temperature", 0.0)),
        )[0]
        choice = {"index": 0, "message": {"role": "assistant", "content": generation.text}, "finish_reason": "stop"}
        return {
            "object": "chat.completion",
            "model": body["model"],
            "choices": [choice],
            "usage": {"completion_tokens": generation.tokens},
        }


@pytest.fixture(scope="session")
def chat_server(local_llm: LocalBackend) -> Iterator[ChatServer]:
    server = ChatServer(local_llm)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def server(chat_server: ChatServer) -> Iterator[ChatServer]:
    """The shared server, reset to healthy before and after each test."""
    chat_server.fail_next, chat_server.delay = 0, 0.0
    chat_server.headers.clear()
    yield chat_server
    chat_server.fail_next, chat_server.delay = 0, 0.0
