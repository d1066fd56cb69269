"""The chat-completions call for `openai/...` models (OpenAI, and the OpenAI-compatible servers: vLLM, llama.cpp,
Ollama, gateways), made directly with httpx instead of through litellm.

Why our own here (measured against the simulated LLM, docs/performance.md): a `litellm.completion` costs about 7 ms
of CPU per call in this process (its logging layers, a fresh asyncio event loop per call for its service hooks,
response objects rebuilt through pydantic), against 0.8 ms for the same POST through httpx; importing litellm takes
3.4 s and about 140 MB of memory, which a worker whose models are all OpenAI-compatible never needs. Every other
provider still goes through litellm (promptopt_worker.litellm_transport), and litellm's bundled price list still prices
these calls: its JSON file is read without importing litellm.

This module sends one request and classifies what came back; retries, budgets and messages are the LLMClient's.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from promptopt_worker.http_client import PooledPoster, failure_for_status
from promptopt_worker.llm_call import (
    CONTEXT_WINDOW,
    KEY_REJECTED,
    NO_ACCESS,
    NOT_FOUND,
    REQUEST_REJECTED,
    CallFailed,
    ChatAnswer,
    ModelEndpoint,
)

PROVIDER_PREFIX = "openai/"
OPENAI_API_BASE = "https://api.openai.com/v1"
# OpenAI's own API takes max_completion_tokens (its reasoning models refuse max_tokens); compatible servers are
# sent what the job wrote, since older ones know only max_tokens.
_OPENAI_RENAMED_PARAMETERS = {"max_tokens": "max_completion_tokens"}
_CONTEXT_WINDOW_CODES = ("context_length_exceeded", "string_above_max_length")

_HINTS = {401: KEY_REJECTED, 403: NO_ACCESS, 404: NOT_FOUND}


# The chat completion request's own fields (OpenAI's API reference), and the two pass-through ones the openai SDK
# and litellm know. An endpoint with any other parameter (a litellm option such as drop_params or api_version, or
# a server-specific field outside extra_body) goes through litellm, which knows what to do with it.
CHAT_COMPLETION_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "response_format",
        "seed",
        "reasoning_effort",
        "service_tier",
        "store",
        "metadata",
        "modalities",
        "prediction",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
        "web_search_options",
    }
)
PASS_THROUGH = frozenset({"extra_headers", "extra_body"})


def serves(endpoint: ModelEndpoint) -> bool:
    """Whether this module calls the endpoint: an `openai/...` model (litellm's OpenAI-compatible provider) whose
    parameters are all fields of the chat completion request (or extra_headers / extra_body)."""
    return endpoint.model.startswith(PROVIDER_PREFIX) and set(endpoint.params) <= CHAT_COMPLETION_FIELDS | PASS_THROUGH


def base_url(endpoint: ModelEndpoint) -> str:
    """The endpoint's apiBase, else the environment's (as litellm and the openai SDK read it), else OpenAI's."""
    return (
        endpoint.api_base or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE") or OPENAI_API_BASE
    ).rstrip("/")


def missing_api_keys(endpoint: ModelEndpoint) -> list[str]:
    """OPENAI_API_KEY when OpenAI itself is called without one; a compatible server (an apiBase) needs none."""
    if endpoint.api_base or os.environ.get("OPENAI_API_KEY"):
        return []
    return ["OPENAI_API_KEY"]


class OpenAICompatibleCaller:
    """POSTs chat completions, a connection pool per base URL."""

    def __init__(self) -> None:
        self._poster = PooledPoster()

    def complete(self, endpoint: ModelEndpoint, messages: Sequence[Mapping[str, str]]) -> ChatAnswer:
        """One call; raises CallFailed (transient or not) for whatever is not an answer."""
        url = base_url(endpoint)
        response = self._poster.post(
            url,
            f"{url}/chat/completions",
            request_body(endpoint, messages, url),
            request_headers(endpoint),
            endpoint.timeout_s,
        )
        if response.status_code >= 400:
            raise status_failure(response)
        return chat_answer(endpoint, response)


def request_body(endpoint: ModelEndpoint, messages: Sequence[Mapping[str, str]], url: str) -> dict[str, Any]:
    """The JSON of a chat completion request to `url`: the model without its provider prefix, the messages, and the
    endpoint's parameters (renamed where OpenAI's own API wants other names)."""
    renamed = _OPENAI_RENAMED_PARAMETERS if url == OPENAI_API_BASE else {}
    params = {renamed.get(name, name): value for name, value in endpoint.params.items() if name not in PASS_THROUGH}
    extra_body = endpoint.params.get("extra_body") or {}
    return {
        **params,
        **extra_body,
        "model": endpoint.model[len(PROVIDER_PREFIX) :],
        "messages": [dict(m) for m in messages],
    }


def request_headers(endpoint: ModelEndpoint) -> dict[str, str]:
    # A compatible server without a key gets a placeholder, as litellm sends one: some insist on the header.
    key = os.environ.get("OPENAI_API_KEY") or "not-needed"
    headers = {"Authorization": f"Bearer {key}"}
    if organization := os.environ.get("OPENAI_ORGANIZATION"):
        headers["OpenAI-Organization"] = organization
    return {**headers, **(endpoint.params.get("extra_headers") or {})}


def status_failure(response: httpx.Response) -> CallFailed:
    """An error answer, classified: worth retrying or not, and the hint for what to fix (OpenAI's error code tells a
    prompt past the context window)."""
    status = response.status_code
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    said = f"HTTP {status}: {error.get('message') or response.text[:500] or response.reason_phrase}"
    hint = CONTEXT_WINDOW if error.get("code") in _CONTEXT_WINDOW_CODES else _HINTS.get(status, REQUEST_REJECTED)
    return failure_for_status(response, said, hint)


def chat_answer(endpoint: ModelEndpoint, response: httpx.Response) -> ChatAnswer:
    """A 200 answer read: its text, tokens and list price; CallFailed when it is no chat completion."""
    try:
        body = response.json()
        message = body["choices"][0]["message"]
        usage = body.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError):
        raise CallFailed(
            False,
            "the endpoint's answer is not an OpenAI chat completion",
            f"HTTP {response.status_code}: {response.text[:500]}",
        ) from None
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion_tokens = int(usage.get("completion_tokens") or 0)
    cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return ChatAnswer(
        text=message.get("content") or "",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        usd=list_price(endpoint.model, prompt_tokens, completion_tokens, cached_tokens),
    )


def list_price(model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float | None:
    """The call's cost by litellm's bundled price list, as litellm computes it for OpenAI models (cached prompt
    tokens at their own price); None for a model the list does not price."""
    entry = _price_list().get(model.removeprefix(PROVIDER_PREFIX))
    if not isinstance(entry, dict) or entry.get("litellm_provider") != "openai":
        return None
    input_price, output_price = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
    if input_price is None or output_price is None:
        return None
    cached_price = entry.get("cache_read_input_token_cost") or input_price
    return (
        (prompt_tokens - cached_tokens) * input_price + cached_tokens * cached_price + completion_tokens * output_price
    )


def token_limits(model: str) -> tuple[int, int] | None:
    """The most prompt and completion tokens one call of an OpenAI model can have, by litellm's bundled list; None
    for a model the list does not know."""
    entry = _price_list().get(model.removeprefix(PROVIDER_PREFIX))
    if not isinstance(entry, dict) or entry.get("litellm_provider") != "openai":
        return None
    prompt, completion = entry.get("max_input_tokens"), entry.get("max_output_tokens")
    return (int(prompt), int(completion)) if prompt and completion else None


_PRICE_LIST_LOCK = threading.Lock()


def _price_list() -> dict[str, Any]:
    # Read once, under a lock: the job's evaluation threads reach their first answers together, and functools.cache
    # alone let each of them parse the 3.5 MB file (a profile put a quarter of the run's CPU there).
    with _PRICE_LIST_LOCK:
        return _read_price_list()


@functools.cache
def _read_price_list() -> dict[str, Any]:
    # litellm's package folder, found without importing the package (find_spec runs no module code).
    spec = importlib.util.find_spec("litellm")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "model_prices_and_context_window_backup.json"
        if path.is_file():
            prices: dict[str, Any] = json.loads(path.read_text())
            return prices
    return {}
