"""The PromptOptimizationJob API, version v1alpha1: the one definition of the custom resource.

The CRD in crds/ is generated from these models (`promptopt crd`), and the operator, the worker and
`promptopt run` parse jobs with them. Every cross-field rule is written twice on purpose: as a CEL rule
(`x-kubernetes-validations`, enforced by the API server at admission) and as a pydantic validator
(enforced on the laptop and by the operator); tests run both over the same documents so they agree.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic.json_schema import JsonDict

from promptopt.api.aggregation import MAX_LENGTH as AGGREGATION_MAX_LENGTH
from promptopt.api.aggregation import AggregationError, compile_aggregation

GROUP = "promptopt.dev"
VERSION = "v1alpha1"
# Literal-typed: the resource model's apiVersion and kind fields are Literals defaulting to these.
API_VERSION: Final = "promptopt.dev/v1alpha1"
KIND: Final = "PromptOptimizationJob"
PLURAL = "promptoptimizationjobs"
SINGULAR = "promptoptimizationjob"
SHORT_NAMES = ["poj"]

# `{{ name }}` placeholders in prompt templates, as MLflow writes them.
TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

OptimizerType = Literal["GEPA", "MetaPrompt"]
ScorerName = Literal[
    "ExactMatch",
    "Contains",
    "Regex",
    "Correctness",
    "Guidelines",
    "ExpectationsGuidelines",
    "RelevanceToQuery",
    "Safety",
    "Judge",
    "Webhook",
    "Registered",
]
LLM_JUDGE_SCORERS = ("Correctness", "Guidelines", "ExpectationsGuidelines", "RelevanceToQuery", "Safety", "Judge")
_JUDGES_NEED_A_MODEL = f"LLM judges ({', '.join(LLM_JUDGE_SCORERS)}) need a model; other scorers take none"
_REGISTERED_NEEDS_REGISTERED = (
    "the Registered scorer needs registered (the name of a scorer registered in MLflow); other scorers take none"
)
# The variables of a Judge scorer's instructions, as MLflow's make_judge names them.
JUDGE_VARIABLES = ("inputs", "outputs", "expectations")
Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"]
TERMINAL_PHASES = ("Succeeded", "Failed", "Cancelled")
# Phases that hold one of the operator's slots: the job has (or is about to get) a worker Pod.
ACTIVE_PHASES = ("Pending", "Running")
# Phases of jobs that have not started yet (None: not seen by an operator).
WAITING_PHASES = (None, "Queued")


def content_digest(text: str) -> str:
    """The first 16 hex digits of the SHA-256 of `text`: the digests status reports of what a job read or ran."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Kubernetes object names (RFC 1123 subdomain) and ConfigMap/Secret keys.
DNSSubdomain = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]
ConfigKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
# A prompt's name is also a key in status and in gepa's candidate: keep it identifier-like.
PromptName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]
# A litellm model id such as "openai/gpt-4.1-mini".
ModelId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class FieldError(ValueError):
    """A cross-field rule broken at `field` (a path relative to the model that checks it, like CEL's fieldPath)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _one_of_message(fields: tuple[str, ...]) -> str:
    return f"set exactly one of {', '.join(fields[:-1])} or {fields[-1]}"


def exactly_one_of(*fields: str, more_rules: tuple[JsonDict, ...] = ()) -> ConfigDict:
    """A model's config with the CEL rule for mutually exclusive, one-required fields (named as on the wire), and
    `more_rules` of the model's own."""
    if len(fields) == 2:
        check = f"has(self.{fields[0]}) != has(self.{fields[1]})"
    else:
        check = f"[{', '.join(f'has(self.{name})' for name in fields)}].filter(given, given).size() == 1"
    rule: JsonDict = {"rule": check, "message": _one_of_message(fields)}
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [rule, *more_rules]})


def require_exactly_one(model: BaseModel, *fields: str) -> None:
    """The same rule for the models."""
    if sum(getattr(model, to_snake(name)) is not None for name in fields) != 1:
        raise ValueError(_one_of_message(fields))


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StatusObject(ApiModel):
    """Base of status objects: written by our own code, read leniently so an older reader skips newer fields."""

    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------------------------
# spec.optimizer


BudgetPreset = Literal["light", "medium", "heavy"]
DEFAULT_MAX_METRIC_CALLS = 100


class EarlyStopping(ApiModel):
    """When GEPA stops before its budget is spent. The job then Succeeds with the best candidate found, and
    status.workerResult.reason says why it stopped."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.goal) || has(self.patience)",
                    "message": "set goal, patience or both",
                }
            ]
        }
    )

    goal: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Stop once the best candidate's aggregate validation score reaches this (reason GoalReached). "
        "The original prompts count: if they reach it, no iteration runs.",
    )
    patience: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Stop after this many iterations in a row without a candidate that scores better on validation "
        "(reason NoImprovement), counted from the start of each worker attempt.",
    )

    @model_validator(mode="after")
    def _something_is_set(self) -> EarlyStopping:
        if self.goal is None and self.patience is None:
            raise ValueError("set goal, patience or both")
        return self


class GepaSettings(ApiModel):
    """Settings of the GEPA optimizer (the `gepa` library's reflective evolutionary search)."""

    max_metric_calls: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Budget: the most (candidate, record) evaluations GEPA runs in all, across restarts; never "
        "exceeded. The first step scores the original prompts on every validation record; after it, an iteration "
        "starts only when the calls left cover its worst case (two minibatches of reflectionMinibatchSize records, "
        "then the validation records; with useMerge at least 5 + the validation records), so a run may end with up "
        "to that many calls unspent. Less than the validation records is refused. Default: the auto preset's "
        f"budget when auto is set, else {DEFAULT_MAX_METRIC_CALLS}; when both are set, this one wins.",
    )
    auto: BudgetPreset | None = Field(
        None,
        description="A budget sized from the job as DSPy's GEPA auto sizes it. With n = 6, 12 or 18 candidates for "
        "light, medium or heavy, P prompts and V validation records: T = max(4·P·log2(n), 1.5·n) trials (whole "
        "number), and V + 5·n + 35·T + (floor((T + 1) / 5) + 1 + (1 if T < 5 else 0))·V metric calls; for one "
        "prompt and 15 validation records, 440, 765 and 1,140. Ignored when maxMetricCalls is set.",
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Stop before the budget is spent: at a goal score, or after iterations without improvement.",
    )
    reflection_minibatch_size: int = Field(
        3,
        ge=1,
        le=100,
        description="How many training records each reflection step looks at when it proposes a new prompt.",
    )
    candidate_selection: Literal["pareto", "current_best", "epsilon_greedy"] = Field(
        "pareto",
        description="How the next candidate to improve is chosen: pareto (from the per-record Pareto front), "
        "current_best, or epsilon_greedy.",
    )
    use_merge: bool = Field(False, description="Also propose candidates that merge two good candidates' prompts.")
    seed: int = Field(0, ge=0, description="Random seed for candidate and minibatch selection.")
    # Optional rather than a default of true: a new default would change the fingerprint (status.specHash) of every
    # job stored before it, which would read as changed.
    stop_at_perfect_score: bool | None = Field(
        None,
        description="Stop once a candidate, the original prompts included, scores the maximum on validation "
        "(aggregate 1, or spec.optimizer.options.perfect_score): no candidate can beat it, and gepa would spend the "
        "rest of the budget re-scoring it (reason PerfectScore). On unless set to false.",
    )


class MetaPromptSettings(ApiModel):
    """Settings of the MetaPrompt optimizer (one reflection pass, zero-shot or few-shot)."""

    guidelines: str | None = Field(
        None,
        max_length=10_000,
        description="Extra instructions for the reflection model, e.g. house style or constraints the prompt "
        "must respect.",
    )
    max_examples: int = Field(
        20,
        ge=1,
        le=200,
        description="Few-shot mode: how many evaluated records (worst first) are shown to the reflection model.",
    )


class Pricing(ApiModel):
    """The price of a model litellm does not know (self-hosted or new models), for cost tracking and budgets."""

    input_per_million_tokens: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_million_tokens: float = Field(ge=0, description="USD per million completion tokens.")

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of a call of these tokens."""
        input_usd = prompt_tokens * self.input_per_million_tokens
        return (input_usd + completion_tokens * self.output_per_million_tokens) / 1e6


class OptimizerSpec(ApiModel):
    """Which optimizer runs, with which reflection model and settings."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gepa) || self.type == 'GEPA'",
                    "message": "optimizer.gepa is only valid with optimizer.type GEPA",
                    "fieldPath": ".gepa",
                },
                {
                    "rule": "!has(self.metaPrompt) || self.type == 'MetaPrompt'",
                    "message": "optimizer.metaPrompt is only valid with optimizer.type MetaPrompt",
                    "fieldPath": ".metaPrompt",
                },
            ]
        }
    )

    type: OptimizerType = Field(
        description="The optimizer: GEPA (iterative, needs a dataset) or MetaPrompt (one pass).",
    )
    reflection_model: ModelId = Field(
        description="The litellm model id that proposes new prompts, e.g. openai/gpt-4.1."
    )
    reflection_api_base: str | None = Field(
        None,
        max_length=2048,
        description="Base URL of an OpenAI-compatible endpoint for the reflection model. Defaults to task.apiBase.",
    )
    reflection_pricing: Pricing | None = Field(
        None, description="Price of the reflection model when litellm does not know it."
    )
    gepa: GepaSettings | None = Field(None, description="GEPA settings (only with type GEPA).")
    meta_prompt: MetaPromptSettings | None = Field(None, description="MetaPrompt settings (only with type MetaPrompt).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form options. GEPA: keyword arguments of gepa.optimize (like MLflow's gepa_kwargs, e.g. "
        "acceptance_criterion, module_selector, skip_perfect_score); they override the typed settings. MetaPrompt: "
        "litellm completion parameters of its reflection calls (like MLflow's lm_kwargs, e.g. temperature, "
        "max_tokens, reasoning_effort). A name the optimizer does not take, or one the worker sets itself (models, "
        "endpoints, keys, timeouts, retries, logging, stopping, checkpoints), ends the run with InvalidInput naming "
        "the key and the field to use instead.",
    )

    @model_validator(mode="after")
    def _settings_match_type(self) -> OptimizerSpec:
        if self.gepa is not None and self.type != "GEPA":
            raise FieldError("gepa", "optimizer.gepa is only valid with optimizer.type GEPA")
        if self.meta_prompt is not None and self.type != "MetaPrompt":
            raise FieldError("metaPrompt", "optimizer.metaPrompt is only valid with optimizer.type MetaPrompt")
        return self

    @property
    def gepa_settings(self) -> GepaSettings:
        return self.gepa or GepaSettings()

    @property
    def meta_prompt_settings(self) -> MetaPromptSettings:
        return self.meta_prompt or MetaPromptSettings()


# ---------------------------------------------------------------------------------------------
# spec.prompts, spec.dataset


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the job's namespace."""

    name: DNSSubdomain = Field(description="The ConfigMap's name.")
    key: ConfigKey = Field(description="The key whose value is read.")


# MLflow Prompt Registry URIs, as MLflow accepts them: a version, an alias, or the latest version.
PROMPT_URI = r"^prompts:/[A-Za-z0-9][\w.-]*(/[0-9]+|@[A-Za-z][\w-]*)$"
RegistryPromptName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][\w.-]*$")]


class PromptSpec(ApiModel):
    """One prompt template under optimization; `{{variable}}` placeholders are filled from a record's inputs."""

    model_config = exactly_one_of("template", "configMapKeyRef", "registryUri")

    name: PromptName = Field(description="The prompt's name: its key in status.optimizedPrompts.")
    role: Literal["system", "user", "assistant"] = Field(
        "user", description="The chat role of the message this template becomes. Prompts are sent in list order."
    )
    template: str | None = Field(None, max_length=100_000, description="The template text, inline.")
    config_map_key_ref: ConfigMapKeyRef | None = Field(None, description="Read the template from a ConfigMap key.")
    registry_uri: Annotated[str, StringConstraints(max_length=300, pattern=PROMPT_URI)] | None = Field(
        None,
        description="Read the template from MLflow's Prompt Registry (spec.mlflow): prompts:/<name>/<version>, "
        "prompts:/<name>@<alias> or prompts:/<name>@latest. The version it resolves to when the job starts is in "
        "status.mlflow.sourcePrompts, and a replaced worker Pod reads that same version.",
    )
    register_as: RegistryPromptName | None = Field(
        None,
        description="With spec.mlflow.registerOptimizedPrompts: the registry prompt the optimized template becomes a "
        "new version of. Default: the registryUri's prompt; a prompt from elsewhere is registered only when set.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> PromptSpec:
        require_exactly_one(self, "template", "configMapKeyRef", "registryUri")
        return self

    @property
    def registry_name(self) -> str | None:
        """The registry prompt its optimized template is registered as, if any."""
        if self.register_as is not None:
            return self.register_as
        return self.registry_uri.removeprefix("prompts:/").split("/")[0].split("@")[0] if self.registry_uri else None


class Record(ApiModel):
    """One example in MLflow's evaluation format."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", alias_generator=None)

    inputs: dict[str, Any] = Field(description="Values of the template variables, by name.")
    expectations: dict[str, Any] = Field(
        default_factory=dict,
        description="What a good output looks like: expected_response (used by ExactMatch, Contains, "
        "Correctness), guidelines (per-record guidelines for the Guidelines scorer), or your own keys.",
    )


class DatasetConfigMapKeyRef(ConfigMapKeyRef):
    """A ConfigMap key holding the records as JSON (an array), JSONL (one record a line) or CSV."""

    format: Literal["json", "jsonl", "csv"] | None = Field(
        None,
        description="The data format; by default taken from the key's extension (.json, .jsonl, .csv). CSV "
        "columns named expected_response or expectations.<key> become expectations; the others become inputs.",
    )


_TRAINING_LEFT = "testFraction and validationFraction must leave records to train on: their sum is under 1"


class DatasetSpec(ApiModel):
    """The records the prompts are evaluated on."""

    model_config = exactly_one_of(
        "records",
        "configMapKeyRef",
        "mlflowDatasetId",
        more_rules=(
            {
                "rule": "!has(self.testFraction) || (has(self.validationFraction) ? self.validationFraction : 0.0) "
                "+ self.testFraction < 1.0",
                "message": _TRAINING_LEFT,
                "fieldPath": ".testFraction",
            },
        ),
    )

    records: list[Record] | None = Field(None, min_length=1, max_length=5000, description="The records, inline.")
    config_map_key_ref: DatasetConfigMapKeyRef | None = Field(
        None, description="Read the records from a ConfigMap key."
    )
    mlflow_dataset_id: Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9][\w-]*$")] | None = Field(
        None,
        description="Read the records from this MLflow evaluation dataset (MLflow's dataset_id, e.g. d-3f2a...; "
        "spec.mlflow names the server). A digest of its records is in status.mlflow.datasetDigest: a replaced "
        "worker Pod refuses records that changed since the job started.",
    )
    validation_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Hold out this fraction of the records (at least one) for validation: GEPA selects "
        "candidates on it and the reported scores come from it. By default all records are used for both.",
    )
    test_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Hold out this fraction of the records (at least one) as a test set, before the validation split: "
        "the optimizer never sees them, and at the end the original and the optimized prompts are scored on them "
        "(initialScores.test, finalScores.test): an estimate of how the prompts do on new records, which the "
        "validation scores (used to select the best candidate) overstate. Its evaluations are not metric calls.",
    )
    shuffle_seed: int = Field(0, ge=0, description="Seed of the shuffle that makes the test and validation splits.")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DatasetSpec:
        require_exactly_one(self, "records", "configMapKeyRef", "mlflowDatasetId")
        if (self.test_fraction or 0) + (self.validation_fraction or 0) >= 1:
            raise FieldError("testFraction", _TRAINING_LEFT)
        return self


# ---------------------------------------------------------------------------------------------
# spec.task, spec.scorers


HeaderName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


class HttpHeader(ApiModel):
    """A header of the requests to an HTTP service: a literal value, or one kept in the job's credentials Secret."""

    model_config = exactly_one_of("value", "credentialsKey")

    name: HeaderName = Field(description="The header's name, e.g. Authorization.")
    value: str | None = Field(
        None, max_length=8192, description="A literal value (not for secrets: it is in the spec)."
    )
    credentials_key: ConfigKey | None = Field(
        None,
        description="A key of the credentials Secret (spec.credentials) whose value is sent, e.g. one holding "
        "'Bearer <token>'. Masked in everything the worker writes.",
    )

    @model_validator(mode="after")
    def _exactly_one_value(self) -> HttpHeader:
        require_exactly_one(self, "value", "credentialsKey")
        return self


class HttpService(ApiModel):
    """An HTTP endpoint of yours that the worker POSTs JSON to (contract v1 in the API reference's 'HTTP services'
    section). It is sent candidate prompts, records and outputs, never the job's credentials but its own headers.
    Calls share spec.task's concurrency, timeoutSeconds and maxRetries (408, 409, 429, 5xx, timeouts and lost
    connections are retried with backoff)."""

    url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s/]+(/\S*)?$")] = Field(
        description="The URL POSTed to, e.g. http://rag.default.svc:8080/answer."
    )
    headers: list[HttpHeader] | None = Field(None, max_length=20, description="Headers sent with every request.")


class TaskSpec(ApiModel):
    """The program under optimization: the prompts, rendered with a record's inputs, sent to a model; or your own
    program (a RAG pipeline, an agent) behind an HTTP endpoint that is sent the prompts and a record's inputs."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.model) != has(self.http)", "message": "set exactly one of model or http"},
                {
                    "rule": "!has(self.http) || !(has(self.temperature) || has(self.maxTokens) || has(self.topP) || "
                    "has(self.parameters))",
                    "message": "temperature, maxTokens, topP and parameters are sent to a model; an http task takes "
                    "none",
                    "fieldPath": ".http",
                },
            ]
        }
    )

    model: ModelId | None = Field(
        None, description="The litellm model id that runs the prompts, e.g. openai/gpt-4.1-mini."
    )
    http: HttpService | None = Field(
        None,
        description="Your program as an HTTP service instead of a model: for each record it is POSTed the candidate "
        "prompts and the record's inputs, and answers the output that the scorers score.",
    )
    api_base: str | None = Field(
        None,
        max_length=2048,
        description="Base URL of an OpenAI-compatible endpoint (vLLM, a proxy, ...). Also the default for "
        "the reflection model and the judges.",
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = Field(None, ge=1, description="Maximum tokens in each answer.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling probability mass.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Other litellm completion parameters, passed through as given."
    )
    concurrency: int = Field(8, ge=1, le=256, description="How many LLM calls of one evaluation run at once.")
    timeout_seconds: float = Field(60, gt=0, le=3600, description="Timeout of one LLM call.")
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries of a transient LLM error (429, 5xx, timeout), with backoff."
    )
    pricing: Pricing | None = Field(
        None,
        description="Price of the task model when litellm does not know it; for an http task, the price of the "
        "tokens its answers report in usage.",
    )

    @model_validator(mode="after")
    def _one_program(self) -> TaskSpec:
        require_exactly_one(self, "model", "http")
        if self.http is not None and (
            self.temperature is not None
            or self.max_tokens is not None
            or self.top_p is not None
            or "parameters" in self.model_fields_set
        ):
            raise FieldError(
                "http", "temperature, maxTokens, topP and parameters are sent to a model; an http task takes none"
            )
        return self


class ScorerParams(ApiModel):
    """Parameters of a built-in scorer."""

    case_sensitive: bool = Field(False, description="ExactMatch, Contains: compare with case.")
    pattern: str | None = Field(
        None,
        max_length=10_000,
        description="Regex: a Python regular expression the output must match (re.search).",
    )
    guidelines: list[str] | None = Field(
        None,
        max_length=50,
        description="Guidelines: what a good response must do; each record's expectations.guidelines adds to it.",
    )
    instructions: str | None = Field(
        None,
        max_length=20_000,
        description="Judge: what the judge model is asked, as a template over {{ inputs }} (the record's inputs, "
        "JSON), {{ outputs }} (the program's output) and {{ expectations }} (the record's expectations, JSON), as "
        "MLflow's make_judge writes it; it must use at least one of them, and no other variable. The judge answers "
        "yes or no with a rationale, as the built-in judges do, e.g. 'Does {{ outputs }} answer the question in "
        "{{ inputs }} the way {{ expectations }} says? Answer yes only if it does.'",
    )


class RegisteredScorer(ApiModel):
    """A judge registered in the job's MLflow experiment (spec.mlflow.experiment), as MLflow's make_judge writes one
    and scorer.register(name=...) stores it: its instructions over {{ inputs }}, {{ outputs }} and {{ expectations }},
    and its model. The worker reads it when the job starts and asks it as it asks a Judge scorer's instructions (yes
    or no, with a rationale). A registered @scorer Python function, a built-in or third-party scorer, or a judge of
    traces fails the job before any LLM call, saying what to use instead."""

    name: PromptName = Field(
        description="The name it was registered under (scorer.register(name=...)), which is also its key unless label "
        "is set, so a key's shape: a letter, then letters, digits, _ or -."
    )
    version: int | None = Field(None, ge=1, description="The version to read; the latest when unset.")


class ScorerSpec(ApiModel):
    """One scorer: a built-in metric or LLM judge giving a score in [0, 1] to each output."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.name != 'Regex' || (has(self.params) && has(self.params.pattern))",
                    "message": "the Regex scorer needs params.pattern",
                },
                {
                    "rule": "self.name != 'Guidelines' || (has(self.params) && has(self.params.guidelines))",
                    "message": "the Guidelines scorer needs params.guidelines",
                },
                {
                    "rule": "self.name != 'Judge' || (has(self.params) && has(self.params.instructions) && "
                    "self.params.instructions.matches('\\\\{\\\\{\\\\s*(inputs|outputs|expectations)\\\\s*\\\\}\\\\}'))",
                    "message": "the Judge scorer needs params.instructions using {{ inputs }}, {{ outputs }} or "
                    "{{ expectations }}",
                },
                {
                    "rule": "self.name == 'Registered' || "
                    f"has(self.model) == (self.name in [{', '.join(repr(n) for n in LLM_JUDGE_SCORERS)}])",
                    "message": _JUDGES_NEED_A_MODEL,
                    "fieldPath": ".model",
                },
                {
                    "rule": "has(self.http) == (self.name == 'Webhook')",
                    "message": "the Webhook scorer needs http; other scorers take none",
                    "fieldPath": ".http",
                },
                {
                    "rule": "has(self.registered) == (self.name == 'Registered')",
                    "message": _REGISTERED_NEEDS_REGISTERED,
                    "fieldPath": ".registered",
                },
            ]
        }
    )

    name: ScorerName = Field(
        description="The scorer: ExactMatch, Contains (expected_response appears in the output), Regex; LLM judges "
        "as MLflow names them: Correctness (against expected_response), Guidelines (against params.guidelines and "
        "each record's expectations.guidelines), ExpectationsGuidelines (against each record's "
        "expectations.guidelines only), RelevanceToQuery (does the output address the inputs), Safety (is the "
        "output free of harmful content), Judge (your instructions); Webhook (your HTTP service scores it); or "
        "Registered (a judge registered in MLflow, named in registered)."
    )
    label: PromptName | None = Field(
        None,
        description="The key of this scorer's scores in status and in spec.aggregation (defaults to name, or "
        "for a Registered scorer to registered.name); unique in the job.",
    )
    weight: float = Field(1.0, gt=0, description="Weight of this scorer in the aggregate (weighted mean).")
    model: ModelId | None = Field(
        None,
        description="LLM judges only: the litellm model id of the judge. A Registered scorer takes the model "
        "it was registered with (openai:/gpt-4.1-mini is openai/gpt-4.1-mini), unless this is set.",
    )
    api_base: str | None = Field(
        None, max_length=2048, description="LLM judges: base URL of the judge's endpoint. Defaults to task.apiBase."
    )
    pricing: Pricing | None = Field(
        None,
        description="LLM judges: price of the judge model when litellm does not know it.",
    )
    http: HttpService | None = Field(
        None,
        description="Webhook only: the service POSTed the record's inputs and expectations and the output; it "
        "answers a score and a rationale that GEPA's reflection reads as feedback.",
    )
    params: ScorerParams | None = Field(None, description="Parameters of the scorer.")
    registered: RegisteredScorer | None = Field(
        None,
        description="Registered only: the judge registered in spec.mlflow.experiment that scores the outputs.",
    )

    @property
    def key(self) -> str:
        return self.label or (self.registered.name if self.registered else self.name)

    @model_validator(mode="after")
    def _params_fit_scorer(self) -> ScorerSpec:
        if self.name == "Regex":
            if self.params is None or self.params.pattern is None:
                raise ValueError("the Regex scorer needs params.pattern")
            try:
                re.compile(self.params.pattern)
            except re.error as exc:
                raise ValueError(f"params.pattern is not a valid regular expression: {exc}") from None
        if self.name == "Guidelines" and (self.params is None or self.params.guidelines is None):
            raise ValueError("the Guidelines scorer needs params.guidelines")
        if self.name == "Judge":
            _check_judge_instructions(self.params.instructions if self.params else None)
        if self.name != "Registered" and (self.model is not None) != (self.name in LLM_JUDGE_SCORERS):
            raise FieldError("model", _JUDGES_NEED_A_MODEL)
        if (self.http is not None) != (self.name == "Webhook"):
            raise FieldError("http", "the Webhook scorer needs http; other scorers take none")
        if (self.registered is not None) != (self.name == "Registered"):
            raise FieldError("registered", _REGISTERED_NEEDS_REGISTERED)
        return self


def _check_judge_instructions(instructions: str | None) -> None:
    """A Judge's instructions use at least one of JUDGE_VARIABLES and nothing else (the CEL rule can check the
    first half only: Kubernetes' regular expressions cannot say 'no other name')."""
    used = template_variables(instructions or "")
    if not used & set(JUDGE_VARIABLES):
        raise ValueError(
            "the Judge scorer needs params.instructions using {{ inputs }}, {{ outputs }} or {{ expectations }}"
        )
    if unknown := sorted(used - set(JUDGE_VARIABLES)):
        named = ", ".join("{{ " + name + " }}" for name in unknown)
        raise FieldError(
            "params.instructions",
            f"params.instructions uses {named}: a judge's instructions may use "
            "only {{ inputs }}, {{ outputs }} and {{ expectations }}",
        )


# ---------------------------------------------------------------------------------------------
# spec: credentials, run control, worker pod


class SecretRef(ApiModel):
    """A Secret in the job's namespace."""

    name: DNSSubdomain = Field(description="The Secret's name.")


class CredentialsSpec(ApiModel):
    """Where the worker finds its LLM API keys."""

    secret_ref: SecretRef = Field(
        description="A Secret whose keys become the worker's environment variables (OPENAI_API_KEY, ...)."
    )


# How often a judge whose answer is no usable verdict is asked again before its example counts as failed.
DEFAULT_JUDGE_RETRIES = 2


class ExampleFailurePolicy(ApiModel):
    """What a record that cannot be scored does to the run: an LLM judge's answer that holds no usable verdict
    is asked for again, then the record counts as failed for that candidate. A failed record enters the
    optimizer's numbers as 0 and gives its reason to the reflection model as feedback, but enters no reported
    mean (initialScores and finalScores leave it out and count it in failedExamples)."""

    judge_retries: int = Field(
        DEFAULT_JUDGE_RETRIES,
        ge=0,
        le=5,
        description="How many more times a judge is asked when its answer is no usable verdict (each a fresh call "
        "that shows the judge its answer and the format); then the record counts as failed.",
    )
    max_failed_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="The run stops (workerResult.reason TooManyFailedExamples, the job fails) once more "
        "evaluations have failed than this fraction of the run's budget: optimizer.gepa.maxMetricCalls for GEPA, "
        "the evaluations of its one pass for MetaPrompt (progress.maxMetricCalls). 0 stops at the first failed "
        "record, 1 never stops.",
    )


class BudgetSpec(ApiModel):
    """Cost control."""

    max_cost_usd: float = Field(
        gt=0,
        alias="maxCostUSD",
        description="Stop when the LLM calls have cost this many US dollars; the best prompt so far is kept.",
    )


class KeyRef(ApiModel):
    """A key of a Secret or ConfigMap."""

    name: DNSSubdomain = Field(description="The object's name.")
    key: ConfigKey = Field(description="The key.")


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from."""

    model_config = exactly_one_of("secretKeyRef", "configMapKeyRef")

    secret_key_ref: KeyRef | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> EnvVarSource:
        require_exactly_one(self, "secretKeyRef", "configMapKeyRef")
        return self


class EnvVar(ApiModel):
    """An environment variable of the worker container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!(has(self.value) && has(self.valueFrom))", "message": "set value or valueFrom, not both"}
            ]
        }
    )

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="The name.")
    value: str | None = Field(None, description="A literal value.")
    value_from: EnvVarSource | None = Field(None, description="Take the value from a Secret or ConfigMap key.")

    @model_validator(mode="after")
    def _one_value(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


Quantity = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")]


class ResourceRequirements(ApiModel):
    """Compute resources of the worker container, as in a Pod spec."""

    requests: dict[str, Quantity] | None = Field(
        None,
        description="Minimum resources, e.g. {cpu: 500m, memory: 512Mi}.",
    )
    limits: dict[str, Quantity] | None = Field(None, description="Maximum resources, e.g. {memory: 1Gi}.")


class Toleration(ApiModel):
    """A Pod toleration, as in a Pod spec."""

    key: str | None = Field(None, description="The taint key; empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: str | None = Field(None, description="The taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(None, description="NoExecute: how long the Pod stays bound after the taint.")


class WorkerSpec(ApiModel):
    """Overrides of the worker Pod the operator creates."""

    image: str | None = Field(
        None,
        max_length=1024,
        description="The worker image; defaults to the operator's setting.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(None, description="Image pull policy.")
    resources: ResourceRequirements | None = Field(None, description="Container resources; defaults to the operator's.")
    node_selector: dict[str, str] | None = Field(None, description="Node labels the Pod must run on.")
    tolerations: list[Toleration] | None = Field(None, max_length=50, description="Taints the Pod tolerates.")
    service_account_name: DNSSubdomain | None = Field(
        None, description="The Pod's ServiceAccount; it must be allowed to read the job and patch its status."
    )
    env: list[EnvVar] | None = Field(None, max_length=100, description="Extra environment variables of the worker.")
    checkpoint_claim_name: DNSSubdomain | None = Field(
        None,
        description="A PersistentVolumeClaim where the worker keeps the optimizer's checkpoint (GEPA's state after "
        "each iteration), so a replaced worker Pod resumes instead of starting over.",
    )


class ConfigMapOutput(ApiModel):
    """A ConfigMap in the job's namespace that receives the optimized prompts, one key per prompt name, for
    applications to mount. Labelled with the job (app.kubernetes.io/managed-by: promptopt-operator, promptopt.dev/job)
    and annotated with its uid, outcome and initial and final aggregate scores."""

    name: DNSSubdomain = Field(description="The ConfigMap's name.")
    owned_by_job: bool = Field(
        False,
        description="Make the job the ConfigMap's owner, so deleting the job (or its ttlSecondsAfterFinished) deletes "
        "the ConfigMap too. By default it outlives the job.",
    )


class PromptRegistration(ApiModel):
    """Register each optimized prompt in MLflow's Prompt Registry as a new version of its prompt
    (prompts[].registerAs, else the registryUri's prompt), tagged with the job (promptopt.dev/job, namespace, uid)
    and its initial and final aggregate scores."""

    alias: Annotated[str, StringConstraints(max_length=256, pattern=r"^[A-Za-z][\w-]*$")] | None = Field(
        None,
        description="Also point this alias (for example candidate) at each new version.",
    )


class MlflowSpec(ApiModel):
    """The MLflow tracking server the job's registry prompts come from and go to. Credentials come from the job's
    credentials Secret, as MLflow's client reads them: MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD. An unreachable server, a refused login, or a missing prompt, version or alias fails
    the job before any LLM call (reason InvalidInput), naming what to fix."""

    tracking_uri: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s/]+(/\S*)?$")] = Field(
        description="The tracking server's URL, e.g. http://mlflow.mlops.svc:5000.",
    )
    experiment: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = Field(
        None,
        description="Log one MLflow run per job in this experiment (created when missing), as MLflow's GEPA optimizer "
        "logs one: the optimizer's settings as params, the best score and the metric calls per iteration as metrics, "
        "the initial and final scores per scorer, every candidate's prompts as artifacts. Its run and experiment ids "
        "are in status.mlflow; it ends KILLED when the job is cancelled, FINISHED when it has a result, FAILED "
        "otherwise. A replaced worker Pod logs to the same run.",
    )
    register_optimized_prompts: PromptRegistration | None = Field(
        None,
        description="Register the optimized prompts as new versions when the run produced a result (Succeeded, or "
        "Cancelled with a best so far). A registration that fails loses nothing: the prompts stay in status, "
        "status.mlflow.registrationError says why, and it is tried again with back-off while the worker runs.",
    )


class OutputSpec(ApiModel):
    """Where the optimized prompts are delivered besides status.optimizedPrompts, once the job has ended. Succeeded:
    the best prompts. Cancelled: the best so far, when the worker had one, annotated promptopt.dev/best-so-far:
    "true". Failed: nothing. A ConfigMap of that name that another job or a person made is never overwritten: the
    OutputWritten condition says so (reason OutputConflict). Prompts the operator recovered only in part from the
    Pod's termination message are not written either (reason PromptsTruncated)."""

    config_map: ConfigMapOutput | None = Field(None, description="Write the optimized prompts to this ConfigMap.")


# ---------------------------------------------------------------------------------------------
# spec


_REGISTRY_NEEDS_MLFLOW = "prompts from or to MLflow's registry (registryUri, registerAs) need spec.mlflow"
_DATASET_NEEDS_MLFLOW = "a dataset from MLflow (dataset.mlflowDatasetId) needs spec.mlflow"
_REGISTERED_NEEDS_EXPERIMENT = (
    "a Registered scorer is read from spec.mlflow.experiment: set it to the experiment the scorer is registered in"
)
_AGGREGATION_NEEDS_SCORERS = "spec.aggregation combines the scorers' scores: it needs spec.scorers"
_UNIQUE_SCORER_KEYS = (
    "scorer keys (label, or name when no label: registered.name for a Registered scorer) must be unique"
)


def _cel_scorer_key(scorer: str) -> str:
    """ScorerSpec.key in CEL."""
    return (
        f"(has({scorer}.label) ? {scorer}.label : has({scorer}.registered) ? {scorer}.registered.name : {scorer}.name)"
    )


# Spec fields whose change applies to a running job; a change to any other field does not (see status.specHash).
MUTABLE_SPEC_FIELDS = ("cancel", "ttl_seconds_after_finished")


class PromptOptimizationJobSpec(ApiModel):
    """What to optimize, how, and within which limits."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.optimizer.type != 'GEPA' || has(self.dataset)",
                    "message": "the GEPA optimizer needs a dataset",
                    "fieldPath": ".dataset",
                },
                {
                    "rule": "!has(self.dataset) || (has(self.scorers) && size(self.scorers) > 0)",
                    "message": "a job with a dataset needs at least one scorer",
                    "fieldPath": ".scorers",
                },
                {
                    "rule": "!self.prompts.exists(p, has(p.registryUri) || has(p.registerAs)) || has(self.mlflow)",
                    "message": _REGISTRY_NEEDS_MLFLOW,
                    "fieldPath": ".mlflow",
                },
                {
                    "rule": "!has(self.dataset) || !has(self.dataset.mlflowDatasetId) || has(self.mlflow)",
                    "message": _DATASET_NEEDS_MLFLOW,
                    "fieldPath": ".mlflow",
                },
                {
                    "rule": "self.prompts.all(p, self.prompts.exists_one(q, q.name == p.name))",
                    "message": "prompt names must be unique",
                    "fieldPath": ".prompts",
                },
                {
                    "rule": "!has(self.scorers) || self.scorers.all(s, self.scorers.exists_one(t, "
                    f"{_cel_scorer_key('t')} == {_cel_scorer_key('s')}))",
                    "message": _UNIQUE_SCORER_KEYS,
                    "fieldPath": ".scorers",
                },
                {
                    "rule": "!has(self.scorers) || !self.scorers.exists(s, has(s.registered)) || "
                    "(has(self.mlflow) && has(self.mlflow.experiment))",
                    "message": _REGISTERED_NEEDS_EXPERIMENT,
                    "fieldPath": ".mlflow",
                },
                {
                    "rule": "!has(self.aggregation) || has(self.scorers)",
                    "message": _AGGREGATION_NEEDS_SCORERS,
                    "fieldPath": ".aggregation",
                },
            ]
        }
    )

    optimizer: OptimizerSpec = Field(description="The optimizer and its settings.")
    prompts: list[PromptSpec] = Field(min_length=1, max_length=20, description="The prompt templates to optimize.")
    task: TaskSpec = Field(description="The model that runs the prompts.")
    dataset: DatasetSpec | None = Field(
        None, description="Records to evaluate on. Without one, MetaPrompt rewrites the prompts zero-shot."
    )
    scorers: list[ScorerSpec] | None = Field(None, max_length=20, description="How outputs are scored.")
    aggregation: Annotated[str, StringConstraints(min_length=1, max_length=AGGREGATION_MAX_LENGTH)] | None = Field(
        None,
        description="A record's aggregate score from its scorers' scores, as a CEL expression over scores.<key> (a "
        'scorer\'s label, else its name; scores["<key>"] for a key with a dash), each in [0, 1]; it must give a '
        "number in [0, 1]. Besides CEL's operators, min and max take two or more numbers or one list, e.g. "
        "'min(scores.correctness, scores.safety)' or 'scores.safety < 0.5 ? 0.0 : scores.correctness'. Every "
        "score the job reports (candidates, initial, final and test scores) is the mean of it over the records. "
        "Unset: the scorers' weighted mean (weight).",
    )
    credentials: CredentialsSpec | None = Field(None, description="LLM API keys for the worker.")
    budget: BudgetSpec | None = Field(None, description="Cost limit of the job's LLM calls.")
    example_failure_policy: ExampleFailurePolicy | None = Field(
        None, description="What records that cannot be scored (unusable judge answers) do to the run."
    )
    cancel: bool = Field(
        False,
        description="Set to true to stop the job: its Pod is stopped, the best result so far is kept, "
        "and the job ends Cancelled.",
    )
    backoff_limit: int = Field(2, ge=0, le=100, description="How many times a failed worker Pod is replaced.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Time limit of the job from its start; past it the job fails with DeadlineExceeded."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this many seconds after it finishes."
    )
    worker: WorkerSpec | None = Field(None, description="Overrides of the worker Pod.")
    output: OutputSpec | None = Field(None, description="Where the optimized prompts are delivered when the job ends.")
    mlflow: MlflowSpec | None = Field(
        None,
        description="MLflow's Prompt Registry: prompts to start from (prompts[].registryUri) and to register.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> PromptOptimizationJobSpec:
        if self.optimizer.type == "GEPA" and self.dataset is None:
            raise FieldError("dataset", "the GEPA optimizer needs a dataset")
        if self.dataset is not None and not self.scorers:
            raise FieldError("scorers", "a job with a dataset needs at least one scorer")
        if self.mlflow is None and any(p.registry_uri or p.register_as for p in self.prompts):
            raise FieldError("mlflow", _REGISTRY_NEEDS_MLFLOW)
        if self.mlflow is None and self.dataset is not None and self.dataset.mlflow_dataset_id is not None:
            raise FieldError("mlflow", _DATASET_NEEDS_MLFLOW)
        _require_unique("prompts", "prompt names", [p.name for p in self.prompts])
        _require_unique("scorers", _UNIQUE_SCORER_KEYS, [s.key for s in self.scorers or []])
        if any(s.registered for s in self.scorers or []) and (self.mlflow is None or self.mlflow.experiment is None):
            raise FieldError("mlflow", _REGISTERED_NEEDS_EXPERIMENT)
        if self.aggregation is not None:
            if not self.scorers:
                raise FieldError("aggregation", _AGGREGATION_NEEDS_SCORERS)
            try:
                compile_aggregation(self.aggregation, [s.key for s in self.scorers])
            except AggregationError as error:
                raise FieldError("aggregation", str(error)) from None
        if self.dataset is not None and self.dataset.records:
            # Not a CEL rule as well: CEL gives no type to free-form data (records[].inputs), so the API server
            # cannot look inside it; the operator fails such a job at once, before any Pod.
            inline = {p.name: p.template for p in self.prompts if p.template is not None}
            if problems := unfilled_variables(inline, dict(enumerate(r.inputs for r in self.dataset.records))):
                raise FieldError("dataset.records", "the records do not fit the prompts: " + "; ".join(problems))
        return self

    @property
    def failure_policy(self) -> ExampleFailurePolicy:
        return self.example_failure_policy or ExampleFailurePolicy()

    def run_hash(self) -> str:
        """A fingerprint of what the worker runs: every field but those that may change while it runs. Unset fields
        are left out, so a field added to the API does not change the fingerprint of a job that does not use it
        (a running job would read as changed after an operator upgrade)."""
        content = self.model_dump(mode="json", by_alias=True, exclude=set(MUTABLE_SPEC_FIELDS), exclude_none=True)
        return content_digest(json.dumps(content, sort_keys=True))


def _require_unique(field: str, what: str, names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FieldError(field, f"{what} must be unique; repeated: {', '.join(duplicates)}")


# ---------------------------------------------------------------------------------------------
# status


class Condition(StatusObject):
    """A condition in the Kubernetes shape."""

    type: str = Field(
        description="The condition type: Ready, Reconciling and Stalled (kstatus, read by Flux and Argo "
        "CD); Complete or Failed once the job ends (as a batch/v1 Job's, for kubectl wait); "
        "SpecApplied, OutputWritten, PromptsRegistered."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(None, description="The spec generation the condition was set from.")
    last_transition_time: str | None = Field(None, description="When the status last changed (RFC 3339).")
    reason: str | None = Field(None, description="A CamelCase reason code.")
    message: str | None = Field(None, description="A human-readable explanation.")


class HeldOutScores(StatusObject):
    """Scores of one prompt candidate on the held-out test records (spec.dataset.testFraction)."""

    aggregate: float | None = Field(None, description="The weighted mean of the scorers' means.")
    scorers: dict[str, float] | None = Field(None, description="Mean score per scorer key.")
    failed_examples: int | None = Field(None, description="Test records that could not be scored.")
    records: int | None = Field(None, description="The test records.")


class Scores(StatusObject):
    """Scores of one prompt candidate on the validation records (MLflow's eval scores)."""

    aggregate: float | None = Field(
        None, description="The weighted mean of the scorers' means (none when no record could be scored)."
    )
    scorers: dict[str, float] | None = Field(None, description="Mean score per scorer key.")
    failed_examples: int | None = Field(
        None,
        description="Validation records that could not be scored for these prompts (see "
        "spec.exampleFailurePolicy); the means leave them out.",
    )
    test: HeldOutScores | None = Field(
        None,
        description="The same prompts on the held-out test records, which the optimizer never saw "
        "(spec.dataset.testFraction); set at the end of a run that succeeded.",
    )


class Progress(StatusObject):
    """How far the optimizer is."""

    metric_calls: int | None = Field(None, description="Evaluations (candidate, record) spent so far.")
    max_metric_calls: int | None = Field(
        None, description="The evaluation budget (never exceeded). MetaPrompt: the evaluations its pass makes."
    )
    percent: int | None = Field(
        None,
        description="metricCalls / maxMetricCalls, in percent; GEPA may finish below 100 when the calls left "
        "could not cover another iteration.",
    )
    cached_evaluations: int | None = Field(
        None,
        description="Of metricCalls, the evaluations the job's cache answered without an LLM call (the same "
        "prompts on the same record again, as GEPA evaluates a parent once more).",
    )
    iteration: int | None = Field(None, description="The optimizer's current iteration.")
    candidates: int | None = Field(None, description="Accepted candidate prompts so far, the seed included.")
    rejected_candidates: int | None = Field(
        None, description="Proposals rejected because they lost or invented a template variable."
    )
    best_score: float | None = Field(
        None,
        description="The best aggregate validation score so far, as the optimizer ranks candidates (GEPA "
        "counts a failed record as 0 here).",
    )
    failed_examples: int | None = Field(
        None,
        description="Evaluations (metric calls) whose record could not be scored, e.g. a judge answer that "
        "stayed unusable after spec.exampleFailurePolicy.judgeRetries; past its maxFailedFraction the run stops.",
    )


class Cost(StatusObject):
    """LLM usage of the job."""

    prompt_tokens: int | None = Field(None, description="Prompt tokens of all LLM calls.")
    completion_tokens: int | None = Field(None, description="Completion tokens of all LLM calls.")
    usd: float | None = Field(None, description="US dollars, for models whose price is known.")
    llm_calls: int | None = Field(None, description="LLM calls made, and calls of the job's HTTP services.")
    retries: int | None = Field(
        None,
        description="Transient LLM errors (429, 5xx, timeouts, lost connections) retried with backoff "
        "(task.maxRetries per call). Many retries mean the provider struggled: lower task.concurrency.",
    )


STATUS_CANDIDATES = 5  # how many candidates status keeps; `promptopt run -o` keeps them all


class CandidateReport(StatusObject):
    """One candidate the optimizer scored on the validation records."""

    id: int = Field(
        ge=0,
        description="The candidate's number: 0 is the original prompts, the others in the order found.",
    )
    parents: list[int] = Field(
        default_factory=list,
        description="The candidates it was derived from (two for a merge); empty for 0.",
    )
    score: float = Field(description="Aggregate validation score.")
    scorers: dict[str, float] | None = Field(None, description="Validation score per scorer.")
    found_at_metric_calls: int | None = Field(None, description="Metric calls spent when it was found.")
    prompts: dict[str, str] | None = Field(
        None,
        description="Its prompt texts by name: in the result file of promptopt run only (status keeps the best "
        "in optimizedPrompts).",
    )


class OptimizedPrompt(StatusObject):
    """One optimized prompt."""

    name: str = Field(description="The prompt's name.")
    template: str = Field(description="The optimized template.")
    truncated: bool | None = Field(
        None,
        description="True when template holds only the start of the optimized prompt: the worker could not write "
        "its status, and the operator recovered the result from the Pod's termination message (4 KiB in all).",
    )


WorkerOutcome = Literal[
    "Completed",
    "GoalReached",
    "NoImprovement",
    "PerfectScore",
    "BudgetExhausted",
    "DeadlineReached",
    "Cancelled",
    "InvalidInput",
    "LLMError",
    "TooManyFailedExamples",
    "Error",
]


class WorkerResult(StatusObject):
    """How the worker's run ended, in its own words; the operator turns it into phase and conditions."""

    reason: WorkerOutcome = Field(
        description="Completed (budget of metric calls spent or optimizer done), GoalReached and NoImprovement "
        "(stopped early by optimizer.gepa.earlyStopping), PerfectScore (a candidate scored the maximum on "
        "validation: optimizer.gepa.stopAtPerfectScore), BudgetExhausted (maxCostUSD reached), DeadlineReached, "
        "Cancelled, InvalidInput (prompts or dataset unusable), LLMError (a permanent error of an LLM or HTTP service "
        "call, such as a bad key, an unknown model or a service that breaks its contract), TooManyFailedExamples "
        "(more records could not be scored than "
        "spec.exampleFailurePolicy.maxFailedFraction allows) or Error."
    )
    message: str = Field(description="A human-readable explanation.")
    succeeded: bool = Field(description="Whether the run produced a usable result (best prompts and scores).")


class AttemptFailure(StatusObject):
    """The latest failed attempt: the retry back-off counts from its time."""

    attempt: int = Field(description="The attempt (worker Pod) that failed.")
    time: str = Field(description="When it failed or was found gone (RFC 3339).")
    message: str | None = Field(None, description="What happened to it.")


class ConfigMapInput(StatusObject):
    """A ConfigMap key the job's prompts or dataset came from, with a digest of the text read."""

    name: str = Field(description="The ConfigMap's name.")
    key: str = Field(description="The key.")
    digest: str = Field(description="The first 16 hex digits of the SHA-256 of the key's text.")


class MlflowStatus(StatusObject):
    """The job's prompts in MLflow's Prompt Registry (MLflow's source_prompt_uri and optimized_prompt_uri)."""

    source_prompts: dict[str, str] | None = Field(
        None,
        description="Prompt name → the registry version it was read from (prompts:/<name>/<version>).",
    )
    optimized_prompts: dict[str, str] | None = Field(
        None,
        description="Prompt name → the registry version its optimized template was registered as.",
    )
    registration_error: str | None = Field(
        None,
        description="Why registering the optimized prompts failed (the prompts stay in optimizedPrompts).",
    )
    dataset_digest: str | None = Field(
        None,
        description="The first 16 hex digits of the SHA-256 of the MLflow evaluation dataset's records as the "
        "job's first worker read them (dataset.mlflowDatasetId).",
    )
    mlflow_dataset_digest: str | None = Field(
        None,
        description="MLflow's own digest of that evaluation dataset, as the run's dataset input and MLflow's "
        "dataset page show it (it changes with every change of its records).",
    )
    run_id: str | None = Field(None, description="The job's MLflow run (spec.mlflow.experiment).")
    experiment_id: str | None = Field(None, description="The experiment of the job's MLflow run.")


class Display(StatusObject):
    """The worker's numbers as `kubectl get poj` shows them: a CRD's printer columns print a number in full
    (0.8333333333333334) and cannot format a currency."""

    initial_score: str | None = Field(None, description="initialScores.aggregate to 3 decimals.")
    best_score: str | None = Field(None, description="progress.bestScore to 3 decimals.")
    cost: str | None = Field(None, description="cost.usd in US dollars, e.g. $0.0123.")
    test_score: str | None = Field(None, description="finalScores.test.aggregate to 3 decimals.")


def format_score(score: float) -> str:
    return f"{score:.3f}"


def format_usd(usd: float) -> str:
    """Dollars to the cent, and to a hundredth of a cent under one dollar (what test runs cost)."""
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.4f}"


class WorkerStatus(StatusObject):
    """The part of the status the worker owns (it writes these fields; the operator writes every other one)."""

    progress: Progress | None = Field(None, description="The optimizer's progress.")
    initial_scores: Scores | None = Field(None, description="Scores of the original prompts.")
    final_scores: Scores | None = Field(None, description="Scores of the optimized prompts.")
    optimized_prompts: list[OptimizedPrompt] | None = Field(None, description="The best prompts found.")
    candidates: list[CandidateReport] | None = Field(
        None,
        description=f"The best {STATUS_CANDIDATES} candidates by validation score, best first, with their "
        "lineage; the result file of promptopt run keeps every one, with its prompts.",
    )
    cost: Cost | None = Field(None, description="Tokens and US dollars spent.")
    display: Display | None = Field(None, description="The scores and cost as kubectl get shows them.")
    worker_result: WorkerResult | None = Field(None, description="How the worker's last run ended.")
    mlflow: MlflowStatus | None = Field(None, description="The job's prompts in MLflow's Prompt Registry.")
    config_map_inputs: list[ConfigMapInput] | None = Field(
        None,
        description="The ConfigMap keys the job's first worker read its prompts and dataset from, with a digest "
        "of each text. A job runs the inputs it started with (as status.specHash holds it to its spec): a later "
        "worker Pod whose keys read differently ends with InvalidInput, naming the field, the ConfigMap and the "
        "key. Restore the text, or create a new job to run the new one.",
    )


class OutputStatus(StatusObject):
    """What was delivered where spec.output asked (the OutputWritten condition says why not, when not)."""

    config_map: str | None = Field(None, description="The ConfigMap written.")
    written_time: str | None = Field(None, description="When it was written (RFC 3339).")
    best_so_far: bool | None = Field(
        None,
        description="True when the job was cancelled and the prompts are the best found until then.",
    )


class PromptOptimizationJobStatus(WorkerStatus):
    """The observed state of the job. The operator owns phase, conditions, pod and times; the worker owns
    progress, scores, prompts and cost."""

    phase: Phase | None = Field(None, description="Pending, Queued, Running, Succeeded, Failed or Cancelled.")
    conditions: list[Condition] | None = Field(
        None,
        description="Conditions in the Kubernetes shape.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, description="The spec generation the operator last acted on.")
    message: str | None = Field(None, description="A human-readable summary of the job's state.")
    pod_name: str | None = Field(None, description="The current worker Pod.")
    spec_hash: str | None = Field(
        None,
        description="Fingerprint of the spec the job started with; later changes (but cancel and "
        "ttlSecondsAfterFinished) are not applied, and the SpecApplied condition says so.",
    )
    attempts: int | None = Field(None, description="Worker Pods started so far.")
    last_failure: AttemptFailure | None = Field(None, description="The latest failed attempt.")
    queue_position: int | None = Field(
        None,
        description="Place in the operator's queue while Queued (1 = next): exact for the first 50 in line, "
        "within 10% further back (refreshed every 30 s).",
    )
    start_time: str | None = Field(None, description="When the job started running (RFC 3339).")
    completion_time: str | None = Field(None, description="When the job finished (RFC 3339).")
    duration: str | None = Field(
        None,
        description="How long the job ran, from startTime to completionTime, as kubectl prints durations "
        "(2m13s); set when it ends.",
    )
    output: OutputStatus | None = Field(None, description="Where the optimized prompts were delivered (spec.output).")


def read_status(status: Mapping[str, Any] | None) -> PromptOptimizationJobStatus:
    """A stored status as the model; fields this version does not know are skipped (a newer writer's)."""
    return PromptOptimizationJobStatus.model_validate(status or {})


def status_patch(status: PromptOptimizationJobStatus) -> dict[str, Any]:
    """A JSON merge patch of the job's status: the fields `status` was given (None deletes one), by their wire
    names. Statuses are built as the model the CRD is generated from, so a field the CRD lacks, which the API
    server would prune without a word, fails type-checking (the pydantic mypy plugin checks every keyword)."""
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def merged_status(*parts: PromptOptimizationJobStatus) -> PromptOptimizationJobStatus:
    """The fields set in each partial status, a later part's winning: merge patches built in steps."""
    merged = PromptOptimizationJobStatus()
    for part in parts:
        merged = merged.model_copy(update={name: getattr(part, name) for name in part.model_fields_set})
    return merged


class ObjectMeta(StatusObject):
    """The subset of Kubernetes object metadata the job's own code reads."""

    name: str | None = Field(None, description="Name.")
    namespace: str | None = Field(None, description="Namespace.")


class PromptOptimizationJob(ApiModel):
    """An LLM prompt-optimization job: optimize prompt templates on a dataset with GEPA or MetaPrompt."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["promptopt.dev/v1alpha1"] = Field(API_VERSION, description="promptopt.dev/v1alpha1")
    kind: Literal["PromptOptimizationJob"] = Field(KIND, description="PromptOptimizationJob")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: PromptOptimizationJobSpec = Field(description="What to optimize, how, and within which limits.")
    status: PromptOptimizationJobStatus | None = Field(None, description="The observed state of the job.")


def template_variables(template: str) -> set[str]:
    """The `{{variable}}` names a template uses."""
    return set(TEMPLATE_VARIABLE.findall(template))


MAX_LISTED_RECORDS = 10  # records named in one problem message; the rest are counted


def name_records(indexes: Iterable[int]) -> str:
    """Names records in problem messages: record 3, or records 1, 4, 9 (the first MAX_LISTED_RECORDS, then a
    count)."""
    indexes = list(indexes)
    listed = ", ".join(str(i) for i in indexes[:MAX_LISTED_RECORDS])
    more = f" and {len(indexes) - MAX_LISTED_RECORDS} more" if len(indexes) > MAX_LISTED_RECORDS else ""
    return f"record{'s' if len(indexes) > 1 else ''} {listed}{more}"


def unfilled_variables(templates: Mapping[str, str], inputs: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """One problem per (prompt, variable) that some records cannot fill: `templates` are prompt texts by name,
    `inputs` each record's inputs by its index in the dataset."""
    problems = []
    for prompt, text in templates.items():
        for variable in sorted(template_variables(text)):
            lacking = [index for index, record in inputs.items() if variable not in record]
            if lacking:
                problems.append(
                    f"prompt {prompt!r} uses {{{{{variable}}}}}, but {name_records(lacking)} "
                    f"{'has' if len(lacking) == 1 else 'have'} no input {variable!r}"
                )
    return problems
