"""The worker's plain data: what an optimizer is given and what it hands back.

Optimizers know nothing of Kubernetes, litellm or scorers: they see a `Problem` (seed prompts, train and
validation examples, an `Evaluator`, a `Reflector`) and report through a `Reporter`. Everything that does
I/O sits behind those three interfaces.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from promptopt.api.v1alpha1 import (
    ConfigMapInput,
    ExampleFailurePolicy,
    MlflowStatus,
    OptimizerSpec,
    WorkerOutcome,
    template_variables,
)
from promptopt.prompt_contract import Feedback
from promptopt.worker_contract import SUCCEEDED_OUTCOMES


class InvalidInput(ValueError):
    """The job's inputs cannot be used as given (the worker reports workerResult reason InvalidInput)."""


def option_problems(
    options: Mapping[str, object], owned: Mapping[str, str], known: Collection[str], receiver: str
) -> list[str]:
    """What keeps each of `spec.optimizer.options` from reaching `receiver` (a function taking `known` keyword
    arguments), one message per key, naming the key and the fix; `owned` maps the keys the worker sets itself to
    where the job sets them instead."""
    problems = []
    for key in sorted(options):
        if key in owned:
            problems.append(f"spec.optimizer.options.{key}: the worker sets it; {owned[key]}")
        elif key not in known:
            close = difflib.get_close_matches(key, sorted(set(known) - set(owned)), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"spec.optimizer.options.{key}: {receiver} has no such parameter{hint}; remove it")
    return problems


# A candidate: prompt name → template text (gepa's candidate shape).
Candidate = dict[str, str]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    role: str
    text: str


@dataclass(frozen=True)
class Example:
    """One dataset record; `index` is its place in the whole dataset (stable across splits)."""

    index: int
    inputs: Mapping[str, Any]
    expectations: Mapping[str, Any]


@dataclass(frozen=True)
class ScoredOutput:
    """A candidate's output on one example, with every scorer's verdict; or, when a scorer could give none (a
    judge's answer stayed unusable), a failed example: `failure` says why, `scores` holds the verdicts of the
    other scorers, and `aggregate` is 0, the number an optimizer needs, which no reported mean includes."""

    example: Example
    output: str
    scores: Mapping[str, float]  # scorer key → score in [0, 1]
    rationales: Mapping[str, str]  # scorer key → why (judges' rationales, metric explanations)
    aggregate: float  # spec.aggregation of the scores (default: their weighted mean); 0 for a failed example
    failure: str | None = None

    def feedback(self) -> str:
        """Every scorer's verdict, one line each (`<key>: <score> — <rationale>`), as reflection models read it;
        a failed example starts with why it could not be scored (promptopt.prompt_contract.Feedback)."""
        return Feedback(self.scores, self.rationales, self.failure).text()


@dataclass(frozen=True)
class ScoreSummary:
    """A candidate's scores over a set of examples (MLflow's initial/final eval scores): means over the examples
    that were scored (None when none was), and how many failed. Exact: the status (the API's Scores) rounds them."""

    aggregate: float | None
    scorers: Mapping[str, float]
    failed_examples: int = 0


class Evaluator(Protocol):
    """Runs a candidate on examples and scores the outputs (LLM calls run concurrently, results are cached)."""

    @property
    def cache_hits(self) -> int:
        """Examples answered from its cache so far, without an LLM call."""

    def evaluate(self, candidate: Candidate, examples: Sequence[Example]) -> list[ScoredOutput]: ...

    def summarize(self, results: Sequence[ScoredOutput]) -> ScoreSummary: ...

    def close(self) -> None:
        """Stops its LLM calls: the optimization is over."""


class Reflector(Protocol):
    """Sends one request to the reflection model and returns its answer text."""

    def __call__(self, prompt: str, system: str | None = None) -> str: ...


@dataclass(frozen=True)
class Registration:
    """How registering a result's prompts went: prompt name → its new registry version, or why it failed."""

    registered: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Problem:
    prompts: Sequence[PromptTemplate]
    train: Sequence[Example]  # empty for zero-shot MetaPrompt
    validation: Sequence[Example]  # scores are reported on these
    evaluator: Evaluator | None  # None when there is no dataset
    reflect: Reflector
    settings: OptimizerSpec
    deadline_seconds: float | None = None  # wall-clock limit of the optimization, from activeDeadlineSeconds
    checkpoint_dir: str | None = None  # a persistent folder to resume from after a restart
    failure_policy: ExampleFailurePolicy = field(default_factory=ExampleFailurePolicy)
    config_map_inputs: tuple[ConfigMapInput, ...] = ()  # the ConfigMap keys read, for status.configMapInputs
    source_prompts: Mapping[str, str] = field(default_factory=dict)  # prompt name → the registry version read
    register: Registrar | None = None  # registers a result's prompts in MLflow's Prompt Registry (spec.mlflow)
    mlflow_run: MlflowStatus | None = None  # the job's MLflow run: its run_id and experiment_id
    dataset_digest: str | None = None  # of the MLflow evaluation dataset's records (dataset.mlflowDatasetId)
    mlflow_dataset_digest: str | None = None  # MLflow's own digest of that dataset
    registered_scorers: Mapping[str, str] = field(default_factory=dict)  # scorer key → the MLflow scorer version read
    test: Sequence[Example] = ()  # held out: never given to the optimizer, scored at the end (dataset.testFraction)

    @property
    def seed_candidate(self) -> Candidate:
        return {p.name: p.text for p in self.prompts}

    def validation_scores(self, candidate: Candidate) -> ScoreSummary:
        """The candidate's scores on the validation examples (free for a candidate already evaluated: the
        evaluator caches)."""
        if self.evaluator is None:
            raise ValueError("a problem without a dataset has no validation scores")
        return self.evaluator.summarize(self.evaluator.evaluate(candidate, self.validation))


@dataclass
class Progress:
    """What the worker reports while it runs: status.progress's counters, kept as plain numbers the optimizers count
    up, and the rest of the worker-owned status known before the end (best candidate, initial scores, inputs read,
    the MLflow run). `reporting.worker_status` maps it to the API's status models."""

    metric_calls: int = 0
    max_metric_calls: int | None = None
    iteration: int = 0
    candidates: int = 0
    rejected_candidates: int = 0
    best_score: float | None = None
    best_candidate: Candidate | None = None
    initial_scores: ScoreSummary | None = None
    failed_examples: int = 0  # evaluations whose example could not be scored
    cached_evaluations: int = 0  # evaluations the cache answered (the same prompts on the same record again)
    config_map_inputs: tuple[ConfigMapInput, ...] = ()  # what the run read from ConfigMaps, reported from the start
    source_prompts: Mapping[str, str] = field(default_factory=dict)  # the registry versions read, from the start
    mlflow_run: MlflowStatus | None = None  # the job's MLflow run, from the start
    dataset_digest: str | None = None  # of the MLflow dataset's records, from the start
    mlflow_dataset_digest: str | None = None  # MLflow's own digest of that dataset, from the start


@dataclass(frozen=True)
class CandidateRecord:
    """A candidate the optimizer scored on the validation records, and where it came from: its exact scores (MLflow
    logs them; status.candidates, the API's CandidateReport, rounds them) and always its prompts (the evaluator's
    cache is read by them; status leaves them out)."""

    id: int  # 0: the original prompts
    parents: tuple[int, ...]
    score: float
    scorers: Mapping[str, float] | None
    found_at_metric_calls: int | None
    prompts: Candidate


@dataclass(frozen=True)
class Result:
    """How a run ended."""

    reason: WorkerOutcome
    message: str
    best_candidate: Candidate | None = None
    initial_scores: ScoreSummary | None = None
    final_scores: ScoreSummary | None = None
    candidates: tuple[CandidateRecord, ...] = ()  # every candidate scored on validation, in the order found
    registration: Registration | None = None  # the optimized prompts in MLflow's registry, when the job asks
    initial_test_scores: ScoreSummary | None = None  # the original prompts on the held-out test records
    final_test_scores: ScoreSummary | None = None  # the best candidate on them
    test_records: int = 0

    @property
    def succeeded(self) -> bool:
        return self.best_candidate is not None and self.reason in SUCCEEDED_OUTCOMES


# Registers a result's optimized prompts (promptopt_worker.mlflow_store).
Registrar = Callable[["Result"], Registration]


class Reporter(Protocol):
    """Where progress goes: the job's status, the console, the pod's termination message."""

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        """`important` (a first score, a new best) asks for an immediate write; otherwise it may be rate-limited."""

    def finished(self, progress: Progress, result: Result) -> None: ...


class StopRequested:
    """A thread-safe flag the optimizer polls: set on SIGTERM, on budget exhaustion or at the deadline."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._terminating = threading.Event()
        self.reason: WorkerOutcome | None = None
        self.message = ""

    def request(self, reason: WorkerOutcome, message: str) -> None:
        if not self._event.is_set():
            self.reason, self.message = reason, message
            self._event.set()

    def terminate(self, reason: WorkerOutcome, message: str) -> None:
        """A stop with no time to lose (SIGTERM: the Pod is deleted, cancelled or past its deadline): LLM calls in
        flight are abandoned too, since one may take longer than the Pod's grace period, and the best result so far
        must be reported within it."""
        self.request(reason, message)
        self._terminating.set()

    @property
    def terminating(self) -> bool:
        return self._terminating.is_set()

    def sleep(self, seconds: float) -> None:
        """time.sleep, cut short by `terminate`."""
        self._terminating.wait(seconds)

    def __bool__(self) -> bool:
        return self._event.is_set()


class TooManyFailedExamples(RuntimeError):
    """More evaluations failed than spec.exampleFailurePolicy.maxFailedFraction allows: the run stops."""


def count_failed_examples(
    results: Sequence[ScoredOutput], problem: Problem, progress: Progress, stop: StopRequested
) -> None:
    """Count the evaluations among `results` that failed. Past maxFailedFraction of the run's budget
    (progress.maxMetricCalls), request a stop and raise TooManyFailedExamples: more failures than the job accepts
    make its scores meaningless, and they usually mean a judge that cannot keep the verdict format."""
    failed = [result for result in results if result.failure is not None]
    progress.failed_examples += len(failed)
    fraction, budget = problem.failure_policy.max_failed_fraction, progress.max_metric_calls or 0
    if failed and progress.failed_examples > fraction * budget:
        message = (
            f"{progress.failed_examples} evaluations could not be scored, more than "
            f"spec.exampleFailurePolicy.maxFailedFraction {fraction:g} of the run's {budget}; the last: "
            f"{failed[-1].failure}. Check the judge model, or raise maxFailedFraction"
        )
        stop.request("TooManyFailedExamples", message)
        raise TooManyFailedExamples(message)


@dataclass
class VariableCheck:
    """Template-variable safety: a proposal must keep exactly the seed prompt's `{{variables}}`."""

    expected: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def for_prompts(cls, prompts: Sequence[PromptTemplate]) -> VariableCheck:
        return cls({p.name: frozenset(template_variables(p.text)) for p in prompts})

    def problems(self, candidate: Candidate) -> list[str]:
        found = []
        for name, expected in self.expected.items():
            actual = template_variables(candidate.get(name, ""))
            if lost := sorted(expected - actual):
                found.append(f"prompt {name!r} lost {', '.join('{{' + v + '}}' for v in lost)}")
            if invented := sorted(actual - expected):
                found.append(f"prompt {name!r} invented {', '.join('{{' + v + '}}' for v in invented)}")
        return found
