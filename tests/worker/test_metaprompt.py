"""MetaPrompt: zero-shot and few-shot passes, the request contract, keeping the better prompts, variable
safety and unusable answers; fakes stand in for the evaluator and the reflection model (integration tests
with the real ones and the simulated LLM at the end)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence

import pytest

from promptopt.api.v1alpha1 import ExampleFailurePolicy, MetaPromptSettings, OptimizerSpec, ScorerSpec, TaskSpec
from promptopt.simulated_llm import (
    REFLECT_INVENTS_VARIABLE_MODEL,
    REFLECT_MODEL,
    RULE_LOWERCASE,
    RULE_SARCASM,
    RULE_SINGLE_WORD,
    SEED_INSTRUCTION,
    sentiment_dataset,
)
from promptopt_worker.evaluation import TaskEvaluator
from promptopt_worker.llm import LLMClient, ModelEndpoint, PermanentLLMError
from promptopt_worker.metaprompt import UnusableAnswer, optimize_metaprompt, parse_answer
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
from promptopt_worker.scorers import build_scorers

SEED = {"system": "You classify reviews.", "classify": "Classify the sentiment.\n\n{{text}}"}
BETTER = {**SEED, "classify": "Classify the sentiment. Answer with one lowercase word.\n\n{{text}}"}
WORSE = {**SEED, "classify": "Say something about it.\n\n{{text}}"}


def examples(indexes: range) -> list[Example]:
    return [Example(i, {"text": f"review {i}"}, {"expected_response": "positive"}) for i in indexes]


UNSCORABLE = "the judge of scorer 'quality' did not answer with a JSON verdict; it answered 'hmm' (asked 3 times)"


class FakeEvaluator:
    """A fake Evaluator with one scorer, `quality`: the seed scores example i at (3i % 4) / 4, BETTER
    scores 1 and any other prompt 0; the (candidate, example index) pairs in `unscorable` fail. Counts the
    (candidate, example) evaluations it runs."""

    cache_hits = 0  # it has no cache: every evaluation runs

    def __init__(self, unscorable: Sequence[tuple[Candidate, int]] = ()):
        self.unscorable = unscorable
        self.evaluated: list[tuple[Candidate, int]] = []

    def evaluate(self, candidate: Candidate, examples: Sequence[Example]) -> list[ScoredOutput]:
        self.evaluated += [(dict(candidate), example.index) for example in examples]
        return [self._run(candidate, example) for example in examples]

    def summarize(self, results: Sequence[ScoredOutput]) -> ScoreSummary:
        scored = [r for r in results if r.failure is None]
        mean = sum(r.aggregate for r in scored) / len(scored) if scored else None
        return ScoreSummary(mean, {"quality": mean} if scored else {}, failed_examples=len(results) - len(scored))

    def _run(self, candidate: Candidate, example: Example) -> ScoredOutput:
        if (candidate, example.index) in self.unscorable:
            return ScoredOutput(example, f"output {example.index}", {}, {}, 0.0, failure=UNSCORABLE)
        score = (3 * example.index % 4) / 4 if candidate == SEED else float(candidate == BETTER)
        rationale = "fine" if score == 1 else "too wordy"
        return ScoredOutput(example, f"output {example.index}", {"quality": score}, {"quality": rationale}, score)


class FakeReflector:
    """A fake reflection model that gives a fixed answer and keeps the requests."""

    def __init__(self, answer: str = "", error: Exception | None = None):
        self.answer = answer
        self.error = error
        self.requests: list[tuple[str | None, str]] = []

    def __call__(self, prompt: str, system: str | None = None) -> str:
        self.requests.append((system, prompt))
        if self.error:
            raise self.error
        return self.answer


def proposing(prompts: Candidate, rationale: str = "Stated the output format.") -> FakeReflector:
    return FakeReflector(json.dumps({"prompts": prompts, "rationale": rationale}))


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


def metaprompt_problem(
    reflect, evaluator=None, *, train=range(4, 10), validation=range(4), failure_policy=None, **settings
) -> Problem:
    return Problem(
        prompts=[PromptTemplate(name, "system" if name == "system" else "user", text) for name, text in SEED.items()],
        train=examples(train),
        validation=examples(validation),
        evaluator=evaluator,
        reflect=reflect,
        settings=OptimizerSpec(
            type="MetaPrompt", reflection_model="sim-reflect", meta_prompt=MetaPromptSettings(**settings)
        ),
        failure_policy=ExampleFailurePolicy() if failure_policy is None else failure_policy,
    )


def run(problem: Problem, reporter=None, stop=None) -> tuple[Result, Progress, RecordingReporter]:
    progress, reporter = Progress(), reporter or RecordingReporter()
    stop = stop if stop is not None else StopRequested()  # an unset StopRequested is falsy
    return optimize_metaprompt(problem, progress, reporter, stop), progress, reporter


def section(request: str, title: str) -> str | None:
    match = re.search(rf"^### {title}\n(.*?)(?=^### |\Z)", request, re.M | re.S)
    return match.group(1).strip() if match else None


def fenced_json(text: str):
    return json.loads(re.fullmatch(r"```json\n(.*)\n```", text, re.S).group(1))


# --- zero-shot -------------------------------------------------------------------------------------


def test_zero_shot_sends_one_contract_request_and_returns_the_proposal_without_scores():
    answer = json.dumps({"prompts": BETTER, "rationale": "Format."})
    reflector = FakeReflector(f"Here you go:\n```json\n{answer}\n```")
    problem = metaprompt_problem(reflector, train=range(0), validation=range(0), guidelines="Use lowercase labels.")

    result, progress, _ = run(problem)

    [(system, request)] = reflector.requests
    assert system.startswith("You are an expert prompt engineer")
    assert fenced_json(section(request, "Current prompts")) == SEED
    assert section(request, "Template variables").startswith("- system: none\n- classify: {{text}}")
    assert section(request, "Guidelines") == "Use lowercase labels."
    assert section(request, "Examples") is None
    assert result == Result(
        "Completed", "MetaPrompt (zero-shot): rewrote the prompts (no dataset, so no scores). Rationale: Format.",
        best_candidate=BETTER,
    )  # fmt: skip
    assert (progress.iteration, progress.candidates, progress.metric_calls) == (1, 2, 0)
    assert progress.max_metric_calls is None


# --- few-shot --------------------------------------------------------------------------------------


def test_few_shot_shows_the_worst_training_examples_and_keeps_a_better_proposal():
    evaluator, reflector = FakeEvaluator(), proposing(BETTER)
    result, progress, reporter = run(metaprompt_problem(reflector, evaluator, max_examples=3))

    [(_, request)] = reflector.requests
    shown = fenced_json(section(request, "Examples"))
    assert [example["inputs"]["text"] for example in shown] == ["review 4", "review 6", "review 5"]
    assert shown[0] == {
        "inputs": {"text": "review 4"}, "output": "output 4", "expected": "positive", "score": 0.0,
        "rationale": "quality: 0.00 — too wordy",
    }  # fmt: skip
    assert result.reason == "Completed" and result.best_candidate == BETTER
    assert result.initial_scores == ScoreSummary(0.375, {"quality": 0.375})
    assert result.final_scores == ScoreSummary(1.0, {"quality": 1.0})
    assert "kept the proposal, which scores 1.000 on validation against 0.375 for the original" in result.message
    assert "Rationale: Stated the output format." in result.message
    # Budget: the seed on validation, the examples shown, the proposal on validation.
    assert progress.metric_calls == progress.max_metric_calls == 4 + 3 + 4 == len(evaluator.evaluated)
    assert [p.best_score for p, important in reporter.reports if important] == [0.375, 1.0]
    # Two candidates: the original prompts, and the proposal made from them once 7 metric calls were spent.
    assert [(c.id, c.parents, c.score, c.found_at_metric_calls, c.prompts) for c in result.candidates] == [
        (0, (), 0.375, 0, SEED),
        (1, (0,), 1.0, 7, BETTER),
    ]
    assert reporter.reports[0][0].initial_scores == result.initial_scores


def test_few_shot_keeps_the_original_when_the_proposal_scores_worse():
    result, progress, _ = run(metaprompt_problem(proposing(WORSE), FakeEvaluator()))

    assert result.best_candidate == SEED
    assert result.final_scores == result.initial_scores
    assert "kept the original prompts, which score 0.375 on validation; the proposal scores 0.000" in result.message
    assert progress.candidates == 2 and progress.best_candidate == SEED


def test_failed_examples_are_shown_last_and_the_proposal_is_compared_on_records_scored_for_both():
    # The seed fails on validation record 0 and training record 5, the proposal on validation record 3.
    evaluator = FakeEvaluator(unscorable=[(SEED, 0), (SEED, 5), (BETTER, 3)])
    reflector = proposing(BETTER)
    problem = metaprompt_problem(reflector, evaluator, failure_policy=ExampleFailurePolicy(max_failed_fraction=0.5))

    result, progress, _ = run(problem)

    assert result.reason == "Completed" and result.best_candidate == BETTER
    assert (
        "kept the proposal, which scores 1.000 on the 2 of 4 validation records scored for both against 0.625 "
        "for the original prompts"
    ) in result.message
    assert result.initial_scores == ScoreSummary(0.5, {"quality": 0.5}, failed_examples=1)
    assert result.final_scores == ScoreSummary(1.0, {"quality": 1.0}, failed_examples=1)
    assert progress.failed_examples == 3
    shown = fenced_json(section(reflector.requests[0][1], "Examples"))
    assert shown[-1] == {
        "inputs": {"text": "review 5"},
        "output": "output 5",
        "expected": "positive",
        "score": None,
        "rationale": f"Not scored: {UNSCORABLE}",
    }
    assert [example["score"] for example in shown[:-1]] == sorted(example["score"] for example in shown[:-1])


def test_with_no_record_scored_for_both_the_original_prompts_are_kept():
    evaluator = FakeEvaluator(unscorable=[(SEED, i) for i in range(4)])
    problem = metaprompt_problem(
        proposing(BETTER), evaluator, failure_policy=ExampleFailurePolicy(max_failed_fraction=1)
    )

    result, _, _ = run(problem)

    assert result.reason == "Completed" and result.best_candidate == SEED
    assert "no validation record could be scored for both them and the proposal" in result.message
    assert result.initial_scores == ScoreSummary(None, {}, failed_examples=4)


def test_too_many_failed_examples_stop_metaprompt_before_it_reflects():
    evaluator, reflector = FakeEvaluator(unscorable=[(SEED, 1), (SEED, 2)]), proposing(BETTER)
    reporter = RecordingReporter()

    result = optimize(metaprompt_problem(reflector, evaluator), reporter, StopRequested())

    assert result.reason == "TooManyFailedExamples" and not result.succeeded
    assert (
        "2 evaluations could not be scored, more than spec.exampleFailurePolicy.maxFailedFraction 0.1 of the "
        "run's 14" in result.message
    )
    assert reflector.requests == [] and len(evaluator.evaluated) == 4


def test_without_training_examples_the_validation_results_are_shown():
    evaluator, reflector = FakeEvaluator(), proposing(BETTER)
    result, progress, _ = run(metaprompt_problem(reflector, evaluator, train=range(0)))

    assert len(fenced_json(section(reflector.requests[0][1], "Examples"))) == 4
    assert progress.metric_calls == progress.max_metric_calls == 8
    assert result.best_candidate == BETTER


@pytest.mark.parametrize(
    "proposal, problem_text",
    [
        ({**BETTER, "classify": "Answer with one lowercase word."}, "prompt 'classify' lost {{text}}"),
        ({**BETTER, "system": "Context: {{made_up}}"}, "prompt 'system' invented {{made_up}}"),
    ],
    ids=["drops-variable", "invents-variable"],
)
def test_a_proposal_that_breaks_template_variables_is_rejected(proposal, problem_text):
    evaluator = FakeEvaluator()
    result, progress, _ = run(metaprompt_problem(proposing(proposal), evaluator))

    assert result.reason == "Completed" and result.best_candidate == SEED
    assert f"kept the original prompts. The proposal was rejected: {problem_text}." in result.message
    assert progress.rejected_candidates == 1 and progress.candidates == 1
    assert all(candidate == SEED for candidate, _ in evaluator.evaluated)


def test_zero_shot_rejects_a_broken_proposal_too():
    reflector = proposing({**SEED, "classify": "No variable left."})
    result, progress, _ = run(metaprompt_problem(reflector, train=range(0), validation=range(0)))
    assert result.best_candidate == SEED and progress.rejected_candidates == 1
    assert result.message.startswith("MetaPrompt (zero-shot): kept the original prompts. The proposal was rejected")


@pytest.mark.parametrize(
    "answer, why",
    [
        ("I cannot help with that.", 'no JSON object with a "prompts" key'),
        ('{"prompts": {"classify": "x {{text}}"}, "rationale": "r"}', "lacks the prompt(s) system"),
        ('{"prompts": {"system": 1, "classify": 2}}', "not an object of template strings"),
        ('{"prompts": ["system"]}', "not an object of template strings"),
    ],
)
def test_an_unusable_answer_keeps_the_original_with_a_clear_message(answer, why):
    result, progress, _ = run(metaprompt_problem(FakeReflector(answer), FakeEvaluator()))

    assert result.reason == "Completed" and result.best_candidate == SEED
    assert why in result.message and "answer was unusable" in result.message
    assert progress.rejected_candidates == 0


def test_an_unchanged_proposal_is_not_evaluated_again():
    evaluator = FakeEvaluator()
    result, progress, _ = run(metaprompt_problem(proposing(SEED), evaluator))
    assert "proposed no change" in result.message and progress.metric_calls == len(evaluator.evaluated) == 10


ANSWER = '{"prompts": {"system": "S", "classify": "C {{text}}"}, "rationale": "why"}'


@pytest.mark.parametrize(
    "answer",
    [
        ANSWER,
        f"Sure! {{not json}} Here:\n```json\n{ANSWER}\n```\nDone.",
        '```\n{"rationale": "why", "prompts": {"system": "S", "classify": "C {{text}}", "extra": "ignored"}}\n```',
    ],
    ids=["bare", "fenced-amid-text", "fenced-extra-name"],
)
def test_parse_answer_accepts_bare_fenced_or_surrounded_json(answer):
    assert parse_answer(answer, ["system", "classify"]) == ({"system": "S", "classify": "C {{text}}"}, "why")


def test_parse_answer_refuses_an_object_without_prompts():
    with pytest.raises(UnusableAnswer):
        parse_answer('{"rationale": "nothing"}', ["classify"])


# --- stops and errors ------------------------------------------------------------------------------


def test_a_stop_before_the_reflection_keeps_the_original_with_the_stop_reason():
    stop, reflector = StopRequested(), proposing(BETTER)

    def cancel(progress: Progress) -> None:
        stop.request("Cancelled", "the job was cancelled")

    result, _, _ = run(metaprompt_problem(reflector, FakeEvaluator()), RecordingReporter(cancel), stop)

    assert result.reason == "Cancelled" and result.best_candidate == SEED
    assert result.final_scores == result.initial_scores
    assert reflector.requests == []


def test_optimize_dispatches_and_turns_a_permanent_llm_error_into_a_result():
    reporter = RecordingReporter()
    problem = metaprompt_problem(FakeReflector(error=PermanentLLMError("model not found")), FakeEvaluator())

    result = optimize(problem, reporter, StopRequested())

    assert result.reason == "LLMError" and "model not found" in result.message
    assert result.best_candidate == SEED and result.initial_scores.aggregate == 0.375
    assert result.final_scores == result.initial_scores
    assert reporter.finished_with == [(reporter.finished_with[0][0], result)]


# --- integration: the real evaluator, scorers and LLM client against the simulated LLM (a test double) --


@pytest.fixture
def sentiment_metaprompt(llm, monkeypatch):
    """Builds MetaPrompt problems for the simulated sentiment world: zero-shot without records, few-shot
    on 12 records (8 train, 4 validation) scored by ExactMatch, with the given reflection model."""
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    task = TaskSpec(model="openai/sim-task", api_base=llm.base_url)
    client = LLMClient()
    prompts = [PromptTemplate("classify", "user", SEED_INSTRUCTION)]
    records = [Example(i, r["inputs"], r["expectations"]) for i, r in enumerate(sentiment_dataset(12, seed=0))]
    evaluator = TaskEvaluator(prompts, task, build_scorers([ScorerSpec(name="ExactMatch")], task, client), client)

    def build(reflection_model: str, *, few_shot: bool, guidelines: str | None = None, options=None) -> Problem:
        settings = OptimizerSpec(
            type="MetaPrompt",
            reflection_model=f"openai/{reflection_model}",
            meta_prompt=MetaPromptSettings(guidelines=guidelines),
            options=options or {},
        )
        reflection = ModelEndpoint.for_reflection(settings, task)

        def reflect(prompt: str, system: str | None = None) -> str:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
            return client.complete(reflection, messages)

        return Problem(
            prompts=prompts,
            train=records[:8] if few_shot else [],
            validation=records[8:] if few_shot else [],
            evaluator=evaluator if few_shot else None,
            reflect=reflect,
            settings=settings,
        )

    yield build
    evaluator.close()


def test_zero_shot_metaprompt_with_the_simulated_llm(sentiment_metaprompt, llm):
    result = optimize(sentiment_metaprompt(REFLECT_MODEL, few_shot=False, guidelines="Labels in lowercase."),
                      RecordingReporter(), StopRequested())  # fmt: skip

    assert result.reason == "Completed", result.message
    assert RULE_SINGLE_WORD in result.best_candidate["classify"] and RULE_LOWERCASE in result.best_candidate["classify"]
    assert result.initial_scores is None and result.final_scores is None
    assert sum(llm.calls.values()) == llm.calls["metaprompt"] == 1


def test_few_shot_metaprompt_with_the_simulated_llm_keeps_the_better_prompt(sentiment_metaprompt, llm):
    result = optimize(sentiment_metaprompt(REFLECT_MODEL, few_shot=True), RecordingReporter(), StopRequested())

    assert result.reason == "Completed", result.message
    assert result.initial_scores.scorers == {"ExactMatch": 0.0}
    assert result.final_scores.aggregate > result.initial_scores.aggregate
    assert RULE_SARCASM in result.best_candidate["classify"] and "{{review}}" in result.best_candidate["classify"]
    assert "kept the proposal" in result.message
    assert llm.calls["metaprompt"] == 1 and llm.calls["task"] == 4 + 8 + 4


def test_few_shot_metaprompt_rejects_an_invented_variable_from_the_simulated_llm(sentiment_metaprompt):
    reporter = RecordingReporter()
    result = optimize(sentiment_metaprompt(REFLECT_INVENTS_VARIABLE_MODEL, few_shot=True), reporter, StopRequested())

    [(progress, _)] = reporter.finished_with
    assert result.best_candidate == {"classify": SEED_INSTRUCTION} and progress.rejected_candidates == 1
    assert "invented {{made_up}}" in result.message


def test_options_are_completion_parameters_of_the_reflection_call(sentiment_metaprompt, llm):
    # The simulated LLM honours max_tokens: a short limit cuts its JSON answer, so the option reached the call.
    result = optimize(sentiment_metaprompt(REFLECT_MODEL, few_shot=False, options={"max_tokens": 5}),
                      RecordingReporter(), StopRequested())  # fmt: skip

    assert result.reason == "Completed" and result.best_candidate == {"classify": SEED_INSTRUCTION}
    assert "answer was unusable" in result.message
    assert llm.last_request(kind="metaprompt")["completion_tokens"] <= 5


@pytest.mark.parametrize(
    "options, problem_text",
    [
        (
            {"max_metric_calls": 50},
            "spec.optimizer.options.max_metric_calls: litellm.completion (MetaPrompt passes "
            "options to its reflection calls) has no such parameter; remove it",
        ),
        (
            {"temprature": 0.2},
            "spec.optimizer.options.temprature: litellm.completion (MetaPrompt passes options to its "
            "reflection calls) has no such parameter (did you mean temperature?); remove it",
        ),
        (
            {"api_key": "sk-x", "stream": True},
            "spec.optimizer.options.api_key: the worker sets it; put the key into the "
            "credentials Secret (spec.credentials); spec.optimizer.options.stream: the "
            "worker sets it; the worker reads one whole text answer",
        ),
    ],
    ids=["gepa-option", "misspelled", "worker-owned"],
)
def test_options_metaprompt_cannot_use_are_refused_naming_the_key_before_any_call(options, problem_text):
    reflector = proposing(BETTER)
    problem = dataclasses.replace(
        metaprompt_problem(reflector, FakeEvaluator()),
        settings=OptimizerSpec(type="MetaPrompt", reflection_model="m", options=options),
    )

    result, _, _ = run(problem)

    assert result.reason == "InvalidInput" and result.message == problem_text
    assert reflector.requests == []


def test_only_metaprompt_sends_its_options_to_the_reflection_model():
    task = TaskSpec(model="openai/task")
    options = {"temperature": 0.7, "reasoning_effort": "low"}
    metaprompt = OptimizerSpec(type="MetaPrompt", reflection_model="openai/r", options=options)
    gepa = OptimizerSpec(type="GEPA", reflection_model="openai/r", options={"skip_perfect_score": False})
    assert dict(ModelEndpoint.for_reflection(metaprompt, task).params) == options
    assert dict(ModelEndpoint.for_reflection(gepa, task).params) == {}
