"""Resolving a job into concrete inputs, and those into the optimizer's `Problem`.

Prompt texts and the dataset's text come from inline values or ConfigMaps. ConfigMaps come through a
`ConfigMapSource`: the Kubernetes API in the job's namespace (the worker) or ConfigMap manifests read from
files (`promptopt run`). A missing ConfigMap or key is an `InvalidInput` naming the spec field, the
ConfigMap and the key. Each ConfigMap is read once per run, and every key used gets a digest
(status.configMapInputs): a retried worker whose keys read differently from what the job started with is an
`InvalidInput` too, as the spec hash refuses a changed spec. `build_problem` then checks everything that can
be checked before the first LLM call (records against prompts and scorers) and wires the evaluator and the
reflection model.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from promptopt.api.aggregation import compile_aggregation
from promptopt.api.v1alpha1 import (
    ConfigMapInput,
    ConfigMapKeyRef,
    MlflowStatus,
    PromptOptimizationJobSpec,
    ScorerSpec,
    content_digest,
)
from promptopt_worker.llm import LLMClient, ModelEndpoint
from promptopt_worker.datasets import load_dataset
from promptopt_worker.evaluation import TaskEvaluator, weighted_mean
from promptopt_worker.mlflow_store import MlflowStore, registered_judge_spec, registrar
from promptopt_worker.problem import InvalidInput, Problem, PromptTemplate, Reflector
from promptopt_worker.scorers import build_scorers, check_records
from promptopt_worker.templates import check_inputs


class ConfigMapSource(Protocol):
    """Reads ConfigMaps by name."""

    location: str  # where the ConfigMaps are looked up, for error messages

    def data(self, name: str) -> Mapping[str, str] | None:
        """The ConfigMap's keys and texts (data and binaryData), or None if there is no such ConfigMap."""


class KubernetesConfigMaps:
    """ConfigMaps of one namespace, read through the Kubernetes API."""

    def __init__(self, core_v1: Any, namespace: str):  # core_v1: kubernetes.client.CoreV1Api
        self.core_v1 = core_v1
        self.namespace = namespace
        self.location = f"in namespace {namespace!r}"

    def data(self, name: str) -> Mapping[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            config_map = self.core_v1.read_namespaced_config_map(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _texts(config_map.metadata.name, config_map.data, config_map.binary_data)


class LocalConfigMaps:
    """ConfigMaps from manifests (files given to `promptopt run -f`, or documents beside the job)."""

    def __init__(self, manifests: Iterable[Mapping[str, Any]] = (), location: str = "in the given files"):
        self.location = location
        self._maps: dict[str, Mapping[str, str]] = {}
        for manifest in manifests:
            if manifest.get("kind") == "ConfigMap":
                name = (manifest.get("metadata") or {}).get("name", "")
                self._maps[name] = _texts(name, manifest.get("data"), manifest.get("binaryData"))

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> LocalConfigMaps:
        """The ConfigMaps in these YAML files (multi-document; other kinds are skipped)."""
        files = [Path(p) for p in paths]
        manifests = [manifest for file in files for manifest in read_manifests(file)]
        where = ", ".join(str(file) for file in files)
        return cls(manifests, location=f"in {where} (give the file holding it with -f)")

    def data(self, name: str) -> Mapping[str, str] | None:
        return self._maps.get(name)


class ReadOnce:
    """A ConfigMapSource that reads each ConfigMap once, so that every text a run uses, and its digest, comes from
    one version of it."""

    def __init__(self, source: ConfigMapSource):
        self.source = source
        self.location = source.location
        self._read: dict[str, Mapping[str, str] | None] = {}

    def data(self, name: str) -> Mapping[str, str] | None:
        if name not in self._read:
            self._read[name] = self.source.data(name)
        return self._read[name]


def read_manifests(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, empty ones skipped; ValueError `file:line:column: what is wrong` when it is not
    YAML, or a document is not a mapping."""
    with path.open(encoding="utf-8") as file:
        try:
            documents = [doc for doc in yaml.safe_load_all(file) if doc]
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(error, "problem", None) or str(error)
            raise ValueError(f"{where}: not valid YAML: {problem}") from None
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ValueError(f"{path}: document {index + 1} is a {type(document).__name__}, not a Kubernetes object")
    return documents


def _texts(name: str, data: Mapping[str, str] | None, binary_data: Mapping[str, str] | None) -> dict[str, str]:
    texts = dict(data or {})
    for key, encoded in (binary_data or {}).items():
        try:
            texts[key] = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidInput(f"ConfigMap {name!r} key {key!r}: binaryData is not base64-encoded UTF-8 text") from None
    return texts


def read_key(configmaps: ConfigMapSource, ref: ConfigMapKeyRef, field: str) -> str:
    """The text at `ref`, or InvalidInput naming the spec `field`, the ConfigMap and the key."""
    data = configmaps.data(ref.name)
    if data is None:
        raise InvalidInput(f"{field}: ConfigMap {ref.name!r} not found {configmaps.location}")
    if ref.key not in data:
        keys = ", ".join(repr(k) for k in sorted(data)) or "none"
        raise InvalidInput(f"{field}: ConfigMap {ref.name!r} has no key {ref.key!r} (its keys: {keys})")
    return data[ref.key]


def config_map_refs(spec: PromptOptimizationJobSpec) -> list[tuple[str, ConfigMapKeyRef]]:
    """The ConfigMap keys the job reads, each with the spec field that names it."""
    refs = [
        (f"spec.prompts[{index}].configMapKeyRef", prompt.config_map_key_ref)
        for index, prompt in enumerate(spec.prompts)
        if prompt.config_map_key_ref is not None
    ]
    if spec.dataset is not None and spec.dataset.config_map_key_ref is not None:
        refs.append(("spec.dataset.configMapKeyRef", spec.dataset.config_map_key_ref))
    return refs


def config_map_inputs(
    spec: PromptOptimizationJobSpec, configmaps: ConfigMapSource, started_with: Sequence[ConfigMapInput] | None = None
) -> list[ConfigMapInput]:
    """A digest of every ConfigMap key the job reads. InvalidInput, naming the field, the ConfigMap and the key,
    when a key's text differs from what the job started with (`started_with`, from status.configMapInputs)."""
    recorded = {(found.name, found.key): found.digest for found in started_with or ()}
    inputs: list[ConfigMapInput] = []
    for field, ref in config_map_refs(spec):
        text = read_key(configmaps, ref, field)
        found = ConfigMapInput(name=ref.name, key=ref.key, digest=content_digest(text))
        if recorded.get((ref.name, ref.key), found.digest) != found.digest:
            raise InvalidInput(
                f"{field}: ConfigMap {ref.name!r} key {ref.key!r} changed since the job started "
                "(status.configMapInputs), and a job runs the inputs it started with: restore the text, or create a "
                "new job to run the new one"
            )
        if found not in inputs:
            inputs.append(found)
    return inputs


def resolve_prompts(
    spec: PromptOptimizationJobSpec,
    configmaps: ConfigMapSource,
    mlflow: MlflowStore | None = None,
    pinned: Mapping[str, str] | None = None,
) -> tuple[list[PromptTemplate], dict[str, str]]:
    """The prompts with their texts, inline or read from ConfigMaps or MLflow's registry, in spec order; and the
    registry version each registry prompt resolved to. `pinned` (status.mlflow.sourcePrompts of the job's first
    worker) holds a retried worker to the versions the job started with, whatever an alias points at now."""
    prompts, sources = [], {}
    for index, prompt in enumerate(spec.prompts):
        if prompt.config_map_key_ref is not None:
            text = read_key(configmaps, prompt.config_map_key_ref, f"spec.prompts[{index}].configMapKeyRef")
        elif prompt.registry_uri is not None:
            assert mlflow is not None  # a registry prompt needs spec.mlflow (the model's rule)
            source = mlflow.load(
                (pinned or {}).get(prompt.name, prompt.registry_uri), f"spec.prompts[{index}].registryUri"
            )
            text, sources[prompt.name] = source.template, source.resolved_uri
        else:
            assert prompt.template is not None  # exactly one source (the model's rule)
            text = prompt.template
        prompts.append(PromptTemplate(name=prompt.name, role=prompt.role, text=text))
    return prompts, sources


def records_digest(rows: Sequence[Mapping[str, Any]]) -> str:
    """The first 16 hex digits of the SHA-256 of records (as JSON with sorted keys)."""
    return content_digest(json.dumps(list(rows), sort_keys=True, default=str))


def build_problem(
    spec: PromptOptimizationJobSpec,
    configmaps: ConfigMapSource,
    llm_client: LLMClient,
    *,
    deadline_seconds: float | None = None,
    checkpoint_dir: str | None = None,
    started_with: Sequence[ConfigMapInput] | None = None,
    mlflow: MlflowStore | None = None,
    mlflow_started: MlflowStatus | None = None,
    identity: Mapping[str, str] | None = None,
) -> Problem:
    """The job as the optimizer sees it. Raises InvalidInput for anything wrong with the prompts or the
    dataset (ConfigMap keys that changed since `started_with` included), all of it found before any LLM call.
    Close `problem.evaluator` when done."""
    configmaps = ReadOnce(configmaps)
    inputs = config_map_inputs(spec, configmaps, started_with)
    started = mlflow_started or MlflowStatus()
    prompts, sources = resolve_prompts(spec, configmaps, mlflow, started.source_prompts)
    train, validation, test, evaluator, dataset_digest, mlflow_dataset_digest = [], [], [], None, None, None
    registered_scorers: dict[str, str] = {}
    if spec.dataset is not None:
        ref = spec.dataset.config_map_key_ref
        text = read_key(configmaps, ref, "spec.dataset.configMapKeyRef") if ref is not None else None
        rows = None
        if spec.dataset.mlflow_dataset_id is not None:
            assert mlflow is not None  # a dataset from MLflow needs spec.mlflow (the model's rule)
            dataset = mlflow.dataset(spec.dataset.mlflow_dataset_id)
            rows, mlflow_dataset_digest = dataset.records, dataset.digest
            dataset_digest = records_digest(rows)
            if started.dataset_digest and started.dataset_digest != dataset_digest:
                raise InvalidInput(
                    f"spec.dataset.mlflowDatasetId: the records of MLflow dataset {spec.dataset.mlflow_dataset_id} "
                    f"changed since the job started (digest {started.dataset_digest}, now {dataset_digest}): restore "
                    "them, or create a new job to run the new ones"
                )
        split = load_dataset(spec.dataset, text, rows)
        train, validation, test = split.train, split.validation, split.test
        examples = list({e.index: e for e in [*train, *validation, *test]}.values())
        check_inputs(prompts, examples)
        scorer_specs, registered_scorers = resolve_scorers(spec, mlflow)
        scorers = build_scorers(scorer_specs, spec.task, llm_client, judge_retries=spec.failure_policy.judge_retries)
        check_records(scorers, examples)
        aggregate = (
            weighted_mean(scorers)
            if spec.aggregation is None
            else compile_aggregation(spec.aggregation, [s.key for s in scorers])
        )
        evaluator = TaskEvaluator(prompts, spec.task, scorers, llm_client, aggregate)
    return Problem(
        prompts=prompts,
        train=train,
        validation=validation,
        test=test,
        evaluator=evaluator,
        reflect=reflection_model(spec, llm_client),
        settings=spec.optimizer,
        deadline_seconds=deadline_seconds,
        checkpoint_dir=checkpoint_dir,
        failure_policy=spec.failure_policy,
        config_map_inputs=tuple(inputs),
        source_prompts=sources,
        dataset_digest=dataset_digest,
        mlflow_dataset_digest=mlflow_dataset_digest,
        registered_scorers=registered_scorers,
        register=registrar(spec, mlflow, identity or {}, sources) if mlflow is not None else None,
    )


def resolve_scorers(
    spec: PromptOptimizationJobSpec, mlflow: MlflowStore | None
) -> tuple[list[ScorerSpec], dict[str, str]]:
    """The job's scorers with each Registered one read from spec.mlflow.experiment as the Judge it is, and what each
    of those read (scorer key → "<name> version <n>"); InvalidInput naming spec.scorers[i].registered.name for one
    that is missing or cannot run here."""
    specs, read = [], {}
    for index, scorer in enumerate(spec.scorers or []):
        if scorer.registered is None:
            specs.append(scorer)
            continue
        # A Registered scorer needs spec.mlflow.experiment (the model's rule).
        assert mlflow is not None and spec.mlflow is not None and spec.mlflow.experiment is not None
        field = f"spec.scorers[{index}].registered.name"
        stored = mlflow.registered_scorer(
            spec.mlflow.experiment, scorer.registered.name, scorer.registered.version, field
        )
        specs.append(registered_judge_spec(scorer, stored, field))
        read[scorer.key] = f"{stored.name} version {stored.version}"
    return specs, read


def reflection_model(spec: PromptOptimizationJobSpec, llm_client: LLMClient) -> Reflector:
    """The reflection model as a Reflector: one request (an optional system message, then the prompt)."""
    endpoint = ModelEndpoint.for_reflection(spec.optimizer, spec.task)

    def reflect(prompt: str, system: str | None = None) -> str:
        messages = [{"role": "system", "content": system}] if system else []
        return llm_client.complete(endpoint, [*messages, {"role": "user", "content": prompt}])

    return reflect
