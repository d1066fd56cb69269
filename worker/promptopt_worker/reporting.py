"""Where the worker's progress and result go: the job's status, the console, the log, the termination message and
the result file; and how the worker logs.

Each implements `problem.Reporter`; `Reporters` fans out to several. The worker writes only the
status fields it owns (the API's WorkerStatus model); phase, conditions, times and the rest belong to the
operator. Every text that leaves the worker goes through `redaction.redact`, so an API key that leaked into an
error message or a prompt is masked in status, logs and the termination message alike.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, TypeVar

from promptopt.api.times import format_time
from promptopt.api.v1alpha1 import (
    GROUP,
    PLURAL,
    STATUS_CANDIDATES,
    VERSION,
    CandidateReport,
    Cost,
    Display,
    HeldOutScores,
    MlflowStatus,
    OptimizedPrompt,
    Scores,
    StatusObject,
    WorkerResult,
    WorkerStatus,
    format_score,
    format_usd,
)
from promptopt.api.v1alpha1 import Progress as ProgressStatus
from promptopt.worker_contract import (
    TERMINATION_MESSAGE_LIMIT_BYTES,
    TERMINATION_MESSAGE_PATH,
    TERMINATION_MESSAGE_PATH_ENV,
    ResultFile,
    RunInfo,
    TerminationMessage,
    render_termination_message,
)
from promptopt_worker.kube import retry_api_call
from promptopt_worker.problem import CandidateRecord, Progress, Reporter, Result, ScoreSummary
from promptopt_worker.redaction import redact, redacted

log = logging.getLogger(__name__)

# The job's LLM usage so far, as status.cost (LLMClient's metering).
CostSource = Callable[[], Cost | None]

# A status model with scores of one prompt candidate: on the validation records, or on the held-out test records.
ScoresStatus = TypeVar("ScoresStatus", Scores, HeldOutScores)


def no_cost() -> None:
    return None


def worker_status(
    progress: Progress, result: Result | None = None, cost: Cost | None = None, *, every_candidate: bool = False
) -> WorkerStatus:
    """The worker-owned part of the job's status (redacted); fields not known yet are left unset. The candidates
    are the best STATUS_CANDIDATES without their prompts, or, with `every_candidate` (the result file), all of them
    with their prompts.

    Built through the API models, so a field the CRD lacks (which the API server would prune without a word) fails
    type-checking. Only the fields set here are written (`status_fields`)."""
    status = WorkerStatus(progress=_progress_status(progress))
    if progress.config_map_inputs:
        status.config_map_inputs = list(progress.config_map_inputs)
    initial = (result and result.initial_scores) or progress.initial_scores
    if initial is not None:
        status.initial_scores = _scores(initial, Scores)
    if result is not None and result.final_scores is not None:
        status.final_scores = _scores(result.final_scores, Scores)
    if result is not None and result.initial_test_scores and result.final_test_scores:
        status.initial_scores = _with_test(status.initial_scores, result.initial_test_scores, result.test_records)
        status.final_scores = _with_test(status.final_scores, result.final_test_scores, result.test_records)
    best = (result and result.best_candidate) or progress.best_candidate
    if best:
        status.optimized_prompts = [OptimizedPrompt(name=name, template=text) for name, text in best.items()]
    if result is not None and result.candidates:
        ranked = sorted(result.candidates, key=lambda c: (-c.score, c.id))
        status.candidates = [
            _candidate_report(c, every_candidate) for c in (ranked if every_candidate else ranked[:STATUS_CANDIDATES])
        ]
    mlflow = _mlflow_status(progress, result)
    if mlflow.model_fields_set:
        status.mlflow = mlflow
    if cost is not None:
        status.cost = cost
    display = Display()  # what kubectl get's columns show
    if initial is not None and initial.aggregate is not None:
        display.initial_score = format_score(initial.aggregate)
    if progress.best_score is not None:
        display.best_score = format_score(progress.best_score)
    if cost is not None and cost.usd is not None:
        display.cost = format_usd(cost.usd)
    if result is not None and result.final_test_scores and result.final_test_scores.aggregate is not None:
        display.test_score = format_score(result.final_test_scores.aggregate)
    if display.model_fields_set:
        status.display = display
    if result is not None:
        status.worker_result = _worker_result(result)
    # Every text redacted in one pass over the set fields, so no field can be missed.
    return WorkerStatus.model_validate(redacted(status.model_dump(exclude_unset=True)))


def status_fields(status: StatusObject) -> dict[str, Any]:
    """The status (or a part of it) as JSON with wire names, the fields set only."""
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _progress_status(progress: Progress) -> ProgressStatus:
    status = ProgressStatus(
        metric_calls=progress.metric_calls,
        iteration=progress.iteration,
        candidates=progress.candidates,
        rejected_candidates=progress.rejected_candidates,
        failed_examples=progress.failed_examples,
        cached_evaluations=progress.cached_evaluations,
    )
    if progress.max_metric_calls is not None:
        status.max_metric_calls = progress.max_metric_calls
    if progress.max_metric_calls:
        status.percent = min(100, progress.metric_calls * 100 // progress.max_metric_calls)
    if progress.best_score is not None:
        status.best_score = round(progress.best_score, 6)
    return status


def _scores(summary: ScoreSummary, model: type[ScoresStatus]) -> ScoresStatus:
    scores = model(scorers=_rounded(summary.scorers), failed_examples=summary.failed_examples)
    if summary.aggregate is not None:
        scores.aggregate = round(summary.aggregate, 6)
    return scores


def _with_test(scores: Scores | None, held_out: ScoreSummary, records: int) -> Scores:
    """`scores` (validation) with the same prompts' scores on the held-out test records."""
    test = _scores(held_out, HeldOutScores)
    test.records = records
    scores = scores or Scores()
    scores.test = test
    return scores


def _rounded(scores: Mapping[str, float]) -> dict[str, float]:
    return {key: round(score, 6) for key, score in scores.items()}


def _candidate_report(candidate: CandidateRecord, with_prompts: bool) -> CandidateReport:
    report = CandidateReport(id=candidate.id, parents=list(candidate.parents), score=round(candidate.score, 6))
    if candidate.scorers:
        report.scorers = _rounded(candidate.scorers)
    if candidate.found_at_metric_calls is not None:
        report.found_at_metric_calls = candidate.found_at_metric_calls
    if with_prompts:
        report.prompts = dict(candidate.prompts)
    return report


def _mlflow_status(progress: Progress, result: Result | None) -> MlflowStatus:
    mlflow = progress.mlflow_run.model_copy() if progress.mlflow_run is not None else MlflowStatus()
    if progress.source_prompts:
        mlflow.source_prompts = dict(progress.source_prompts)
    if progress.dataset_digest:
        mlflow.dataset_digest = progress.dataset_digest
    if progress.mlflow_dataset_digest:
        mlflow.mlflow_dataset_digest = progress.mlflow_dataset_digest
    if result is not None and result.registration is not None:
        mlflow.optimized_prompts = dict(result.registration.registered)
        if result.registration.error:
            mlflow.registration_error = result.registration.error
    return mlflow


def _worker_result(result: Result) -> WorkerResult:
    return WorkerResult(reason=result.reason, message=result.message, succeeded=result.succeeded)


class RateLimit:
    """Allows one event per `interval_s` (the first one at once), measured on an injectable clock."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        return self._last is None or self.clock() - self._last >= self.interval_s

    def mark(self) -> None:
        self._last = self.clock()

    def take(self, important: bool = False) -> bool:
        """Whether an event goes now (an important one always does), counted as sent if so."""
        if not (important or self.ready()):
            return False
        self.mark()
        return True


class Reporters:
    """Fans every report out to several reporters; one failing reporter never stops the others or the run."""

    def __init__(self, *reporters: Reporter):
        self.reporters = reporters

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        for reporter in self.reporters:
            try:
                reporter.progress(progress, important=important)
            except Exception:
                log.exception("reporter %s failed", type(reporter).__name__)

    def finished(self, progress: Progress, result: Result) -> None:
        for reporter in self.reporters:
            try:
                reporter.finished(progress, result)
            except Exception:
                log.exception("reporter %s failed", type(reporter).__name__)


# ---------------------------------------------------------------------------------------------
# The job's status subresource


class KubernetesStatusReporter:
    """Merge-patches the worker-owned status fields of one job.

    At most one patch per `min_interval_s` (important events and the end go out at once; a rate-limited
    state goes out with the next report after the interval). Only top-level fields that changed since the
    last successful patch are sent, and nothing when nothing changed. API errors are logged and retried
    with backoff, never raised: losing a progress update must not cost the optimization. The final patch
    retries longer, but within a pod's usual 30-second termination grace period.
    """

    def __init__(
        self,
        api: Any,  # kubernetes.client.CustomObjectsApi
        name: str,
        namespace: str,
        *,
        cost: CostSource = no_cost,
        min_interval_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        retry_delays_s: Sequence[float] = (0.5, 1.0),
        final_retry_delays_s: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
        request_timeout_s: float = 10.0,
    ):
        self.api, self.name, self.namespace = api, name, namespace
        self.cost = cost
        self.rate_limit = RateLimit(min_interval_s, clock)
        self.sleep = sleep
        self.retry_delays_s = retry_delays_s
        self.final_retry_delays_s = final_retry_delays_s
        self.request_timeout_s = request_timeout_s
        self.patches_sent = 0
        self._sent: dict[str, Any] = {}  # what the status holds since our last successful patch
        self._failing = False
        self._done = False
        self._lock = threading.Lock()

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        with self._lock:
            if self._done or not (important or self.rate_limit.ready()):
                return
            self._send(status_fields(worker_status(progress, cost=self.cost())), self.retry_delays_s)

    def finished(self, progress: Progress, result: Result) -> None:
        with self._lock:
            self._done = True
            if not self._send(status_fields(worker_status(progress, result, self.cost())), self.final_retry_delays_s):
                log.error("could not write the result to the job's status; the termination message still holds it")

    def _send(self, status: dict[str, Any], retry_delays_s: Sequence[float]) -> bool:
        changed = {key: value for key, value in status.items() if self._sent.get(key) != value}
        if not changed:
            return True
        self.rate_limit.mark()
        try:
            retry_api_call(
                lambda: self.api.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    self.name,
                    {"status": changed},
                    _content_type="application/merge-patch+json",
                    _request_timeout=self.request_timeout_s,
                ),
                retry_delays_s,
                sleep=self.sleep,
                on_error=self._warn_once,
            )
        except Exception:  # noqa: BLE001 - any failure to report must not end the run
            return False
        if self._failing:
            log.info("the job's status can be written again")
            self._failing = False
        self._sent.update(changed)
        self.patches_sent += 1
        return True

    def _warn_once(self, error: Exception) -> None:
        """One warning per streak of failures, so an unreachable API does not flood the log."""
        if not self._failing:
            log.warning(
                "could not patch status of %s/%s (will keep trying): %s",
                self.namespace,
                self.name,
                redact(str(error)).strip(),
            )
            self._failing = True


# ---------------------------------------------------------------------------------------------
# The console


class Pace:
    """The time since the run started, and the time left at the pace so far: the metric calls the budget has left
    (maxMetricCalls less those spent) at the rate spent since the first report (a resumed run starts with some)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self._first: tuple[float, int] | None = None  # (time, metric calls) of the first report

    def measure(self, progress: Progress) -> tuple[float, float | None]:
        """(seconds elapsed, seconds left or None while the rate is unknown)."""
        now = self.clock()
        if self._first is None:
            self._first = (now, progress.metric_calls)
        since, spent_before = self._first
        spent = progress.metric_calls - spent_before
        if not progress.max_metric_calls or spent <= 0 or now <= since:
            return now - self.started, None
        return now - self.started, max(0, progress.max_metric_calls - progress.metric_calls) * (now - since) / spent


def duration_text(seconds: float) -> str:
    """ "m:ss", or "h:mm:ss" from an hour on: a clock, which a live line ticks second by second (kubectl's coarser
    durations, api.times.format_duration, are for the status)."""
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


def progress_parts(
    progress: Progress, cost: Cost | None, elapsed: float, remaining: float | None
) -> list[tuple[int, str]]:
    """The facts of a progress line in display order, each with its rank: a line too narrow for all keeps the
    lowest ranks."""
    calls = (
        f"{progress.metric_calls}/{progress.max_metric_calls}"
        if progress.max_metric_calls
        else str(progress.metric_calls)
    )
    parts = [(0, f"{calls} metric calls")]
    if progress.best_score is not None:
        parts.append((1, f"best {format_score(progress.best_score)}"))
    parts.append((2, f"{duration_text(elapsed)} elapsed"))
    if remaining is not None:
        parts.append((3, f"ETA {duration_text(remaining)}"))
    if progress.failed_examples:
        parts.append((4, f"{progress.failed_examples} not scored"))
    parts += [(5, f"iteration {progress.iteration}"), (6, f"{progress.candidates} candidates")]
    if progress.cached_evaluations:
        parts.append((8, f"{progress.cached_evaluations} from the cache"))
    if cost is not None:
        parts.append((7, _cost_text(cost)))
    return parts


def fit_line(parts: Sequence[tuple[int, str]], width: int, separator: str = ", ") -> str:
    """The parts that fit in `width` columns, taken by rank, shown in their order; the first-ranked part cut when
    not even it fits."""
    by_rank = sorted(range(len(parts)), key=lambda i: parts[i][0])
    if len(parts[by_rank[0]][1]) > width:
        return parts[by_rank[0]][1][:width]
    kept: set[int] = set()
    used = 0
    for index in by_rank:
        length = len(parts[index][1]) + (len(separator) if kept else 0)
        if used + length <= width:
            kept.add(index)
            used += length
    return separator.join(text for index, (_, text) in enumerate(parts) if index in kept)


# The live bar's width in characters, brackets included; it is left out on a terminal without room for it and
# the main facts (metric calls, best score, elapsed, ETA).
BAR_WIDTH, MIN_FACTS_WIDTH = 12, 56


class ConsoleReporter:
    """Progress for people: on a terminal, a live one-line bar fitted to its width; otherwise a timestamped line
    every few seconds. Both say the time elapsed, the time left at the pace so far, and the best score. At the end,
    initial and final scores per scorer and the optimized prompts."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        cost: CostSource = no_cost,
        live: bool | None = None,
        log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ):
        self.stream = stream or sys.stdout
        self.cost = cost
        self.live = self.stream.isatty() if live is None else live
        self.columns = columns
        # A terminal redraws cheaply; log lines are kept sparse.
        self.rate_limit = RateLimit(0.2 if self.live else log_interval_s, clock)
        self.pace = Pace(clock)
        self._bar_shown = False
        self._lock = threading.Lock()

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        with self._lock:
            if not self.rate_limit.take(important):
                return
            if self.live:
                self._write(f"\r{self._bar(progress)}\x1b[K")
                self._bar_shown = True
            else:
                parts = progress_parts(progress, self.cost(), *self.pace.measure(progress))
                stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
                self._write(f"{stamp} progress: {', '.join(text for _, text in parts)}\n")

    def finished(self, progress: Progress, result: Result) -> None:
        with self._lock:
            if self._bar_shown:
                self._write(f"\r{self._bar(progress)}\x1b[K\n")
            self._write(self.render_result(progress, result, self.cost()))

    @staticmethod
    def render_result(progress: Progress, result: Result, cost: Cost | None) -> str:
        lines = [f"result: {result.reason} - {result.message}"]
        initial = result.initial_scores or progress.initial_scores
        if initial or result.final_scores:
            lines += ["", *score_table(initial, result.final_scores)]
        if result.final_test_scores:
            lines += [
                "",
                f"on the {result.test_records} held-out test records, which the optimizer never saw:",
                *score_table(result.initial_test_scores, result.final_test_scores),
            ]
        if progress.failed_examples:
            lines += ["", _failed_examples_text(progress.failed_examples)]
        if result.best_candidate:
            lines += ["", "optimized prompts:"]
            for name, text in result.best_candidate.items():
                lines += [f"--- {name} ---", text]
        if cost is not None:
            lines += ["", f"cost: {_cost_text(cost)}"]
        return redact("\n".join(lines)) + "\n"

    def _bar(self, progress: Progress) -> str:
        """The bar and the facts that fit beside it in the terminal's width less one column: a line that filled
        the last column would wrap on some terminals, and every redraw would leave a line behind. A terminal too
        narrow for the bar and the main facts gets the facts alone."""
        width = max(1, self.columns() - 1)
        # Redacted before they are cut: a secret cut in two would no longer be recognised.
        parts = [
            (rank, redact(text)) for rank, text in progress_parts(progress, self.cost(), *self.pace.measure(progress))
        ]
        if not progress.max_metric_calls or width < BAR_WIDTH + MIN_FACTS_WIDTH:
            return fit_line(parts, width)
        inner = BAR_WIDTH - 2
        done = min(inner, inner * progress.metric_calls // progress.max_metric_calls)
        return f"[{'#' * done}{'.' * (inner - done)}] {fit_line(parts, width - BAR_WIDTH - 1)}"

    def _write(self, text: str) -> None:
        self.stream.write(redact(text))
        self.stream.flush()


class LogReporter:
    """Progress and result as log records, for the worker Pod's log: a progress record every `interval_s` (the
    first score and each new best at once), and at the end one record each for the outcome, the scores, every
    optimized prompt and the cost, with their data as extras (fields of `--log-format json`)."""

    def __init__(
        self, *, cost: CostSource = no_cost, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ):
        self.cost = cost
        self.rate_limit = RateLimit(interval_s, clock)
        self.pace = Pace(clock)
        self._lock = threading.Lock()

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        with self._lock:
            if not self.rate_limit.take(important):
                return
            parts = progress_parts(progress, self.cost(), *self.pace.measure(progress))
            log.info(
                "progress: %s",
                ", ".join(text for _, text in parts),
                extra={"progress": status_fields(_progress_status(progress))},
            )

    def finished(self, progress: Progress, result: Result) -> None:
        log.info(
            "result: %s - %s",
            result.reason,
            result.message,
            extra={"workerResult": status_fields(_worker_result(result))},
        )
        initial = result.initial_scores or progress.initial_scores
        if initial or result.final_scores:
            final = result.final_scores
            log.info(
                "scores (initial -> final): %s",
                _score_changes(initial, final),
                extra={
                    "initialScores": status_fields(_scores(initial, Scores)) if initial else None,
                    "finalScores": status_fields(_scores(final, Scores)) if final else None,
                },
            )
        if result.initial_test_scores and result.final_test_scores:
            log.info(
                "on the %d held-out test records (initial -> final): %s",
                result.test_records,
                _score_changes(result.initial_test_scores, result.final_test_scores),
                extra={
                    "initialTestScores": status_fields(_scores(result.initial_test_scores, Scores)),
                    "finalTestScores": status_fields(_scores(result.final_test_scores, Scores)),
                },
            )
        if progress.failed_examples:
            log.warning("%s", _failed_examples_text(progress.failed_examples))
        for name, text in (result.best_candidate or {}).items():
            log.info("optimized prompt %s: %s", name, text, extra={"prompt": name})
        if (cost := self.cost()) is not None:
            log.info("cost: %s", _cost_text(cost), extra={"cost": status_fields(cost)})


def _score_changes(initial: ScoreSummary | None, final: ScoreSummary | None) -> str:
    """Per scorer, then the aggregate: "exact 0.250 -> 1.000, ..." """
    scorers = dict.fromkeys([*(initial.scorers if initial else ()), *(final.scorers if final else ())])
    changes = [f"{key} {_score(initial, key)} -> {_score(final, key)}" for key in scorers]
    return ", ".join([*changes, f"aggregate {_score(initial, None)} -> {_score(final, None)}"])


def score_table(initial: ScoreSummary | None, final: ScoreSummary | None) -> list[str]:
    """Initial and final score per scorer, then the aggregate and, when some were, the validation records not
    scored, as aligned text lines."""
    scorers = dict.fromkeys([*(initial.scorers if initial else ()), *(final.scorers if final else ())])
    rows = [(key, _score(initial, key), _score(final, key)) for key in scorers]
    rows.append(("aggregate", _score(initial, None), _score(final, None)))
    if any(summary and summary.failed_examples for summary in (initial, final)):
        before, after = (str(summary.failed_examples) if summary else "-" for summary in (initial, final))
        rows.append(("not scored", before, after))
    width = max(len("scorer"), *(len(key) for key, _, _ in rows))
    return [f"{'scorer':<{width}}  initial    final"] + [
        f"{key:<{width}}  {before:>7}  {after:>7}" for key, before, after in rows
    ]


def _score(summary: ScoreSummary | None, scorer: str | None) -> str:
    if summary is None:
        return "-"
    value = summary.aggregate if scorer is None else summary.scorers.get(scorer)
    return "-" if value is None else format_score(value)


def _failed_examples_text(count: int) -> str:
    return f"{count} evaluations could not be scored (the log says why); the scores above leave those records out"


def _cost_text(cost: Cost) -> str:
    parts = [f"{cost.llm_calls or 0} LLM calls", f"{cost.prompt_tokens or 0}+{cost.completion_tokens or 0} tokens"]
    if cost.usd is not None:
        parts.append(format_usd(cost.usd))
    if cost.retries:  # a run that survived rate limits or outages says so
        parts.append(f"{cost.retries} retries of transient errors")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The termination message


class TerminationMessageReporter:
    """Writes the result, status-shaped and under Kubernetes' 4 KiB limit, to the container's termination
    message (`worker_contract.TerminationMessage`), so the operator can recover it from the Pod when the
    worker could not reach the API. Prompts are cut to fit, each cut one marked `truncated`.
    """

    def __init__(
        self, path: str | None = None, *, cost: CostSource = no_cost, limit_bytes: int = TERMINATION_MESSAGE_LIMIT_BYTES
    ):
        self.path = path or os.environ.get(TERMINATION_MESSAGE_PATH_ENV, TERMINATION_MESSAGE_PATH)
        self.cost = cost
        self.limit_bytes = limit_bytes

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        """Only the end result is written."""

    def finished(self, progress: Progress, result: Result) -> None:
        message = self.render(progress, result, self.cost())
        try:
            with open(self.path, "w", encoding="utf-8") as file:
                file.write(message)
        except OSError as error:
            log.warning("could not write the termination message to %s: %s", self.path, error)

    def render(self, progress: Progress, result: Result, cost: Cost | None) -> str:
        status = worker_status(progress, result, cost)
        assert status.worker_result is not None
        outcome = status.worker_result.model_copy(update={"message": _cut(status.worker_result.message, 1024)})
        # The candidates stay out: the operator recovers the result from it, and the 4 KiB go to the prompts.
        message = TerminationMessage(**{**dict(status), "progress": None, "candidates": None, "worker_result": outcome})
        if self._fits(message):
            return render_termination_message(message)
        prompts = message.optimized_prompts or []
        # The longest per-prompt length that fits; shorter prompts leave their share to the longer ones.
        low, high = 0, max((len(p.template) for p in prompts), default=0)
        while low < high:
            middle = (low + high + 1) // 2
            if self._fits(_with_prompts(message, _cut_prompts(prompts, middle))):
                low = middle
            else:
                high = middle - 1
        candidate = _with_prompts(message, _cut_prompts(prompts, low))
        if self._fits(candidate):
            return render_termination_message(candidate)
        # Too many prompts or scorers to list: the outcome alone still fits.
        return render_termination_message(TerminationMessage(worker_result=outcome))

    def _fits(self, message: TerminationMessage) -> bool:
        return len(render_termination_message(message).encode("utf-8")) <= self.limit_bytes


def _with_prompts(message: TerminationMessage, prompts: list[OptimizedPrompt]) -> TerminationMessage:
    return message.model_copy(update={"optimized_prompts": prompts})


def _cut(text: str, length: int) -> str:
    return text if len(text) <= length else text[: max(0, length - 1)] + "…"


def _cut_prompts(prompts: list[OptimizedPrompt], length: int) -> list[OptimizedPrompt]:
    return [
        p
        if len(p.template) <= length
        else OptimizedPrompt(name=p.name, template=_cut(p.template, length), truncated=True)
        for p in prompts
    ]


class ResultFileReporter:
    """Writes the result file (`promptopt run -o result.json`, `worker_contract.ResultFile`) at the end: the
    worker-owned status fields as indented JSON, with every candidate, and `run`, what produced them (its end time
    set here)."""

    def __init__(self, path: str | os.PathLike[str], *, cost: CostSource = no_cost, run: RunInfo | None = None):
        self.path = path
        self.cost = cost
        self.run = run

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        """Only the end result is written."""

    def finished(self, progress: Progress, result: Result) -> None:
        fields = status_fields(worker_status(progress, result, self.cost(), every_candidate=True))
        if self.run is not None:
            run = self.run.model_copy(update={"finished_at": format_time(datetime.now(UTC))})
            fields["run"] = redacted(run.model_dump(mode="json", by_alias=True, exclude_none=True))
        result_file = ResultFile.model_validate(fields, extra="forbid")  # the shape `promptopt report` reads
        with open(self.path, "w", encoding="utf-8") as file:
            json.dump(status_fields(result_file), file, indent=2, ensure_ascii=False)
            file.write("\n")


# ---------------------------------------------------------------------------------------------
# Logging

LogFormat = Literal["text", "json"]
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def one_line(text: str) -> str:
    """`text` on one line, its line breaks written as \\n: one record is one line of the log, whatever prompt or
    traceback it holds, so a log pipeline never splits it."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class RedactingFormatter(logging.Formatter):
    """Masks secrets in every log record, whichever library wrote it (litellm, gepa, kubernetes...), and writes
    it on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(redact(super().format(record)))


# What every LogRecord holds; any other attribute came in through `extra=` and goes into the JSON object.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`--log-format json`: one JSON object per record and line: time (RFC 3339, UTC, milliseconds), level,
    logger, message, the record's extras, and the traceback when there is one; every string redacted."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Values JSON has no type for are written as their (redacted) text.
        return json.dumps(redacted(entry), ensure_ascii=False, default=lambda value: redact(str(value)))


@dataclass
class _Window:
    """One kind of record in the window that started at `started`: how many went out, how many were held back
    and the last one held back."""

    started: float
    passed: int = 0
    held: int = 0
    last_held: logging.LogRecord | None = None


class RepeatLimitingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that lets at most `burst` records of one kind through per `window_s`, so no library can
    flood the log (gepa logs a few lines per iteration, and an iteration that finds nothing to do takes
    microseconds). A kind is the logger, the level and the message with its numbers masked: "Iteration 7: ..."
    and "Iteration 8: ..." are one kind. Records held back are counted; a record says how many, with the last
    one's text, when the kind's window ends (at its next record) or the handler closes (at exit)."""

    def __init__(
        self, stream: TextIO, *, burst: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        super().__init__(stream)
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not super().filter(record):
            return False
        kind = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage())[:_KIND_PREFIX])
        with self.lock:  # type: ignore[union-attr]  # created by the constructor
            now = self.clock()
            window = self._windows.get(kind)
            if window is None or now - window.started >= self.window_s:
                if window is not None:
                    self._say_held_back(window)
                if len(self._windows) >= _MAX_KINDS:
                    self._end_windows(lambda old: now - old.started >= self.window_s)
                window = self._windows[kind] = _Window(now)
            if window.passed < self.burst:
                window.passed += 1
                return True
            window.held += 1
            window.last_held = record
            return False

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if not getattr(self.stream, "closed", False):
                self._end_windows(lambda window: True)
        super().close()

    def _end_windows(self, ended: Callable[[_Window], bool]) -> None:
        for kind, window in list(self._windows.items()):
            if ended(window):
                self._say_held_back(window)
                del self._windows[kind]

    def _say_held_back(self, window: _Window) -> None:
        if window.last_held is None:
            return
        last = window.last_held
        summary = logging.makeLogRecord(
            {
                "name": last.name,
                "levelno": last.levelno,
                "levelname": last.levelname,
                "msg": "held back %d more records like this one (at most %d of a kind go out per %g s): %s",
                "args": (window.held, self.burst, self.window_s, last.getMessage()),
                "heldBack": window.held,
            }
        )
        self.emit(summary)


_NUMBERS = re.compile(r"\d+")
# Enough of a message to tell its kind; the rest (a prompt, a traceback) would only make every record a kind of its own.
_KIND_PREFIX = 120
# Windows kept at most before ended ones are dropped (a run logging ever new kinds must not grow without bound).
_MAX_KINDS = 1000

# litellm installs handlers of its own (which would bypass redaction) and logs every request at INFO, as
# does httpx: they keep to warnings, through our handler.
CHATTY_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx")


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO, log_format: LogFormat = "text") -> None:
    """Send all logging to `stream` through the redacting formatter (`log_format` json: one JSON object per line),
    each kind of record limited to a burst a minute."""
    handler = RepeatLimitingHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        chatty.handlers.clear()
        chatty.setLevel(max(level, logging.WARNING))
    # Library warnings (urllib3's InsecureRequestWarning or NotOpenSSLWarning, deprecations) become log records,
    # redacted like any; they concern the libraries, not the job, so a worker's log shows them and a local run's
    # console (at WARNING) does not print them before its own lines.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if level <= logging.INFO else logging.ERROR)
