"""Any OpenAI-compatible chat-completions server (vLLM, Ollama, TGI, llama.cpp server) as a backend."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from augment._backend import NO_WORDS, YES_WORDS, Generation
from augment._prompts import Messages
from catalog import BackendError, ConfigError, redact

if TYPE_CHECKING:
    import httpx

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpBackend:
    """Any server that speaks OpenAI's chat-completions API (vLLM, Ollama, TGI, llama.cpp server).

    Requests run `concurrency` at a time; timeouts, connection errors and retryable statuses (429, 5xx) are
    retried `retries` times with exponential backoff. `yes_probability` asks for one token with its top
    log-probabilities (`logprobs`), so the server must support them (vLLM, llama.cpp and OpenAI do).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        concurrency: int = 4,
        top_logprobs: int = 20,
        transport: httpx.BaseTransport | None = None,
        allow_insecure: bool = False,
    ) -> None:
        import httpx

        shown = redact(base_url)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"llm base URL {shown!r} must start with http:// or https:// (e.g. http://localhost:8000/v1)."
            )
        if base_url.startswith("http://") and not allow_insecure and not _is_loopback(base_url):
            raise ConfigError(
                f"llm base URL {shown!r} is plain http to another machine: prompts, answers and the API key would "
                "cross the network unencrypted. Use https://, or allow it on purpose with --allow-insecure "
                "(WARMSTART_LLM_ALLOW_INSECURE=true)."
            )
        if not model:
            raise ConfigError("the HTTP backend needs a model name (WARMSTART_LLM_MODEL).")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._shown_url = redact(self.base_url)  # what messages may show
        self.model = model
        self.retries = retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        self.top_logprobs = top_logprobs
        self.requests = 0
        self.failed_attempts = 0
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    @property
    def model_name(self) -> str:
        return self.model

    def close(self) -> None:
        self._client.close()

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}/chat/completions"
        shown = f"{self._shown_url}/chat/completions"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                response = self._client.post(url, json=payload)
            except httpx.TransportError as error:  # timeouts and connection errors
                problem = redact(f"{type(error).__name__}: {error}")
                self.failed_attempts += 1
                continue
            if response.status_code in _RETRY_STATUS:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                self.failed_attempts += 1
                continue
            if response.status_code >= 400:
                raise BackendError(f"{shown} answered HTTP {response.status_code}: {response.text[:300]}")
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise BackendError(f"{shown} answered with something not a JSON object: {response.text[:200]!r}")
            return answer
        raise BackendError(f"{shown} failed {self.retries + 1} times; last: {problem}. Is the server up?")

    def _map(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, payloads))

    def generate(
        self, prompts: Sequence[Messages], *, max_new_tokens: int, seed: int = 0, temperature: float = 0.0
    ) -> list[Generation]:
        payloads = [
            {
                "model": self.model,
                "messages": list(prompt),
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "seed": seed,
                "stream": False,
            }
            for prompt in prompts
        ]
        results = []
        for answer in self._map(payloads):
            try:
                text = answer["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise BackendError(
                    f"{self._shown_url}: a chat completion without choices[0].message: {str(answer)[:200]}"
                ) from None
            tokens = (answer.get("usage") or {}).get("completion_tokens") or len(text.split())
            results.append(Generation(text=str(text), tokens=int(tokens)))
        return results

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        payloads = [
            {
                "model": self.model,
                "messages": list(prompt),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
                "stream": False,
            }
            for prompt in prompts
        ]
        return np.array([_answer_from_logprobs(answer, self._shown_url) for answer in self._map(payloads)])


def _answer_from_logprobs(answer: dict[str, Any], source: str) -> float:
    """P(yes) / (P(yes) + P(no)) from a chat completion's first-token top log-probabilities; NaN (unknown) when
    neither yes nor no is among the top tokens: a made-up 0.5 would read as a real, undecided judgement."""
    try:
        top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        entries = [(str(entry["token"]).strip().lower(), float(entry["logprob"])) for entry in top]
    except (KeyError, IndexError, TypeError, ValueError):
        raise BackendError(
            f"{source}: the answer has no usable logprobs ({str(answer)[:200]}); the judge needs a server that "
            "returns top_logprobs."
        ) from None
    yes = sum(np.exp(logprob) for token, logprob in entries if token in YES_WORDS)
    no = sum(np.exp(logprob) for token, logprob in entries if token in NO_WORDS)
    return float(yes / (yes + no)) if yes + no > 0 else float("nan")
