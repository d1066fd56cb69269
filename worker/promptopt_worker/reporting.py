"""Where the worker's progress and result go: the job's status, the console, the termination message.

All three implement `problem.Reporter`; `Reporters` fans out to several. The worker writes only the
status fields it owns (the API's WorkerStatus model); phase, conditions, times and the rest belong to the
operator. Every text that leaves the worker goes through `redaction.redact`, so an API key that leaked into an
error message or a prompt is masked in status, logs and the termination message alike.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from promptopt.api.v1alpha1 import GROUP, PLURAL, STATUS_CANDIDATES, VERSION, OptimizedPrompt, WorkerStatus
from promptopt.worker_contract import (
    TERMINATION_MESSAGE_LIMIT_BYTES, TERMINATION_MESSAGE_PATH, TERMINATION_MESSAGE_PATH_ENV, TerminationMessage,
    render_termination_message,
)
from promptopt_worker.kube import retry_api_call
from promptopt_worker.problem import CandidateRecord, Progress, Reporter, Result, ScoreSummary
from promptopt_worker.redaction import redact, redacted

log = logging.getLogger(__name__)

# The job's LLM usage so far, in status.cost's shape (LLMClient's metering).
CostSource = Callable[[], Mapping[str, Any] | None]


def no_cost() -> None:
    return None


def worker_status(progress: Progress, result: Result | None = None, cost: Mapping[str, Any] | None = None,
                  *, every_candidate: bool = False) -> WorkerStatus:
    """The worker-owned part of the job's status (redacted); fields not known yet are left unset. The candidates
    are the best STATUS_CANDIDATES without their prompts, or, with `every_candidate` (the result file), all of them
    with their prompts.

    Built through the API model with unknown fields refused: the API server would prune a field its CRD lacks
    without a word."""
    status: dict[str, Any] = {"progress": _progress_status(progress)}
    if progress.config_map_inputs:
        status["configMapInputs"] = [found.model_dump(by_alias=True) for found in progress.config_map_inputs]
    initial = (result and result.initial_scores) or progress.initial_scores
    if initial is not None:
        status["initialScores"] = initial.to_status()
    if result is not None and result.final_scores is not None:
        status["finalScores"] = result.final_scores.to_status()
    best = (result and result.best_candidate) or progress.best_candidate
    if best:
        status["optimizedPrompts"] = [{"name": name, "template": text} for name, text in best.items()]
    if result is not None and result.candidates:
        status["candidates"] = _candidates_status(result.candidates, every_candidate)
    mlflow: dict[str, Any] = {"sourcePrompts": dict(progress.source_prompts)} if progress.source_prompts else {}
    mlflow.update(progress.mlflow_run)
    if progress.dataset_digest:
        mlflow["datasetDigest"] = progress.dataset_digest
    if result is not None and result.registration is not None:
        mlflow["optimizedPrompts"] = dict(result.registration.registered)
        if result.registration.error:
            mlflow["registrationError"] = result.registration.error
    if mlflow:
        status["mlflow"] = mlflow
    if cost:
        status["cost"] = dict(cost)
    if result is not None:
        status["workerResult"] = {"reason": result.reason, "message": result.message, "succeeded": result.succeeded}
    return WorkerStatus.model_validate(redacted(status), extra="forbid")


def status_fields(status: WorkerStatus) -> dict[str, Any]:
    """The status as JSON with wire names, the fields set only."""
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _candidates_status(candidates: Sequence[CandidateRecord], every_candidate: bool) -> list[dict[str, Any]]:
    ranked = sorted(candidates, key=lambda c: (-c.score, c.id))
    return [{
        "id": c.id,
        "parents": list(c.parents),
        "score": round(c.score, 6),
        **({"scorers": {k: round(v, 6) for k, v in c.scorers.items()}} if c.scorers else {}),
        **({"foundAtMetricCalls": c.found_at_metric_calls} if c.found_at_metric_calls is not None else {}),
        **({"prompts": dict(c.prompts)} if every_candidate else {}),
    } for c in (ranked if every_candidate else ranked[:STATUS_CANDIDATES])]


def _progress_status(progress: Progress) -> dict[str, Any]:
    fields = {
        "metricCalls": progress.metric_calls,
        "maxMetricCalls": progress.max_metric_calls,
        "iteration": progress.iteration,
        "candidates": progress.candidates,
        "rejectedCandidates": progress.rejected_candidates,
        "bestScore": None if progress.best_score is None else round(progress.best_score, 6),
        "failedExamples": progress.failed_examples,
        "cachedEvaluations": progress.cached_evaluations,
    }
    if progress.max_metric_calls:
        fields["percent"] = min(100, progress.metric_calls * 100 // progress.max_metric_calls)
    return {key: value for key, value in fields.items() if value is not None}


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
                    GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": changed},
                    _content_type="application/merge-patch+json", _request_timeout=self.request_timeout_s,
                ),
                retry_delays_s, sleep=self.sleep, on_error=self._warn_once,
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
            log.warning("could not patch status of %s/%s (will keep trying): %s", self.namespace, self.name,
                        redact(str(error)).strip())
            self._failing = True


# ---------------------------------------------------------------------------------------------
# The console


class ConsoleReporter:
    """Progress for people: a live one-line bar on a terminal, a log line every few seconds otherwise; at
    the end, initial and final scores per scorer and the optimized prompts."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        cost: CostSource = no_cost,
        live: bool | None = None,
        log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream or sys.stdout
        self.cost = cost
        self.live = self.stream.isatty() if live is None else live
        # A terminal redraws cheaply; log lines are kept sparse.
        self.rate_limit = RateLimit(0.2 if self.live else log_interval_s, clock)
        self._bar_shown = False
        self._lock = threading.Lock()

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        with self._lock:
            if not (important or self.rate_limit.ready()):
                return
            self.rate_limit.mark()
            if self.live:
                self._write(f"\r{self._bar(progress)}\x1b[K")
                self._bar_shown = True
            else:
                self._write(f"progress: {self._summary(progress)}\n")

    def finished(self, progress: Progress, result: Result) -> None:
        with self._lock:
            if self._bar_shown:
                self._write(f"\r{self._bar(progress)}\x1b[K\n")
            self._write(self.render_result(progress, result, self.cost()))

    @staticmethod
    def render_result(progress: Progress, result: Result, cost: Mapping[str, Any] | None) -> str:
        lines = [f"result: {result.reason} - {result.message}"]
        initial = result.initial_scores or progress.initial_scores
        if initial or result.final_scores:
            lines += ["", *score_table(initial, result.final_scores)]
        if progress.failed_examples:
            lines += ["", f"{progress.failed_examples} evaluations could not be scored (the log says why); the "
                          "scores above leave those records out"]
        if result.best_candidate:
            lines += ["", "optimized prompts:"]
            for name, text in result.best_candidate.items():
                lines += [f"--- {name} ---", text]
        if cost:
            lines += ["", f"cost: {_cost_text(cost)}"]
        return redact("\n".join(lines)) + "\n"

    def _bar(self, progress: Progress, width: int = 24) -> str:
        if progress.max_metric_calls:
            done = min(width, width * progress.metric_calls // progress.max_metric_calls)
            head = f"[{'#' * done}{'.' * (width - done)}] "
        else:
            head = ""
        return head + self._summary(progress)

    def _summary(self, progress: Progress) -> str:
        parts = [
            f"{progress.metric_calls}/{progress.max_metric_calls} metric calls"
            if progress.max_metric_calls else f"{progress.metric_calls} metric calls",
            f"iteration {progress.iteration}",
            f"{progress.candidates} candidates",
        ]
        if progress.best_score is not None:
            parts.append(f"best {progress.best_score:.3f}")
        if progress.failed_examples:
            parts.append(f"{progress.failed_examples} not scored")
        if progress.cached_evaluations:
            parts.append(f"{progress.cached_evaluations} from the cache")
        if cost := self.cost():
            parts.append(_cost_text(cost))
        return ", ".join(parts)

    def _write(self, text: str) -> None:
        self.stream.write(redact(text))
        self.stream.flush()


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
    return "-" if value is None else f"{value:.3f}"


def _cost_text(cost: Mapping[str, Any]) -> str:
    parts = [f"{cost.get('llmCalls', 0)} LLM calls",
             f"{cost.get('promptTokens', 0)}+{cost.get('completionTokens', 0)} tokens"]
    if cost.get("usd") is not None:
        parts.append(f"${cost['usd']:.4f}")
    if cost.get("retries"):  # a run that survived rate limits or outages says so
        parts.append(f"{cost['retries']} retries of transient errors")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The termination message


class TerminationMessageReporter:
    """Writes the result, status-shaped and under Kubernetes' 4 KiB limit, to the container's termination
    message (`worker_contract.TerminationMessage`), so the operator can recover it from the Pod when the
    worker could not reach the API. Prompts are cut to fit, each cut one marked `truncated`.
    """

    def __init__(self, path: str | None = None, *, cost: CostSource = no_cost,
                 limit_bytes: int = TERMINATION_MESSAGE_LIMIT_BYTES):
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

    def render(self, progress: Progress, result: Result, cost: Mapping[str, Any] | None) -> str:
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
    return [p if len(p.template) <= length else
            OptimizedPrompt(name=p.name, template=_cut(p.template, length), truncated=True) for p in prompts]


class ResultFileReporter:
    """Writes the worker-owned status fields as indented JSON at the end (`promptopt run -o result.json`)."""

    def __init__(self, path: str | os.PathLike[str], *, cost: CostSource = no_cost):
        self.path = path
        self.cost = cost

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        """Only the end result is written."""

    def finished(self, progress: Progress, result: Result) -> None:
        with open(self.path, "w", encoding="utf-8") as file:
            json.dump(status_fields(worker_status(progress, result, self.cost(), every_candidate=True)), file, indent=2,
                      ensure_ascii=False)
            file.write("\n")


# ---------------------------------------------------------------------------------------------
# Logging


class RedactingFormatter(logging.Formatter):
    """Masks secrets in every log record, whichever library wrote it (litellm, gepa, kubernetes...)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# litellm installs handlers of its own (which would bypass redaction) and logs every request at INFO, as
# does httpx: they keep to warnings, through our handler.
CHATTY_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx")


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send all logging to `stream` through the redacting formatter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        chatty.handlers.clear()
        chatty.setLevel(max(level, logging.WARNING))
