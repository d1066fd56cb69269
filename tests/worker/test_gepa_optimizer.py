"""GEPA over our Evaluator: the adapter's shapes, variable safety, stops, resume, progress; fakes stand in
for the evaluator and the reflection model (integration tests with the real ones and the simulated LLM at
the end)."""

from __future__ import annotations

import dataclasses
import os
import sys
from importlib.metadata import version
from collections.abc import Callable, Sequence

import pytest

from promptopt.api.v1alpha1 import (
    EarlyStopping,
    ExampleFailurePolicy,
    GepaSettings,
    OptimizerSpec,
    ScorerSpec,
    TaskSpec,
)
from promptopt.simulated_llm import (
    REFLECT_DROPS_VARIABLE_MODEL,
    REFLECT_MODEL,
    RULE_ONE_LOWERCASE_WORD,
    SEED_INSTRUCTION,
    sentiment_dataset,
)
from promptopt_worker.evaluation import TaskEvaluator
from promptopt_worker.gepa_optimizer import EvaluatorAdapter, metric_call_budget, optimize_gepa, preset_metric_calls
from promptopt_worker.llm import LLMClient, ModelEndpoint, PermanentLLMError
from promptopt_worker.optimizers import optimize
from promptopt_worker.problem import (
    Candidate,
    Example,
    Problem,
    Progress,
    PromptTemplate,
    Result,
    ScoredOutput,
    ScoreSummary,
    StopRequested,
)
from promptopt_worker.reporting import status_fields, worker_status
from promptopt_worker.scorers import build_scorers

SEED = "Classify the sentiment of the review.\n\n{{text}}"
UNSCORABLE = "the judge of scorer 'exact' did not answer with a JSON verdict; it answered 'hmm' (asked 3 times)"
LOWERCASE = "Answer in lowercase."
ONE_WORD = "Answer with one word."
RULES = (LOWERCASE, ONE_WORD)  # the fake reflector adds them in this order, one per reflection


def examples(indexes: range) -> list[Example]:
    return [
        Example(i, {"text": f"review number {i}"}, {"expected_response": "positive" if i % 2 else "negative"})
        for i in indexes
    ]


class FakeEvaluator:
    """A fake Evaluator. The fake task model answers "The sentiment is Negative." and follows the rules it
    finds in the prompt (lowercase, one word); scorers: `lowercase` (the output has no capital) and
    `exact` (output == expected). So the seed scores 0, and the rules, added in RULES order, 0.5 each.
    Results are cached per (candidate, example); `runs` counts the uncached ones (the LLM calls)."""

    def __init__(
        self,
        fail: Callable[[Candidate, Example], Exception | None] = lambda candidate, example: None,
        unscorable: Callable[[Candidate, Example], bool] = lambda candidate, example: False,
    ):
        self.fail = fail
        self.unscorable = unscorable  # the `exact` judge gives no verdict: the example fails alone
        self.cache: dict[tuple, ScoredOutput] = {}
        self.cache_hits = 0
        self.candidates: list[Candidate] = []

    @property
    def runs(self) -> int:
        return len(self.cache)

    def evaluate(self, candidate: Candidate, examples: Sequence[Example]) -> list[ScoredOutput]:
        self.candidates.append(dict(candidate))
        results = []
        for example in examples:
            key = (tuple(sorted(candidate.items())), example.index)
            if key in self.cache:
                self.cache_hits += 1
            else:
                if error := self.fail(candidate, example):
                    raise error
                result = self._run(candidate, example)
                if self.unscorable(candidate, example):
                    result = dataclasses.replace(
                        result, scores={"lowercase": result.scores["lowercase"]}, aggregate=0.0, failure=UNSCORABLE
                    )
                self.cache[key] = result
            results.append(self.cache[key])
        return results

    def summarize(self, results: Sequence[ScoredOutput]) -> ScoreSummary:
        scored = [r for r in results if r.failure is None]
        means = {key: sum(r.scores[key] for r in scored) / len(scored) for key in ("lowercase", "exact")}
        return ScoreSummary(sum(means.values()) / len(means), means, failed_examples=len(results) - len(scored))

    @staticmethod
    def _run(candidate: Candidate, example: Example) -> ScoredOutput:
        prompt = "\n".join(candidate.values())
        expected = example.expectations.get("expected_response", "neutral")
        output = expected.capitalize() if ONE_WORD in prompt else f"The sentiment is {expected.capitalize()}."
        output = output.lower() if LOWERCASE in prompt else output
        exact = float(output == expected)
        scores = {"lowercase": float(output == output.lower()), "exact": exact}
        rationales = {"exact": "matches" if exact else f"expected {expected!r}"}
        return ScoredOutput(example, output, scores, rationales, aggregate=sum(scores.values()) / 2)


class FakeReflector:
    """A fake reflection model answering gepa's reflection prompt: it adds the first missing rule to the
    instruction between the prompt's first ``` fences; `mangle` then breaks the proposal on purpose."""

    def __init__(self, mangle: Callable[[str], str] = lambda text: text, error: Exception | None = None):
        self.mangle = mangle
        self.error = error
        self.requests: list[str] = []

    def __call__(self, prompt: str, system: str | None = None) -> str:
        self.requests.append(prompt)
        if self.error:
            raise self.error
        instruction = prompt.split("```")[1].strip("\n")
        missing = [rule for rule in RULES if rule not in instruction]
        new = f"{missing[0]}\n{instruction}" if missing else instruction
        return f"One more rule should help.\n```\n{self.mangle(new)}\n```"


class RecordingReporter:
    """A fake Reporter keeping a copy of every report."""

    def __init__(self, on_report: Callable[[Progress], None] = lambda progress: None):
        self.on_report = on_report
        self.reports: list[tuple[Progress, bool]] = []
        self.finished_with: list[tuple[Progress, Result]] = []

    def progress(self, progress: Progress, *, important: bool = False) -> None:
        self.reports.append((dataclasses.replace(progress), important))
        self.on_report(progress)

    def finished(self, progress: Progress, result: Result) -> None:
        self.finished_with.append((dataclasses.replace(progress), result))

    @property
    def important(self) -> list[Progress]:
        return [progress for progress, important in self.reports if important]


def gepa_problem(
    evaluator=None, reflect=None, *, max_metric_calls=40, options=None, stop_at_perfect_score=False, **fields
) -> Problem:
    """The fakes' problem. The fakes reach a perfect score in two iterations, so the run goes on past it unless
    `stop_at_perfect_score` is None (the default of the API) or True: the budget, patience and resume tests need
    iterations."""
    settings = OptimizerSpec(
        type="GEPA",
        reflection_model="sim-reflect",
        gepa=GepaSettings(
            max_metric_calls=max_metric_calls,
            candidate_selection=fields.pop("selection", "pareto"),
            stop_at_perfect_score=stop_at_perfect_score,
        ),
        options=options or {},
    )
    return Problem(
        prompts=[PromptTemplate("classify", "user", SEED)],
        train=examples(range(4, 10)),
        validation=examples(range(4)),
        evaluator=evaluator or FakeEvaluator(),
        reflect=reflect or FakeReflector(),
        settings=settings,
        **fields,
    )


def run(problem: Problem, reporter=None, stop=None, **kwargs) -> tuple[Result, Progress, RecordingReporter]:
    progress, reporter = Progress(), reporter or RecordingReporter()
    stop = stop if stop is not None else StopRequested()  # an unset StopRequested is falsy
    return optimize_gepa(problem, progress, reporter, stop, **kwargs), progress, reporter


# --- the adapter ---------------------------------------------------------------------------------


def adapter_for(evaluator, progress=None, **problem_fields):
    return EvaluatorAdapter(gepa_problem(evaluator, **problem_fields), progress or Progress(), StopRequested())


def test_adapter_evaluates_into_gepa_shapes():
    adapter = adapter_for(FakeEvaluator())
    candidate = {"classify": f"{LOWERCASE}\n{SEED}"}

    batch = adapter.evaluate(examples(range(2)), candidate)
    traced = adapter.evaluate(examples(range(2)), candidate, capture_traces=True)

    assert batch.outputs == ["the sentiment is negative.", "the sentiment is positive."]
    assert batch.scores == [0.5, 0.5]
    assert batch.objective_scores == [{"lowercase": 1.0, "exact": 0.0}] * 2
    assert batch.trajectories is None
    assert [t.output for t in traced.trajectories] == batch.outputs
    assert adapter.propose_new_texts is None  # gepa's own reflective proposer


def test_reflective_dataset_shows_inputs_output_expected_and_per_scorer_feedback():
    adapter = adapter_for(FakeEvaluator())
    candidate = {"system": "Be brief.", "classify": SEED}
    unlabeled = Example(7, {"text": "no label"}, {})
    batch = adapter.evaluate([*examples(range(1)), unlabeled], candidate, capture_traces=True)

    dataset = adapter.make_reflective_dataset(candidate, batch, ["system", "classify"])

    assert dataset["system"] == dataset["classify"]
    labeled, without_expected = dataset["classify"]
    assert labeled == {
        "Inputs": {"text": "review number 0"},
        "Generated Outputs": "The sentiment is Negative.",
        "Expected Response": "negative",
        "Feedback": "lowercase: 0.00\nexact: 0.00 — expected 'negative'",
    }
    assert "Expected Response" not in without_expected


def test_an_example_that_cannot_be_scored_enters_gepa_as_zero_with_its_reason_as_feedback():
    progress = Progress(max_metric_calls=40)
    adapter = adapter_for(FakeEvaluator(unscorable=lambda candidate, example: example.index == 1), progress)
    candidate = {"classify": f"{LOWERCASE}\n{SEED}"}

    batch = adapter.evaluate(examples(range(2)), candidate, capture_traces=True)  # no exception for one example

    assert batch.scores == [0.5, 0.0] and batch.objective_scores == [
        {"lowercase": 1.0, "exact": 0.0},
        {"lowercase": 1.0},
    ]
    assert progress.failed_examples == 1
    _, failed = adapter.make_reflective_dataset(candidate, batch, ["classify"])["classify"]
    assert failed["Feedback"] == f"Not scored: {UNSCORABLE}\nlowercase: 1.00"
    assert failed["Generated Outputs"] == "the sentiment is positive."


def test_adapter_state_carries_the_rejection_failure_and_cache_counts_across_a_restart():
    progress = Progress(rejected_candidates=3, failed_examples=2, cached_evaluations=5)
    saved = adapter_for(FakeEvaluator(), progress).get_adapter_state()
    restarted = Progress()
    adapter_for(FakeEvaluator(), restarted).set_adapter_state(saved)
    assert (restarted.rejected_candidates, restarted.failed_examples, restarted.cached_evaluations) == (3, 2, 5)


# --- whole runs with fakes ------------------------------------------------------------------------


def test_gepa_improves_the_prompt_and_reports_progress():
    reflector, evaluator = FakeReflector(), FakeEvaluator()
    result, progress, reporter = run(gepa_problem(evaluator, reflector))

    assert result.reason == "Completed", result.message
    assert result.best_candidate == {"classify": f"{ONE_WORD}\n{LOWERCASE}\n{SEED}"}
    assert result.initial_scores == ScoreSummary(0.0, {"lowercase": 0.0, "exact": 0.0})
    assert result.final_scores == ScoreSummary(1.0, {"lowercase": 1.0, "exact": 1.0})
    # gepa rendered our reflective records into its own reflection prompt.
    assert "## Expected Response\n" in reflector.requests[0]
    assert "exact: 0.00 — expected" in reflector.requests[0]

    first, *news = reporter.important
    assert first.initial_scores == result.initial_scores and first.best_score == 0.0
    assert [p.best_score for p in news] == [0.5, 1.0]
    assert progress.metric_calls <= progress.max_metric_calls == 40
    assert progress.candidates == 3 and progress.iteration >= 2 and progress.rejected_candidates == 0
    assert progress.best_candidate == result.best_candidate
    # The final scores came from the evaluator's cache: no evaluation beyond what gepa counted.
    assert evaluator.runs <= progress.metric_calls
    # Every metric call gepa counted either ran or was answered by the cache, and the progress says how many.
    assert progress.cached_evaluations > 0
    assert progress.cached_evaluations + evaluator.runs == progress.metric_calls
    assert reporter.reports[-1][0].cached_evaluations == progress.cached_evaluations
    # The candidates, with their lineage: each rule was added to the one before, found as the budget went.
    assert [(c.id, c.parents, c.score, dict(c.scorers or {})) for c in result.candidates] == [
        (0, (), 0.0, {"lowercase": 0.0, "exact": 0.0}),
        (1, (0,), 0.5, {"lowercase": 1.0, "exact": 0.0}),
        (2, (1,), 1.0, {"lowercase": 1.0, "exact": 1.0}),
    ]
    assert result.candidates[2].prompts == result.best_candidate
    found = [c.found_at_metric_calls for c in result.candidates]
    assert found[0] == 0 and found == sorted(found) and found[-1] <= progress.metric_calls


def test_by_default_a_perfect_candidate_ends_the_run_with_the_budget_left():
    """Issue 23: with the simulated LLM the README job reached 1.000 at metric call 9, then spent 144 more calls (29
    iterations) re-scoring a candidate nothing could beat."""
    result, progress, _ = run(gepa_problem(stop_at_perfect_score=None))
    assert result.reason == "PerfectScore" and result.succeeded
    assert result.message.startswith("GEPA stopped: candidate 2 scores 1 on validation, which no candidate can beat")
    assert result.final_scores == ScoreSummary(1.0, {"lowercase": 1.0, "exact": 1.0})
    assert progress.iteration == 2 and progress.metric_calls == 24 < progress.max_metric_calls == 40


class BatchRecordingEvaluator(FakeEvaluator):
    """Records which examples each evaluation was asked for."""

    def __init__(self):
        super().__init__()
        self.batches: list[set[int]] = []

    def evaluate(self, candidate: Candidate, examples: Sequence[Example]) -> list[ScoredOutput]:
        self.batches.append({example.index for example in examples})
        return super().evaluate(candidate, examples)


def test_held_out_test_records_are_scored_at_the_end_and_never_shown_to_the_optimizer():
    """Issue 23: the validation scores select the best candidate, so they overstate it; the test records give the
    estimate an MLflow user compares."""
    evaluator, held_out = BatchRecordingEvaluator(), examples(range(10, 13))
    problem = dataclasses.replace(gepa_problem(evaluator, stop_at_perfect_score=None), test=held_out)
    reporter = RecordingReporter()
    result = optimize(problem, reporter, StopRequested())

    test = {example.index for example in held_out}
    assert evaluator.batches[-2:] == [test, test]  # the original prompts, then the best
    assert all(not batch & test for batch in evaluator.batches[:-2])  # the optimizer never saw them
    assert result.initial_test_scores == ScoreSummary(0.0, {"lowercase": 0.0, "exact": 0.0})
    assert result.final_test_scores == ScoreSummary(1.0, {"lowercase": 1.0, "exact": 1.0})
    [(progress, _)] = reporter.finished_with
    status = status_fields(worker_status(progress, result))
    assert status["initialScores"]["test"] == {
        "aggregate": 0.0,
        "scorers": {"lowercase": 0.0, "exact": 0.0},
        "failedExamples": 0,
        "records": 3,
    }
    assert status["finalScores"]["test"]["aggregate"] == 1.0 and status["display"]["testScore"] == "1.000"


def test_a_stopped_run_skips_the_test_records():
    evaluator = BatchRecordingEvaluator()
    problem = dataclasses.replace(gepa_problem(evaluator), test=examples(range(10, 13)))
    stop = StopRequested()
    stop.request("Cancelled", "cancelled by spec.cancel")
    result = optimize(problem, RecordingReporter(), stop)
    assert result.final_test_scores is None and all(not batch & {10, 11, 12} for batch in evaluator.batches)


@pytest.mark.parametrize(
    "mangle, problem_text",
    [
        (lambda text: text.replace("{{text}}", "the review"), "lost {{text}}"),
        (lambda text: text + "\nContext: {{made_up}}", "invented {{made_up}}"),
    ],
    ids=["drops-variable", "invents-variable"],
)
def test_proposals_breaking_template_variables_are_rejected_without_evaluation(mangle, problem_text, caplog):
    evaluator, reflector = FakeEvaluator(), FakeReflector(mangle)
    result, progress, _ = run(gepa_problem(evaluator, reflector, max_metric_calls=20))

    assert result.reason == "Completed"
    assert result.best_candidate == {"classify": SEED}
    assert progress.rejected_candidates == len(reflector.requests) > 0
    assert all(candidate == {"classify": SEED} for candidate in evaluator.candidates)
    assert problem_text in caplog.text and "rejected a proposal" in caplog.text


def test_a_requested_stop_ends_the_run_with_the_best_so_far():
    stop = StopRequested()

    def cancel_on_first_improvement(progress: Progress) -> None:
        if progress.best_score:
            stop.request("Cancelled", "the job was cancelled")

    result, progress, _ = run(gepa_problem(), RecordingReporter(cancel_on_first_improvement), stop)

    assert result.reason == "Cancelled"
    assert result.message.startswith("the job was cancelled; best of 2 candidates")
    assert result.best_candidate == {"classify": f"{LOWERCASE}\n{SEED}"}
    assert result.final_scores == ScoreSummary(0.5, {"lowercase": 1.0, "exact": 0.0})
    assert result.succeeded


def test_the_deadline_stops_the_run_after_the_seed_evaluation():
    result, progress, _ = run(gepa_problem(deadline_seconds=0))

    assert result.reason == "DeadlineReached"
    assert result.best_candidate == {"classify": SEED}
    assert result.initial_scores == result.final_scores
    assert progress.iteration == 0 and progress.metric_calls == 4


def with_gepa(problem: Problem, **settings) -> Problem:
    gepa_settings = problem.settings.gepa_settings.model_copy(update=settings)
    return dataclasses.replace(problem, settings=problem.settings.model_copy(update={"gepa": gepa_settings}))


def test_the_goal_stops_the_run_once_the_best_candidate_reaches_it():
    result, progress, _ = run(with_gepa(gepa_problem(), early_stopping=EarlyStopping(goal=0.5)))

    assert result.reason == "GoalReached" and result.succeeded, result.message
    assert result.message.startswith("GEPA stopped at its goal of 0.5; best of 2 candidates scores 0.500")
    assert result.best_candidate == {"classify": f"{LOWERCASE}\n{SEED}"}  # the budget would have reached 1.0
    assert progress.metric_calls < progress.max_metric_calls


def test_a_seed_that_reaches_the_goal_runs_no_iteration():
    result, progress, _ = run(with_gepa(gepa_problem(), early_stopping=EarlyStopping(goal=0.0)))
    assert result.reason == "GoalReached" and result.best_candidate == {"classify": SEED}
    assert progress.iteration == 0 and progress.metric_calls == 4


def test_patience_stops_a_run_whose_proposals_bring_nothing():
    reflector = FakeReflector(lambda text: text.replace("{{text}}", "the review"))  # every proposal is rejected
    problem = with_gepa(gepa_problem(reflect=reflector, max_metric_calls=400), early_stopping=EarlyStopping(patience=3))
    result, progress, _ = run(problem)

    assert result.reason == "NoImprovement" and result.succeeded, result.message
    assert result.message.startswith("GEPA stopped: no better candidate in 3 iterations; best of 1 candidates")
    assert progress.iteration == 3 and len(reflector.requests) == 3


def test_patience_counts_iterations_without_improvement_in_a_row():
    """The fake reflector improves twice (0.5, then 1.0) and then has nothing to add: the run stops 2 iterations
    after the last improvement, not 2 after the start."""
    result, progress, _ = run(with_gepa(gepa_problem(max_metric_calls=400), early_stopping=EarlyStopping(patience=2)))
    assert result.reason == "NoImprovement" and result.final_scores.aggregate == 1.0
    assert progress.iteration == 4


@pytest.mark.parametrize(
    "preset, prompts, validation, calls",
    [
        ("light", 1, 15, 440),
        ("medium", 1, 15, 765),
        ("heavy", 1, 15, 1140),  # the API reference's examples
        ("light", 1, 4, 396),
        ("light", 3, 50, 1515),  # 3 prompts: 31 trials, 7 full validations
    ],
)
def test_budget_presets_are_sized_as_dspy_sizes_auto(preset, prompts, validation, calls):
    assert preset_metric_calls(preset, prompts, validation) == calls


def test_an_explicit_budget_wins_over_the_preset_and_the_default_is_100():
    assert metric_call_budget(GepaSettings(auto="light", max_metric_calls=50), 1, 4) == (
        50,
        "spec.optimizer.gepa.maxMetricCalls",
    )
    assert metric_call_budget(GepaSettings(auto="light"), 1, 4) == (396, "spec.optimizer.gepa.auto")
    assert metric_call_budget(GepaSettings(), 1, 4) == (100, "spec.optimizer.gepa.maxMetricCalls")


def test_a_run_with_a_preset_has_its_budget():
    problem = with_gepa(gepa_problem(), max_metric_calls=None, auto="light")
    result, progress, _ = run(problem)
    assert result.reason == "Completed" and progress.max_metric_calls == 396
    assert result.final_scores.aggregate == 1.0


def test_a_second_run_with_the_same_run_dir_resumes(tmp_path):
    stop = StopRequested()
    first_problem = gepa_problem(checkpoint_dir=str(tmp_path), selection="current_best")

    def stop_on_improvement(progress: Progress) -> None:
        if progress.best_score:
            stop.request("Cancelled", "SIGTERM")

    stdout = sys.stdout
    first, first_progress, _ = run(first_problem, RecordingReporter(stop_on_improvement), stop)
    assert sys.stdout is stdout  # our logger keeps gepa from redirecting stdout into the run_dir
    assert first.reason == "Cancelled" and os.path.exists(tmp_path / "gepa_state.bin")

    reflector = FakeReflector()
    second, second_progress, reporter = run(dataclasses.replace(first_problem, reflect=reflector))

    assert second.reason == "Completed"
    # It went on from the checkpoint: iterations continue, the first proposal builds on the earlier best,
    # and the budget is a total over both runs.
    assert min(p.iteration for p, _ in reporter.reports if p.iteration) == first_progress.iteration + 1
    assert LOWERCASE in reflector.requests[0]
    assert second.best_candidate == {"classify": f"{ONE_WORD}\n{LOWERCASE}\n{SEED}"}
    assert first_progress.metric_calls < second_progress.metric_calls <= 40


def test_optimize_reports_the_stop_reason_when_the_budget_runs_out_mid_evaluation():
    stop = StopRequested()

    def budget_spent(candidate: Candidate, example: Example) -> Exception | None:
        if ONE_WORD in candidate["classify"]:
            stop.request("BudgetExhausted", "maxCostUSD 0.01 reached")
            return RuntimeError("budget exceeded")
        return None

    reporter = RecordingReporter()
    result = optimize(gepa_problem(FakeEvaluator(budget_spent)), reporter, stop)

    assert result.reason == "BudgetExhausted" and result.message == "maxCostUSD 0.01 reached"
    assert result.best_candidate == {"classify": f"{LOWERCASE}\n{SEED}"}
    assert result.final_scores.aggregate == 0.5 and result.initial_scores.aggregate == 0.0
    assert reporter.finished_with == [(reporter.finished_with[0][0], result)]


def test_a_run_with_some_unscorable_examples_succeeds_counts_them_and_reports_honest_scores():
    # Validation record 1 and training record 6 cannot be scored for any candidate.
    evaluator = FakeEvaluator(unscorable=lambda candidate, example: example.index in (1, 6))
    reflector = FakeReflector()
    result, progress, _ = run(
        gepa_problem(
            evaluator, reflector, max_metric_calls=40, failure_policy=ExampleFailurePolicy(max_failed_fraction=0.25)
        )
    )

    assert result.reason == "Completed" and result.succeeded, result.message
    assert result.best_candidate == {"classify": f"{ONE_WORD}\n{LOWERCASE}\n{SEED}"}
    # Each validation pass and each minibatch holding record 6 counts one failed evaluation.
    assert 0 < progress.failed_examples <= 0.25 * 40
    assert f"{progress.failed_examples} evaluations not scored" in result.message
    # The reported means leave record 1 out (the best prompt scores 1 on the others), and say so.
    assert result.final_scores == ScoreSummary(1.0, {"lowercase": 1.0, "exact": 1.0}, failed_examples=1)
    assert result.initial_scores.failed_examples == 1
    assert any("Not scored: the judge of scorer 'exact'" in request for request in reflector.requests)


def test_too_many_unscorable_examples_stop_the_run_with_a_reason_that_says_so():
    evaluator = FakeEvaluator(unscorable=lambda candidate, example: example.index % 2 == 1)
    reporter = RecordingReporter()
    result = optimize(gepa_problem(evaluator, max_metric_calls=40), reporter, StopRequested())

    assert result.reason == "TooManyFailedExamples" and not result.succeeded
    # Half of every evaluation fails: past 0.1 x 40 failed evaluations within the first iteration, so it stops.
    [(progress, _)] = reporter.finished_with
    assert progress.failed_examples > 4 and progress.metric_calls <= 4 + 3 + 3
    assert "more than spec.exampleFailurePolicy.maxFailedFraction 0.1 of the run's 40" in result.message
    assert UNSCORABLE in result.message


def test_a_permanent_reflection_error_stops_gepa_instead_of_spending_the_budget():
    reflector = FakeReflector(error=PermanentLLMError("invalid API key"))
    reporter = RecordingReporter()
    result = optimize(gepa_problem(reflect=reflector), reporter, StopRequested())

    assert result.reason == "LLMError" and "invalid API key" in result.message
    assert result.best_candidate == {"classify": SEED}
    [(progress, _)] = reporter.finished_with
    assert progress.iteration == 1 and len(reflector.requests) == 1


def test_a_spinning_loop_is_stopped_by_the_stall_stopper():
    def train_fails(candidate: Candidate, example: Example) -> Exception | None:
        return ValueError("task model unreachable") if example.index >= 4 else None

    problem = gepa_problem(FakeEvaluator(train_fails), options={"raise_on_exception": False})
    result, _, _ = run(problem, stall_seconds=0.2)

    assert result.reason == "Error"
    assert "no progress for 0.2 s" in result.message and "task model unreachable" in result.message
    assert result.best_candidate == {"classify": SEED}


# 4 validation records, minibatches of 3: the seed's first evaluation takes 4 calls, an iteration up to 3 + 3 + 4.
@pytest.mark.parametrize("max_metric_calls", [14, 17, 20, 23, 27, 40, 41, 64])
def test_gepa_never_spends_more_metric_calls_than_the_budget(max_metric_calls):
    evaluator = FakeEvaluator()
    result, progress, _ = run(gepa_problem(evaluator, max_metric_calls=max_metric_calls))

    assert result.reason == "Completed", result.message
    assert progress.metric_calls <= max_metric_calls and evaluator.runs <= max_metric_calls
    assert max_metric_calls - progress.metric_calls < 10  # it stopped only when another iteration might not fit
    assert f"the {max_metric_calls - progress.metric_calls} metric calls left could not cover" in result.message


def test_with_merge_the_budget_holds_too():
    problem = gepa_problem(max_metric_calls=50)
    problem = dataclasses.replace(
        problem,
        settings=problem.settings.model_copy(
            update={
                "gepa": GepaSettings(
                    max_metric_calls=50, use_merge=True, reflection_minibatch_size=1, stop_at_perfect_score=False
                )
            }
        ),
    )
    result, progress, _ = run(problem)
    assert result.reason == "Completed" and progress.metric_calls <= 50


def test_a_budget_for_the_first_step_only_keeps_the_seed_and_says_what_would_optimize():
    result, progress, _ = run(gepa_problem(max_metric_calls=8))

    assert result.reason == "Completed" and result.best_candidate == {"classify": SEED}
    assert progress.metric_calls == 4 and progress.iteration == 0
    assert "set spec.optimizer.gepa.maxMetricCalls to at least 14 to optimize" in result.message


def test_a_budget_below_the_first_step_is_refused_naming_the_field():
    evaluator = FakeEvaluator()
    result, _, _ = run(gepa_problem(evaluator, max_metric_calls=3))

    assert result.reason == "InvalidInput" and evaluator.runs == 0
    assert result.message.startswith(
        "spec.optimizer.gepa.maxMetricCalls: 3 metric calls do not cover GEPA's first "
        "step, scoring the original prompts on the 4 validation records; set at least 14"
    )


def test_options_override_settings_but_not_what_the_worker_owns():
    result, progress, _ = run(gepa_problem(options={"max_metric_calls": 14}))
    assert result.reason == "Completed" and progress.max_metric_calls == 14 and progress.metric_calls <= 14
    too_small, _, _ = run(gepa_problem(options={"max_metric_calls": 2}))
    assert too_small.message.startswith("spec.optimizer.options.max_metric_calls: 2 metric calls do not cover")
    unbounded, _, _ = run(gepa_problem(options={"max_metric_calls": None}))
    assert unbounded.reason == "InvalidInput" and unbounded.message == (
        "spec.optimizer.options.max_metric_calls: None is not a number of metric calls; GEPA needs a budget"
    )

    refused, _, _ = run(gepa_problem(options={"logger": None, "run_dir": "/tmp"}))
    assert refused.reason == "InvalidInput" and refused.message == (
        "spec.optimizer.options.logger: the worker sets it; the worker reports progress into the job's status and "
        "its log; spec.optimizer.options.run_dir: the worker sets it; set spec.worker.checkpointClaimName to keep "
        "checkpoints across worker Pods"
    )
    unknown, _, _ = run(gepa_problem(options={"max_metric_call": 5}))
    assert unknown.reason == "InvalidInput" and unknown.message == (
        f"spec.optimizer.options.max_metric_call: gepa.optimize (gepa {version('gepa')}) has no such parameter "
        "(did you mean max_metric_calls?); remove it"
    )


# --- integration: the real evaluator, scorers and LLM client against the simulated LLM (a test double) --


@pytest.fixture
def sentiment_gepa(llm, monkeypatch):
    """Builds GEPA problems on 12 simulated sentiment records (8 train, 4 validation) scored by
    ExactMatch and the Correctness judge, with the given reflection model."""
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    task = TaskSpec(model="openai/sim-task", api_base=llm.base_url)
    client = LLMClient()
    prompts = [PromptTemplate("classify", "user", SEED_INSTRUCTION)]
    specs = [ScorerSpec(name="ExactMatch"), ScorerSpec(name="Correctness", model="openai/sim-judge")]
    scorers = build_scorers(specs, task, client)
    records = [Example(i, r["inputs"], r["expectations"]) for i, r in enumerate(sentiment_dataset(12, seed=0))]
    evaluator = TaskEvaluator(prompts, task, scorers, client)

    def build(reflection_model: str, **gepa_settings) -> Problem:
        settings = OptimizerSpec(
            type="GEPA", reflection_model=f"openai/{reflection_model}", gepa=GepaSettings(**gepa_settings)
        )
        reflection = ModelEndpoint.for_reflection(settings, task)
        return Problem(
            prompts=prompts,
            train=records[:8],
            validation=records[8:],
            evaluator=evaluator,
            reflect=lambda prompt, system=None: client.complete(reflection, [{"role": "user", "content": prompt}]),
            settings=settings,
        )

    yield build
    evaluator.close()


def test_gepa_with_the_simulated_llm_raises_the_score_above_the_seed(sentiment_gepa, llm):
    reporter = RecordingReporter()
    result = optimize(sentiment_gepa(REFLECT_MODEL, max_metric_calls=60), reporter, StopRequested())

    assert result.reason in ("Completed", "PerfectScore"), result.message
    assert set(result.initial_scores.scorers) == set(result.final_scores.scorers) == {"ExactMatch", "Correctness"}
    assert result.initial_scores.scorers["ExactMatch"] == 0.0
    assert result.final_scores.aggregate > result.initial_scores.aggregate
    assert RULE_ONE_LOWERCASE_WORD in result.best_candidate["classify"]
    assert "{{review}}" in result.best_candidate["classify"]
    [(progress, _)] = reporter.finished_with
    assert progress.candidates >= 2 and progress.metric_calls <= 60
    assert llm.calls["reflection"] >= 1


def test_gepa_with_a_reflection_model_that_drops_variables_keeps_the_seed(sentiment_gepa, llm):
    reporter = RecordingReporter()
    result = optimize(sentiment_gepa(REFLECT_DROPS_VARIABLE_MODEL, max_metric_calls=20), reporter, StopRequested())

    [(progress, _)] = reporter.finished_with
    assert result.reason == "Completed" and result.best_candidate == {"classify": SEED_INSTRUCTION}
    assert progress.rejected_candidates == llm.calls["reflection"] > 0
    assert result.final_scores == result.initial_scores
