"""One MLflow run per job (spec.mlflow.experiment), through MLflow's own client: a Reporter, beside the status and
the console.

What it logs, as MLflow's GEPA optimizer logs a run: the optimizer's settings as params; the best score and the
metric calls at each iteration as metrics (step: the iteration); at the end the initial and final scores per scorer
and in aggregate, the cost, every candidate's prompts (candidates.json) and the optimized prompts
(optimized_prompts/<name>.txt) as artifacts. The run ends as the job does: KILLED when cancelled (its best so far
logged all the same), FINISHED with a result, FAILED without one.

Starting the run is part of preparing the job: an unreachable server fails it before any LLM call (InvalidInput),
as a missing registry prompt does. Once it runs, a failure to log never stops the optimization: it is logged as a
warning, and the status holds everything the run would.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from promptopt.api.v1alpha1 import PromptOptimizationJobSpec
from promptopt_worker.mlflow_store import explain, mlflow_client
from promptopt_worker.problem import InvalidInput, Progress, Result, ScoreSummary
from promptopt_worker.reporting import CostSource, no_cost, worker_status

log = logging.getLogger(__name__)


def run_params(spec: PromptOptimizationJobSpec) -> dict[str, str]:
    """The optimizer's settings as the run's params."""
    optimizer = spec.optimizer
    params: dict[str, Any] = {
        "optimizer": optimizer.type, "reflection_model": optimizer.reflection_model,
        "task": spec.task.model or (spec.task.http.url if spec.task.http else ""),
        "prompts": ",".join(p.name for p in spec.prompts),
        "scorers": ",".join(s.key for s in spec.scorers or []),
    }
    if optimizer.type == "GEPA":
        gepa = optimizer.gepa_settings
        params |= {"max_metric_calls": gepa.max_metric_calls, "auto": gepa.auto,
                   "reflection_minibatch_size": gepa.reflection_minibatch_size,
                   "candidate_selection": gepa.candidate_selection, "use_merge": gepa.use_merge, "seed": gepa.seed}
        if gepa.early_stopping:
            params |= {"goal": gepa.early_stopping.goal, "patience": gepa.early_stopping.patience}
    else:
        params["max_examples"] = optimizer.meta_prompt_settings.max_examples
    params |= {f"option.{key}": json.dumps(value) for key, value in optimizer.options.items()}
    return {key: str(value) for key, value in params.items() if value is not None}


class TrackingRun:
    """Implements problem.Reporter: the job's MLflow run."""

    def __init__(self, spec: PromptOptimizationJobSpec, identity: Mapping[str, str], run_id: str | None = None,
                 *, cost: CostSource = no_cost):
        assert spec.mlflow is not None and spec.mlflow.experiment is not None
        self._client = mlflow_client(spec.mlflow.tracking_uri)
        self._cost = cost
        self._lock = threading.Lock()
        self._logged: tuple[int, float | None] | None = None
        where = f"spec.mlflow.experiment: MLflow at {spec.mlflow.tracking_uri}"
        try:
            experiment = self._client.get_experiment_by_name(spec.mlflow.experiment)
            self.experiment_id = (experiment.experiment_id if experiment is not None
                                  else self._client.create_experiment(spec.mlflow.experiment))
            if run_id is None:  # the job's first worker; a replaced one logs to the run it started
                tags = {f"promptopt.dev/{key}": value for key, value in identity.items()}
                run = self._client.create_run(self.experiment_id, tags=tags, run_name=identity.get("job"))
                run_id = run.info.run_id
                self._client.log_batch(run_id, params=[_param(k, v) for k, v in run_params(spec).items()])
            else:
                self._client.update_run(run_id, status="RUNNING")
        except Exception as error:  # noqa: BLE001 - MLflow's and requests' errors alike
            raise InvalidInput(f"{where}: the job's run could not be started: {explain(error)}") from None
        self.run_id: str = run_id

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        step = (progress.iteration, progress.best_score)
        with self._lock:
            if step == self._logged or progress.best_score is None:
                return
            self._logged = step
        self._safely("log the progress", lambda: self._client.log_batch(self.run_id, metrics=[
            _metric("best_score", progress.best_score, progress.iteration),
            _metric("metric_calls", progress.metric_calls, progress.iteration)]))

    def finished(self, progress: Progress, result: Result) -> None:
        cost = self._cost() or {}
        metrics = [*_scores("initial", result.initial_scores or progress.initial_scores),
                   *_scores("final", result.final_scores),
                   *(_metric(f"cost_{key}", value, 0) for key, value in cost.items() if isinstance(value, int | float))]
        self._safely("log the final scores", lambda: self._client.log_batch(self.run_id, metrics=metrics))
        status = worker_status(progress, result, cost, every_candidate=True).model_dump(
            mode="json", by_alias=True, exclude_unset=True)
        self._safely("log the candidates", lambda: self._client.log_dict(
            self.run_id, {"candidates": status.get("candidates", [])}, "candidates.json"))
        for prompt in status.get("optimizedPrompts") or []:
            self._safely("log an optimized prompt", lambda prompt=prompt: self._client.log_text(
                self.run_id, prompt["template"], f"optimized_prompts/{prompt['name']}.txt"))
        ended = "KILLED" if result.reason == "Cancelled" else "FINISHED" if result.succeeded else "FAILED"
        self._safely("end the run", lambda: self._client.set_terminated(self.run_id, status=ended))

    def _safely(self, what: str, call: Any) -> None:
        try:
            call()
        except Exception as error:  # noqa: BLE001 - logging to MLflow never stops the optimization
            log.warning("could not %s to MLflow run %s: %s", what, self.run_id, explain(error))


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value[:6000])


def _metric(key: str, value: float, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def _scores(stage: str, summary: ScoreSummary | None) -> list[Any]:
    if summary is None:
        return []
    found = [_metric(f"{stage}_score.{scorer}", value, 0) for scorer, value in summary.scorers.items()]
    if summary.aggregate is not None:
        found.append(_metric(f"{stage}_score.aggregate", summary.aggregate, 0))
    return found
