"""The job's HTTP services, against the example services on loopback (real HTTP, contract v1): the program
(spec.task.http) and the Webhook scorer, with their headers, retries, errors, cost and concurrency; and the Judge
scorer (the user's own instructions) against the simulated judge."""

import json

import pytest

from promptopt.api.v1alpha1 import HttpHeader, HttpService, Pricing, ScorerSpec, TaskSpec
from promptopt.example_services import NOT_FOUND, QUESTIONS, JsonService, rag_answer, toy_rag, webhook_scorer
from promptopt.prompt_contract import JUDGE_SYSTEM_MESSAGE
from promptopt.service_contract import (
    VERSION,
    ContractError,
    ProgramAnswer,
    ProgramRequest,
    ScoreAnswer,
    ScoreRequest,
)
from promptopt.simulated_llm import RULE_ONE_LOWERCASE_WORD
from promptopt_worker.evaluation import TaskEvaluator
from promptopt_worker.llm import LLMClient, PermanentLLMError, RetriesExhausted
from promptopt_worker.problem import Example, InvalidInput, PromptTemplate
from promptopt_worker.redaction import redact
from promptopt_worker.scorers import build_scorers

SEED_TEXT = "Answer the customer's question from the product documentation.\n\nQuestion: {{question}}"
BEST_TEXT = SEED_TEXT.replace("\n\nQuestion", "\n" + RULE_ONE_LOWERCASE_WORD + "\n\nQuestion")
PROMPTS = [PromptTemplate(name="answer", role="user", text=SEED_TEXT)]
SEED, BEST = {"answer": SEED_TEXT}, {"answer": BEST_TEXT}
EXAMPLES = [
    Example(index=i, inputs={"question": q}, expectations={"expected_response": a})
    for i, (q, a) in enumerate(QUESTIONS)
]
TOKEN = "Bearer rag-token-3f9c2a71"


def no_sleep(_seconds):
    pass


def http_task(url, **changes):
    return TaskSpec(http=HttpService(url=url), concurrency=4, max_retries=2, timeout_seconds=5, **changes)


EXACT = ScorerSpec(name="ExactMatch")


def evaluator(task, scorers=(EXACT,), client=None):
    client = client or LLMClient(sleep=no_sleep)
    return TaskEvaluator(PROMPTS, task, build_scorers(list(scorers), task, client), client)


def test_the_program_is_posted_contract_v1_and_its_output_is_scored():
    with toy_rag() as rag, evaluator(http_task(rag.url)) as evaluate:
        seed, best = evaluate.evaluate(SEED, EXAMPLES), evaluate.evaluate(BEST, EXAMPLES)
        question = QUESTIONS[0][0]
        [body] = [
            r["body"]
            for r in rag.received
            if r["body"]["inputs"]["question"] == question and r["body"]["prompts"][0]["template"] == SEED_TEXT
        ]

    assert [r.output for r in best] == [a for _, a in QUESTIONS]  # the prompt asks for one lowercase word
    assert all(r.output.startswith("According to the ") for r in seed)
    assert evaluate.summarize(seed).aggregate == 0 and evaluate.summarize(best).aggregate == 1
    assert body == {
        "version": VERSION,
        "prompts": [{"name": "answer", "role": "user", "template": SEED_TEXT}],
        "messages": [{"role": "user", "content": SEED_TEXT.replace("{{question}}", question)}],
        "inputs": {"question": question},
    }


def test_a_prompt_without_the_question_finds_nothing():
    with toy_rag() as rag, evaluator(http_task(rag.url)) as evaluate:
        [result] = evaluate.evaluate({"answer": "Answer from the documentation."}, EXAMPLES[:1])
    assert result.output == NOT_FOUND and result.aggregate == 0


def test_headers_come_from_the_credentials_and_are_masked(monkeypatch):
    monkeypatch.setenv("RAG_AUTHORIZATION", TOKEN)
    headers = [
        HttpHeader(name="Authorization", credentials_key="RAG_AUTHORIZATION"),
        HttpHeader(name="X-Team", value="ml"),
    ]
    with toy_rag(required_headers={"Authorization": TOKEN, "X-Team": "ml"}) as rag:
        task = TaskSpec(http=HttpService(url=rag.url, headers=headers))
        with evaluator(task) as evaluate:
            evaluate.evaluate(BEST, EXAMPLES[:2])
        assert rag.counts["answered"] == 2 and rag.counts["unauthorized"] == 0
    assert redact(f"sent {TOKEN}") == "sent ***"  # registered as a secret: never in status, Events or logs


def test_a_credentials_key_the_worker_lacks_is_invalid_input_before_any_call(monkeypatch):
    monkeypatch.delenv("RAG_AUTHORIZATION", raising=False)
    with toy_rag() as rag:
        task = TaskSpec(
            http=HttpService(
                url=rag.url, headers=[HttpHeader(name="Authorization", credentials_key="RAG_AUTHORIZATION")]
            )
        )
        with pytest.raises(
            InvalidInput,
            match=r"spec\.task\.http\.headers\[0\]\.credentialsKey: the credentials "
            r"Secret has no key 'RAG_AUTHORIZATION'",
        ):
            evaluator(task)
        assert rag.received == []


def test_transient_errors_are_retried_and_counted():
    client = LLMClient(sleep=no_sleep)
    with toy_rag() as rag, evaluator(http_task(rag.url), client=client) as evaluate:
        rag.inject(503)
        rag.inject(429)
        [result] = evaluate.evaluate(BEST, EXAMPLES[:1])
    assert result.output == QUESTIONS[0][1]
    assert client.usage.snapshot().retries == 2 and rag.counts["injected"] == 2


def test_errors_that_outlast_the_retries_name_the_service():
    with toy_rag() as rag, evaluator(http_task(rag.url)) as evaluate:
        rag.inject(502, times=3)
        with pytest.raises(
            RetriesExhausted,
            match=r"task service 'http://127\.0\.0\.1:\d+/answer': still failing "
            r"after 2 retries; HTTP 502",
        ):
            evaluate.evaluate(BEST, EXAMPLES[:1])


def test_refused_credentials_fail_for_good_saying_what_to_fix(monkeypatch):
    monkeypatch.setenv("RAG_AUTHORIZATION", "Bearer wrong-token-0000")
    with toy_rag(required_headers={"Authorization": TOKEN}) as rag:
        task = TaskSpec(
            http=HttpService(
                url=rag.url, headers=[HttpHeader(name="Authorization", credentials_key="RAG_AUTHORIZATION")]
            ),
            max_retries=3,
        )
        with evaluator(task) as evaluate, pytest.raises(PermanentLLMError) as failed:
            evaluate.evaluate(BEST, EXAMPLES[:1])
        assert rag.counts["unauthorized"] == 1  # a 401 is not retried
    assert "task service" in str(failed.value) and "HTTP 401" in str(failed.value)
    assert "credentialsKey" in str(failed.value) and "wrong-token" not in str(failed.value)


@pytest.mark.parametrize(
    "answer,broken",
    [
        ({"output": "x"}, "\"version\" must be 'v1'"),
        ({"version": "v1", "output": 3}, '"output" must be a string, not int'),
        ({"version": "v1", "output": "x", "usage": {"promptTokens": -1}}, "usage.promptTokens"),
    ],
)
def test_an_answer_that_breaks_the_contract_fails_naming_it(answer, broken):
    with JsonService("/answer", lambda body: answer) as service, evaluator(http_task(service.url)) as evaluate:
        with pytest.raises(PermanentLLMError, match="its answer breaks contract v1") as failed:
            evaluate.evaluate(BEST, EXAMPLES[:1])
        assert len(service.received) == 1  # not retried
    assert broken in str(failed.value)


def test_the_reported_tokens_are_priced_by_the_tasks_pricing():
    client = LLMClient(sleep=no_sleep)
    pricing = Pricing(input_per_million_tokens=2_000, output_per_million_tokens=10_000)
    with toy_rag() as rag, evaluator(http_task(rag.url, pricing=pricing), client=client) as evaluate:
        evaluate.evaluate(BEST, EXAMPLES)
    usage = client.usage.snapshot()
    prompts = [BEST_TEXT.replace("{{question}}", q) for q, _ in QUESTIONS]
    assert usage.prompt_tokens == sum(len(p) // 4 + 1 for p in prompts)  # what the toy RAG reports
    assert usage.calls == {"task": len(QUESTIONS)}
    assert usage.usd == pytest.approx((usage.prompt_tokens * 2_000 + usage.completion_tokens * 10_000) / 1e6)


def test_the_tasks_concurrency_bounds_the_calls_in_flight():
    examples = [
        Example(index=i, inputs={"question": QUESTIONS[i % 8][0]}, expectations={"expected_response": "x"})
        for i in range(12)
    ]
    with toy_rag(latency_s=0.1) as rag, evaluator(http_task(rag.url)) as evaluate:
        evaluate.evaluate(BEST, examples)
        assert rag.most_in_flight == 4  # spec.task.concurrency


def test_a_webhook_scores_each_output_and_its_rationale_is_the_feedback():
    webhook = {"name": "Webhook", "label": "answer"}
    with toy_rag() as rag, webhook_scorer() as scorer:
        spec = ScorerSpec(**webhook, http=HttpService(url=scorer.url))
        with evaluator(http_task(rag.url), [spec]) as evaluate:
            seed, best = evaluate.evaluate(SEED, EXAMPLES[:2]), evaluate.evaluate(BEST, EXAMPLES[:2])
        [request] = [r["body"] for r in scorer.received if r["body"]["outputs"] == seed[0].output]
    assert [r.scores for r in seed] == [{"answer": 0.5}] * 2 and [r.scores for r in best] == [{"answer": 1.0}] * 2
    assert "contains the expected answer 'fourteen' but is not exactly it" in seed[0].feedback()
    assert request == {
        "version": VERSION,
        "scorer": "answer",
        "inputs": EXAMPLES[0].inputs,
        "outputs": seed[0].output,
        "expectations": {"expected_response": "fourteen"},
    }


@pytest.mark.parametrize("score,expected", [("yes", 1.0), ("NO", 0.0), (True, 1.0), (0.25, 0.25)])
def test_a_webhook_may_answer_yes_no_a_boolean_or_a_number(score, expected):
    answer = {"version": "v1", "score": score, "rationale": "because"}
    with toy_rag() as rag, JsonService("/score", lambda body: answer) as scorer:
        spec = ScorerSpec(name="Webhook", http=HttpService(url=scorer.url))
        with evaluator(http_task(rag.url), [spec]) as evaluate:
            [result] = evaluate.evaluate(BEST, EXAMPLES[:1])
    assert result.scores == {"Webhook": expected} and result.rationales == {"Webhook": "because"}


def test_a_webhook_score_outside_0_1_fails_only_its_example():
    with toy_rag() as rag, JsonService("/score", lambda body: {"version": "v1", "score": 7}) as scorer:
        specs = [ScorerSpec(name="Webhook", http=HttpService(url=scorer.url)), ScorerSpec(name="ExactMatch")]
        with evaluator(http_task(rag.url), specs) as evaluate:
            [result] = evaluate.evaluate(BEST, EXAMPLES[:1])
    assert result.failure == "scorer 'Webhook' gave the score 7, outside [0, 1]"
    assert result.scores == {"ExactMatch": 1.0} and result.aggregate == 0


JUDGE_INSTRUCTIONS = "Here is the answer: {{ outputs }}\nIs it a single word, in lowercase? Answer yes only if so."


def test_a_judge_asks_the_users_instructions_with_the_values_in_place(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    judge = ScorerSpec(
        name="Judge",
        label="concise",
        model="openai/sim-judge",
        api_base=llm.base_url,
        params={"instructions": JUDGE_INSTRUCTIONS},
    )
    with toy_rag() as rag, evaluator(http_task(rag.url), [judge]) as evaluate:
        [seed] = evaluate.evaluate(SEED, EXAMPLES[:1])
        [best] = evaluate.evaluate(BEST, EXAMPLES[:1])
    assert seed.scores == {"concise": 0.0} and best.scores == {"concise": 1.0}
    assert "does not follow the guideline" in seed.rationales["concise"] and "uppercase" in seed.rationales["concise"]
    request = llm.last_request(kind="judge")["messages"]
    assert request[0] == {"role": "system", "content": JUDGE_SYSTEM_MESSAGE}
    assert (
        request[1]["content"] == f"Here is the answer: \n<outputs>\n{best.output}\n</outputs>\n\nIs it a single "
        "word, in lowercase? Answer yes only if so."
    )


def test_a_judge_that_speaks_of_the_expected_answer_checks_it(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    instructions = "Does {{ outputs }} give the expected answer of {{ expectations }} to {{ inputs }}?"
    judge = ScorerSpec(
        name="Judge", model="openai/sim-judge", api_base=llm.base_url, params={"instructions": instructions}
    )
    wrong = [Example(index=99, inputs=EXAMPLES[0].inputs, expectations={"expected_response": "twelve"})]
    with toy_rag() as rag, evaluator(http_task(rag.url), [judge]) as evaluate:
        [right] = evaluate.evaluate(SEED, EXAMPLES[:1])
        [wrong] = evaluate.evaluate(SEED, wrong)
    assert right.scores == {"Judge": 1.0} and wrong.scores == {"Judge": 0.0}
    assert "does not contain the expected response 'twelve'" in wrong.rationales["Judge"]


# --- the contract itself ------------------------------------------------------------------------------------------


def test_requests_and_answers_round_trip():
    request = ProgramRequest(
        prompts=[{"name": "p", "role": "user", "template": "t"}],
        messages=[{"role": "user", "content": "c"}],
        inputs={"q": 1},
    )
    assert ProgramRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    answer = ProgramAnswer(output="out")
    assert ProgramAnswer.from_json(answer.to_json()) == answer
    score = ScoreRequest(scorer="s", inputs={"q": 1}, outputs="out", expectations={"expected_response": "x"})
    assert ScoreRequest.from_json(score.to_json()) == score
    assert ScoreAnswer.from_json({"version": "v1", "score": "yes"}) == ScoreAnswer(score="yes", rationale="")


@pytest.mark.parametrize(
    "body,message",
    [
        ([], "the body must be a JSON object, not list"),
        ({"version": "v2", "prompts": []}, "\"version\" must be 'v1'"),
        ({"version": "v1", "prompts": [{"name": "p"}], "messages": [], "inputs": {}}, '"prompts" must be a list'),
        ({"version": "v1", "prompts": [], "messages": [], "inputs": []}, '"inputs" must be an object'),
    ],
)
def test_the_example_services_refuse_requests_that_break_the_contract(body, message):
    with pytest.raises(ContractError, match=message):
        ProgramRequest.from_json(body)
    with toy_rag() as rag:
        import httpx

        refused = httpx.post(rag.url, json=body)
    assert refused.status_code == 400 and message in refused.json()["error"]


def test_the_toy_rags_answer_follows_the_prompt():
    question, answer = QUESTIONS[2]
    assert (
        rag_answer(SEED_TEXT.replace("{{question}}", question)) == "According to the Colours page, the answer is "
        "Graphite."
    )
    assert rag_answer(BEST_TEXT.replace("{{question}}", question)) == answer
    assert rag_answer("Answer with a single word.\n" + question) == "Graphite"


def test_a_service_slower_than_the_timeout_is_retried_then_named():
    with toy_rag(latency_s=1) as rag:
        task = TaskSpec(http=HttpService(url=rag.url), timeout_seconds=0.2, max_retries=1)
        with evaluator(task) as evaluate, pytest.raises(RetriesExhausted, match=r"timed out after 0\.2 s"):
            evaluate.evaluate(BEST, EXAMPLES[:1])
        assert len(rag.received) == 2  # the call and its retry
