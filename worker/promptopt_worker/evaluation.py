"""The Evaluator the optimizers use: run a candidate's prompts on examples, score every output, cache.

The program that turns a candidate and an example into an output is the task model (`ModelProgram`) or the user's
HTTP service (promptopt_worker.http_services.HttpProgram); everything below holds for both.

Concurrency: one thread pool of `task.concurrency` threads lives as long as the evaluator; each thread
takes one example and makes its task call and then its judges' calls. So at most `concurrency` LLM calls
of an evaluation are in flight, task and judge calls alike: one bound, the one the user set, for all the
traffic an evaluation sends (task and judge models often share an endpoint and its rate limit).

Aggregation: a record's aggregate is the scorers' weighted mean, or spec.aggregation of its scores; a summary's is
the mean of the records' (so the weighted mean of the scorers' means, by default). An aggregation that gives no number
in [0, 1] for a record fails the evaluation, naming spec.aggregation: it is the job's, not the record's, to fix.

Caching: a result is kept for the whole job under (the candidate's prompt texts, the example's index),
so re-evaluating a known candidate - gepa re-scoring its seed, the final scores of the best candidate -
makes no LLM call.

Errors: a systemic failure is never scored 0, which would steer the optimizer by an outage rather than by
the prompt. Transient errors were already retried by the LLM client; what is left (PermanentLLMError: a bad
key, an unknown model, retries exhausted; BudgetExceeded) propagates from `evaluate`, and examples not yet
started are cancelled. A judge answer that stays unusable after its retries (a ScorerError) fails only its
example: the ScoredOutput says why (`failure`), it is cached like any result (re-evaluating the candidate
gives the same answer without a call), and `summarize` leaves it out of the means and counts it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from statistics import fmean
from typing import Protocol

from promptopt.api.aggregation import FIELD as AGGREGATION_FIELD
from promptopt.api.aggregation import AggregationError
from promptopt.api.v1alpha1 import TaskSpec
from promptopt_worker.http_services import HttpProgram
from promptopt_worker.llm import LLMClient, ModelEndpoint
from promptopt_worker.problem import Candidate, Example, PromptTemplate, ScoredOutput, ScoreSummary
from promptopt_worker.scorers import Scorer, ScorerError
from promptopt_worker.templates import messages

log = logging.getLogger(__name__)

CacheKey = tuple[tuple[str, ...], int]  # (prompt texts in prompt order, example index)
Aggregate = Callable[[Mapping[str, float]], float]  # a record's scores by scorer key → its aggregate


def weighted_mean(scorers: Sequence[Scorer]) -> Aggregate:
    """The default aggregate: the scorers' weighted mean (spec.scorers[].weight)."""
    total = sum(s.weight for s in scorers)
    return lambda scores: sum(s.weight * scores[s.key] for s in scorers) / total


class Program(Protocol):
    """The program under optimization: a candidate's output on one example, from `endpoint` (a model or a service)."""

    endpoint: ModelEndpoint

    def output(self, candidate: Candidate, example: Example) -> str: ...


class ModelProgram:
    """spec.task.model: the candidate's prompts, rendered with the example's inputs, sent to the task model."""

    def __init__(self, prompts: Sequence[PromptTemplate], task: TaskSpec, client: LLMClient):
        self.prompts = list(prompts)
        self.endpoint = ModelEndpoint.for_task(task)
        self.client = client

    def output(self, candidate: Candidate, example: Example) -> str:
        return self.client.complete(
            self.endpoint, messages(self.prompts, candidate, example.inputs, record=example.index)
        )


def task_program(prompts: Sequence[PromptTemplate], task: TaskSpec, client: LLMClient) -> Program:
    """The job's program: its HTTP service (spec.task.http) or its model."""
    return HttpProgram(prompts, task, client) if task.http is not None else ModelProgram(prompts, task, client)


class TaskEvaluator:
    """Implements problem.Evaluator with the job's program and scorers. Close it when done."""

    def __init__(
        self,
        prompts: Sequence[PromptTemplate],
        task: TaskSpec,
        scorers: Sequence[Scorer],
        client: LLMClient,
        aggregate: Aggregate | None = None,
    ):
        if not scorers:
            raise ValueError("an evaluator needs at least one scorer")
        self.prompts = list(prompts)
        self.scorers = list(scorers)
        self.aggregate = aggregate or weighted_mean(scorers)
        self.program = task_program(prompts, task, client)
        self._pool = ThreadPoolExecutor(max_workers=task.concurrency, thread_name_prefix="evaluate")
        self._cache: dict[CacheKey, ScoredOutput] = {}
        self._lock = threading.Lock()
        self.examples_run = 0  # examples sent to the task model
        self.cache_hits = 0  # examples answered from the cache

    def evaluate(self, candidate: Candidate, examples: Sequence[Example]) -> list[ScoredOutput]:
        """One ScoredOutput per example, in order."""
        texts = tuple(candidate[p.name] for p in self.prompts)
        found: dict[int, ScoredOutput] = {}
        with self._lock:
            for example in examples:
                if (texts, example.index) in self._cache:
                    found[example.index] = self._cache[texts, example.index]
                    self.cache_hits += 1
        missing = {e.index: e for e in examples if e.index not in found}  # an example listed twice runs once
        futures = [self._pool.submit(self._run, candidate, texts, e) for e in missing.values()]
        self._wait(futures)
        found.update((f.result().example.index, f.result()) for f in futures)
        return [found[e.index] for e in examples]

    def cached(self, candidate: Candidate, examples: Sequence[Example]) -> list[ScoredOutput]:
        """The results of these examples that its cache holds, in order, without an LLM call."""
        texts = tuple(candidate[p.name] for p in self.prompts)
        with self._lock:
            return [self._cache[texts, e.index] for e in examples if (texts, e.index) in self._cache]

    def summarize(self, results: Sequence[ScoredOutput]) -> ScoreSummary:
        """Per-scorer means, and the mean of the examples' aggregates (by default the weighted mean of the scorer
        means), over the examples that were scored; failed ones are counted, not averaged as 0."""
        if not results:
            raise ValueError("no results to summarize")
        scored = [r for r in results if r.failure is None]
        if not scored:
            return ScoreSummary(aggregate=None, scorers={}, failed_examples=len(results))
        return ScoreSummary(
            aggregate=fmean(r.aggregate for r in scored),
            scorers={s.key: fmean(r.scores[s.key] for r in scored) for s in self.scorers},
            failed_examples=len(results) - len(scored),
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> TaskEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, candidate: Candidate, texts: tuple[str, ...], example: Example) -> ScoredOutput:
        output = self.program.output(candidate, example)
        scores, rationales, failures = {}, {}, []
        for scorer in self.scorers:
            try:
                scores[scorer.key], rationales[scorer.key] = scorer.score(example, output)
            except ScorerError as error:
                failures.append(str(error))
        failure = "; ".join(failures) or None
        if failure:
            log.warning("record %d could not be scored: %s", example.index, failure)
        result = ScoredOutput(
            example=example,
            output=output,
            scores=scores,
            rationales=rationales,
            aggregate=0.0 if failure else self._aggregate(scores),
            failure=failure,
        )
        with self._lock:
            self._cache[texts, example.index] = result
            self.examples_run += 1
        return result

    def _aggregate(self, scores: Mapping[str, float]) -> float:
        try:
            return self.aggregate(scores)
        except AggregationError as error:
            raise AggregationError(f"{AGGREGATION_FIELD} {error}") from None

    @staticmethod
    def _wait(futures: Sequence[Future[ScoredOutput]]) -> None:
        """Wait for all; on the first failure cancel what has not started and raise it."""
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:  # the first failure in example order
            error = future.exception() if future in done else None
            if error is not None:
                raise error
