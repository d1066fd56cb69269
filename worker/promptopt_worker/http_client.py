"""The worker's HTTP client for the calls it makes directly (OpenAI-compatible models, the job's services): pooled
connections, a failure to connect or answer in time raised as the transient CallFailed the LLM client retries, and an
error status classified the same way for both."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import httpx

from promptopt_worker.llm_call import OVERLOADED, UNREACHABLE, CallFailed, retry_after_s, transient_status


class PooledPoster:
    """POSTs JSON with one connection pool per base URL, shared by the job's threads (httpx.Client is thread-safe).
    No pool limit of its own: spec.task.concurrency (up to 256) already bounds the calls in flight, and a smaller
    pool would make calls past it wait, then time out."""

    def __init__(self) -> None:
        self._limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def post(
        self, pool: str, url: str, body: Mapping[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> httpx.Response:
        """The response, whatever its status; CallFailed (transient) when none came."""
        try:
            return self._client(pool).post(url, json=dict(body), headers=dict(headers), timeout=timeout_s)
        except httpx.TimeoutException as error:
            raise CallFailed(True, UNREACHABLE, f"timed out after {timeout_s:g} s ({type(error).__name__})") from None
        except httpx.TransportError as error:  # connection refused or reset, DNS, a broken response
            raise CallFailed(True, UNREACHABLE, f"{type(error).__name__}: {error}") from None

    def _client(self, pool: str) -> httpx.Client:
        client = self._clients.get(pool)  # no lock once it exists: every call of every thread passes here
        if client is None:
            with self._lock:
                client = self._clients.get(pool)
                if client is None:
                    client = self._clients[pool] = httpx.Client(limits=self._limits, follow_redirects=False)
        return client


def failure_for_status(response: httpx.Response, said: str, hint: str) -> CallFailed:
    """An error answer: transient for 408, 409, 429 and 5xx (with the wait it asks for), else permanent with `hint`,
    what to fix; `said` is what the server said."""
    if transient_status(response.status_code):
        return CallFailed(True, OVERLOADED, said, retry_after_s(response.headers))
    return CallFailed(False, hint, said)
