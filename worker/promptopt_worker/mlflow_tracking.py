"""One MLflow run per job (spec.mlflow.experiment), through MLflow's own client: a Reporter, beside the status and
the console.

It reads as the run of MLflow's own prompt optimization (mlflow.genai.optimize_prompts with its GEPA optimizer, and
the server's optimization job, which reads the scores back from the run's metrics), under MLflow's and gepa's names:
- params: MLflow's (optimizer, optimizer_type, source_prompt_uri, dataset_id, scorer_names, optimizer_config_json
  with the models as MLflow writes them, num_prompts, num_training_samples) and gepa's (trainset_size,
  valset_size), then promptopt's settings;
- tags: mlflow.user (the login), mlflow.source.name and mlflow.source.type (the job), mlflow.linkedPrompts (the
  registry versions it read and registered, linked as MLflow links them) and the job's identity (promptopt.dev/*);
- the MLflow evaluation dataset it read, as a run input in the context "optimization";
- metrics per iteration (step: the iteration), gepa's best_score_on_valset and total_metric_calls, one point per
  step: a step is logged once it is over, and the last one when the run ends, with the counts of the result. At the
  end: eval_score and eval_score.<scorer> of every candidate on the validation records (step: the candidate),
  initial_eval_score and final_eval_score (and .<scorer>), initial_test_score and final_test_score (and .<scorer>)
  on the held-out test records, total_iterations, total_candidates and the cost (cost_<field of status.cost>);
- artifacts: every candidate's prompts (candidates.json), the optimized prompts (optimized_prompts/<name>.txt), and
  per candidate as MLflow's GEPA optimizer lays out each validated one (prompt_candidates/iteration_<candidate id>/):
  its prompts (<name>.txt), its scores (scores.json: aggregate, per_scorer, and promptopt's parents) and its
  validation records' results (eval_results.json, MLflow's table: inputs, output, expectation, aggregate_score and a
  column per scorer). Bounded for a run of hundreds of iterations: the seed and the best candidates, at most
  ITERATION_ARTIFACTS in all, each output cut at OUTPUT_CHARACTERS.
The run ends as the job does: KILLED when cancelled (its best so far logged all the same), FINISHED with a result,
FAILED without one.

Starting the run is part of preparing the job: an unreachable server fails it before any LLM call (InvalidInput),
as a missing registry prompt does, and a dry run reaches the server the same way (read only). Once it runs, a
failure to log never stops the optimization: it is logged as a warning, and the status holds everything the run
would.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptopt.api.v1alpha1 import PromptOptimizationJobSpec
from promptopt_worker.evaluation import TaskEvaluator
from promptopt_worker.gepa_optimizer import gepa_run
from promptopt_worker.mlflow_store import explain, mlflow_client, mlflow_model_uri
from promptopt_worker.problem import (
    CandidateRecord,
    InvalidInput,
    Problem,
    Progress,
    Result,
    ScoredOutput,
    ScoreSummary,
)
from promptopt_worker.reporting import CostSource, no_cost, status_fields, worker_status

log = logging.getLogger(__name__)

# MLflow's optimizer classes, by spec.optimizer.type: its runs' param `optimizer`.
MLFLOW_OPTIMIZERS = {"GEPA": "GepaPromptOptimizer", "MetaPrompt": "MetaPromptOptimizer"}
DATASET_CONTEXT = "optimization"  # the context MLflow's optimization job logs its dataset input in
# The per-candidate artifacts, as MLflow's GEPA optimizer names them; a job may find hundreds of candidates, so only
# the seed and the best ones get a folder, and an output is cut where a reader has seen enough of it.
CANDIDATES_FOLDER = "prompt_candidates"
ITERATION_ARTIFACTS = 50
OUTPUT_CHARACTERS = 2000


def run_params(spec: PromptOptimizationJobSpec, problem: Problem) -> dict[str, str]:
    """The run's params: MLflow's and gepa's, then the job's settings. InvalidInput for gepa options the optimizer
    would refuse."""
    optimizer = spec.optimizer
    params: dict[str, Any] = {
        "optimizer": MLFLOW_OPTIMIZERS[optimizer.type],
        "optimizer_type": optimizer.type.lower(),
        "source_prompt_uri": ",".join(problem.source_prompts.values()),
        "dataset_id": spec.dataset.mlflow_dataset_id if spec.dataset else None,
        "scorer_names": json.dumps([scorer.key for scorer in spec.scorers or []]),
        "optimizer_config_json": json.dumps(optimizer_config(spec, problem), default=str),
        "num_prompts": len(problem.prompts),
        # MLflow's optimizer is given every record it may see; promptopt's, the training and validation ones.
        "num_training_samples": len({example.index for example in [*problem.train, *problem.validation]}),
        "trainset_size": len(problem.train),
        "valset_size": len(problem.validation),
        "testset_size": len(problem.test) or None,
        "reflection_model": optimizer.reflection_model,
        "task": spec.task.model or (spec.task.http.url if spec.task.http else ""),
        "prompts": ",".join(p.name for p in spec.prompts),
    }
    if optimizer.type == "GEPA":
        gepa = optimizer.gepa_settings
        params |= {
            "max_metric_calls": gepa.max_metric_calls,
            "auto": gepa.auto,
            "reflection_minibatch_size": gepa.reflection_minibatch_size,
            "candidate_selection": gepa.candidate_selection,
            "use_merge": gepa.use_merge,
            "seed": gepa.seed,
        }
        if gepa.early_stopping:
            params |= {"goal": gepa.early_stopping.goal, "patience": gepa.early_stopping.patience}
    else:
        params["max_examples"] = optimizer.meta_prompt_settings.max_examples
    params |= {f"option.{key}": json.dumps(value) for key, value in optimizer.options.items()}
    return {key: str(value) for key, value in params.items() if value is not None and value != ""}


def optimizer_config(spec: PromptOptimizationJobSpec, problem: Problem) -> dict[str, Any]:
    """The optimizer's settings as MLflow's optimization job takes them (its optimizer_config): GEPA's budget and
    the keyword arguments gepa.optimize gets, or MetaPrompt's guidelines and its reflection calls' parameters."""
    optimizer = spec.optimizer
    config: dict[str, Any] = {"reflection_model": mlflow_model_uri(optimizer.reflection_model)}
    if optimizer.type == "GEPA":
        gepa_kwargs = dict(gepa_run(problem).kwargs)
        return config | {"max_metric_calls": gepa_kwargs.pop("max_metric_calls"), "gepa_kwargs": gepa_kwargs}
    guidelines = optimizer.meta_prompt_settings.guidelines
    return config | {"lm_kwargs": dict(optimizer.options)} | ({"guidelines": guidelines} if guidelines else {})


def run_tags(identity: Mapping[str, str]) -> dict[str, str]:
    """The tags a new run starts with: who made it and where from, as MLflow's Runs table shows them, and the job's
    identity (a worker Pod's names the job's namespace; `promptopt run`'s does not)."""
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    job = identity.get("job", "")
    source = (
        {MLFLOW_SOURCE_TYPE: "JOB", MLFLOW_SOURCE_NAME: f"PromptOptimizationJob {identity['namespace']}/{job}"}
        if "namespace" in identity
        else {MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_SOURCE_NAME: f"promptopt run {job}"}
    )
    return {**_user(), **source, **{f"promptopt.dev/{key}": value for key, value in identity.items()}}


def _user() -> dict[str, str]:
    """mlflow.user as mlflow.start_run sets it (MLflow's client leaves it to the caller): the login, else this
    machine's user; none for a container user without a name and no login, which MLflow shows as "unknown"."""
    from mlflow.tracking.context.default_context import DefaultRunContext
    from mlflow.utils.mlflow_tags import MLFLOW_USER

    try:
        return {MLFLOW_USER: DefaultRunContext().tags()[MLFLOW_USER]}
    except KeyError:  # getpass: a uid with no passwd entry, as a worker Pod's
        return {}


def dry_run_notes(spec: PromptOptimizationJobSpec, problem: Problem) -> list[str]:
    """What a dry run says of the job's MLflow server, reached as the run reaches it but read only: the version each
    registry prompt reads now, the dataset's digest, and the experiment the run goes to; InvalidInput where the run
    would fail."""
    if spec.mlflow is None:
        return []
    notes = [
        f"prompt {p.name} reads {problem.source_prompts[p.name]}"
        + (f" ({p.registry_uri} now)" if p.registry_uri != problem.source_prompts[p.name] else "")
        for p in spec.prompts
        if p.registry_uri is not None
    ]
    if spec.dataset is not None and spec.dataset.mlflow_dataset_id is not None:
        notes.append(f"dataset {spec.dataset.mlflow_dataset_id} reads digest {problem.mlflow_dataset_digest}")
    notes += [
        f"scorer {key} reads the judge {read} registered in experiment {spec.mlflow.experiment!r}"
        for key, read in problem.registered_scorers.items()
    ]
    if spec.mlflow.experiment is not None:
        try:
            experiment = mlflow_client(spec.mlflow.tracking_uri).get_experiment_by_name(spec.mlflow.experiment)
        except Exception as error:  # noqa: BLE001 - MLflow's and requests' errors alike
            raise InvalidInput(
                f"spec.mlflow.experiment: MLflow at {spec.mlflow.tracking_uri}: {explain(error)}"
            ) from None
        notes.append(
            f"experiment {spec.mlflow.experiment!r} does not exist: the run creates it"
            if experiment is None
            else f"experiment {spec.mlflow.experiment!r} (id {experiment.experiment_id}): the run goes there"
        )
    return notes


@dataclass(frozen=True)
class _Step:
    """An iteration's point of the progress metrics."""

    iteration: int
    best_score: float
    metric_calls: int

    @classmethod
    def of(cls, progress: Progress) -> _Step | None:
        if progress.best_score is None:  # nothing scored yet
            return None
        return cls(progress.iteration, progress.best_score, progress.metric_calls)

    def metrics(self) -> list[Any]:
        return [
            _metric("best_score_on_valset", self.best_score, self.iteration),
            _metric("total_metric_calls", self.metric_calls, self.iteration),
        ]


class TrackingRun:
    """Implements problem.Reporter: the job's MLflow run."""

    def __init__(
        self,
        spec: PromptOptimizationJobSpec,
        problem: Problem,
        identity: Mapping[str, str],
        run_id: str | None = None,
        *,
        cost: CostSource = no_cost,
    ):
        assert spec.mlflow is not None and spec.mlflow.experiment is not None
        params = run_params(spec, problem)
        self._client = mlflow_client(spec.mlflow.tracking_uri)
        self._problem = problem
        self._cost = cost
        self._lock = threading.Lock()
        self._step: _Step | None = None  # the iteration in progress, logged once it is over
        first = run_id is None  # the job's first worker; a replaced one logs to the run it started
        where = f"spec.mlflow.experiment: MLflow at {spec.mlflow.tracking_uri}"
        try:
            experiment = self._client.get_experiment_by_name(spec.mlflow.experiment)
            self.experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self._client.create_experiment(spec.mlflow.experiment)
            )
            if run_id is None:
                run = self._client.create_run(self.experiment_id, tags=run_tags(identity), run_name=identity.get("job"))
                run_id = run.info.run_id
                self._client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])
            else:
                self._client.update_run(run_id, status="RUNNING")
        except Exception as error:  # noqa: BLE001 - MLflow's and requests' errors alike
            raise InvalidInput(f"{where}: the job's run could not be started: {explain(error)}") from None
        self.run_id: str = run_id
        if first:
            self._link(problem.source_prompts.values())
            if spec.dataset is not None and spec.dataset.mlflow_dataset_id is not None:
                dataset_id = spec.dataset.mlflow_dataset_id
                self._safely(
                    "log the dataset",
                    lambda: self._client.log_inputs(self.run_id, datasets=[_dataset_input(dataset_id)]),
                )

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        step = _Step.of(progress)
        if step is None:
            return
        with self._lock:
            over = self._step if self._step is not None and self._step.iteration != step.iteration else None
            self._step = step
        if over is not None:
            self._safely("log the progress", lambda: self._client.log_batch(self.run_id, metrics=over.metrics()))

    def finished(self, progress: Progress, result: Result) -> None:
        with self._lock:
            pending, self._step = self._step, None
        # The iteration in progress, its point now with the run's final counts.
        steps = {step.iteration: step for step in (pending, _Step.of(progress)) if step is not None}
        cost = self._cost()
        cost_fields = status_fields(cost) if cost is not None else {}
        metrics = [
            *(metric for step in steps.values() for metric in step.metrics()),
            *(
                metric
                for candidate in result.candidates
                for metric in _scores("eval_score", candidate.score, candidate.scorers, candidate.id)
            ),
            *_summary("initial_eval_score", result.initial_scores or progress.initial_scores),
            *_summary("final_eval_score", result.final_scores),
            *_summary("initial_test_score", result.initial_test_scores),
            *_summary("final_test_score", result.final_test_scores),
            _metric("total_iterations", progress.iteration, 0),
            _metric("total_candidates", progress.candidates, 0),
            *(_metric(f"cost_{key}", value, 0) for key, value in cost_fields.items()),
        ]
        self._safely("log the final scores", lambda: self._client.log_batch(self.run_id, metrics=metrics))
        status = worker_status(progress, result, cost, every_candidate=True)
        candidates = [status_fields(candidate) for candidate in status.candidates or []]
        self._safely(
            "log the candidates",
            lambda: self._client.log_dict(self.run_id, {"candidates": candidates}, "candidates.json"),
        )
        self._safely("log the candidates' iterations", lambda: self._log_iterations(result.candidates))
        for prompt in status.optimized_prompts or []:
            self._safely(
                "log an optimized prompt",
                lambda prompt=prompt: self._client.log_text(
                    self.run_id, prompt.template, f"optimized_prompts/{prompt.name}.txt"
                ),
            )
        if result.registration is not None:
            self._link(result.registration.registered.values())
        ended = "KILLED" if result.reason == "Cancelled" else "FINISHED" if result.succeeded else "FAILED"
        self._safely("end the run", lambda: self._client.set_terminated(self.run_id, status=ended))

    def _log_iterations(self, candidates: Sequence[CandidateRecord]) -> None:
        """prompt_candidates/iteration_<id>/ of the seed and the best candidates, from the evaluator's cache (no LLM
        call), uploaded as one folder."""
        evaluator = self._problem.evaluator
        if not isinstance(evaluator, TaskEvaluator) or not candidates:  # no dataset, or no cache to read
            return
        with tempfile.TemporaryDirectory() as scratch:
            for candidate in iteration_candidates(candidates):
                folder = Path(scratch) / f"iteration_{candidate.id}"
                folder.mkdir()
                for file, content in iteration_files(
                    candidate, evaluator.cached(candidate.prompts, self._problem.validation)
                ).items():
                    (folder / file).write_text(content)
            self._client.log_artifacts(self.run_id, scratch, CANDIDATES_FOLDER)

    def _link(self, versions: Iterable[str]) -> None:
        """Link registry versions (prompts:/<name>/<version>) to the run, one at a time: MLflow's linking rewrites
        the run's mlflow.linkedPrompts tag."""
        for uri in versions:
            self._safely(f"link {uri}", lambda uri=uri: self._client.link_prompt_version_to_run(self.run_id, uri))

    def _safely(self, what: str, call: Any) -> None:
        try:
            call()
        except Exception as error:  # noqa: BLE001 - logging to MLflow never stops the optimization
            log.warning("could not %s to MLflow run %s: %s", what, self.run_id, explain(error))


def iteration_candidates(candidates: Sequence[CandidateRecord]) -> list[CandidateRecord]:
    """The candidates that get an iteration folder: the seed (id 0) and the best by validation score, at most
    ITERATION_ARTIFACTS, in id order."""
    ranked = sorted(candidates, key=lambda c: (c.id != 0, -c.score, c.id))[:ITERATION_ARTIFACTS]
    return sorted(ranked, key=lambda c: c.id)


def iteration_files(candidate: CandidateRecord, results: Sequence[ScoredOutput]) -> dict[str, str]:
    """A candidate's iteration folder, file name → content, as MLflow's GEPA optimizer writes one: its prompts, its
    scores and its validation records' results (MLflow's table format, as mlflow.log_table writes it)."""
    keys = sorted({key for result in results for key in result.scores} | set(candidate.scorers or {}))
    table = {
        "columns": ["inputs", "output", "expectation", "aggregate_score", *keys],
        "data": [
            [
                dict(r.example.inputs),
                r.output[:OUTPUT_CHARACTERS],
                dict(r.example.expectations),
                None if r.failure else r.aggregate,
                *(r.scores.get(key) for key in keys),
            ]
            for r in results
        ],
    }
    scores = {
        "aggregate": candidate.score,
        "per_scorer": dict(candidate.scorers or {}),
        "parents": list(candidate.parents),
    }
    return {
        **{f"{name}.txt": text for name, text in candidate.prompts.items()},
        "scores.json": json.dumps(scores, indent=2),
        "eval_results.json": json.dumps(table, default=str),
    }


def _dataset_input(dataset_id: str) -> Any:
    """The evaluation dataset as a run input, as MLflow's optimization job logs it (its records left unread)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.genai.datasets import get_dataset
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    # MLflow's own conversion (mlflow.log_input's), for a run that is not the process's active one.
    dataset = get_dataset(dataset_id=dataset_id)._to_mlflow_entity()
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value[:6000])


def _metric(key: str, value: float, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def _scores(name: str, aggregate: float | None, scorers: Mapping[str, float] | None, step: int) -> list[Any]:
    """`name` for the aggregate and `name.<scorer>` per scorer, as MLflow names its eval scores."""
    found = [_metric(f"{name}.{scorer}", value, step) for scorer, value in (scorers or {}).items()]
    return found + ([_metric(name, aggregate, step)] if aggregate is not None else [])


def _summary(name: str, summary: ScoreSummary | None) -> list[Any]:
    return _scores(name, summary.aggregate, summary.scorers, 0) if summary is not None else []
