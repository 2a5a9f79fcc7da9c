"""The OpenAI-compatible HTTP backend against a real chat-completions server on loopback (wrapping the local
model): same texts and judge probabilities as in-process, retries with backoff, timeouts, API key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from augment import HttpBackend, LocalBackend, item_description_messages, judge_messages
from catalog import BackendError, ConfigError

HISTORY = ["Matrix factorization techniques for recommender systems", "Latent Dirichlet allocation"]


def test_generate_over_http_matches_the_local_model(server: Any, local_llm: LocalBackend) -> None:
    backend = HttpBackend(server.url, "smollm2", api_key="secret-key", concurrency=2, backoff=0.01)
    prompts = [item_description_messages("Deep learning"), item_description_messages("Topic models")]
    remote = backend.generate(prompts, max_new_tokens=16)
    local = local_llm.generate(prompts, max_new_tokens=16)
    assert [g.text for g in remote] == [g.text for g in local]
    assert [g.tokens for g in remote] == [g.tokens for g in local]
    assert server.headers and all(h == "Bearer secret-key" for h in server.headers)


def test_yes_probability_from_server_logprobs(server: Any, local_llm: LocalBackend) -> None:
    backend = HttpBackend(server.url, "smollm2", concurrency=3)
    prompts = [judge_messages(HISTORY, t) for t in ("Probabilistic topic models", "Gene expression in yeast")]
    remote = backend.yes_probability(prompts)
    local = local_llm.yes_probability(prompts)
    # the server reports only its top 20 tokens, so spellings of yes/no outside them are missing
    np.testing.assert_allclose(remote, local, atol=0.02)


def test_retries_with_backoff_then_succeeds(server: Any) -> None:
    server.fail_next = 2
    backend = HttpBackend(server.url, "smollm2", retries=3, backoff=0.01, concurrency=1)
    (generation,) = backend.generate([item_description_messages("Deep learning")], max_new_tokens=4)
    assert generation.text and backend.failed_attempts == 2 and backend.requests == 3


def test_gives_up_after_its_retries(server: Any) -> None:
    server.fail_next = 5
    backend = HttpBackend(server.url, "smollm2", retries=1, backoff=0.01)
    with pytest.raises(BackendError, match="failed 2 times; last: HTTP 503"):
        backend.generate([item_description_messages("Deep learning")], max_new_tokens=4)


def test_timeout_is_an_error_not_a_hang(server: Any) -> None:
    server.delay = 1.0
    backend = HttpBackend(server.url, "smollm2", timeout=0.2, retries=0)
    with pytest.raises(BackendError, match="ReadTimeout"):
        backend.generate([item_description_messages("Deep learning")], max_new_tokens=4)


def test_client_errors_are_not_retried(server: Any) -> None:
    backend = HttpBackend(server.url.removesuffix("/v1") + "/wrong", "smollm2", retries=3, backoff=0.01)
    with pytest.raises(BackendError, match="HTTP 404"):
        backend.generate([item_description_messages("Deep learning")], max_new_tokens=4)
    assert backend.requests == 1


def test_unreachable_server() -> None:
    backend = HttpBackend("http://127.0.0.1:9/v1", "m", retries=1, backoff=0.01, timeout=1)
    with pytest.raises(BackendError, match="Is the server up"):
        backend.yes_probability([judge_messages(HISTORY, "x")])


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="must start with http"):
        HttpBackend("localhost:8000", "m")
    with pytest.raises(ConfigError, match="model name"):
        HttpBackend("http://localhost:8000/v1", "")
