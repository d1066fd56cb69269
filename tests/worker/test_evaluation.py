"""The task evaluator: scores and aggregates, the job-long cache, bounded concurrency, errors that propagate,
examples that fail alone."""

import threading

import pytest

from promptopt.api.v1alpha1 import Pricing, ScorerSpec, TaskSpec
from promptopt.prompt_contract import JUDGE_ANSWER_AGAIN
from promptopt.simulated_llm import (
    GARBLED_JUDGE_ANSWER,
    OPTIMAL_INSTRUCTION,
    SEED_INSTRUCTION,
    sentiment_dataset,
)
from promptopt_worker.evaluation import TaskEvaluator
from promptopt_worker.llm import BudgetExceeded, LLMClient, PermanentLLMError
from promptopt_worker.problem import Example, PromptTemplate, ScoreSummary, StopRequested
from promptopt_worker.scorers import build_scorers

PROMPTS = [PromptTemplate(name="classify", role="user", text=SEED_INSTRUCTION)]
SEED = {"classify": SEED_INSTRUCTION}
OPTIMAL = {"classify": OPTIMAL_INSTRUCTION}
EXACT = ScorerSpec(name="ExactMatch")
CORRECT = ScorerSpec(name="Correctness", model="openai/sim-judge")


class InFlightClient(LLMClient):
    """Counts the LLM calls in flight at once (what the server sees as concurrent requests)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.in_flight = self.max_in_flight = 0
        self._count_lock = threading.Lock()

    def complete(self, endpoint, messages):
        with self._count_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return super().complete(endpoint, messages)
        finally:
            with self._count_lock:
                self.in_flight -= 1


def examples(n=8):
    return [Example(index=i, inputs=r["inputs"], expectations=r["expectations"])
            for i, r in enumerate(sentiment_dataset(n))]  # fmt: skip


@pytest.fixture
def task(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    return TaskSpec(model="openai/sim-task", api_base=llm.base_url, concurrency=8, max_retries=0)


def evaluator(task, scorers, client=None, **task_changes):
    client = client or LLMClient()
    task = task.model_copy(update=task_changes)
    return TaskEvaluator(PROMPTS, task, build_scorers(scorers, task, client), client)


def test_every_example_is_answered_and_scored_in_order(llm, task):
    data = examples()
    with evaluator(task, [EXACT, CORRECT]) as evaluate:
        results = evaluate.evaluate(OPTIMAL, data)
    assert [r.example for r in results] == data
    assert all(r.output in ("positive", "negative") for r in results)
    assert all(r.scores == {"ExactMatch": 1.0, "Correctness": 1.0} and r.aggregate == 1.0 for r in results)
    assert llm.calls["task"] == 8 and llm.calls["judge"] == 8
    assert "equals expected" in results[0].rationales["ExactMatch"] and results[0].rationales["Correctness"]


def test_the_aggregate_is_the_weighted_mean_and_summaries_average_it(llm, task):
    scorers = [ScorerSpec(name="ExactMatch", weight=3), ScorerSpec(name="Contains")]
    with evaluator(task, scorers) as evaluate:
        results = evaluate.evaluate(SEED, examples(4))  # "The sentiment of this text is Positive." etc.
        summary = evaluate.summarize(results)
    assert {r.scores["ExactMatch"] for r in results} == {0.0}
    for r in results:
        assert r.aggregate == pytest.approx((3 * r.scores["ExactMatch"] + r.scores["Contains"]) / 4)
    contains_mean = sum(r.scores["Contains"] for r in results) / 4
    assert summary.scorers == {"ExactMatch": 0.0, "Contains": pytest.approx(contains_mean)}
    assert summary.aggregate == pytest.approx((3 * 0.0 + contains_mean) / 4)  # = weighted mean of scorer means


def test_summarizing_nothing_is_an_error(task):
    with evaluator(task, [EXACT]) as evaluate, pytest.raises(ValueError, match="no results"):
        evaluate.summarize([])


def test_a_known_candidate_is_answered_from_the_cache_without_llm_calls(llm, task):
    data = examples()
    with evaluator(task, [EXACT, CORRECT]) as evaluate:
        first = evaluate.evaluate(SEED, data)
        requests = llm.request_count
        assert (evaluate.examples_run, evaluate.cache_hits) == (8, 0)

        assert evaluate.evaluate(dict(SEED), data) == first
        assert evaluate.evaluate(SEED, data[5:] + data[:2]) == first[5:] + first[:2]
        assert llm.request_count == requests  # zero LLM calls, task or judge
        assert (evaluate.examples_run, evaluate.cache_hits) == (8, 13)

        evaluate.evaluate(OPTIMAL, data[:3])  # another candidate's texts are another key
        assert llm.calls["task"] == 11 and evaluate.examples_run == 11


def test_an_example_listed_twice_is_run_once(llm, task):
    data = examples(2)
    with evaluator(task, [EXACT]) as evaluate:
        results = evaluate.evaluate(SEED, [data[0], data[1], data[0]])
    assert results[0] == results[2] and llm.calls["task"] == 2


def test_one_evaluation_runs_concurrency_calls_at_once(llm, task):
    llm.set_latency(0.2)
    client = InFlightClient()
    with evaluator(task, [EXACT], client) as evaluate:
        evaluate.evaluate(SEED, examples(8))
    assert client.max_in_flight == 8  # all 8 together: one evaluation takes ~0.2 s, not 8 x 0.2 s


def test_task_and_judge_calls_share_the_concurrency_bound(llm, task):
    llm.set_latency(0.05)
    client = InFlightClient()
    with evaluator(task, [EXACT, CORRECT], client, concurrency=3) as evaluate:
        evaluate.evaluate(SEED, examples(9))
    assert client.max_in_flight == 3
    assert llm.calls["task"] == 9 and llm.calls["judge"] == 9


def test_a_permanent_llm_error_propagates_and_cancels_the_rest(llm, task):
    llm.set_latency(0.05)  # the examples queued behind the failure would take 0.35 s
    with evaluator(task, [EXACT], model="openai/sim-unknown", concurrency=1) as evaluate:
        with pytest.raises(PermanentLLMError, match="'openai/sim-unknown'"):
            evaluate.evaluate(SEED, examples(8))
        assert llm.request_count < 8  # the examples not yet started were cancelled
        assert evaluate.examples_run == 0


def test_a_failed_example_is_neither_scored_nor_cached(llm, task):
    llm.inject(500, times=1)
    data = examples(1)
    with evaluator(task, [EXACT]) as evaluate:
        with pytest.raises(PermanentLLMError, match="still failing after 0 retries"):
            evaluate.evaluate(SEED, data)
        assert evaluate.examples_run == 0
        [result] = evaluate.evaluate(SEED, data)  # the outage is over: the example runs for real
    assert result.output.startswith("The sentiment") and llm.calls["task"] == 1
    assert (evaluate.examples_run, evaluate.cache_hits) == (1, 0)


def test_an_unusable_judge_answer_fails_its_example_not_the_evaluation(llm, task):
    not_a_judge = ScorerSpec(name="Correctness", model="openai/sim-task")  # it answers prose, never a verdict
    data = examples(2)
    with evaluator(task, [EXACT, not_a_judge]) as evaluate:
        results = evaluate.evaluate(SEED, data)
        summary = evaluate.summarize(results)
        requests = llm.request_count
        assert evaluate.evaluate(SEED, data) == results and llm.request_count == requests  # cached like any result

    for result in results:
        assert result.failure.startswith("the judge of scorer 'Correctness' did not answer with a JSON verdict")
        assert result.failure.endswith("(asked 3 times)")
        assert result.scores == {"ExactMatch": 0.0} and result.aggregate == 0.0  # the metric's verdict is kept
        assert result.feedback().startswith("Not scored: the judge of scorer 'Correctness'")
    assert llm.calls_by_model["sim-task"] == 2 + 2 * 3  # per example: the task, then the judge asked 1 + 2 times
    assert summary == ScoreSummary(aggregate=None, scorers={}, failed_examples=2)


def test_a_judge_asked_again_scores_the_example_and_the_means_leave_failed_ones_out(llm, task):
    llm.garble_judge_answers(0.6)
    data = examples(12)
    with evaluator(task, [EXACT, CORRECT]) as evaluate:
        results = evaluate.evaluate(OPTIMAL, data)  # every output is right: a scored example scores 1
        summary = evaluate.summarize(results)

    scored = [r for r in results if r.failure is None]
    failed = [r for r in results if r.failure is not None]
    assert scored and failed  # some judges answered when asked again, some never did
    assert all(r.scores == {"ExactMatch": 1.0, "Correctness": 1.0} for r in scored)
    assert all(r.scores == {"ExactMatch": 1.0} and r.aggregate == 0 for r in failed)
    assert summary == ScoreSummary(
        aggregate=1.0, scorers={"ExactMatch": 1.0, "Correctness": 1.0}, failed_examples=len(failed)
    )
    # Each garbled answer was followed by one more ask, but the last of a failed example.
    assert llm.calls["judge"] == llm.garbled_answers + len(scored) > len(data)
    again = [r["messages"] for r in llm.requests if r["kind"] == "judge" and len(r["messages"]) == 4]
    assert again and all(
        m[2]["content"] == GARBLED_JUDGE_ANSWER and m[3]["content"] == JUDGE_ANSWER_AGAIN for m in again
    )


def test_the_budget_ends_the_evaluation(llm, task):
    stop = StopRequested()
    client = LLMClient(max_cost_usd=1e-9, stop=stop)
    priced = Pricing(input_per_million_tokens=1, output_per_million_tokens=1)
    with evaluator(task, [EXACT], client, concurrency=1, pricing=priced) as evaluate:
        with pytest.raises(BudgetExceeded):
            evaluate.evaluate(SEED, examples(4))
    assert stop.reason == "BudgetExhausted"
    assert llm.calls["task"] == 1


def test_an_aggregation_gives_each_record_its_aggregate_and_fails_naming_the_field_when_it_gives_no_score(llm, task):
    from promptopt.api.aggregation import AggregationError, compile_aggregation

    client = LLMClient()
    scorers = build_scorers([EXACT, CORRECT], task, client)
    strictest = compile_aggregation("min(scores.ExactMatch, scores.Correctness)", ["ExactMatch", "Correctness"])
    with TaskEvaluator(PROMPTS, task, scorers, client, strictest) as evaluate:
        results = evaluate.evaluate(SEED, examples(4))
    assert all(r.aggregate == min(r.scores.values()) for r in results)
    assert any(len(set(r.scores.values())) > 1 for r in results)  # where min and the weighted mean differ
    # 1 when every scorer gives 1 (so it compiles), 2 for an answer that is correct but not the exact label.
    unbounded = compile_aggregation("1.0 - scores.ExactMatch + scores.Correctness", ["ExactMatch", "Correctness"])
    with (
        TaskEvaluator(PROMPTS, task, scorers, client, unbounded) as evaluate,
        pytest.raises(AggregationError, match=r"^spec\.aggregation gave 2\.0 .* it must give a number in \[0, 1\]"),
    ):
        evaluate.evaluate(SEED, examples(4))
