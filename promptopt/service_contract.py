"""The JSON the worker exchanges with a job's HTTP services: the program under optimization (spec.task.http) and a
webhook scorer (a scorer named Webhook). Version v1, documented in the API reference (docs/api-reference.md).

Why it lives here: the worker sends these requests and reads the answers, and the example services
(promptopt.example_services, run by the tests and by examples/http-rag.yaml from the worker image) read the requests
and send the answers; both import this one definition, which imports only the standard library.

Program: the worker POSTs, for one record,
    {"version": "v1", "prompts": [{"name", "role", "template"}...], "messages": [{"role", "content"}...],
     "inputs": {...}}
where `prompts` are the candidate's templates in the job's order and `messages` the same prompts rendered with the
record's inputs (what an LLM program would send); the service answers
    {"version": "v1", "output": "<text>", "usage": {"promptTokens": n, "completionTokens": n, "usd": x}}
with `usage` optional (its tokens are priced by spec.task.pricing when set; `usd` is taken as given otherwise).

Webhook scorer: the worker POSTs {"version": "v1", "scorer": "<key>", "inputs": {...}, "outputs": "<text>",
"expectations": {...}}; the service answers {"version": "v1", "score": <number in [0, 1] | "yes" | "no" | boolean>,
"rationale": "<why>"}, and the rationale becomes the feedback GEPA's reflection reads.

A request or an answer that breaks the contract raises ContractError saying what is wrong.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

VERSION = "v1"


class ContractError(ValueError):
    """A request or answer that does not follow the contract: says what is missing or malformed."""


@dataclass(frozen=True)
class ServiceUsage:
    """What a program's answer says it cost."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float | None = None


@dataclass(frozen=True)
class ProgramRequest:
    prompts: Sequence[Mapping[str, str]]  # {"name", "role", "template"} in the job's order
    messages: Sequence[Mapping[str, str]]  # {"role", "content"}: the prompts rendered with the inputs
    inputs: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "prompts": [dict(p) for p in self.prompts],
                "messages": [dict(m) for m in self.messages], "inputs": dict(self.inputs)}

    @classmethod
    def from_json(cls, body: Any) -> ProgramRequest:
        body = _versioned(body, "program request")
        prompts, messages, inputs = body.get("prompts"), body.get("messages"), body.get("inputs")
        if not isinstance(prompts, list) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("name", "role", "template"))
            for p in prompts
        ):
            raise ContractError('program request: "prompts" must be a list of {"name", "role", "template"} strings')
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ContractError('program request: "messages" must be a list of {"role", "content"} strings')
        if not isinstance(inputs, dict):
            raise ContractError('program request: "inputs" must be an object')
        return cls(prompts=prompts, messages=messages, inputs=inputs)

    def template(self, name: str) -> str | None:
        return next((p["template"] for p in self.prompts if p["name"] == name), None)


@dataclass(frozen=True)
class ProgramAnswer:
    output: str
    usage: ServiceUsage = field(default_factory=ServiceUsage)

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"version": VERSION, "output": self.output}
        usage = {"promptTokens": self.usage.prompt_tokens, "completionTokens": self.usage.completion_tokens}
        answer["usage"] = usage if self.usage.usd is None else {**usage, "usd": self.usage.usd}
        return answer

    @classmethod
    def from_json(cls, body: Any) -> ProgramAnswer:
        body = _versioned(body, "program answer")
        output = body.get("output")
        if not isinstance(output, str):
            raise ContractError(f'program answer: "output" must be a string, not {_kind(output)}')
        usage = body.get("usage") or {}
        if not isinstance(usage, dict):
            raise ContractError('program answer: "usage" must be an object of promptTokens, completionTokens, usd')
        tokens = {key: usage.get(key, 0) for key in ("promptTokens", "completionTokens")}
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in tokens.values()):
            raise ContractError("program answer: usage.promptTokens and usage.completionTokens must be whole "
                                "numbers of at least 0")
        usd = usage.get("usd")
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, (int, float)) or usd < 0):
            raise ContractError("program answer: usage.usd must be a number of at least 0")
        return cls(output, ServiceUsage(tokens["promptTokens"], tokens["completionTokens"],
                                        None if usd is None else float(usd)))


@dataclass(frozen=True)
class ScoreRequest:
    scorer: str
    inputs: Mapping[str, Any]
    outputs: str
    expectations: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "scorer": self.scorer, "inputs": dict(self.inputs), "outputs": self.outputs,
                "expectations": dict(self.expectations)}

    @classmethod
    def from_json(cls, body: Any) -> ScoreRequest:
        body = _versioned(body, "score request")
        scorer, inputs, outputs, expectations = (body.get(k) for k in ("scorer", "inputs", "outputs", "expectations"))
        if not isinstance(scorer, str) or not isinstance(outputs, str):
            raise ContractError('score request: "scorer" and "outputs" must be strings')
        if not isinstance(inputs, dict) or not isinstance(expectations, dict):
            raise ContractError('score request: "inputs" and "expectations" must be objects')
        return cls(scorer, inputs, outputs, expectations)


@dataclass(frozen=True)
class ScoreAnswer:
    score: Any  # a number in [0, 1], "yes"/"no" or a boolean: the worker's scorers.to_score reads it
    rationale: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "score": self.score, "rationale": self.rationale}

    @classmethod
    def from_json(cls, body: Any) -> ScoreAnswer:
        body = _versioned(body, "score answer")
        if "score" not in body:
            raise ContractError('score answer: no "score" (a number in [0, 1], "yes"/"no" or a boolean)')
        rationale = body.get("rationale") or ""
        if not isinstance(rationale, str):
            raise ContractError(f'score answer: "rationale" must be a string, not {_kind(rationale)}')
        return cls(body["score"], rationale)


def _versioned(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ContractError(f"{what}: the body must be a JSON object, not {_kind(body)}")
    if body.get("version") != VERSION:
        raise ContractError(f'{what}: "version" must be {VERSION!r} (the contract this worker speaks), '
                            f"not {body.get('version')!r}")
    return body


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def reference_markdown() -> str:
    """The contract's section of the API reference, its examples rendered by the classes above."""
    program = ProgramRequest(
        prompts=[{"name": "answer", "role": "user", "template": "Answer from the documentation.\n\n{{question}}"}],
        messages=[{"role": "user", "content": "Answer from the documentation.\n\nHow long does the battery last?"}],
        inputs={"question": "How long does the battery last?"},
    )
    output = ProgramAnswer("fourteen hours", ServiceUsage(prompt_tokens=812, completion_tokens=4, usd=0.00021))
    score = ScoreRequest("answer", program.inputs, output.output, {"expected_response": "fourteen hours"})
    verdict = ScoreAnswer(1.0, "the output is exactly the expected answer")

    def shown(body: Mapping[str, Any]) -> str:
        return "```json\n" + json.dumps(body, indent=2, ensure_ascii=False) + "\n```"

    return "\n\n".join([
        f"## HTTP services (contract {VERSION})",
        "A job's program (`spec.task.http`) and its Webhook scorers are services of yours that the worker POSTs JSON "
        f"to (`Content-Type: application/json`). Every body carries `\"version\": \"{VERSION}\"`; a service must "
        "answer with the same version, and the worker refuses an answer without it. Calls share the job's "
        "`spec.task.concurrency`, `timeoutSeconds` and `maxRetries`: 408, 409, 429, 5xx, timeouts and lost "
        "connections are retried with backoff (honouring `Retry-After`); any other error status, an answer that is "
        "not JSON or breaks the contract fails the job (reason LLMError) with a message naming the service. A "
        "service is sent candidate prompts, records and outputs, and only the headers the job names for it.",
        "### The program: one request per record",
        "`prompts` are the candidate's templates in the job's order, `messages` the same prompts rendered with the "
        "record's inputs (what a model program would be sent), `inputs` the record's inputs.",
        shown(program.to_json()),
        "The answer: `output` (a string) is what the scorers score. `usage` is optional: its tokens count in "
        "`status.cost` and are priced by `spec.task.pricing` when set, else `usd` is taken as given (0 without it).",
        shown(output.to_json()),
        "### A Webhook scorer: one request per output",
        shown(score.to_json()),
        "The answer: `score` is a number in [0, 1], `\"yes\"`/`\"no\"` or a boolean (a score outside [0, 1] fails that "
        "record, as an unusable judge verdict does); `rationale` becomes the feedback GEPA's reflection reads.",
        shown(verdict.to_json()),
    ]) + "\n"
