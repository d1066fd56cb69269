"""The LLM client: endpoints, both ways of calling (OpenAI-compatible models directly, the other providers through
litellm), retries, permanent errors without secrets, usage, cost and budget."""

import email.utils
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta

import httpx
import litellm
import pytest

from promptopt.api.v1alpha1 import OptimizerSpec, Pricing, ScorerSpec, TaskSpec
from promptopt.prompt_contract import CORRECTNESS_QUESTION, JudgeRequest, judge_messages
from promptopt.simulated_llm import SimulatedLLM, estimate_tokens
from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV
from promptopt_worker import openai_compatible, redaction
from promptopt_worker.llm import (
    INITIAL_RETRY_DELAY_S,
    RETRY_JITTER_S,
    BudgetExceeded,
    CallAbandoned,
    LLMClient,
    ModelEndpoint,
    PermanentLLMError,
    RetriesExhausted,
    Usage,
    UsageMeter,
)
from promptopt_worker.llm_call import CallFailed, retry_after_s
from promptopt_worker.problem import StopRequested
from promptopt_worker.redaction import add_secrets
from promptopt_worker.reporting import status_fields

REAL_LOOKING_KEY = "sk-proj-Q3r9TzWb7XkLm2Np8Vc4Hs6Jd1Fg5Ka0"
HELLO = [{"role": "user", "content": "I love this wonderful film."}]


class RecordingSleep:
    """Stands in for time.sleep: records the backoff delays instead of waiting."""

    def __init__(self):
        self.delays = []

    def __call__(self, seconds):
        self.delays.append(seconds)


@pytest.fixture
def sim(llm, monkeypatch):
    """The simulated LLM, with its key where litellm looks for it (the environment, as in the worker)."""
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    return llm


def task_endpoint(sim, **changes):
    fields = {"role": "task", "model": "openai/sim-task", "description": "task model", "api_base": sim.base_url,
              "max_retries": 2, **changes}  # fmt: skip
    return ModelEndpoint(**fields)


# --- endpoints -------------------------------------------------------------------------------


def test_task_endpoint_takes_the_typed_settings_over_free_parameters():
    task = TaskSpec(model="openai/gpt-4.1-mini", api_base="http://vllm:8000/v1", temperature=0.2, max_tokens=50,
                    parameters={"temperature": 1.0, "seed": 7}, timeout_seconds=12, max_retries=3,
                    pricing=Pricing(input_per_million_tokens=1, output_per_million_tokens=2))  # fmt: skip
    endpoint = ModelEndpoint.for_task(task)
    assert (endpoint.role, endpoint.model, endpoint.api_base) == ("task", "openai/gpt-4.1-mini", "http://vllm:8000/v1")
    assert dict(endpoint.params) == {"temperature": 0.2, "max_tokens": 50, "seed": 7}
    assert (endpoint.timeout_s, endpoint.max_retries, endpoint.pricing) == (12, 3, task.pricing)
    assert endpoint.description == "task model"


def test_reflection_and_judge_endpoints_default_to_the_task_api_base():
    task = TaskSpec(model="openai/sim-task", api_base="http://local/v1")
    optimizer = OptimizerSpec(type="GEPA", reflection_model="openai/sim-reflect")
    judge = ScorerSpec(name="Correctness", model="openai/sim-judge", label="correct")
    assert ModelEndpoint.for_reflection(optimizer, task).api_base == "http://local/v1"
    assert ModelEndpoint.for_judge(judge, task).api_base == "http://local/v1"
    assert ModelEndpoint.for_judge(judge, task).role == "judge"
    assert "'correct'" in ModelEndpoint.for_judge(judge, task).description

    pricing = Pricing(input_per_million_tokens=2, output_per_million_tokens=8)
    optimizer = OptimizerSpec(type="GEPA", reflection_model="openai/gpt-4.1", reflection_api_base="https://api/v1",
                              reflection_pricing=pricing)  # fmt: skip
    reflection = ModelEndpoint.for_reflection(optimizer, task)
    assert (reflection.role, reflection.api_base, reflection.pricing) == (
        "reflection", "https://api/v1", optimizer.reflection_pricing)  # fmt: skip


# --- calls, usage and cost -------------------------------------------------------------------


def test_complete_returns_the_answer_and_counts_tokens_and_calls_per_role(sim):
    client = LLMClient()
    assert client.complete(task_endpoint(sim), HELLO) == "The sentiment of this text is Positive."
    client.complete(
        task_endpoint(sim, role="judge", model="openai/sim-judge"),
        judge_messages(CORRECTNESS_QUESTION, JudgeRequest({}, "positive")),
    )
    usage = client.usage.snapshot()
    assert usage.calls == {"task": 1, "judge": 1}
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        sim.tokens["prompt_tokens"],
        sim.tokens["completion_tokens"],
    )
    assert status_fields(usage.as_cost()) == {
        "promptTokens": usage.prompt_tokens, "completionTokens": usage.completion_tokens, "usd": 0.0, "llmCalls": 2,
        "retries": 0}  # fmt: skip


def test_a_local_endpoint_without_a_key_in_the_environment_gets_a_placeholder_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with SimulatedLLM() as keyless:  # like a local vLLM server: accepts any key, but litellm insists on one
        assert LLMClient().complete(task_endpoint(keyless), HELLO)
        assert keyless.calls["task"] == 1


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/gpt-4.1", "openai/o3-mini"])
def test_openai_models_are_priced_from_litellms_list_as_litellm_prices_them(model):
    prompt_cost, completion_cost = litellm.cost_per_token(model=model, prompt_tokens=1200, completion_tokens=345)
    assert openai_compatible.list_price(model, 1200, 345) == pytest.approx(prompt_cost + completion_cost)
    assert prompt_cost + completion_cost > 0


def test_cached_prompt_tokens_cost_the_lists_cache_read_price():
    entry = litellm.model_cost["gpt-4o-mini"]
    cached = openai_compatible.list_price("openai/gpt-4o-mini", 1000, 0, cached_tokens=400)
    assert cached == pytest.approx(600 * entry["input_cost_per_token"] + 400 * entry["cache_read_input_token_cost"])
    assert cached < openai_compatible.list_price("openai/gpt-4o-mini", 1000, 0)


def test_models_the_list_does_not_price_have_no_list_price():
    assert openai_compatible.list_price("openai/sim-task", 10, 10) is None
    assert openai_compatible.list_price("openai/claude-haiku-4-5", 10, 10) is None  # not OpenAI's


def test_other_providers_are_called_and_priced_through_litellm(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-unused-by-mock-responses")
    model = "anthropic/claude-haiku-4-5"
    endpoint = ModelEndpoint(role="task", model=model, description="task model", params={"mock_response": "positive"})
    client = LLMClient()
    assert client.complete(endpoint, HELLO) == "positive"
    expected = litellm.completion(model=model, messages=HELLO, mock_response="positive")
    assert client.usage.snapshot().usd == pytest.approx(litellm.completion_cost(completion_response=expected))
    assert client.usage.snapshot().usd > 0


def test_custom_pricing_is_per_million_tokens(sim):
    pricing = Pricing(input_per_million_tokens=1_000_000, output_per_million_tokens=2_000_000)
    endpoint = task_endpoint(sim, pricing=pricing)
    client = LLMClient()
    client.complete(endpoint, HELLO)
    tokens = sim.tokens
    assert client.usage.snapshot().usd == pytest.approx(tokens["prompt_tokens"] * 1 + tokens["completion_tokens"] * 2)


def test_an_unpriced_model_costs_zero_with_one_warning(sim, caplog):
    client = LLMClient()
    with caplog.at_level(logging.WARNING, logger="promptopt_worker.llm"):
        client.complete(task_endpoint(sim), HELLO)
        client.complete(task_endpoint(sim), HELLO)
    assert client.usage.snapshot().usd == 0
    assert len([r for r in caplog.records if "does not know the price" in r.getMessage()]) == 1


def test_usage_meter_continues_from_an_earlier_run():
    meter = UsageMeter(Usage(prompt_tokens=10, completion_tokens=5, usd=0.5, calls={"task": 3}, retries=4))
    meter.add_retry()
    total = meter.add("reflection", prompt_tokens=1, completion_tokens=2, usd=0.25)
    assert total == Usage(
        prompt_tokens=11, completion_tokens=7, usd=0.75, calls={"task": 3, "reflection": 1}, retries=5
    )


# --- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried_with_backoff_and_recover(sim, status):
    sleep = RecordingSleep()
    sim.inject(status, times=2)
    client = LLMClient(sleep=sleep)
    assert client.complete(task_endpoint(sim), HELLO).startswith("The sentiment")
    assert sim.request_count == 3 and sim.errors == {status: 2}
    assert client.usage.snapshot().retries == 2 and client.usage.snapshot().as_cost().retries == 2
    # Exponential backoff as litellm's Router computes it: 0.5 s doubling per retry, plus up to 0.75 s of jitter.
    assert len(sleep.delays) == 2
    for retry, delay in enumerate(sleep.delays):
        assert INITIAL_RETRY_DELAY_S * 2**retry <= delay <= INITIAL_RETRY_DELAY_S * 2**retry + RETRY_JITTER_S


def test_backoff_honours_retry_after(sim):
    sleep = RecordingSleep()
    sim.inject(429, times=1, retry_after=3)
    LLMClient(sleep=sleep).complete(task_endpoint(sim), HELLO)
    assert len(sleep.delays) == 1 and 3 <= sleep.delays[0] <= 3 + RETRY_JITTER_S


def test_a_timeout_is_retried(sim):
    sim.inject_timeout(times=1, seconds=2)
    client = LLMClient(sleep=RecordingSleep())
    assert client.complete(task_endpoint(sim, timeout_s=0.3), HELLO)
    assert sim.request_count == 2 and client.usage.snapshot().retries == 1


def test_retries_exhausted_is_a_permanent_error_naming_the_model(sim):
    sim.inject(503, times=10)
    with pytest.raises(RetriesExhausted, match=r"task model 'openai/sim-task'.*after 2 retries") as caught:
        LLMClient(sleep=RecordingSleep()).complete(task_endpoint(sim), HELLO)
    assert isinstance(caught.value, PermanentLLMError)
    assert sim.request_count == 3


# --- permanent errors ------------------------------------------------------------------------


def test_401_fails_fast_and_never_shows_the_key(sim, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", REAL_LOOKING_KEY)
    sleep = RecordingSleep()
    with pytest.raises(PermanentLLMError) as caught:
        LLMClient(sleep=sleep).complete(task_endpoint(sim), HELLO)
    message = str(caught.value)
    assert "task model 'openai/sim-task'" in message and "credentials Secret" in message
    assert "HTTP 401: Incorrect API key provided" in message
    assert sim.request_count == 1 and sleep.delays == []
    printed = "".join(traceback.format_exception(caught.value))
    assert REAL_LOOKING_KEY not in message and REAL_LOOKING_KEY not in printed


def test_a_provider_message_echoing_the_key_is_redacted(monkeypatch):
    """Some providers quote the key they rejected; the credentials Secret may name it harmlessly."""
    monkeypatch.setenv("OPENAI_API_KEY", REAL_LOOKING_KEY)
    monkeypatch.setattr(redaction, "_extra_secrets", set())
    add_secrets(["tenant-credential-9f8e7d"])
    monkeypatch.setenv("ANTHROPIC_API_KEY", REAL_LOOKING_KEY)
    echo = litellm.AuthenticationError(
        message=f"Incorrect API key provided: {REAL_LOOKING_KEY} (tenant tenant-credential-9f8e7d)",
        llm_provider="anthropic", model="claude-haiku-4-5",
    )  # fmt: skip
    endpoint = ModelEndpoint(role="judge", model="anthropic/claude-haiku-4-5", description="judge model",
                             params={"mock_response": echo})  # fmt: skip
    with pytest.raises(PermanentLLMError) as caught:
        LLMClient().complete(endpoint, HELLO)
    assert REAL_LOOKING_KEY not in str(caught.value) and "tenant-credential-9f8e7d" not in str(caught.value)
    assert "Incorrect API key provided: ***" in str(caught.value)


def test_a_long_provider_error_is_cut_at_a_word_boundary_after_the_hint(monkeypatch):
    """litellm's BadRequestError can echo the whole request: several KB that must not bury what to do."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", REAL_LOOKING_KEY)
    review = "I bought the Aurora X2 headphones last spring and have worn them every day since. " * 60
    asked = [{"role": "user", "content": f"Classify the sentiment of this review.\n\n{review}"}]
    request = json.dumps(
        {"model": "claude-haiku-4-5", "temperature": 1.5, "api_key": REAL_LOOKING_KEY, "messages": asked}
    )
    error = litellm.BadRequestError(
        message='AnthropicException - {"type":"error","error":{"type":"invalid_request_error","message":'
        f'"temperature: range: 0..1"}}}}. Received request: {request}',
        llm_provider="anthropic",
        model="claude-haiku-4-5",
    )
    assert len(str(error)) > 4000
    endpoint = ModelEndpoint(
        role="task", model="anthropic/claude-haiku-4-5", description="task model", params={"mock_response": error}
    )
    with pytest.raises(PermanentLLMError) as caught:
        LLMClient().complete(endpoint, HELLO)
    where_and_hint, said = str(caught.value).split("; ", 1)
    assert where_and_hint == (
        "task model 'anthropic/claude-haiku-4-5': the request was rejected: check the model id "
        "(litellm's provider/model form) and the completion parameters"
    )
    assert said.startswith('litellm.BadRequestError: AnthropicException - {"type":"error"')
    assert "temperature: range: 0..1" in said and REAL_LOOKING_KEY not in said
    kept = said.removesuffix(" ...")
    assert kept != said and len(kept) <= 500
    whole = " ".join(redaction.redact(str(error)).split())
    assert whole.startswith(kept) and whole[len(kept)] == " "  # no word cut in two


def test_a_missing_key_says_which_variable_to_set(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    endpoint = ModelEndpoint(role="task", model="openai/gpt-4o-mini", description="task model", max_retries=0)
    with pytest.raises(PermanentLLMError, match="no API key found: put OPENAI_API_KEY in the job's credentials Secret"):
        LLMClient().complete(endpoint, HELLO)


def test_an_unknown_model_is_a_permanent_error(sim):
    with pytest.raises(PermanentLLMError, match=r"'openai/sim-nonexistent'.*does not exist: check the model id"):
        LLMClient().complete(task_endpoint(sim, model="openai/sim-nonexistent"), HELLO)
    assert sim.request_count == 1


def test_a_model_id_without_provider_is_a_permanent_error():
    endpoint = ModelEndpoint(role="task", model="no-such-provider-model", description="task model")
    with pytest.raises(PermanentLLMError, match="provider/model form"):
        LLMClient().complete(endpoint, HELLO)


# --- budget ----------------------------------------------------------------------------------


def test_the_budget_stops_the_job_and_refuses_further_calls(sim):
    # The seed prompt costs a known number of tokens; price them so that two calls reach the budget.
    endpoint = task_endpoint(sim, pricing=Pricing(input_per_million_tokens=1_000_000, output_per_million_tokens=0))
    prompt_tokens = estimate_tokens(HELLO[0]["content"])
    stop = StopRequested()
    client = LLMClient(max_cost_usd=2 * prompt_tokens, stop=stop)
    client.complete(endpoint, HELLO)
    assert not stop
    client.complete(endpoint, HELLO)
    assert stop and stop.reason == "BudgetExhausted"
    assert f"${2 * prompt_tokens}.0000" in stop.message and f"budget of ${2 * prompt_tokens}" in stop.message
    with pytest.raises(BudgetExceeded, match=f"budget of \\${2 * prompt_tokens} is spent"):
        client.complete(endpoint, HELLO)
    assert sim.request_count == 2


def test_a_terminating_worker_abandons_a_call_in_flight_at_once(sim):
    """SIGTERM gives the Pod its grace period (60 s by default), shorter than a hung call's timeout and retries:
    the call is left unanswered so that the best result so far can still be reported."""
    sim.set_latency(30)
    stop = StopRequested()
    client = LLMClient(stop=stop)
    threading.Timer(0.5, stop.terminate, args=("Cancelled", "stopped by SIGTERM")).start()
    started = time.monotonic()
    with pytest.raises(CallAbandoned, match="task model 'openai/sim-task'.*abandoned.*stopped by SIGTERM"):
        client.complete(task_endpoint(sim), HELLO)
    assert time.monotonic() - started < 2
    assert client.usage.snapshot().calls == {}  # an answer nobody read is charged to nobody


def test_once_terminating_no_call_is_sent_and_the_retry_back_off_is_cut_short(sim):
    stop = StopRequested()
    client = LLMClient(stop=stop)
    sim.inject(503, times=1)
    threading.Timer(0.2, stop.terminate, args=("Cancelled", "stopped by SIGTERM")).start()
    started = time.monotonic()
    with pytest.raises(CallAbandoned):
        # The 503 is retried after INITIAL_RETRY_DELAY_S; terminate() comes during that wait.
        client.complete(task_endpoint(sim, max_retries=5), HELLO)
    assert sim.request_count == 1 and time.monotonic() - started < INITIAL_RETRY_DELAY_S + 0.3
    with pytest.raises(CallAbandoned):
        client.complete(task_endpoint(sim), HELLO)
    assert sim.request_count == 1


def test_a_stop_that_is_not_terminating_lets_calls_in_flight_finish(sim):
    sim.set_latency(0.5)
    stop = StopRequested()
    client = LLMClient(stop=stop)
    threading.Timer(0.1, stop.request, args=("BudgetExhausted", "the budget is spent")).start()
    assert client.complete(task_endpoint(sim), HELLO)  # answered and charged: its cost is real
    assert client.usage.snapshot().calls == {"task": 1}


# --- litellm's cost map ----------------------------------------------------------------------------------------


def test_litellm_uses_its_bundled_cost_map_in_a_process_that_was_not_told_to():
    """A local run or a Pod whose environment says nothing still never downloads the map: the adapter decides
    before litellm is imported."""
    untold = {name: value for name, value in os.environ.items() if name not in LITELLM_BUNDLED_COST_MAP_ENV}
    script = (
        "import promptopt_worker.llm\n"
        "from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info\n"
        "info = get_model_cost_map_source_info()\n"
        "print(info['source'], info['url'])"
    )
    run = subprocess.run([sys.executable, "-c", script], env=untold, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["local", "None"], run.stderr


# --- the direct OpenAI-compatible call -----------------------------------------------------------------------


def test_openai_itself_is_sent_max_completion_tokens_and_compatible_servers_what_the_job_wrote(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    openai_model = ModelEndpoint(role="task", model="openai/gpt-4.1-mini", description="task model",
                                 params={"max_tokens": 20, "temperature": 0})  # fmt: skip
    url = openai_compatible.base_url(openai_model)
    assert url == "https://api.openai.com/v1"
    assert openai_compatible.request_body(openai_model, HELLO, url) == {
        "model": "gpt-4.1-mini",
        "messages": HELLO,
        "max_completion_tokens": 20,
        "temperature": 0,
    }
    vllm = ModelEndpoint(role="task", model="openai/meta-llama/Llama-3.1-8B", description="task model",
                         api_base="http://vllm:8000/v1/", params={"max_tokens": 20})  # fmt: skip
    url = openai_compatible.base_url(vllm)
    assert url == "http://vllm:8000/v1"
    assert openai_compatible.request_body(vllm, HELLO, url) == {
        "model": "meta-llama/Llama-3.1-8B",
        "messages": HELLO,
        "max_tokens": 20,
    }
    monkeypatch.setenv("OPENAI_BASE_URL", "https://gateway.example/v1")
    assert openai_compatible.base_url(openai_model) == "https://gateway.example/v1"


def test_extra_body_and_extra_headers_reach_the_request_as_the_openai_sdk_sends_them(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    endpoint = task_endpoint_at("http://vllm:8000/v1", params={
        "temperature": 0, "extra_body": {"top_k": 5, "guided_choice": ["positive", "negative"]},
        "extra_headers": {"X-Tenant": "team-a"}})  # fmt: skip
    assert openai_compatible.serves(endpoint)
    assert openai_compatible.request_body(endpoint, HELLO, "http://vllm:8000/v1") == {
        "temperature": 0, "top_k": 5, "guided_choice": ["positive", "negative"], "model": "sim-task",
        "messages": HELLO}  # fmt: skip
    assert openai_compatible.request_headers(endpoint) == {"Authorization": "Bearer sk-test", "X-Tenant": "team-a"}


def test_a_parameter_outside_the_chat_completion_request_goes_through_litellm(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused-by-mock-responses")
    endpoint = ModelEndpoint(role="task", model="openai/gpt-4o-mini", description="task model",
                             params={"mock_response": "positive"})  # fmt: skip
    assert not openai_compatible.serves(endpoint)
    client = LLMClient()
    assert client.complete(endpoint, HELLO) == "positive"  # litellm's own option, honoured by litellm
    expected = litellm.completion(model="openai/gpt-4o-mini", messages=HELLO, mock_response="positive")
    assert client.usage.snapshot().usd == pytest.approx(litellm.completion_cost(completion_response=expected))


@pytest.mark.parametrize(
    ("status", "body", "transient", "hint"),
    [
        (429, {"error": {"message": "slow down"}}, True, "overloaded"),
        (408, {}, True, "overloaded"),
        (409, {}, True, "overloaded"),
        (502, "<html>bad gateway</html>", True, "overloaded"),
        (400, {"error": {"message": "too long", "code": "context_length_exceeded"}}, False, "context window"),
        (400, {"error": {"message": "unknown parameter: foo"}}, False, "completion parameters"),
        (401, {"error": {"message": "Incorrect API key provided"}}, False, "credentials Secret"),
        (403, {"error": {"message": "no access"}}, False, "access to it"),
        (404, {"error": {"message": "The model does not exist"}}, False, "check the model id"),
    ],
)
def test_error_answers_are_classified_by_status_and_code(status, body, transient, hint):
    content = body if isinstance(body, str) else json.dumps(body)
    failure = openai_compatible.status_failure(httpx.Response(status, content=content))
    assert failure.transient is transient and hint in failure.hint
    assert failure.provider_says.startswith(f"HTTP {status}: ")


def test_retry_after_is_read_in_milliseconds_seconds_or_as_a_date():
    assert retry_after_s({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after_s({"Retry-After": "3"}) == 3
    soon = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_s({"retry-after": soon}) <= 30
    assert retry_after_s({"retry-after": "whenever"}) is None and retry_after_s({}) is None


def test_an_answer_that_is_not_a_chat_completion_is_a_permanent_error_naming_it():
    login_page = httpx.Response(200, content=b"<html>login</html>")
    with pytest.raises(CallFailed) as caught:
        openai_compatible.chat_answer(task_endpoint_at("http://x/v1"), login_page)
    assert not caught.value.transient and "not an OpenAI chat completion" in caught.value.hint


def test_an_unreachable_endpoint_is_retried_then_named(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sleep = RecordingSleep()
    endpoint = task_endpoint_at("http://127.0.0.1:9/v1", max_retries=1)  # the discard port: nothing listens
    with pytest.raises(RetriesExhausted, match=r"'openai/sim-task' at http://127.0.0.1:9/v1: still failing .*Connect"):
        LLMClient(sleep=sleep).complete(endpoint, HELLO)
    assert len(sleep.delays) == 1


def test_a_job_whose_models_are_all_openai_compatible_never_imports_litellm(llm):
    script = (
        "import sys\n"
        "from promptopt_worker.llm import LLMClient, ModelEndpoint\n"
        f"endpoint = ModelEndpoint(role='task', model='openai/sim-task', description='task model', "
        f"api_base={llm.base_url!r})\n"
        "print(LLMClient().complete(endpoint, [{'role': 'user', 'content': 'I love it'}]))\n"
        "print('litellm' in sys.modules, 'openai' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENAI_API_KEY": llm.api_key},
    )
    assert run.returncode == 0, run.stderr
    answer, imported = run.stdout.strip().splitlines()
    assert answer.startswith("The sentiment") and imported == "False False"


def task_endpoint_at(api_base, **changes):
    return ModelEndpoint(role="task", model="openai/sim-task", description="task model", api_base=api_base, **changes)
