"""One LLM call's parts, shared by the client and its two ways of calling: the endpoint a call goes to, the
answer it brings back, and the failure it may raise instead."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

from promptopt.api.v1alpha1 import OptimizerSpec, Pricing, ScorerSpec, TaskSpec

Role = Literal["task", "judge", "reflection"]
Message = Mapping[str, str]


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
        if task.model is None:
            raise ValueError("the task is an HTTP service, not a model")
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

    @classmethod
    def for_task_service(cls, task: TaskSpec) -> ModelEndpoint:
        """spec.task.http: the program as the user's HTTP service (`model` holds its URL)."""
        if task.http is None:
            raise ValueError("the task is a model, not an HTTP service")
        return cls(
            role="task",
            model=task.http.url,
            description="task service",
            timeout_s=task.timeout_seconds,
            max_retries=task.max_retries,
            pricing=task.pricing,
        )

    @classmethod
    def for_webhook(cls, scorer: ScorerSpec, task: TaskSpec) -> ModelEndpoint:
        """A Webhook scorer's service (`model` holds its URL); its calls are free."""
        if scorer.http is None:
            raise ValueError(f"scorer {scorer.key!r} is not a webhook: it has no http")
        return cls(
            role="judge",
            model=scorer.http.url,
            description=f"webhook of scorer {scorer.key!r}",
            timeout_s=task.timeout_seconds,
            max_retries=task.max_retries,
        )

    def where(self) -> str:
        return f"{self.description} {self.model!r}" + (f" at {self.api_base}" if self.api_base else "")


class Metered(Protocol):
    """What an answer tells the client's usage meter: its tokens, and its price when known."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def usd(self) -> float | None: ...


@dataclass(frozen=True)
class ChatAnswer:
    """A model's answer: its text ("" if it sent none), the tokens it counted, and its price by litellm's list
    (None when the list does not know the model)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    usd: float | None


class CallFailed(Exception):
    """A call that brought no answer: whether retrying may help, what to fix (a hint for the job's author), what
    the provider said (not yet redacted), and the wait it asked for before a retry."""

    def __init__(self, transient: bool, hint: str, provider_says: str, retry_after_s: float | None = None):
        super().__init__(provider_says)
        self.transient = transient
        self.hint = hint
        self.provider_says = provider_says
        self.retry_after_s = retry_after_s


# What to fix, by what the provider answered: the first half of a permanent error's message.
KEY_REJECTED = "the API key was rejected: check the key in the job's credentials Secret"
NO_ACCESS = "the API key may not use this model: check the account's access to it"
NOT_FOUND = "the model or the endpoint does not exist: check the model id and the apiBase"
CONTEXT_WINDOW = (
    "the request is longer than the model's context window: shorten the prompts or the records, or lower maxTokens"
)
REQUEST_REJECTED = "the request was rejected: check the model id and the completion parameters"
UNREACHABLE = "the endpoint could not be reached"
OVERLOADED = "the endpoint is overloaded or failing"


# litellm's rule of what is worth retrying (litellm.should_retry): 408, 409, 429 and every 5xx.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def transient_status(status: int) -> bool:
    """Whether an HTTP error status is worth retrying."""
    return status in _RETRYABLE_STATUSES or status >= 500


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a 429 or 5xx asks for: OpenAI's retry-after-ms, else Retry-After in seconds or as an HTTP date."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if (millis := lowered.get("retry-after-ms")) is not None:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
