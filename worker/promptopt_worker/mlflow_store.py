"""MLflow as the job's store, through MLflow's own client (mlflow-skinny, imported only by jobs that use spec.mlflow):
the job's registry prompts and its evaluation dataset are read when it starts, and its optimized prompts registered
as new versions in the Prompt Registry when it ends, with the model_config of the version each started from (as
MLflow's optimize_prompts copies it, and as its server-side optimization needs it: provider and model_name), or the
job's task model for a prompt from elsewhere or a version without one. A Registered scorer is read from the job's
experiment in its stored form, never rebuilt by MLflow (which would run a registered @scorer function's code), and
becomes a Judge scorer when it is a make_judge judge (`registered_judge_spec`).

Reading fails fast: MLflow's client retries a refused connection for minutes by default, so the worker asks it for
one retry and a short timeout (MLFLOW_HTTP_REQUEST_*), unless the job's environment sets them. Every failure
becomes an InvalidInput that names the field and what to fix, before any LLM call. Registering, at the end, is
retried with back-off; a registration that still fails is reported, and the result stays in status.

Credentials are MLflow's own environment variables (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD) from the job's credentials Secret; the redaction masks them like every credential.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from promptopt.worker_contract import use_bundled_litellm_cost_map
from promptopt.api.v1alpha1 import (
    JUDGE_VARIABLES,
    LLM_JUDGE_SCORERS,
    PromptOptimizationJobSpec,
    ScorerParams,
    ScorerSpec,
    TaskSpec,
)
from promptopt_worker.problem import InvalidInput, Registrar, Registration, Result

log = logging.getLogger(__name__)

# What the worker asks of MLflow's HTTP client unless the job's environment says otherwise: fail in seconds, not in
# the minutes of its default retries.
CLIENT_ENVIRONMENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
REGISTRATION_DELAYS_S = (1.0, 2.0, 4.0, 8.0)  # between the tries of a registration
_REFUSED = (
    "the server refused the credentials: check MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD, in the job's credentials Secret"
)
_MEANINGS = {
    "RESOURCE_DOES_NOT_EXIST": "MLflow has no such prompt, version or dataset: create it, or fix the name or id",
    "INVALID_PARAMETER_VALUE": "the registry refused the URI (an alias that does not exist?): fix it or set the alias",
    "UNAUTHENTICATED": _REFUSED,
    "PERMISSION_DENIED": "the server's user may not read this prompt: grant it, or use another user",
}


@dataclass(frozen=True)
class SourcePrompt:
    """A registry prompt as read: its template and the version it resolved to."""

    template: str
    resolved_uri: str  # prompts:/<name>/<version>


@dataclass(frozen=True)
class StoredScorer:
    """A scorer registered in an MLflow experiment, as MLflow stores it (MLflow's SerializedScorer, as a dict)."""

    name: str
    version: int
    experiment: str
    serialized: Mapping[str, Any]


# The fields of MLflow's serialized scorers that the worker cannot run, with what to do instead.
_NOT_RUNNABLE = {
    "call_source": (
        "a @scorer Python function (MLflow stores its code, which the worker never runs)",
        "register a judge made with mlflow.genai.judges.make_judge, or serve the function as a Webhook scorer",
    ),
    "memory_augmented_judge_data": (
        "an aligned judge (its examples live in MLflow)",
        "register its instructions as a make_judge judge",
    ),
    "third_party_scorer_data": (
        "a third-party scorer (RAGAS, DeepEval, TruLens, Phoenix)",
        "register a make_judge judge, or serve it as a Webhook scorer",
    ),
    "ensemble_scorer_data": (
        "an ensemble of scorers",
        "name each of them in spec.scorers and combine them with spec.aggregation",
    ),
}


@dataclass(frozen=True)
class MlflowDataset:
    """An evaluation dataset as read: its records, in MLflow's format ({"inputs", "expectations"}) and a canonical
    order, and MLflow's digest of it (which changes with its records)."""

    records: list[dict[str, Any]]
    digest: str


def mlflow_client(tracking_uri: str) -> Any:
    """MLflow's client of the server at `tracking_uri`, for its tracking and its registry alike (the package is
    imported here, by jobs with spec.mlflow only)."""
    for name, value in CLIENT_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    use_bundled_litellm_cost_map()  # mlflow's genai modules import litellm
    import mlflow
    from mlflow import MlflowClient

    # An evaluation dataset reads its records through the process's tracking URI, not its client's.
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


class MlflowStore:
    def __init__(self, tracking_uri: str, sleep: Callable[[float], None] = time.sleep):
        self.tracking_uri = tracking_uri
        self._client = mlflow_client(tracking_uri)
        self._sleep = sleep
        self.model_configs: dict[str, dict[str, Any]] = {}  # of the versions read (prompts:/<name>/<version>)

    def load(self, uri: str, field_path: str) -> SourcePrompt:
        """The prompt at `uri`; InvalidInput naming `field_path` and the fix."""
        try:
            prompt = self._client.load_prompt(uri)
        except Exception as error:  # noqa: BLE001 - MLflow raises MlflowException, and requests' errors inside it
            raise InvalidInput(
                f"{field_path}: {uri} could not be read from MLflow at {self.tracking_uri}: {explain(error)}"
            ) from None
        if prompt is None or not isinstance(prompt.template, str):
            raise InvalidInput(
                f"{field_path}: {uri} is a chat prompt (a list of messages); promptopt optimizes text "
                "templates: register the template as text"
            )
        resolved = f"prompts:/{prompt.name}/{prompt.version}"
        if prompt.model_config:
            self.model_configs[resolved] = prompt.model_config
        return SourcePrompt(prompt.template, resolved)

    def registered_scorer(self, experiment: str, name: str, version: int | None, field: str) -> StoredScorer:
        """The scorer registered as `name` (its `version`, else its latest) in `experiment`; InvalidInput naming
        `field` and the fix."""
        where = f"{field}: scorer {name!r}{f' version {version}' if version else ''} of experiment {experiment!r}"
        try:
            found = self._client.get_experiment_by_name(experiment)
            if found is None:
                raise InvalidInput(
                    f"{where}: MLflow at {self.tracking_uri} has no such experiment: register the "
                    "scorer there, or fix spec.mlflow.experiment"
                )
            # MLflow's client has no scorer calls, and mlflow.genai.scorers.get_scorer rebuilds a registered @scorer
            # function by running its stored code: the tracking store's call returns the stored form only.
            stored = self._client._tracking_client.store.get_scorer(found.experiment_id, name, version)
            serialized = dataclasses.asdict(stored.serialized_scorer)
        except InvalidInput:
            raise
        except Exception as error:  # noqa: BLE001 - MLflow's and requests' errors alike
            why = (
                "the experiment has no scorer of that name or version: register it there (scorer.register(name=..., "
                "experiment_id=...)), or fix the name"
                if getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
                else explain(error)
            )
            raise InvalidInput(f"{where} could not be read from MLflow at {self.tracking_uri}: {why}") from None
        return StoredScorer(name, int(stored.scorer_version), experiment, serialized)

    def dataset(self, dataset_id: str) -> MlflowDataset:
        """An evaluation dataset's records and digest; InvalidInput naming the field and the fix."""
        try:
            dataset = self._client.get_dataset(dataset_id)
            records = dataset.records
        except Exception as error:  # noqa: BLE001 - MLflow's and requests' errors alike
            raise InvalidInput(
                f"spec.dataset.mlflowDatasetId: {dataset_id} could not be read from MLflow at "
                f"{self.tracking_uri}: {explain(error)}"
            ) from None
        rows = [{"inputs": record.inputs or {}, "expectations": record.expectations or {}} for record in records]
        # MLflow keeps no order of a dataset's records: a canonical one makes the job's split (and digest) the same
        # for every worker that reads them.
        return MlflowDataset(sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, default=str)), dataset.digest)

    def register(
        self,
        templates: Mapping[str, str],
        names: Mapping[str, str],
        tags: Mapping[str, Mapping[str, str]],
        model_configs: Mapping[str, dict[str, Any] | None],
        message: str,
        alias: str | None,
    ) -> Registration:
        """Register each template (prompt name → text) as a new version of its registry prompt (`names`), with its
        tags and model_config and `alias` pointed at it; tried again with back-off while the server fails."""
        registered: dict[str, str] = {}
        for prompt, registry_name in names.items():
            for attempt, delay in enumerate((*REGISTRATION_DELAYS_S, None)):
                try:
                    version = self._client.register_prompt(
                        registry_name,
                        templates[prompt],
                        commit_message=message,
                        tags=dict(tags[prompt]),
                        model_config=model_configs.get(prompt),
                    )
                    if alias:
                        self._client.set_prompt_alias(registry_name, alias, int(version.version))
                    registered[prompt] = f"prompts:/{registry_name}/{version.version}"
                    break
                except Exception as error:  # noqa: BLE001 - MLflow's and requests' errors alike
                    if delay is None:
                        return Registration(
                            registered,
                            (
                                f"registering prompt {prompt!r} as {registry_name!r} in MLflow at {self.tracking_uri} "
                                f"failed {attempt + 1} times: {explain(error)}"
                            ),
                        )
                    log.warning(
                        "registering prompt %r failed (%s); trying again in %.0f s", prompt, explain(error), delay
                    )
                    self._sleep(delay)
        return Registration(registered)


def explain(error: Exception) -> str:
    """What an MLflow client error means for the job's author."""
    code = getattr(error, "error_code", None)
    text = " ".join(str(error).split())[:300]
    if " 401" in text or "Unauthorized" in text:
        return f"{_REFUSED} ({text})"
    if code in _MEANINGS:
        return f"{_MEANINGS[code]} ({text})"
    if "Max retries exceeded" in text or "Connection" in text:
        return f"the server could not be reached: check spec.mlflow.trackingUri and the network ({text})"
    return text


def mlflow_model_uri(model: str) -> str:
    """A litellm model id as MLflow writes a model (openai/gpt-4.1-mini: openai:/gpt-4.1-mini); an id without a
    provider as it is."""
    provider, _, name = model.partition("/")
    return f"{provider}:/{name}" if name else model


def litellm_model_id(uri: str) -> str | None:
    """A model as MLflow writes it (openai:/gpt-4.1-mini) as a litellm model id (openai/gpt-4.1-mini); None for one
    without a provider (MLflow's "databricks" default judge)."""
    provider, separator, name = uri.partition(":/")
    return f"{provider}/{name}" if separator and provider and name else None


def registered_judge_spec(scorer: ScorerSpec, stored: StoredScorer, field: str) -> ScorerSpec:
    """The Judge scorer that a registered make_judge judge is: its instructions, asked of its model (or of
    scorer.model), under the scorer's key and weight. InvalidInput naming `field` and what to do for a scorer the
    worker cannot run: a @scorer function, a built-in, third-party, aligned or ensemble scorer, a judge of traces or
    one whose answers are not yes or no."""
    what = f"{field}: {stored.name!r} (version {stored.version} in experiment {stored.experiment!r})"
    serialized = stored.serialized
    if builtin := serialized.get("builtin_scorer_class"):
        use = (
            f"name it in spec.scorers as {{name: {builtin}, model: ...}}"
            if builtin in LLM_JUDGE_SCORERS
            else "use one of promptopt's scorers, or a Judge"
        )
        raise InvalidInput(f"{what} is MLflow's built-in scorer {builtin}: {use}")
    for key, (kind, fix) in _NOT_RUNNABLE.items():
        if serialized.get(key) is not None:
            raise InvalidInput(f"{what} is {kind}, which the worker cannot run: {fix}")
    judge = serialized.get("instructions_judge_pydantic_data") or {}
    feedback = judge.get("feedback_value_type")
    if not _answers_yes_or_no(feedback):
        raise InvalidInput(
            f"{what} answers {json.dumps(feedback)}; promptopt's judges answer yes or no: register it "
            "with feedback_value_type=bool or str"
        )
    model = scorer.model or litellm_model_id(str(judge.get("model") or ""))
    if model is None:
        raise InvalidInput(
            f"{what} has the model {judge.get('model')!r}, which the worker cannot call: set "
            f"{field.removesuffix('.registered.name')}.model to a litellm model id"
        )
    try:
        return ScorerSpec(
            name="Judge",
            label=scorer.key,
            weight=scorer.weight,
            model=model,
            api_base=scorer.api_base,
            pricing=scorer.pricing,
            params=ScorerParams(instructions=judge.get("instructions")),
        )
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors(include_url=False))
        variables = ", ".join("{{ " + name + " }}" for name in JUDGE_VARIABLES)
        raise InvalidInput(
            f"{what} cannot run as a judge of a prompt's outputs ({problems}): register instructions over {variables}"
        ) from None


def _answers_yes_or_no(feedback: Mapping[str, Any] | None) -> bool:
    """Whether a make_judge judge's feedback_value_type (a JSON schema; none: str) fits a yes-or-no verdict."""
    if feedback is None:
        return True
    if "enum" in feedback:
        return {str(value).lower() for value in feedback["enum"]} <= {"yes", "no"}
    return feedback.get("type") in ("string", "boolean")


def task_model_config(task: TaskSpec) -> dict[str, Any] | None:
    """The job's task model as a prompt version's model_config (MLflow's PromptModelConfig); None for an HTTP
    service, or a model id without a provider."""
    provider, _, name = (task.model or "").partition("/")
    if not name:
        return None
    config = {
        "provider": provider,
        "model_name": name,
        "temperature": task.temperature,
        "max_tokens": task.max_tokens,
        "top_p": task.top_p,
    }
    return {key: value for key, value in config.items() if value is not None}


def version_tags(
    identity: Mapping[str, str], initial: float | None, final: float | None, source: str | None
) -> dict[str, str]:
    """The tags of a registered version, which link it back to its job."""
    tags = {f"promptopt.dev/{key}": value for key, value in identity.items()}
    if initial is not None:
        tags["promptopt.dev/initial-score"] = f"{initial:.6g}"
    if final is not None:
        tags["promptopt.dev/final-score"] = f"{final:.6g}"
    if source:
        tags["promptopt.dev/source"] = source
    return tags


def registrar(
    spec: PromptOptimizationJobSpec, registry: MlflowStore, identity: Mapping[str, str], sources: Mapping[str, str]
) -> Registrar | None:
    """What registers a result's prompts as spec.mlflow.registerOptimizedPrompts asks (None when it does not): each
    prompt with a registry name (prompts[].registerAs, else its registryUri's prompt), tagged with the job's
    `identity` (job, namespace, job-uid), the scores and the version it started from, whose model_config it takes
    (the task model's when it has none)."""
    registration = spec.mlflow.register_optimized_prompts if spec.mlflow else None
    names = {p.name: name for p in spec.prompts if (name := p.registry_name)}
    if registration is None or not names:
        return None

    def register(result: Result) -> Registration:
        assert result.best_candidate is not None
        initial = result.initial_scores.aggregate if result.initial_scores else None
        final = result.final_scores.aggregate if result.final_scores else None
        tags = {prompt: version_tags(identity, initial, final, sources.get(prompt)) for prompt in names}
        model_configs = {
            prompt: registry.model_configs.get(sources.get(prompt, "")) or task_model_config(spec.task)
            for prompt in names
        }
        who = f"{identity.get('namespace', '')}/{identity.get('job', '')}".strip("/")
        scores = f"; aggregate {initial:.3f} → {final:.3f}" if initial is not None and final is not None else ""
        return registry.register(
            result.best_candidate,
            names,
            tags,
            model_configs,
            f"optimized by promptopt job {who} ({result.reason}){scores}",
            registration.alias,
        )

    return register
