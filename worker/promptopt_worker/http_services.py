"""The job's own HTTP services: the program under optimization (spec.task.http) and webhook scorers.

The JSON they exchange is promptopt.service_contract (v1). This module sends one POST and classifies what came back,
as openai_compatible does for models; the LLMClient retries transient failures, enforces the budget and counts the
calls (`LLMClient.post`), so a service is held to the same timeouts, retries and accounting as a model. A service is
sent the candidate prompts, records and outputs, and the headers the job names for it: the job's other credentials
never leave the worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar


from promptopt.api.v1alpha1 import HttpHeader, TaskSpec
from promptopt.service_contract import (
    VERSION,
    ContractError,
    ProgramAnswer,
    ProgramRequest,
    ScoreAnswer,
    ServiceMessage,
    ServicePrompt,
)
from promptopt_worker.http_client import PooledPoster, failure_for_status
from promptopt_worker.llm_call import CallFailed, ChatAnswer, Metered, ModelEndpoint
from promptopt_worker.problem import Candidate, Example, InvalidInput, PromptTemplate
from promptopt_worker.redaction import add_secrets
from promptopt_worker.templates import messages

Answer = TypeVar("Answer", bound=Metered)

ANSWER_QUOTE_LIMIT = 500
SERVICE_HINTS = {
    401: "the service refused the request's credentials: check the header's credentialsKey and its value in the "
    "job's credentials Secret",
    403: "the service refused the request's credentials: check the headers the job sends it",
    404: "the service has no such endpoint: check the url",
    405: "the service does not take POST at this url: check the url",
}
SERVICE_REFUSED = f"the service refused the request: check that it speaks contract {VERSION} (the API reference)"


def resolve_headers(
    headers: Sequence[HttpHeader] | None, field: str, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The headers of a service's requests, credentials read from the environment (the credentials Secret's keys are
    the worker's environment variables) and registered for masking; InvalidInput naming the field when one is
    missing, before any call."""
    resolved = {}
    for index, header in enumerate(headers or []):
        if header.value is not None:
            resolved[header.name] = header.value
            continue
        key = header.credentials_key
        value = environ.get(key or "")
        if value is None:
            raise InvalidInput(
                f"{field}[{index}].credentialsKey: the credentials Secret has no key {key!r}: add it to the Secret "
                "named by spec.credentials.secretRef (for promptopt run, set the environment variable)"
            )
        add_secrets([value])
        resolved[header.name] = value
    return resolved


class ServiceCaller:
    """POSTs JSON to the job's services, a connection pool per URL."""

    def __init__(self) -> None:
        self._poster = PooledPoster()

    def post(
        self,
        endpoint: ModelEndpoint,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        read: Callable[[Any], Answer],
    ) -> Answer:
        """One call to the URL in endpoint.model; CallFailed (transient or not) for whatever is no usable answer."""
        response = self._poster.post(endpoint.model, endpoint.model, body, headers, endpoint.timeout_s)
        said = f"HTTP {response.status_code}: {response.text[:ANSWER_QUOTE_LIMIT] or response.reason_phrase}"
        if response.status_code >= 400:
            raise failure_for_status(response, said, SERVICE_HINTS.get(response.status_code, SERVICE_REFUSED))
        try:
            return read(response.json())
        except ContractError as error:
            raise CallFailed(False, f"its answer breaks contract {VERSION}: {error}", said) from None
        except ValueError:
            raise CallFailed(False, "its answer is not JSON", said) from None


class Poster(Protocol):
    """What a service's adapter needs of the LLMClient (which imports this module): its `post`."""

    def post(
        self,
        endpoint: ModelEndpoint,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        read: Callable[[Any], Answer],
    ) -> Answer: ...


def read_program_answer(body: Any) -> ChatAnswer:
    """A program's answer as the client meters it: the output, the tokens it reports and their price if it says."""
    answer = ProgramAnswer.from_json(body)
    usd = 0.0 if answer.usage.usd is None else answer.usage.usd  # unpriced unless spec.task.pricing prices it
    return ChatAnswer(answer.output, answer.usage.prompt_tokens, answer.usage.completion_tokens, usd)


class HttpProgram:
    """spec.task.http: the program under optimization as the user's service, one POST per record."""

    def __init__(self, prompts: Sequence[PromptTemplate], task: TaskSpec, client: Poster):
        if task.http is None:
            raise ValueError("the task is a model, not an HTTP service")
        self.prompts = list(prompts)
        self.client = client
        self.endpoint = ModelEndpoint.for_task_service(task)
        self.headers = resolve_headers(task.http.headers, "spec.task.http.headers")

    def output(self, candidate: Candidate, example: Example) -> str:
        request = ProgramRequest(
            prompts=[ServicePrompt(name=p.name, role=p.role, template=candidate[p.name]) for p in self.prompts],
            messages=[
                ServiceMessage(**message)
                for message in messages(self.prompts, candidate, example.inputs, record=example.index)
            ],
            inputs=dict(example.inputs),
        )
        return self.client.post(self.endpoint, self.headers, request.to_json(), read_program_answer).text


@dataclass(frozen=True)
class WebhookVerdict:
    """A webhook scorer's answer; its calls cost the job nothing it can count."""

    score: Any
    rationale: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float | None = 0.0


def read_webhook_verdict(body: Any) -> WebhookVerdict:
    answer = ScoreAnswer.from_json(body)
    return WebhookVerdict(answer.score, answer.rationale)
