"""The chat-completions call through litellm, for every provider that is not OpenAI-compatible (Anthropic, Gemini,
Bedrock, Vertex, Azure, ...): litellm speaks their APIs, maps their errors onto the openai SDK's classes and
prices their calls. litellm is imported on the first such call (it takes seconds and ~140 MB), so a worker whose
models are all OpenAI-compatible never loads it.

This module sends one request and classifies what came back; retries, budgets and messages are the LLMClient's.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from promptopt.worker_contract import use_bundled_litellm_cost_map
from promptopt_worker.llm_call import (
    CONTEXT_WINDOW,
    KEY_REJECTED,
    NO_ACCESS,
    NOT_FOUND,
    OVERLOADED,
    UNREACHABLE,
    CallFailed,
    ChatAnswer,
    ModelEndpoint,
    retry_after_s,
)

# litellm's OpenAI-compatible provider insists on a key; local servers (vLLM, llama.cpp) ignore it.
PLACEHOLDER_API_KEY = "not-needed"
# Providers whose model names are the user's own: a server they run, a deployment or endpoint they named, a model
# they pulled, any repository of a hub. litellm's list cannot tell a typo there from a name it never heard of.
USER_NAMED_PROVIDERS = frozenset(
    {
        "hosted_vllm",
        "vllm",
        "ollama",
        "ollama_chat",
        "lm_studio",
        "llamafile",
        "lemonade",
        "xinference",
        "docker_model_runner",
        "oobabooga",
        "triton",
        "openai_like",
        "custom_openai",
        "litellm_proxy",
        "azure",
        "sagemaker",
        "sagemaker_chat",
        "databricks",
        "huggingface",
    }
)


@functools.cache
def _litellm() -> ModuleType:
    use_bundled_litellm_cost_map()  # before litellm is imported
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners in the worker's log
    return litellm


@functools.cache
def completion_parameters() -> frozenset[str]:
    """litellm.completion's named parameters (temperature, max_tokens, reasoning_effort, ...), not **kwargs or the
    Router's."""
    return frozenset(inspect.signature(_litellm().completion).parameters) - {"kwargs", "model_list"}


def missing_api_keys(endpoint: ModelEndpoint) -> list[str]:
    """The environment variables litellm needs for the model and does not find (none with an apiBase)."""
    if endpoint.api_base:
        return []
    return list(_litellm().validate_environment(model=endpoint.model)["missing_keys"])


def unknown_model(model: str) -> str | None:
    """Why litellm's offline model list does not know `model`, with the listed chat model closest to it; None when
    the list knows it, or cannot tell: a provider whose model names are the user's own, or one it lists no model of.
    The caller skips models on a server of the user's (an apiBase), which answers to any name."""
    litellm = _litellm()
    try:
        name, provider, _, _ = litellm.get_llm_provider(model)
    except Exception:  # noqa: BLE001 - litellm raises a BadRequestError when no provider prefix matches
        close = difflib.get_close_matches(model, _chat_model_ids(litellm.models_by_provider), n=1)
        return "litellm knows no provider of it" + (
            f"; did you mean {close[0]}?" if close else ": write it as provider/model"
        )
    listed = litellm.models_by_provider.get(provider) or set()
    if provider in USER_NAMED_PROVIDERS or not listed:
        return None
    if model in litellm.model_cost or not listed.isdisjoint({name, f"{provider}/{name}"}):
        return None
    # Names compared without the provider, which every candidate shares and would make any two ids look alike.
    prefix = f"{provider}/"
    close = difflib.get_close_matches(name, [i.removeprefix(prefix) for i in _chat_model_ids([provider])], n=1)
    return f"did you mean {prefix}{close[0]}?" if close else "litellm's model list does not know it: check the id"


def _chat_model_ids(providers: Iterable[str]) -> list[str]:
    """The chat models litellm lists for these providers, as provider/name."""
    litellm = _litellm()
    ids = set()
    for provider in providers:
        for listed in litellm.models_by_provider.get(provider) or ():
            entry = litellm.model_cost.get(listed) or litellm.model_cost.get(f"{provider}/{listed}") or {}
            if entry.get("mode") == "chat":
                ids.add(listed if listed.startswith(f"{provider}/") else f"{provider}/{listed}")
    return sorted(ids)


def list_price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What litellm's price list charges for these tokens; None for a model it does not price."""
    try:
        prompt_usd, completion_usd = _litellm().cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # noqa: BLE001 - litellm raises plain Exceptions for models it does not know
        return None
    return float(prompt_usd + completion_usd)


def token_limits(model: str) -> tuple[int, int] | None:
    """The most prompt and completion tokens one call can have, by litellm's model list; None when it does not say."""
    try:
        info = _litellm().get_model_info(model=model)
    except Exception:  # noqa: BLE001 - litellm raises plain Exceptions for models it does not know
        return None
    prompt, completion = info.get("max_input_tokens"), info.get("max_output_tokens")
    return (int(prompt), int(completion)) if prompt and completion else None


class LiteLLMCaller:
    """Calls any litellm provider; litellm's clients are thread-safe."""

    def complete(self, endpoint: ModelEndpoint, messages: Sequence[Mapping[str, str]]) -> ChatAnswer:
        """One call; raises CallFailed (transient or not) for whatever is not an answer."""
        litellm = _litellm()
        request: dict[str, Any] = {
            **endpoint.params,
            "model": endpoint.model,
            "messages": [dict(m) for m in messages],
            "timeout": endpoint.timeout_s,
            "max_retries": 0,  # retried by the LLMClient, not also by the provider SDK
        }
        if endpoint.api_base:
            request["api_base"] = endpoint.api_base
            if litellm.validate_environment(model=endpoint.model, api_base=endpoint.api_base)["missing_keys"]:
                request["api_key"] = PLACEHOLDER_API_KEY
        try:
            response = litellm.completion(**request)
        except Exception as error:  # noqa: BLE001 - every failure is classified for the client
            raise _classified(error) from None
        tokens = getattr(response, "usage", None)
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")  # litellm's own accounting
        return ChatAnswer(
            text=response.choices[0].message.content or "",
            prompt_tokens=getattr(tokens, "prompt_tokens", None) or 0,
            completion_tokens=getattr(tokens, "completion_tokens", None) or 0,
            usd=None if cost is None else float(cost),
        )


def _classified(error: Exception) -> CallFailed:
    import openai  # litellm's exceptions derive from the openai SDK's

    litellm = _litellm()
    said = _provider_says(error)
    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return CallFailed(True, UNREACHABLE, said)
    status = getattr(error, "status_code", None)
    if isinstance(error, openai.APIError) and isinstance(status, int) and litellm.should_retry(status):
        return CallFailed(True, OVERLOADED, said, retry_after_s(getattr(error, "litellm_response_headers", None) or {}))
    hints: tuple[tuple[type[BaseException], str], ...] = (
        (openai.AuthenticationError, KEY_REJECTED),
        (openai.PermissionDeniedError, NO_ACCESS),
        (openai.NotFoundError, NOT_FOUND),
        (litellm.ContextWindowExceededError, CONTEXT_WINDOW),
        (
            openai.BadRequestError,
            "the request was rejected: check the model id (litellm's provider/model form) and "
            "the completion parameters",
        ),
    )
    return CallFailed(False, next((h for cls, h in hints if isinstance(error, cls)), "the call failed"), said)


def _provider_says(error: Exception) -> str:
    message = str(error)
    return message if message.startswith("litellm.") else f"{type(error).__name__}: {message}"
