"""What the operator and the worker Pod agree on: the environment the operator sets, the exit codes and
outcomes the worker ends with, the status fields the worker owns, and the termination message that carries
its result when it cannot reach the API. Both sides import these names, so they cannot drift apart."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, get_args

from pydantic import Field, ValidationError

from promptopt.api.v1alpha1 import StatusObject, WorkerOutcome, WorkerStatus

JOB_NAME_ENV = "PROMPTOPT_JOB_NAME"
JOB_NAMESPACE_ENV = "PROMPTOPT_JOB_NAMESPACE"
ATTEMPT_ENV = "PROMPTOPT_ATTEMPT"
# The fingerprint of the spec the job started with (status.specHash).
SPEC_HASH_ENV = "PROMPTOPT_SPEC_HASH"
TERMINATION_MESSAGE_PATH_ENV = "PROMPTOPT_TERMINATION_MESSAGE_PATH"
# A persistent folder for gepa's checkpoint, so a replaced worker resumes instead of starting over.
CHECKPOINT_DIR_ENV = "PROMPTOPT_CHECKPOINT_DIR"
# litellm downloads its model-cost map when imported unless this tells it to use its bundled copy: clusters may
# allow no egress but to the LLM endpoints, and test machines have no network. The operator puts it into the worker
# Pod's environment; a process sets it with `use_bundled_litellm_cost_map` before litellm is imported, and puts
# it into the environment of children that may not.
LITELLM_BUNDLED_COST_MAP_ENV: Mapping[str, str] = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def use_bundled_litellm_cost_map() -> None:
    """Make litellm, imported later by this process or the processes it starts, use its bundled cost map."""
    os.environ.update(LITELLM_BUNDLED_COST_MAP_ENV)


EXIT_SUCCEEDED = 0  # a usable result (completed, or stopped early with the best so far)
EXIT_FAILED = 1  # may succeed on another attempt
EXIT_INVALID_INPUT = 2  # no attempt can fix it: the spec, prompts or dataset must change

# Outcomes that no new worker Pod can fix: the operator fails the job instead of retrying. TooManyFailedExamples
# is one: each record's judge answer was already asked for again (exampleFailurePolicy.judgeRetries), so another
# Pod would make the same calls, spend the same money and fail the same way; the fix is a change to the job (a
# judge model that keeps the verdict format, or a higher maxFailedFraction).
PERMANENT_FAILURES: tuple[WorkerOutcome, ...] = ("InvalidInput", "LLMError", "TooManyFailedExamples")
assert set(PERMANENT_FAILURES) <= set(get_args(WorkerOutcome))
# Outcomes that end with a usable result when a best candidate exists: finished, or stopped early with the best so far.
SUCCEEDED_OUTCOMES: tuple[WorkerOutcome, ...] = (
    "Completed",
    "GoalReached",
    "NoImprovement",
    "PerfectScore",
    "BudgetExhausted",
    "DeadlineReached",
    "Cancelled",
)

# The status fields the worker writes; the operator writes every other one.
WORKER_STATUS_FIELDS: tuple[str, ...] = tuple(field.alias or name for name, field in WorkerStatus.model_fields.items())

# Where the container writes its termination message, and the kubelet's limit for it.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT_BYTES = 4096


class TerminationMessage(WorkerStatus):
    """The worker's result, shaped like its status fields, written where the kubelet reads the container's
    termination message. The operator copies it into the status when the worker could not write it there.
    Prompts cut to fit the limit say so (`truncated`)."""


def render_termination_message(message: TerminationMessage) -> str:
    """The message as compact JSON (the size that counts against the limit)."""
    return json.dumps(
        message.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False, separators=(",", ":")
    )


def parse_termination_message(text: str | None) -> TerminationMessage | None:
    """The worker's message, or None when the text is something else (a crash leaves the tail of its log)."""
    try:
        document = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    try:
        return TerminationMessage.model_validate(document)
    except ValidationError:
        return None


class ModelsUsed(StatusObject):
    """The models a run called."""

    task: str | None = Field(None, description="The task model, or the URL of the job's HTTP task service.")
    judges: dict[str, str] | None = Field(None, description="Scorer key → the model of that LLM judge.")
    reflection: str | None = Field(
        None, description="The model that proposes prompts (GEPA's reflection model, MetaPrompt's metaprompt model)."
    )


class RunInfo(StatusObject):
    """What produced a result: the job, the optimizer and its settings, the models, when it ran, with which promptopt,
    and whether a simulated LLM answered. Every field is optional: older writers left it out."""

    job: str | None = Field(None, description="The job's name.")
    namespace: str | None = Field(None, description="The job's namespace (none when its file set none).")
    optimizer: str | None = Field(None, description="spec.optimizer.type.")
    optimizer_settings: dict[str, Any] | None = Field(
        None, description="spec.optimizer without its type and reflection model, with its wire names."
    )
    models: ModelsUsed | None = Field(None, description="The models the run called.")
    started_at: str | None = Field(None, description="When the run started (RFC 3339, UTC).")
    finished_at: str | None = Field(None, description="When the run ended (RFC 3339, UTC).")
    promptopt_version: str | None = Field(None, description="The version of promptopt that ran it.")
    simulated_llm: bool | None = Field(
        None,
        description="True when every model was promptopt's simulated LLM (`promptopt run --simulated-llm`), a "
        "test double: the scores say nothing about a real model.",
    )


class ResultFile(WorkerStatus):
    """The result file of `promptopt run -o`: the worker's status fields (every candidate with its prompts), and what
    produced them. `promptopt report` reads it back with this model."""

    run: RunInfo | None = Field(None, description="What produced the result; files of older versions lack it.")
