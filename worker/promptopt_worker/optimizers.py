"""Runs the job's optimizer and ends every run the same way.

`optimize` owns the run's Progress and its ending: it always returns a Result and calls
`reporter.finished` exactly once, so the caller only handles failures before optimization starts (reading
the job, the dataset). The optimizers report progress as they go and let exceptions out; here an
exception becomes the Result: the stop's reason once a stop was requested (the budget spent, SIGTERM,
the deadline, a permanent LLM error in gepa's reflection), LLMError for a permanent LLM error, else Error,
each with the best candidate so far.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from promptopt_worker.gepa_optimizer import optimize_gepa
from promptopt_worker.llm import PermanentLLMError
from promptopt_worker.metaprompt import optimize_metaprompt
from promptopt_worker.problem import Problem, Progress, Reporter, Result, ScoreSummary, StopRequested

log = logging.getLogger(__name__)

Optimizer = Callable[[Problem, Progress, Reporter, StopRequested], Result]
OPTIMIZERS: dict[str, Optimizer] = {"GEPA": optimize_gepa, "MetaPrompt": optimize_metaprompt}


def optimize(problem: Problem, reporter: Reporter, stop: StopRequested) -> Result:
    progress = Progress(
        config_map_inputs=problem.config_map_inputs,
        source_prompts=problem.source_prompts,
        mlflow_run=problem.mlflow_run,
        dataset_digest=problem.dataset_digest,
        mlflow_dataset_digest=problem.mlflow_dataset_digest,
    )
    try:
        result = OPTIMIZERS[problem.settings.type](problem, progress, reporter, stop)
    except Exception as error:
        result = _ended_by(error, problem, progress, stop)
    if problem.test and result.succeeded and not stop:
        result = _with_test_scores(problem, result)
    if problem.register is not None and result.succeeded:
        result = replace(result, registration=problem.register(result))
    reporter.finished(progress, result)
    return result


def _ended_by(error: Exception, problem: Problem, progress: Progress, stop: StopRequested) -> Result:
    if stop and stop.reason is not None:
        reason, message = stop.reason, stop.message
    elif isinstance(error, PermanentLLMError):
        reason, message = "LLMError", str(error)
    else:
        log.exception("the optimizer failed")
        reason, message = "Error", f"the optimizer failed: {type(error).__name__}: {error}"
    best = progress.best_candidate
    return Result(
        reason,
        message,
        best_candidate=best,
        initial_scores=progress.initial_scores,
        final_scores=_cached_scores(problem, best) if best is not None else None,
    )


def _with_test_scores(problem: Problem, result: Result) -> Result:
    """The result with the original and the best prompts scored on the held-out test records, which the optimizer
    never saw. Not for a stopped run (its grace period is for writing the result), nor when scoring fails: the
    result stands without them, and the log says why."""
    assert problem.evaluator is not None and result.best_candidate is not None  # a test set comes with a dataset
    try:
        initial, final = (
            problem.evaluator.summarize(problem.evaluator.evaluate(candidate, problem.test))
            for candidate in (problem.seed_candidate, result.best_candidate)
        )
    except Exception:
        log.warning("the held-out test records could not be scored", exc_info=True)
        return result
    return replace(result, initial_test_scores=initial, final_test_scores=final, test_records=len(problem.test))


def _cached_scores(problem: Problem, candidate: dict[str, str]) -> ScoreSummary | None:
    """The best candidate's validation scores: evaluated already, so the evaluator answers from its cache;
    None when it cannot (no dataset, or it would need LLM calls that now fail)."""
    if problem.evaluator is None:
        return None
    try:
        return problem.validation_scores(candidate)
    except Exception:
        log.warning("no final scores for the best candidate", exc_info=True)
        return None
