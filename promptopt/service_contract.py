"""The JSON the worker exchanges with a job's HTTP services: the program under optimization (spec.task.http) and a
webhook scorer (a scorer named Webhook). Version v1, documented in the API reference (docs/api-reference.md).

Why it lives here: the worker sends these requests and reads the answers, and the example services
(promptopt.example_services, run by the tests and by examples/http-rag.yaml from the worker image) read the requests
and send the answers; both import this one definition: pydantic models that validate the JSON and give the API
reference its JSON Schema.

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

A request or an answer that breaks the contract raises ContractError saying what is wrong: the prompt contract's
(promptopt.prompt_contract), one error for every contract the worker and the product's test doubles hold each other
to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from itertools import takewhile
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptopt.prompt_contract import ContractError

VERSION: Literal["v1"] = "v1"


def _version_required(schema: dict[str, Any]) -> None:
    # "version" has a default so that code need not pass it, yet a body without it is refused: say so in the schema.
    schema["required"] = ["version", *schema.get("required", [])]


class _Message(BaseModel):
    """A body of the contract: strict JSON types (no "3" for 3, no true for 1), unknown keys ignored."""

    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True, json_schema_extra=_version_required)
    what: ClassVar[str]  # the body's name in messages: "program request"

    version: Literal["v1"] = Field(VERSION, description="The contract's version; a body of another one is refused.")

    @classmethod
    def from_json(cls, body: Any) -> Self:
        """The body read, or ContractError naming its first problem."""
        if not isinstance(body, dict):
            raise ContractError(f"{cls.what}: the body must be a JSON object, not {_kind(body)}")
        # First, as a body of another version may differ in every other field too.
        if body.get("version") != VERSION:
            raise ContractError(
                f'{cls.what}: "version" must be {VERSION!r} (the contract this worker speaks), '
                f"not {body.get('version')!r}"
            )
        try:
            return cls.model_validate(body)
        except ValidationError as error:
            raise ContractError(f"{cls.what}: {_problem(cls, error.errors()[0])}") from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ServicePrompt(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    name: str
    role: str
    template: str


class ServiceMessage(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    role: str
    content: str


class ProgramRequest(_Message):
    what = "program request"

    prompts: list[ServicePrompt] = Field(description="The candidate's templates, in the job's order.")
    messages: list[ServiceMessage] = Field(
        description="The same prompts rendered with the record's inputs: what a model program would be sent."
    )
    inputs: dict[str, Any] = Field(description="The record's inputs.")

    def template(self, name: str) -> str | None:
        return next((p.template for p in self.prompts if p.name == name), None)


Tokens = Annotated[int, Field(ge=0)]


class ServiceUsage(BaseModel):
    """What a program's answer says it cost."""

    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True)

    prompt_tokens: Tokens = Field(0, alias="promptTokens", description="Tokens the program sent to its models.")
    completion_tokens: Tokens = Field(0, alias="completionTokens", description="Tokens its models answered.")
    usd: Annotated[float, Field(ge=0)] | None = Field(
        None, description="What the call cost, taken as given unless spec.task.pricing prices its tokens."
    )


class ProgramAnswer(_Message):
    what = "program answer"

    output: str = Field(description="What the scorers score.")
    usage: ServiceUsage = Field(default_factory=ServiceUsage, description="Optional: what the call cost.")

    @field_validator("usage", mode="before")
    @classmethod
    def _null_usage(cls, usage: Any) -> Any:
        return ServiceUsage() if usage is None else usage


class ScoreRequest(_Message):
    what = "score request"

    scorer: str = Field(description="The scorer's key (its label, else its name).")
    inputs: dict[str, Any] = Field(description="The record's inputs.")
    outputs: str = Field(description="The output to score.")
    expectations: dict[str, Any] = Field(description="The record's expectations.")


class ScoreAnswer(_Message):
    what = "score answer"

    # Any value passes the contract: the worker's scorers.to_score reads it, and one it cannot read fails that record
    # (as an unusable judge verdict does), not the job.
    score: Any = Field(
        description='a number in [0, 1], "yes"/"no" or a boolean',
        json_schema_extra={
            "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"enum": ["yes", "no"]}, {"type": "boolean"}]
        },
    )
    rationale: str = Field("", description="Why: the feedback GEPA's reflection reads.")

    @field_validator("rationale", mode="before")
    @classmethod
    def _null_rationale(cls, rationale: Any) -> Any:
        return "" if rationale is None else rationale


# What a value must be, by pydantic's error type.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}


def _problem(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """One validation error in the contract's words, at the outermost field it is in (a list names its items'
    keys): '"output" must be a string, not int', '"usage.promptTokens" must be at least 0'."""
    path = list(takewhile(lambda part: isinstance(part, str), error["loc"]))
    fields: Mapping[str, Any] = model.model_fields
    field = None
    for name in path:
        field = next(f for key, f in fields.items() if name in (key, f.alias))
        fields = getattr(field.annotation, "model_fields", {})
    assert field is not None
    shown = ".".join(str(part) for part in path)
    if len(path) < len(error["loc"]):  # within a list: name what its items must hold
        items = getattr(field.annotation, "__args__", [None])[0]
        keys = ", ".join(f'"{key}"' for key in getattr(items, "model_fields", {}))
        return f'"{shown}" must be a list of {{{keys}}} objects with string values'
    if error["type"] == "missing":
        return f'no "{shown}"' + (f" ({field.description})" if field.description else "")
    if error["type"] in _EXPECTED:
        return f'"{shown}" must be {_EXPECTED[error["type"]]}, not {_kind(error["input"])}'
    if error["type"] == "greater_than_equal":
        return f'"{shown}" must be at least {error.get("ctx", {}).get("ge")}'
    return f'"{shown}": {error["msg"]}'


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def reference_markdown() -> str:
    """The contract's section of the API reference, its examples rendered by the classes above."""
    program = ProgramRequest(
        prompts=[ServicePrompt(name="answer", role="user", template="Answer from the documentation.\n\n{{question}}")],
        messages=[
            ServiceMessage(role="user", content="Answer from the documentation.\n\nHow long does the battery last?")
        ],
        inputs={"question": "How long does the battery last?"},
    )
    output = ProgramAnswer(
        output="fourteen hours", usage=ServiceUsage(prompt_tokens=812, completion_tokens=4, usd=0.00021)
    )
    score = ScoreRequest(
        scorer="answer",
        inputs=program.inputs,
        outputs=output.output,
        expectations={"expected_response": "fourteen hours"},
    )
    verdict = ScoreAnswer(score=1.0, rationale="the output is exactly the expected answer")

    def shown(body: Mapping[str, Any]) -> str:
        return "```json\n" + json.dumps(body, indent=2, ensure_ascii=False) + "\n```"

    def schema(message: type[_Message]) -> str:
        """The body's JSON Schema, folded away under its example."""
        return (
            f"<details><summary>JSON Schema of the {message.what}</summary>\n\n"
            + shown(message.model_json_schema(by_alias=True))
            + "\n\n</details>"
        )

    return (
        "\n\n".join(
            [
                f"## HTTP services (contract {VERSION})",
                "A job's program (`spec.task.http`) and its Webhook scorers are services of yours that the worker "
                f'POSTs JSON to (`Content-Type: application/json`). Every body carries `"version": "{VERSION}"`; a '
                "service must answer with the same version, and the worker refuses an answer without it. Calls share "
                "the job's `spec.task.concurrency`, `timeoutSeconds` and `maxRetries`: 408, 409, 429, 5xx, timeouts "
                "and lost connections are retried with backoff (honouring `Retry-After`); any other error status, an "
                "answer that is not JSON or breaks the contract fails the job (reason LLMError) with a message naming "
                "the service. A service is sent candidate prompts, records and outputs, and only the headers the job "
                "names for it.",
                "### The program: one request per record",
                "`prompts` are the candidate's templates in the job's order, `messages` the same prompts rendered with "
                "the record's inputs (what a model program would be sent), `inputs` the record's inputs.",
                shown(program.to_json()),
                schema(ProgramRequest),
                "The answer: `output` (a string) is what the scorers score. `usage` is optional: its tokens count in "
                "`status.cost` and are priced by `spec.task.pricing` when set, else `usd` is taken as given (0 without "
                "it).",
                shown(output.to_json()),
                schema(ProgramAnswer),
                "### A Webhook scorer: one request per output",
                shown(score.to_json()),
                schema(ScoreRequest),
                'The answer: `score` is a number in [0, 1], `"yes"`/`"no"` or a boolean (a score outside [0, 1] '
                "fails that record, as an unusable judge verdict does); `rationale` becomes the feedback GEPA's "
                "reflection reads.",
                shown(verdict.to_json()),
                schema(ScoreAnswer),
            ]
        )
        + "\n"
    )
