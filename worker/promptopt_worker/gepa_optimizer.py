"""GEPA (the `gepa` library's reflective evolutionary search) over our Evaluator.

gepa knows nothing of the task: `EvaluatorAdapter` hands it examples, outputs and per-scorer scores, and the
reflection model is called through `problem.reflect`, so every LLM call is metered by our LLMClient (which
is why gepa's max_reflection_cost is not used: budget stops arrive through StopRequested). Progress comes
from gepa's callbacks, stops from gepa's stoppers, and checkpoints from gepa's run_dir. What the worker relies on
of gepa beyond its public seams is in gepa_compat.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import gepa

from promptopt import prompt_contract
from promptopt.api.v1alpha1 import DEFAULT_MAX_METRIC_CALLS, BudgetPreset, GepaSettings
from promptopt_worker.gepa_compat import (
    GEPA_PARAMETERS,
    GEPA_PERFECT_SCORE,
    GEPA_VERSION,
    GEPACallback,
    GEPAState,
    LanguageModel,
    ScreenedReflection,
    best_on_validation,
    candidates_found,
    iteration_cost_bound,
    metric_calls_spent,
)
from promptopt_worker.llm import PermanentLLMError
from promptopt_worker.problem import (
    Candidate,
    CandidateRecord,
    Evaluator,
    Example,
    InvalidInput,
    Problem,
    Progress,
    Reporter,
    Result,
    ScoredOutput,
    StopRequested,
    VariableCheck,
    count_failed_examples,
    option_problems,
)

log = logging.getLogger(__name__)

# A run that spends no metric call for this long is stuck: with raise_on_exception=False an evaluator that
# keeps raising spins gepa's loop thousands of times a second without spending budget. Every healthy
# iteration spends some (its parent's minibatch evaluation at least).
STALL_SECONDS = 600.0

# gepa.optimize parameters the worker owns, and where the job sets them instead; `optimizer.options` may set
# any other one.
_BUILT_FROM_THE_JOB = "the worker builds it from spec.prompts, spec.dataset, spec.task and spec.scorers"
_METERED_REFLECTION = (
    "the reflection model is spec.optimizer.reflectionModel, called through the worker's metered LLM client"
)
_REPORTERS = "the worker reports progress into the job's status and its log"
RESERVED_OPTIONS: dict[str, str] = {
    **dict.fromkeys(["seed_candidate", "trainset", "valset", "adapter", "task_lm", "evaluator"], _BUILT_FROM_THE_JOB),
    **dict.fromkeys(["reflection_lm", "reflection_lm_kwargs"], _METERED_REFLECTION),
    **dict.fromkeys(
        ["reflection_strategy", "custom_candidate_proposer"],
        "the worker's reflection rejects proposals that lose or invent a {{variable}}",
    ),
    "max_reflection_cost": "set spec.budget.maxCostUSD, which covers every LLM call of the job",
    "stop_callbacks": "set spec.optimizer.gepa.earlyStopping or spec.activeDeadlineSeconds, or stop the job with "
    "spec.cancel",
    **dict.fromkeys(["callbacks", "logger", "display_progress_bar"], _REPORTERS),
    "run_dir": "set spec.worker.checkpointClaimName to keep checkpoints across worker Pods",
}

# DSPy's GEPA `auto` presets: how many candidates each budget is sized for.
PRESET_CANDIDATES: dict[str, int] = {"light": 6, "medium": 12, "heavy": 18}


def preset_metric_calls(preset: BudgetPreset, prompts: int, validation_records: int) -> int:
    """The metric calls of a budget preset, as DSPy's GEPA sizes `auto` (its auto_budget, with its defaults of 35
    records per trial and a full validation every 5 trials): the seed's validation, 5 calls per candidate, then
    each trial's minibatch and the periodic full validations."""
    candidates = PRESET_CANDIDATES[preset]
    trials = int(max(4 * prompts * math.log2(candidates), 1.5 * candidates))
    full_validations = (trials + 1) // 5 + 1 + (1 if trials < 5 else 0)
    return validation_records + 5 * candidates + 35 * trials + full_validations * validation_records


def metric_call_budget(settings: GepaSettings, prompts: int, validation_records: int) -> tuple[int, str]:
    """The run's budget, and the field it comes from: maxMetricCalls when set, else the auto preset's, else the
    default."""
    if settings.max_metric_calls is not None:
        return settings.max_metric_calls, "spec.optimizer.gepa.maxMetricCalls"
    if settings.auto is not None:
        return preset_metric_calls(settings.auto, prompts, validation_records), "spec.optimizer.gepa.auto"
    return DEFAULT_MAX_METRIC_CALLS, "spec.optimizer.gepa.maxMetricCalls"


class EvaluatorAdapter(gepa.GEPAAdapter[Example, ScoredOutput, str]):
    """gepa's adapter protocol over the problem's Evaluator. Trajectories are the ScoredOutputs themselves.

    As gepa's adapter contract asks, one example that cannot be scored does not raise: it enters gepa's scores
    as 0 (its objective scores hold only the scorers that gave a verdict), its reason reaches the reflection as
    the record's feedback, and it is counted; only past the job's limit does `evaluate` raise."""

    # gepa calls adapter.propose_new_texts unconditionally; None selects its own reflective proposer.
    propose_new_texts = None

    def __init__(self, problem: Problem, progress: Progress, stop: StopRequested):
        assert problem.evaluator is not None
        self.problem = problem
        self.evaluator: Evaluator = problem.evaluator
        self._progress = progress
        self._stop = stop

    def evaluate(
        self, batch: list[Example], candidate: Candidate, capture_traces: bool = False
    ) -> gepa.EvaluationBatch:
        hits = self.evaluator.cache_hits
        results = self.evaluator.evaluate(candidate, batch)
        self._progress.cached_evaluations += self.evaluator.cache_hits - hits
        count_failed_examples(results, self.problem, self._progress, self._stop)
        return gepa.EvaluationBatch(
            outputs=[r.output for r in results],
            scores=[r.aggregate for r in results],
            objective_scores=[dict(r.scores) for r in results],
            trajectories=list(results) if capture_traces else None,
        )

    def make_reflective_dataset(
        self, candidate: Candidate, eval_batch: gepa.EvaluationBatch, components_to_update: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        # Every prompt shapes the one output, so each component reflects on the same records.
        records = [reflective_record(result) for result in eval_batch.trajectories or []]
        return {name: records for name in components_to_update}

    # gepa checkpoints this with its state, so the counts of rejected proposals, failed examples and cached
    # evaluations survive a restart, as its metric calls do (the failure limit applies to the whole budget, which is
    # a total across restarts too).
    _COUNTS = ("rejected_candidates", "failed_examples", "cached_evaluations")

    def get_adapter_state(self) -> dict[str, Any]:
        return {count: getattr(self._progress, count) for count in self._COUNTS}

    def set_adapter_state(self, state: Mapping[str, Any]) -> None:
        for count in self._COUNTS:
            setattr(self._progress, count, state.get(count, getattr(self._progress, count)))


def reflective_record(result: ScoredOutput) -> dict[str, Any]:
    """One example as gepa's reflection prompt renders it (markdown sections named by the keys)."""
    return prompt_contract.reflective_record(
        result.example.inputs, result.output, result.example.expectations.get("expected_response"), result.feedback()
    )


class ProgressCallback:
    """gepa's callback events → Progress → the Reporter (important: the first score and each new best)."""

    def __init__(self, problem: Problem, progress: Progress, reporter: Reporter):
        self._problem = problem
        self._progress = progress
        self._reporter = reporter
        self.last_error: Exception | None = None

    def on_valset_evaluated(self, event: Mapping[str, Any]) -> None:
        progress = self._progress
        progress.candidates = max(progress.candidates, event["candidate_idx"] + 1)
        first_score = progress.initial_scores is None
        if first_score:
            # The seed was just evaluated on the validation set: its per-scorer scores come from the cache.
            progress.initial_scores = self._problem.validation_scores(self._problem.seed_candidate)
            # The seed's evaluation is counted before gepa's budget hook exists (and not at all on a resume).
            progress.metric_calls = max(progress.metric_calls, event["num_examples_evaluated"])
        improved = self._record(event["candidate"], event["average_score"])
        self._reporter.progress(progress, important=first_score or improved)

    def on_budget_updated(self, event: Mapping[str, Any]) -> None:
        self._progress.metric_calls = event["metric_calls_used"]
        self._reporter.progress(self._progress)

    def on_iteration_start(self, event: Mapping[str, Any]) -> None:
        # Read the state too: after a resume, earlier candidates were never announced in this process.
        state = event["state"]
        progress = self._progress
        progress.iteration = event["iteration"]
        progress.metric_calls = metric_calls_spent(state)
        progress.candidates = candidates_found(state)
        improved = self._record(*best_on_validation(state))
        self._reporter.progress(progress, important=improved)

    def on_iteration_end(self, event: Mapping[str, Any]) -> None:
        self._reporter.progress(self._progress)

    def on_error(self, event: Mapping[str, Any]) -> None:
        self.last_error = event["exception"]

    def _record(self, candidate: Candidate, score: float) -> bool:
        """Whether `candidate` is a new best (ties keep the earlier one, as gepa's best_idx does)."""
        if self._progress.best_score is not None and score <= self._progress.best_score:
            return False
        self._progress.best_score, self._progress.best_candidate = score, dict(candidate)
        return True


class StallStopper:
    """Stops a run that has spent no metric call for `seconds` (gepa has no such stopper)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._metric_calls = -1
        self._since = time.monotonic()

    def __call__(self, gepa_state: GEPAState) -> bool:
        now = time.monotonic()
        if metric_calls_spent(gepa_state) != self._metric_calls:
            self._metric_calls, self._since = metric_calls_spent(gepa_state), now
        return now - self._since > self.seconds


class MetricCallBudget:
    """Keeps the run within max_metric_calls. gepa checks its budget between iterations only, so its last
    iteration may pass it (42 of 40); this stopper starts an iteration only when the calls left cover the
    iteration's worst case."""

    def __init__(self, max_metric_calls: int, iteration_cost: int):
        self.max_metric_calls = max_metric_calls
        self.iteration_cost = iteration_cost

    def __call__(self, gepa_state: GEPAState) -> bool:
        return metric_calls_spent(gepa_state) + self.iteration_cost > self.max_metric_calls


class FiringRecorder:
    """A gepa stopper that remembers whether it fired, so the result can name why the run ended."""

    def __init__(self, stopper: gepa.StopperProtocol):
        self._stopper = stopper
        self.fired = False

    def __call__(self, gepa_state: GEPAState) -> bool:
        self.fired = self.fired or self._stopper(gepa_state)
        return self.fired


class GepaLog:
    """gepa's logger. Without one, gepa with a run_dir redirects sys.stdout and sys.stderr process-wide."""

    def log(self, message: str) -> None:
        log.info("gepa: %s", message)


@dataclass(frozen=True)
class GepaRun:
    """How gepa.optimize will be called: its keyword arguments (the typed settings, then the job's options over
    them), the budget of metric calls, and the most one iteration can spend."""

    kwargs: Mapping[str, Any]
    budget: int
    budget_field: str  # where the budget comes from, for messages
    iteration_cost: int

    @property
    def minibatch_size(self) -> int:
        return int(self.kwargs["reflection_minibatch_size"])


def gepa_run(problem: Problem) -> GepaRun:
    """The run the job asks for, or InvalidInput naming the field: options gepa does not take or the worker sets,
    a budget that is no number or does not cover scoring the seed."""
    if problem.evaluator is None or not problem.train or not problem.validation:
        raise InvalidInput("GEPA needs a dataset with training and validation examples")
    settings = problem.settings.gepa_settings
    options = dict(problem.settings.options)
    if problems := option_problems(options, RESERVED_OPTIONS, GEPA_PARAMETERS, f"gepa.optimize (gepa {GEPA_VERSION})"):
        raise InvalidInput("; ".join(problems))

    budget, budget_field = metric_call_budget(settings, len(problem.prompts), len(problem.validation))
    if "max_metric_calls" in options:
        budget_field = "spec.optimizer.options.max_metric_calls"
    kwargs: dict[str, Any] = {
        "candidate_selection_strategy": settings.candidate_selection,
        "reflection_minibatch_size": settings.reflection_minibatch_size,
        "use_merge": settings.use_merge,
        "seed": settings.seed,
        "max_metric_calls": budget,
        # An exception ends the run: what the adapter raises (a permanent LLM error, the budget spent, too many
        # failed examples; transient errors were retried already, a single failed example does not raise) or a
        # bug would only repeat.
        "raise_on_exception": True,
        **options,
    }
    budget, first_step = kwargs["max_metric_calls"], len(problem.validation)  # the seed, scored on validation
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise InvalidInput(f"{budget_field}: {budget!r} is not a number of metric calls; GEPA needs a budget")
    iteration_cost = iteration_cost_bound(kwargs["reflection_minibatch_size"], first_step, kwargs["use_merge"])
    if budget < first_step:
        raise InvalidInput(
            f"{budget_field}: {budget} metric calls do not cover GEPA's first step, scoring the original prompts on "
            f"the {first_step} validation records; set at least {first_step + iteration_cost} (that step and one "
            f"iteration of up to {iteration_cost}), or hold out fewer records (spec.dataset.validationFraction)"
        )
    return GepaRun(kwargs, budget, budget_field, iteration_cost)


def optimize_gepa(
    problem: Problem,
    progress: Progress,
    reporter: Reporter,
    stop: StopRequested,
    *,
    stall_seconds: float = STALL_SECONDS,
) -> Result:
    """Runs gepa.optimize on the problem; exceptions (a permanent LLM error, or any error once a stop was
    requested) propagate to the caller, which turns them into a Result with the best so far in `progress`."""
    try:
        run = gepa_run(problem)
    except InvalidInput as error:
        return Result("InvalidInput", str(error))
    settings, kwargs = problem.settings.gepa_settings, dict(run.kwargs)
    budget, iteration_cost = run.budget, run.iteration_cost
    budget_field, first_step = run.budget_field, len(problem.validation)
    progress.max_metric_calls = budget

    variables = VariableCheck.for_prompts(problem.prompts)

    def keeps_variables(proposed: Candidate) -> bool:
        """A proposal that loses or invents a {{variable}} is rejected the moment it is proposed, before any metric
        call."""
        if problems := variables.problems(proposed):
            progress.rejected_candidates += 1
            log.warning("rejected a proposal: %s", "; ".join(problems))
            reporter.progress(progress)
        return not problems

    # gepa's own reflection prompt (or the one in options), screened; gepa passes it over when given a strategy.
    template = kwargs.pop("reflection_prompt_template", None)
    reflection = ScreenedReflection(_reflection_lm(problem, stop), template, GepaLog(), keeps_variables)
    callback = ProgressCallback(problem, progress, reporter)
    stall = FiringRecorder(StallStopper(stall_seconds))
    within_budget = FiringRecorder(MetricCallBudget(budget, iteration_cost))
    stoppers: list[gepa.StopperProtocol] = [lambda _state: bool(stop), stall, within_budget]
    deadline = None
    if problem.deadline_seconds is not None:
        deadline = FiringRecorder(gepa.TimeoutStopCondition(problem.deadline_seconds))  # its clock starts now
        stoppers.append(deadline)
    # gepa asks its stoppers once before each iteration (the first time, the seed's score is the best).
    early = settings.early_stopping
    goal_score = early.goal if early else None
    patience_iterations = early.patience if early else None
    goal = FiringRecorder(gepa.ScoreThresholdStopper(goal_score)) if goal_score is not None else None
    patience = (
        FiringRecorder(gepa.NoImprovementStopper(patience_iterations)) if patience_iterations is not None else None
    )
    stoppers.extend(stopper for stopper in (goal, patience) if stopper is not None)
    # A candidate (the seed included) that scores perfectly on validation ends the run: none can beat it (ties keep
    # the earlier one), yet gepa would spend the rest of the budget skipping minibatches scored perfectly
    # (microseconds each, from the evaluator's cache) or proposing prompts that cannot score higher.
    perfect_score = kwargs.get("perfect_score", GEPA_PERFECT_SCORE)
    perfect = (
        FiringRecorder(gepa.ScoreThresholdStopper(perfect_score))
        if settings.stop_at_perfect_score is not False
        else None
    )
    if perfect is not None:
        stoppers.append(perfect)

    result = gepa.optimize(
        seed_candidate=problem.seed_candidate,
        trainset=list(problem.train),
        valset=list(problem.validation),
        adapter=EvaluatorAdapter(problem, progress, stop),
        reflection_strategy=reflection,
        stop_callbacks=stoppers,
        callbacks=[cast(GEPACallback, callback)],  # gepa calls the methods a callback has: all are optional
        logger=GepaLog(),
        run_dir=problem.checkpoint_dir,
        display_progress_bar=False,
        **kwargs,
    )

    best = dict(result.candidates[result.best_idx])  # the mapping itself (best_candidate unwraps str seeds)
    progress.best_candidate, progress.best_score = best, result.val_aggregate_scores[result.best_idx]
    if result.total_metric_calls is not None:  # gepa's count; else ours, from its events
        progress.metric_calls = result.total_metric_calls
    summary = (
        f"best of {len(result.candidates)} candidates scores {progress.best_score:.3f} on validation "
        f"(seed {result.val_aggregate_scores[0]:.3f}) after {progress.iteration} iterations, "
        f"{progress.metric_calls} metric calls, {progress.rejected_candidates} proposals rejected"
    )
    if progress.failed_examples:
        summary += f", {progress.failed_examples} evaluations not scored (0 in these scores)"
    if stop:
        reason, message = stop.reason or "Cancelled", f"{stop.message}; {summary}"
    elif stall.fired:
        reason = "Error"
        message = f"GEPA made no progress for {stall_seconds:g} s (last error: {callback.last_error!r}); {summary}"
    elif deadline is not None and deadline.fired:
        reason, message = "DeadlineReached", f"the deadline of {problem.deadline_seconds:g} s passed; {summary}"
    elif goal is not None and goal.fired:
        reason, message = "GoalReached", f"GEPA stopped at its goal of {goal_score:g}; {summary}"
    elif perfect is not None and perfect.fired:
        scorer = "the original prompts score" if result.best_idx == 0 else f"candidate {result.best_idx} scores"
        reason = "PerfectScore"
        message = f"GEPA stopped: {scorer} {perfect_score:g} on validation, which no candidate can beat; {summary}"
    elif patience is not None and patience.fired:
        reason = "NoImprovement"
        message = f"GEPA stopped: no better candidate in {patience_iterations} iterations; {summary}"
    elif within_budget.fired:
        reason = "Completed"
        message = (
            f"GEPA finished: the {budget - progress.metric_calls} metric calls left could not cover "
            f"another iteration (up to {iteration_cost}); {summary}"
        )
        if budget < first_step + iteration_cost:
            message += (
                f". The budget covers no iteration after the first step: set {budget_field} to at least "
                f"{first_step + iteration_cost} to optimize"
            )
    else:
        reason, message = "Completed", f"GEPA finished: {summary}"
    return Result(
        reason,
        message,
        best_candidate=best,
        initial_scores=progress.initial_scores,
        final_scores=problem.validation_scores(best),
        candidates=candidate_records(result),
    )


def candidate_records(result: gepa.GEPAResult) -> tuple[CandidateRecord, ...]:
    """Every candidate of the run with its lineage, validation scores (per scorer: gepa's per-objective means of
    our objective scores) and the metric calls spent when it was found."""
    per_scorer: Sequence[Mapping[str, float] | None] = result.val_aggregate_subscores or [None] * len(result.candidates)
    return tuple(
        CandidateRecord(
            id=index,
            parents=tuple(parent for parent in parents if parent is not None),
            score=score,
            scorers=scorers,
            found_at_metric_calls=found,
            prompts=dict(candidate),
        )
        for index, (candidate, parents, score, scorers, found) in enumerate(
            zip(
                result.candidates,
                result.parents,
                result.val_aggregate_scores,
                per_scorer,
                result.discovery_eval_counts,
                strict=True,
            )
        )
    )


def _reflection_lm(problem: Problem, stop: StopRequested) -> LanguageModel:
    def ask(prompt: str | list[dict[str, Any]]) -> str:
        if not isinstance(prompt, str):
            # gepa sends chat messages only for multimodal records; ours are text.
            raise TypeError(f"the reflection got chat messages, not a prompt: {type(prompt).__name__}")
        if stop:  # a stopping run starts no reflection (gepa skips the proposal and checks its stoppers)
            raise RuntimeError(f"not reflecting: {stop.message}")
        try:
            return problem.reflect(prompt)
        except PermanentLLMError as error:
            # gepa swallows reflection errors and would spend its whole budget proposing nothing: stop instead.
            stop.request("LLMError", f"the reflection model failed: {error}")
            raise

    return ask
