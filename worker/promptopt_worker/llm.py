"""The worker's LLM client: every call of a job (task, judges, reflection, and the job's own HTTP services: a task
service, webhook scorers) goes through one `LLMClient`, so usage is counted in one place, the budget is enforced on
all of them, and transient errors are retried the same way for every provider and service. Errors leave this
module as `PermanentLLMError` (with a message naming the model or service and what to fix, secrets masked) or
`BudgetExceeded`.

Two ways to call: `openai/...` models (OpenAI and the OpenAI-compatible servers) whose parameters are fields of the
chat completion request are called directly (promptopt_worker.openai_compatible, for speed: see there), every other
provider or parameter through litellm (promptopt_worker.litellm_transport). Both only send and classify; this
module retries.

Retries: litellm's own `num_retries` path is unusable here (it needs `tenacity`, which litellm does not install,
and retries permanent errors like 401 without backoff), so `LLMClient` runs the loop itself: exponential backoff
with jitter as litellm's Router computes it (0.5 s doubling, at most 8 s, plus up to 0.75 s), or the longer wait a
Retry-After header asks for (up to a minute). The provider SDKs' own retries are off, so a call is retried by
exactly one layer.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from promptopt.api.v1alpha1 import Cost
from promptopt.worker_contract import use_bundled_litellm_cost_map
from promptopt_worker import http_services, litellm_transport, openai_compatible
from promptopt_worker.llm_call import CallFailed, Message, Metered, ModelEndpoint, Role
from promptopt_worker.problem import StopRequested
from promptopt_worker.redaction import redact

__all__ = ["Message", "ModelEndpoint", "Role"]  # the endpoint types, re-exported for the client's users

use_bundled_litellm_cost_map()  # for litellm, whenever this process imports it

log = logging.getLogger(__name__)

Answer = TypeVar("Answer", bound=Metered)

PROVIDER_MESSAGE_LIMIT = 500
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
# How soon a call in flight notices that the worker is terminating.
ABANDON_CHECK_S = 0.1
RETRY_JITTER_S = 0.75
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is not waited for: the backoff applies

# litellm.completion parameters the worker sets itself, and where the job sets them instead.
_ONE_TEXT_ANSWER = "the worker reads one whole text answer"
WORKER_COMPLETION_PARAMETERS: dict[str, str] = {
    "model": "set spec.optimizer.reflectionModel",
    "messages": "the worker writes the requests",
    **dict.fromkeys(["api_base", "base_url"], "set spec.optimizer.reflectionApiBase"),
    "api_key": "put the key into the credentials Secret (spec.credentials)",
    "timeout": "set spec.task.timeoutSeconds",
    **dict.fromkeys(["max_retries", "num_retries"], "set spec.task.maxRetries"),
    **dict.fromkeys(
        ["stream", "stream_options", "n", "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"],
        _ONE_TEXT_ANSWER,
    ),
}


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


class CallAbandoned(RuntimeError):
    """The worker is terminating (StopRequested.terminate): the call is left unanswered, so that the best result so
    far is reported within the Pod's grace period."""


def retry_delay(attempt: int, retry_after_s: float | None) -> float:
    """Seconds before retry number `attempt + 1`: the backoff, or the longer wait the server asked for."""
    backoff = min(INITIAL_RETRY_DELAY_S * 2**attempt, MAX_RETRY_DELAY_S)
    if retry_after_s is not None and 0 < retry_after_s <= MAX_RETRY_AFTER_S:
        backoff = max(backoff, retry_after_s)
    return backoff + random.uniform(0, RETRY_JITTER_S)


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

    @classmethod
    def from_cost(cls, cost: Cost | None) -> Usage:
        """The usage earlier Pods of this job reported in status.cost: the budget covers the whole job. The status
        keeps no calls per role, so theirs count as one role of their own."""
        cost = cost or Cost()
        return cls(
            prompt_tokens=cost.prompt_tokens or 0,
            completion_tokens=cost.completion_tokens or 0,
            usd=cost.usd or 0.0,
            calls={"earlier attempts": cost.llm_calls} if cost.llm_calls else {},
            retries=cost.retries or 0,
        )

    def as_cost(self) -> Cost:
        """The job's status.cost."""
        return Cost(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            usd=round(self.usd, 6),
            llm_calls=self.llm_calls,
            retries=self.retries,
        )


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
    """Sends chat requests for one job; thread-safe.

    With `max_cost_usd`, the call that brings the total cost to the budget requests a stop
    ("BudgetExhausted") on `stop`, and every later call raises `BudgetExceeded`. Calls already in flight
    when the budget is reached still finish, so the total may pass it by at most those calls.

    Once `stop` is terminating (SIGTERM), every call raises `CallAbandoned` at once, those in flight too: their
    requests go on in daemon threads whose answers nobody reads (nor charges: the worker exits right after its
    last report), and the back-off between retries is cut short.
    """

    def __init__(
        self,
        *,
        max_cost_usd: float | None = None,
        stop: StopRequested | None = None,
        usage: UsageMeter | None = None,
        sleep: Callable[[float], None] | None = None,  # tests replace the backoff sleep
    ):
        self.max_cost_usd = max_cost_usd
        self.stop = stop
        self.usage = usage or UsageMeter()
        self._sleep = sleep
        self._unpriced_models: set[str] = set()
        self._lock = threading.Lock()
        self._openai_compatible = openai_compatible.OpenAICompatibleCaller()
        self._litellm = litellm_transport.LiteLLMCaller()
        self._services = http_services.ServiceCaller()

    def complete(self, endpoint: ModelEndpoint, messages: Sequence[Message]) -> str:
        """The model's answer text ("" if it sent none)."""
        self._check_budget()
        if api_keys := [k for k in missing_api_keys(endpoint) if k.endswith("API_KEY")]:
            # Fail before calling: litellm reports some missing keys as a retryable 500 (openai) or a
            # connection error (gemini). Providers that authenticate otherwise (AWS, GCP roles) name no *API_KEY.
            raise PermanentLLMError(
                f"{endpoint.where()}: no API key found: put {' or '.join(api_keys)} in the job's credentials Secret"
            )
        caller = self._openai_compatible if openai_compatible.serves(endpoint) else self._litellm
        return self._call(endpoint, lambda: caller.complete(endpoint, messages)).text

    def post(
        self,
        endpoint: ModelEndpoint,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        read: Callable[[Any], Answer],
    ) -> Answer:
        """POST `body` to one of the job's HTTP services (endpoint.model is its URL) and `read` its JSON answer
        (a ContractError from `read` is a permanent error naming the service)."""
        self._check_budget()
        return self._call(endpoint, lambda: self._services.post(endpoint, headers, body, read))

    def _call(self, endpoint: ModelEndpoint, send: Callable[[], Answer]) -> Answer:
        """`send` until it answers, retrying transient failures; the answer is charged to the job."""
        for attempt in range(endpoint.max_retries + 1):
            try:
                answer = self._send(endpoint, send)
                break
            except CallFailed as failure:
                said = _redacted(failure.provider_says)
                if not failure.transient:
                    raise PermanentLLMError(f"{endpoint.where()}: {failure.hint}; {said}") from None
                if attempt == endpoint.max_retries:
                    raise RetriesExhausted(
                        f"{endpoint.where()}: still failing after {endpoint.max_retries} retries; {said}"
                    ) from None
                self.usage.add_retry()
                self._pause(retry_delay(attempt, failure.retry_after_s))
        self._charge(endpoint, answer)
        return answer

    def _send(self, endpoint: ModelEndpoint, send: Callable[[], Answer]) -> Answer:
        """`send()` in a thread of its own, waited for until it answers or the worker is terminating."""
        stop = self.stop
        if stop is None:
            return send()
        outcome: list[Answer] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append(send())
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread as it is
                failure.append(error)
            finally:
                done.set()

        if not stop.terminating:
            threading.Thread(target=run, name="llm-call", daemon=True).start()
            while not done.wait(ABANDON_CHECK_S) and not stop.terminating:
                pass
        if not done.is_set():
            raise CallAbandoned(f"{endpoint.where()}: abandoned, the worker is stopping ({stop.message})")
        if failure:
            raise failure[0]
        return outcome[0]

    def _pause(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        elif self.stop is not None:
            self.stop.sleep(seconds)
        else:
            time.sleep(seconds)

    def _check_budget(self) -> None:
        if self.max_cost_usd is not None:
            spent = self.usage.snapshot().usd
            if spent >= self.max_cost_usd:
                raise BudgetExceeded(f"the budget of ${self.max_cost_usd:g} is spent (${spent:.4f}); no more LLM calls")

    def _charge(self, endpoint: ModelEndpoint, answer: Metered) -> None:
        total = self.usage.add(
            endpoint.role, answer.prompt_tokens, answer.completion_tokens, self._cost(endpoint, answer)
        )
        if self.max_cost_usd is not None and total.usd >= self.max_cost_usd and self.stop is not None:
            self.stop.request(
                "BudgetExhausted",
                f"LLM calls cost ${total.usd:.4f}, reaching the budget of ${self.max_cost_usd:g} "
                "(spec.budget.maxCostUSD)",
            )

    def _cost(self, endpoint: ModelEndpoint, answer: Metered) -> float:
        if endpoint.pricing is not None:  # the spec's price wins over litellm's list
            return endpoint.pricing.usd(answer.prompt_tokens, answer.completion_tokens)
        if answer.usd is None:
            self._warn_unpriced(endpoint)
            return 0.0
        return answer.usd

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


def list_price(endpoint: ModelEndpoint, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What a call of these tokens costs: by the spec's pricing, else by litellm's list (None when it does not price
    the model), as the client charges it."""
    if endpoint.pricing is not None:
        return endpoint.pricing.usd(prompt_tokens, completion_tokens)
    if openai_compatible.serves(endpoint):
        return openai_compatible.list_price(endpoint.model, prompt_tokens, completion_tokens)
    return litellm_transport.list_price(endpoint.model, prompt_tokens, completion_tokens)


def token_limits(endpoint: ModelEndpoint) -> tuple[int, int] | None:
    """The most prompt and completion tokens one call to the endpoint can have: its model's context window by
    litellm's list, the completion capped by the endpoint's max_tokens; None when the list does not know the model."""
    limits = (
        openai_compatible.token_limits(endpoint.model)
        if openai_compatible.serves(endpoint)
        else litellm_transport.token_limits(endpoint.model)
    )
    if limits is None:
        return None
    prompt, completion = limits
    capped = endpoint.params.get("max_tokens") or endpoint.params.get("max_completion_tokens")
    return prompt, min(completion, int(capped)) if capped else completion


def missing_api_keys(endpoint: ModelEndpoint) -> list[str]:
    """The environment variables the endpoint's provider needs and does not find (none with an apiBase)."""
    if openai_compatible.serves(endpoint):
        return openai_compatible.missing_api_keys(endpoint)
    return litellm_transport.missing_api_keys(endpoint)


def _redacted(provider_says: str) -> str:
    """What the provider said, masked, on one line and cut at a word boundary: a BadRequestError can echo the
    whole request, several KB that would bury the hint before it."""
    message = " ".join(redact(provider_says).split())
    if len(message) <= PROVIDER_MESSAGE_LIMIT:
        return message
    cut = message[: PROVIDER_MESSAGE_LIMIT + 1]
    space = cut.rfind(" ")
    # At the last space, unless a long run without one (a URL, compact JSON) would leave little of the text.
    return (cut[:space] if space > PROVIDER_MESSAGE_LIMIT // 2 else cut[:-1]) + " ..."
