"""Built-in scorers: the one conversion rule, metrics with concrete rationales, LLM judges, up-front checks."""

import math
from typing import get_args

import pytest

from promptopt.api.v1alpha1 import LLM_JUDGE_SCORERS, ScorerName, ScorerSpec, TaskSpec
from promptopt.prompt_contract import JUDGE_ANSWER_AGAIN, RELEVANCE_QUESTION, SAFETY_QUESTION
from promptopt_worker.llm import LLMClient
from promptopt_worker.problem import Example
from promptopt_worker.scorers import (
    Contains,
    Correctness,
    ExactMatch,
    ExpectationsGuidelines,
    Guidelines,
    JUDGES,
    METRICS,
    Regex,
    RelevanceToQuery,
    Safety,
    ScorerError,
    build_scorers,
    check_records,
    parse_verdict,
    to_score,
)
from promptopt_worker.problem import InvalidInput


def record(expected=None, index=0, **expectations):
    if expected is not None:
        expectations["expected_response"] = expected
    return Example(index=index, inputs={"review": "I love it"}, expectations=expectations)


def spec(name, **fields):
    return ScorerSpec(name=name, **fields)


# --- the conversion rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "score"),
    [("yes", 1.0), ("no", 0.0), ("YES", 1.0), (" No ", 0.0), (True, 1.0), (False, 0.0), (1, 1.0), (0, 0.0),
     (0.25, 0.25), (1.0, 1.0)],
)  # fmt: skip
def test_valid_verdicts_become_scores(value, score):
    assert to_score(value, "Judge") == score
    assert isinstance(to_score(value, "Judge"), float)


@pytest.mark.parametrize("value", [1.5, -0.1, 2, math.nan, math.inf])
def test_numbers_outside_zero_to_one_are_refused_naming_the_scorer(value):
    with pytest.raises(ScorerError, match=f"scorer 'mine' gave the score {value!r}, outside \\[0, 1\\]"):
        to_score(value, "mine")


@pytest.mark.parametrize("value", ["maybe", "0.5", "true", "", None, [1], {"result": "yes"}])
def test_anything_else_is_refused_naming_the_scorer_and_the_value(value):
    with pytest.raises(ScorerError) as caught:
        to_score(value, "Correctness")
    assert "scorer 'Correctness' gave " + repr(value) in str(caught.value)
    assert "'yes' or 'no', a boolean, or a number in [0, 1]" in str(caught.value)


# --- metrics ---------------------------------------------------------------------------------


def test_exact_match_ignores_surrounding_whitespace_and_case_by_default():
    scorer = ExactMatch(spec("ExactMatch"))
    assert scorer.score(record("positive"), "  Positive\n") == (1.0, "output equals expected 'positive'")
    assert scorer.score(record("positive"), "The sentiment is Positive.") == (
        0.0, "output 'The sentiment is Positive.' does not equal expected 'positive'")  # fmt: skip


def test_exact_match_case_sensitive_says_when_only_the_case_differs():
    scorer = ExactMatch(spec("ExactMatch", params={"caseSensitive": True}))
    assert scorer.score(record("positive"), "positive") == (1.0, "output equals expected 'positive'")
    assert scorer.score(record("positive"), "Positive") == (
        0.0, "output 'Positive' does not equal expected 'positive' (only the letter case differs)")  # fmt: skip


def test_exact_match_compares_non_string_expectations_as_json_text():
    assert ExactMatch(spec("ExactMatch")).score(record(42), "42")[0] == 1.0


def test_contains_looks_for_the_expected_response_in_the_output():
    scorer = Contains(spec("Contains"))
    assert scorer.score(record("positive"), "The sentiment is Positive.") == (
        1.0,
        "output contains expected 'positive'",
    )
    assert scorer.score(record("negative"), "The sentiment is Positive.") == (
        0.0, "output 'The sentiment is Positive.' does not contain expected 'negative'")  # fmt: skip
    assert Contains(spec("Contains", params={"caseSensitive": True})).score(record("positive"), "Positive")[0] == 0.0


def test_regex_searches_the_output():
    scorer = Regex(spec("Regex", params={"pattern": r"^(positive|negative)$"}))
    assert scorer.score(record(), "negative") == (
        1.0,
        "output matches the pattern '^(positive|negative)$' at 'negative'",
    )
    assert scorer.score(record(), "It is negative") == (
        0.0, "output 'It is negative' has no match for the pattern '^(positive|negative)$'")  # fmt: skip


def test_long_outputs_are_shortened_in_rationales():
    _, rationale = ExactMatch(spec("ExactMatch")).score(record("positive"), "x" * 1000)
    assert "x" * 200 + "..." in rationale and "x" * 201 not in rationale


# --- up-front checks -------------------------------------------------------------------------


def test_records_lacking_what_a_scorer_needs_are_found_up_front_with_the_scorer_named():
    task = TaskSpec(model="openai/sim-task")
    scorers = build_scorers(
        [spec("ExactMatch"), spec("Contains", label="has_label"), spec("Regex", params={"pattern": "x"}),
         spec("Correctness", model="openai/sim-judge"), spec("Guidelines", model="openai/sim-judge",
                                                             params={"guidelines": ["be brief"]})],
        task, LLMClient(),
    )  # fmt: skip
    examples = [record("positive", 0), record(None, 1), record("negative", 2, guidelines=3), record(None, 3)]
    with pytest.raises(InvalidInput) as caught:
        check_records(scorers, examples)
    message = str(caught.value)
    assert "scorer 'ExactMatch' (ExactMatch) cannot score records 1, 3: no expectations.expected_response" in message
    assert "scorer 'has_label' (Contains) cannot score records 1, 3: no expectations.expected_response" in message
    assert "scorer 'Correctness' (Correctness) cannot score records 1, 3" in message
    assert "scorer 'Guidelines' (Guidelines) cannot score record 2: expectations.guidelines that is neither" in message
    assert "Regex" not in message


def test_build_scorers_keeps_the_spec_order_and_weights():
    scorers = build_scorers([spec("Regex", params={"pattern": "a"}, weight=2), spec("ExactMatch")],
                            TaskSpec(model="m"), LLMClient())  # fmt: skip
    assert [(type(s), s.key, s.weight) for s in scorers] == [(Regex, "Regex", 2.0), (ExactMatch, "ExactMatch", 1.0)]


# --- judge answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ['{"result": "yes", "rationale": "fine"}', '```json\n{"result": "yes", "rationale": "fine"}\n```',
     'Here is my verdict: {"result": "yes", "rationale": "fine"} Hope it helps {',
     '{"x": {"result": "yes", "rationale": "fine"}}'],
)  # fmt: skip
def test_a_judge_verdict_is_found_bare_fenced_or_in_text(answer):
    assert parse_verdict(answer, "Correctness") == {"result": "yes", "rationale": "fine"}


@pytest.mark.parametrize("answer", ["Yes, it is correct.", '{"verdict": "yes"}', "{broken", ""])
def test_an_unparseable_judge_answer_names_the_scorer(answer):
    with pytest.raises(ScorerError, match="the judge of scorer 'correct' did not answer with a JSON verdict"):
        parse_verdict(answer, "correct")


class ScriptedClient:
    """Stands in for LLMClient: gives the answers in turn and keeps every conversation it was sent."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.conversations = []

    def complete(self, endpoint, messages):
        self.conversations.append(list(messages))
        return self.answers.pop(0)


def scripted_judge(*answers, judge_retries=2):
    client = ScriptedClient(*answers)
    judge = Correctness(
        spec("Correctness", model="openai/judge"), TaskSpec(model="openai/task"), client, judge_retries=judge_retries
    )
    return judge, client


def test_a_judge_whose_answer_is_no_verdict_is_asked_again_with_its_answer_and_the_format():
    judge, client = scripted_judge(
        "I think it is fine.", '{"result": "maybe"}', '{"result": "no", "rationale": "wrong"}'
    )

    assert judge.score(record("positive"), "negative") == (0.0, "wrong")
    first, _, third = client.conversations
    assert [m["role"] for m in first] == ["system", "user"]
    assert third[:2] == first and [m["role"] for m in third[2:]] == ["assistant", "user", "assistant", "user"]
    assert third[2]["content"] == "I think it is fine." and third[4]["content"] == '{"result": "maybe"}'
    assert third[3]["content"] == third[5]["content"] == JUDGE_ANSWER_AGAIN


def test_a_judge_gives_up_after_its_retries_naming_the_scorer_and_the_answer():
    judge, client = scripted_judge("no verdict here", "still none", "nothing")
    with pytest.raises(
        ScorerError,
        match=r"scorer 'Correctness' did not answer with a JSON verdict .*'nothing' "
        r"\(asked 3 times\)",
    ):
        judge.score(record("positive"), "positive")
    assert len(client.conversations) == 3 and client.answers == []


def test_without_retries_a_judge_is_asked_once():
    judge, client = scripted_judge('{"result": 2}', judge_retries=0)
    with pytest.raises(ScorerError, match=r"outside \[0, 1\] \(asked once\)"):
        judge.score(record("positive"), "positive")
    assert len(client.conversations) == 1


# --- judges through the simulated LLM --------------------------------------------------------


@pytest.fixture
def judge_task(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    return TaskSpec(model="openai/sim-task", api_base=llm.base_url, max_retries=0)


def test_correctness_asks_the_judge_with_the_tagged_sections(llm, judge_task):
    client = LLMClient()
    judge = Correctness(spec("Correctness", model="openai/sim-judge"), judge_task, client)
    score, rationale = judge.score(record("positive"), "The sentiment of this text is Positive.")
    assert score == 1.0 and "expected response 'positive'" in rationale
    score, rationale = judge.score(record("negative"), "The sentiment of this text is Positive.")
    assert score == 0.0 and "does not contain the expected response 'negative'" in rationale

    request = llm.last_request(kind="judge")["messages"]
    assert request[0]["role"] == "system" and '"result"' in request[0]["content"]
    assert '<request>\n{\n  "review": "I love it"\n}\n</request>' in request[1]["content"]
    assert "<response>\nThe sentiment of this text is Positive.\n</response>" in request[1]["content"]
    assert "<expected_response>\nnegative\n</expected_response>" in request[1]["content"]
    assert client.usage.snapshot().calls == {"judge": 2}


def test_guidelines_joins_the_scorers_and_the_records_guidelines(llm, judge_task):
    judge = Guidelines(spec("Guidelines", model="openai/sim-judge", params={"guidelines": ["Answer in lowercase."]}),
                       judge_task, LLMClient())  # fmt: skip
    assert judge.score(record(guidelines="Answer with a single word."), "positive")[0] == 1.0
    assert "<guidelines>\n- Answer in lowercase.\n- Answer with a single word.\n</guidelines>" in (
        llm.last_request(kind="judge")["messages"][1]["content"])  # fmt: skip
    score, rationale = judge.score(record(guidelines=["Answer with a single word."]), "Positive")
    assert score == 0.0 and "lowercase" in rationale
    score, rationale = judge.score(record(), "the label is positive")
    assert score == 1.0


def test_a_judge_answer_outside_the_contract_is_a_scorer_error(llm, judge_task):
    # sim-task is no judge: it answers prose, which the judge scorer must refuse, naming itself.
    judge = Correctness(spec("Correctness", model="openai/sim-task", label="correct"), judge_task, LLMClient())
    with pytest.raises(ScorerError, match="the judge of scorer 'correct' did not answer with a JSON verdict"):
        judge.score(record("positive"), "great")


@pytest.mark.parametrize(
    "output,score,why",
    [
        ("The sentiment of this text is Positive.", 1.0, "addresses the request"),
        ("echo: Classify this", 0.0, "repeats the request instead of answering it"),
        ("I could not find that in the documentation.", 0.0, "declines to answer"),
        ("", 0.0, "The response is empty."),
    ],
)
def test_relevance_to_query_asks_whether_the_output_answers_the_inputs(llm, judge_task, output, score, why):
    judge = RelevanceToQuery(spec("RelevanceToQuery", model="openai/sim-judge"), judge_task, LLMClient())
    assert judge.score(record(), output)[0] == score and why in judge.score(record(), output)[1]
    assert llm.last_request(kind="judge")["messages"][1]["content"].startswith(RELEVANCE_QUESTION + "\n\n<request>")


def test_safety_asks_whether_the_output_is_harmless(llm, judge_task):
    judge = Safety(spec("Safety", model="openai/sim-judge"), judge_task, LLMClient())
    assert judge.score(record(), "positive") == (1.0, "Yes: the response holds nothing unsafe.")
    score, rationale = judge.score(record(), "Positive, you idiot.")
    assert score == 0.0 and "offensive language: 'idiot'" in rationale
    assert llm.last_request(kind="judge")["messages"][1]["content"].startswith(SAFETY_QUESTION)


def test_expectations_guidelines_takes_each_records_own_and_needs_them(llm, judge_task):
    judge = ExpectationsGuidelines(spec("ExpectationsGuidelines", model="openai/sim-judge"), judge_task, LLMClient())
    assert judge.score(record(guidelines="Answer in lowercase."), "positive")[0] == 1.0
    score, rationale = judge.score(record(guidelines=["Answer in lowercase."]), "Positive")
    assert score == 0.0 and "lowercase" in rationale
    with pytest.raises(
        InvalidInput,
        match=r"scorer 'ExpectationsGuidelines' \(ExpectationsGuidelines\) cannot score "
        r"record 1: no expectations.guidelines",
    ):
        check_records([judge], [record(guidelines="Answer in lowercase."), record(index=1)])


def test_every_scorer_name_the_api_admits_is_one_the_worker_builds():
    """A name added to the API's ScorerName without a scorer would pass admission and fail at run time. The worker's
    registry is build_scorers': its metrics, its judges and Webhook. Registered is the one name outside it, by design:
    sources.resolve_scorers reads such a scorer from MLflow as the Judge it is before any scorer is built
    (test_mlflow.py), so build_scorers never sees the name."""
    registry = {*METRICS, *JUDGES, "Webhook"}
    assert "Registered" not in registry
    assert set(get_args(ScorerName)) == registry | {"Registered"}
    assert set(JUDGES) == set(LLM_JUDGE_SCORERS)  # the ones the CRD requires a model for
