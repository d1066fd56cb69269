"""The worker's one adapter to litellm: model endpoints, retries, error messages, cost and the budget.

Every LLM call of a job (task, judges, reflection) goes through one `LLMClient`, so usage is counted in
one place and the budget is enforced on all of them. Errors leave this module as `PermanentLLMError`
(with a message naming the model and what to fix, secrets masked) or `BudgetExceeded`.

Retries: litellm's own `num_retries` path is unusable here (it needs `tenacity`, which litellm does not
install, and retries permanent errors like 401 without backoff), so `LLMClient` runs the loop itself
with litellm's parts: litellm's exception mapping decides transient vs permanent, and
`litellm.calculate_retry_after` gives the delay (exponential backoff with jitter, honouring
Retry-After) - the same function litellm's Router uses. The provider SDK's own retries are switched off
(max_retries=0) so a call is retried by exactly one layer, the same way for every provider.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from promptopt.api.v1alpha1 import OptimizerSpec, Pricing, ScorerSpec, TaskSpec
from promptopt.worker_contract import use_bundled_litellm_cost_map
from promptopt_worker.problem import StopRequested
from promptopt_worker.redaction import redact

use_bundled_litellm_cost_map()  # before litellm is imported
import litellm  # noqa: E402
import openai  # noqa: E402  (litellm's exceptions derive from the openai SDK's)
from litellm.types.utils import CostPerToken  # noqa: E402

litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners in the worker's log

log = logging.getLogger(__name__)

Role = Literal["task", "judge", "reflection"]
Message = Mapping[str, str]

# litellm's OpenAI-compatible provider insists on a key; local servers (vLLM, llama.cpp) ignore it.
PLACEHOLDER_API_KEY = "not-needed"
PROVIDER_MESSAGE_LIMIT = 500

# litellm.completion parameters the worker sets itself, and where the job sets them instead.
_ONE_TEXT_ANSWER = "the worker reads one whole text answer"
WORKER_COMPLETION_PARAMETERS: dict[str, str] = {
    "model": "set spec.optimizer.reflectionModel",
    "messages": "the worker writes the requests",
    **dict.fromkeys(["api_base", "base_url"], "set spec.optimizer.reflectionApiBase"),
    "api_key": "put the key into the credentials Secret (spec.credentials)",
    "timeout": "set spec.task.timeoutSeconds",
    **dict.fromkeys(["max_retries", "num_retries"], "set spec.task.maxRetries"),
    **dict.fromkeys(["stream", "stream_options", "n", "tools", "tool_choice", "functions", "function_call",
                     "parallel_tool_calls"], _ONE_TEXT_ANSWER),
}
# Its other named parameters (temperature, max_tokens, reasoning_effort, ...); not **kwargs or the Router's.
COMPLETION_PARAMETERS = frozenset(inspect.signature(litellm.completion).parameters) - {"kwargs", "model_list"}



def json_object_with(answer: str, key: str) -> dict[str, Any] | None:
    """The first JSON object holding `key` in an LLM's answer: bare, fenced, or amid other text."""
    decoder = json.JSONDecoder()
    for opening in re.finditer(r"\{", answer):
        try:
            found, _ = decoder.raw_decode(answer, opening.start())
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict) and key in found:
            return found
    return None


# ---------------------------------------------------------------------------------------------
# Errors


class PermanentLLMError(RuntimeError):
    """An LLM call failed for good (bad key, unknown model, rejected request, or retries exhausted).
    The message names the model and what to fix, and holds no secret."""


class RetriesExhausted(PermanentLLMError):
    """A transient error (429, 5xx, timeout, connection) outlasted every retry."""


class BudgetExceeded(RuntimeError):
    """The job's maxCostUSD is spent: no more LLM calls; the optimizer should finish with its best result."""


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: timeouts, connection errors, 408/409/429 and 5xx (litellm's rule)."""
    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return True
    status = getattr(error, "status_code", None)
    return isinstance(error, openai.APIError) and isinstance(status, int) and litellm.should_retry(status)


# ---------------------------------------------------------------------------------------------
# Endpoints


@dataclass(frozen=True)
class ModelEndpoint:
    """One configured model: who calls it (role), where it is, how it is called and what it costs."""

    role: Role
    model: str  # litellm model id, e.g. openai/gpt-4.1-mini
    description: str  # what the model is for, for error messages: "task model", "judge model of scorer 'x'"
    api_base: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # temperature, max_tokens, top_p, free parameters
    timeout_s: float = 60.0
    max_retries: int = 4
    pricing: Pricing | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @classmethod
    def for_task(cls, task: TaskSpec) -> ModelEndpoint:
        typed = {"temperature": task.temperature, "max_tokens": task.max_tokens, "top_p": task.top_p}
        return cls(
            role="task",
            model=task.model,
            description="task model",
            api_base=task.api_base,
            # The typed fields win over the same names in the free-form parameters.
            params={**task.parameters, **{k: v for k, v in typed.items() if v is not None}},
            timeout_s=task.timeout_seconds,
            max_retries=task.max_retries,
            pricing=task.pricing,
        )

    @classmethod
    def for_reflection(cls, optimizer: OptimizerSpec, task: TaskSpec) -> ModelEndpoint:
        """MetaPrompt's options are completion parameters of its reflection calls (GEPA's go to gepa.optimize)."""
        return cls(
            role="reflection",
            model=optimizer.reflection_model,
            description="reflection model",
            api_base=optimizer.reflection_api_base or task.api_base,
            params=optimizer.options if optimizer.type == "MetaPrompt" else {},
            timeout_s=task.timeout_seconds,
            max_retries=task.max_retries,
            pricing=optimizer.reflection_pricing,
        )

    @classmethod
    def for_judge(cls, scorer: ScorerSpec, task: TaskSpec) -> ModelEndpoint:
        if scorer.model is None:
            raise ValueError(f"scorer {scorer.key!r} is not an LLM judge: it has no model")
        return cls(
            role="judge",
            model=scorer.model,
            description=f"judge model of scorer {scorer.key!r}",
            api_base=scorer.api_base or task.api_base,
            timeout_s=task.timeout_seconds,
            max_retries=task.max_retries,
            pricing=scorer.pricing,
        )

    def where(self) -> str:
        return f"{self.description} {self.model!r}" + (f" at {self.api_base}" if self.api_base else "")


# ---------------------------------------------------------------------------------------------
# Usage


@dataclass(frozen=True)
class Usage:
    """LLM usage so far: tokens, US dollars (models with a known price only), calls per role, and retries of
    transient errors (429, 5xx, timeouts, connection errors)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    calls: Mapping[str, int] = field(default_factory=dict)  # role -> successful calls
    retries: int = 0

    @property
    def llm_calls(self) -> int:
        return sum(self.calls.values())

    def to_status(self) -> dict[str, Any]:
        """The job's status.cost."""
        return {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "usd": round(self.usd, 6),
            "llmCalls": self.llm_calls,
            "retries": self.retries,
        }


class UsageMeter:
    """A thread-safe running total of `Usage`; `start` carries the usage of earlier runs of the job."""

    def __init__(self, start: Usage | None = None):
        self._lock = threading.Lock()
        self._usage = start or Usage()

    def add(self, role: Role, prompt_tokens: int, completion_tokens: int, usd: float) -> Usage:
        """Count one call; returns the new total."""
        with self._lock:
            old = self._usage
            self._usage = replace(
                old,
                prompt_tokens=old.prompt_tokens + prompt_tokens,
                completion_tokens=old.completion_tokens + completion_tokens,
                usd=old.usd + usd,
                calls={**old.calls, role: old.calls.get(role, 0) + 1},
            )
            return self._usage

    def add_retry(self) -> None:
        """Count one retry of a transient error."""
        with self._lock:
            self._usage = replace(self._usage, retries=self._usage.retries + 1)

    def snapshot(self) -> Usage:
        with self._lock:
            return self._usage


# ---------------------------------------------------------------------------------------------
# The client


class LLMClient:
    """Sends chat requests through litellm for one job; thread-safe.

    With `max_cost_usd`, the call that brings the total cost to the budget requests a stop
    ("BudgetExhausted") on `stop`, and every later call raises `BudgetExceeded`. Calls already in flight
    when the budget is reached still finish, so the total may pass it by at most those calls.
    """

    def __init__(
        self,
        *,
        max_cost_usd: float | None = None,
        stop: StopRequested | None = None,
        usage: UsageMeter | None = None,
        sleep: Callable[[float], None] = time.sleep,  # tests replace the backoff sleep
    ):
        self.max_cost_usd = max_cost_usd
        self.stop = stop
        self.usage = usage or UsageMeter()
        self._sleep = sleep
        self._unpriced_models: set[str] = set()
        self._lock = threading.Lock()

    def complete(self, endpoint: ModelEndpoint, messages: Sequence[Message]) -> str:
        """The model's answer text ("" if it sent none)."""
        self._check_budget()
        request = self._request(endpoint, messages)
        for attempt in range(endpoint.max_retries + 1):
            try:
                response = litellm.completion(**request)
                break
            except Exception as error:  # noqa: BLE001 - every failure becomes a redacted, explained error
                if not is_transient(error):
                    raise PermanentLLMError(explain(endpoint, error)) from None
                if attempt == endpoint.max_retries:
                    raise RetriesExhausted(
                        f"{endpoint.where()}: still failing after {endpoint.max_retries} retries; "
                        f"{_provider_says(error)}"
                    ) from None
                self.usage.add_retry()
                self._sleep(
                    litellm.calculate_retry_after(
                        remaining_retries=endpoint.max_retries - attempt,
                        max_retries=endpoint.max_retries,
                        response_headers=getattr(error, "litellm_response_headers", None),
                    )
                )
        self._charge(endpoint, response)
        return response.choices[0].message.content or ""

    def _request(self, endpoint: ModelEndpoint, messages: Sequence[Message]) -> dict[str, Any]:
        request: dict[str, Any] = {
            **endpoint.params,
            "model": endpoint.model,
            "messages": [dict(m) for m in messages],
            "timeout": endpoint.timeout_s,
            "max_retries": 0,  # retried by complete(), not also by the provider SDK
        }
        missing = litellm.validate_environment(model=endpoint.model, api_base=endpoint.api_base)["missing_keys"]
        if endpoint.api_base:
            request["api_base"] = endpoint.api_base
            if missing:
                request["api_key"] = PLACEHOLDER_API_KEY
        elif api_keys := [k for k in missing if k.endswith("API_KEY")]:
            # Fail before calling: litellm reports some missing keys as a retryable 500 (openai) or a
            # connection error (gemini). Providers that authenticate otherwise (AWS, GCP roles) name no *API_KEY.
            raise PermanentLLMError(f"{endpoint.where()}: no API key found: put {' or '.join(api_keys)} in the job's "
                                    "credentials Secret")
        return request

    def _check_budget(self) -> None:
        if self.max_cost_usd is not None:
            spent = self.usage.snapshot().usd
            if spent >= self.max_cost_usd:
                raise BudgetExceeded(f"the budget of ${self.max_cost_usd:g} is spent (${spent:.4f}); no more LLM calls")

    def _charge(self, endpoint: ModelEndpoint, response: Any) -> None:
        tokens = getattr(response, "usage", None)
        usd = self._cost(endpoint, response)
        total = self.usage.add(
            endpoint.role,
            prompt_tokens=getattr(tokens, "prompt_tokens", None) or 0,
            completion_tokens=getattr(tokens, "completion_tokens", None) or 0,
            usd=usd,
        )
        if self.max_cost_usd is not None and total.usd >= self.max_cost_usd and self.stop is not None:
            self.stop.request(
                "BudgetExhausted",
                f"LLM calls cost ${total.usd:.4f}, reaching the budget of ${self.max_cost_usd:g} "
                "(spec.budget.maxCostUSD)",
            )

    def _cost(self, endpoint: ModelEndpoint, response: Any) -> float:
        if endpoint.pricing is not None:
            return litellm.completion_cost(
                completion_response=response,
                custom_cost_per_token=CostPerToken(
                    input_cost_per_token=endpoint.pricing.input_per_million_tokens / 1e6,
                    output_cost_per_token=endpoint.pricing.output_per_million_tokens / 1e6,
                ),
            )
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")  # litellm's own accounting
        if cost is None:
            self._warn_unpriced(endpoint)
            return 0.0
        return float(cost)

    def _warn_unpriced(self, endpoint: ModelEndpoint) -> None:
        with self._lock:
            if endpoint.model in self._unpriced_models:
                return
            self._unpriced_models.add(endpoint.model)
        log.warning(
            "litellm does not know the price of %s: its calls count as $0 in status.cost and against the budget; "
            "set its pricing in the spec to track them",
            endpoint.where(),
        )


# ---------------------------------------------------------------------------------------------
# Error messages


_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (openai.AuthenticationError, "the API key was rejected: check the key in the job's credentials Secret"),
    (openai.PermissionDeniedError, "the API key may not use this model: check the account's access to it"),
    (openai.NotFoundError, "the model or the endpoint does not exist: check the model id and the apiBase"),
    (litellm.ContextWindowExceededError, "the request is longer than the model's context window: shorten the "
     "prompts or the records, or lower maxTokens"),
    (openai.BadRequestError, "the request was rejected: check the model id (litellm's provider/model form) and the "
     "completion parameters"),
)


def explain(endpoint: ModelEndpoint, error: BaseException) -> str:
    """A one-line, secret-free explanation of a permanent error: which model, what to fix, what the provider said."""
    hint = next((h for cls, h in _HINTS if isinstance(error, cls)), "the call failed")
    return f"{endpoint.where()}: {hint}; {_provider_says(error)}"


def _provider_says(error: BaseException) -> str:
    message = " ".join(redact(str(error)).split())
    if len(message) > PROVIDER_MESSAGE_LIMIT:
        message = message[:PROVIDER_MESSAGE_LIMIT] + "..."
    return message if message.startswith("litellm.") else f"{type(error).__name__}: {message}"
