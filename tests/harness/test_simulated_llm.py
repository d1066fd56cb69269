"""The simulated LLM (a deterministic test double): its world, its models and its faults.

Everything that can go through the real client does: litellm.completion against the HTTP server. Requests are
rendered with promptopt.prompt_contract, as the worker renders them.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import litellm
import pytest

from promptopt import simulated_llm as sim
from promptopt.prompt_contract import (
    CORRECTNESS_QUESTION,
    METAPROMPT_SYSTEM_MESSAGE,
    Feedback,
    JudgeRequest,
    MetaPromptExample,
    MetaPromptRequest,
    judge_messages,
    metaprompt_request,
    reflective_record,
)
from promptopt.simulated_llm import (
    JUDGE_MODEL,
    NEGATIVE_WORDS,
    OPTIMAL_INSTRUCTION,
    POSITIVE_WORDS,
    REFLECT_DROPS_VARIABLE_MODEL,
    REFLECT_INVENTS_VARIABLE_MODEL,
    REFLECT_MODEL,
    RULE_LOWERCASE,
    RULE_ONE_LOWERCASE_WORD,
    RULE_SARCASM,
    RULE_SINGLE_WORD,
    SEED_INSTRUCTION,
    TASK_MODEL,
    SimulatedLLM,
    sentiment_dataset,
)

PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")
DATA = sentiment_dataset(12, seed=3)


def complete(llm, model, messages, **kwargs):
    return litellm.completion(messages=messages, **llm.litellm_kwargs(model), **kwargs)


def content(llm, model, messages, **kwargs):
    return complete(llm, model, messages, **kwargs).choices[0].message.content


def render(template, record):
    out = template
    for k, v in record["inputs"].items():
        out = out.replace("{{" + k + "}}", v)
    return out


def exact_match_rate(llm, template, data=DATA):
    hits = 0
    for rec in data:
        out = content(llm, TASK_MODEL, [{"role": "user", "content": render(template, rec)}])
        hits += out == rec["expectations"]["expected_response"]
    return hits / len(data)


def raw_post(llm, body, key="__configured__", path="/v1/chat/completions"):
    """POST with the stdlib, to see status, headers and body exactly. Returns (status, headers, json)."""
    base = llm.base_url[: -len("/v1")]
    headers = {"Content-Type": "application/json"}
    key = llm.api_key if key == "__configured__" else key
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


# ---- the simulated world ---------------------------------------------------------------------


def test_dataset_is_deterministic_balanced_and_consistent_with_the_world():
    data = sentiment_dataset(40, seed=7)
    assert data == sentiment_dataset(40, seed=7)
    assert data != sentiment_dataset(40, seed=8)
    assert all(set(r) == {"inputs", "expectations"} and set(r["inputs"]) == {"review"} for r in data)
    sarcastic = [r for r in data if sim.has_sarcasm_marker(r["inputs"]["review"])]
    assert len(sarcastic) == 10
    assert {r["expectations"]["expected_response"] for r in sarcastic} == {"negative"}
    labels = [r["expectations"]["expected_response"] for r in data if r not in sarcastic]
    assert labels.count("positive") == labels.count("negative") == 15
    assert all(sim.true_label(r["inputs"]["review"]) == r["expectations"]["expected_response"] for r in data)
    assert len({r["inputs"]["review"] for r in data}) == 40


def test_rules_and_seed_hold_no_lexicon_word_and_no_placeholder():
    for text in (SEED_INSTRUCTION, RULE_SINGLE_WORD, RULE_LOWERCASE, RULE_ONE_LOWERCASE_WORD, RULE_SARCASM):
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert not words & (POSITIVE_WORDS | NEGATIVE_WORDS), text
    for rule in (RULE_SINGLE_WORD, RULE_LOWERCASE, RULE_ONE_LOWERCASE_WORD, RULE_SARCASM):
        assert not PLACEHOLDER.search(rule) and not sim.has_sarcasm_marker(rule)


def test_task_model_through_litellm_scores_seed_zero_and_optimal_one(llm):
    # The step gepa takes first (one fused format rule) gets every plain review right, not the sarcastic ones.
    format_only = SEED_INSTRUCTION.replace("\n\n", "\n" + RULE_ONE_LOWERCASE_WORD + "\n\n")
    plain = sum(not sim.has_sarcasm_marker(r["inputs"]["review"]) for r in DATA) / len(DATA)
    assert exact_match_rate(llm, SEED_INSTRUCTION) == 0.0
    assert exact_match_rate(llm, SEED_INSTRUCTION + "\n" + RULE_SINGLE_WORD) == 0.0  # "Positive"
    assert exact_match_rate(llm, format_only) == plain == 0.75
    assert exact_match_rate(llm, OPTIMAL_INSTRUCTION) == 1.0


def test_task_model_output_formats():
    review = "I love this phone."
    sarcastic = "Oh great, the phone stopped working."
    assert sim.classify(f"Classify.\n{review}") == "The sentiment of this text is Positive."
    assert sim.classify(f"Classify in one word.\n{review}") == "Positive"
    assert sim.classify(f"Classify. Only the label, lowercase.\n{review}") == "positive"
    assert sim.classify(f"Use lowercase.\n{review}") == "The sentiment of this text is positive."
    assert sim.classify(f"Single word.\n{sarcastic}") == "Positive"  # sarcasm missed
    assert sim.classify(f"Single word, mind sarcasm.\n{sarcastic}") == "Negative"
    assert sim.classify("One word.\nA great and awful day") == "Negative"  # tie -> negative


def test_response_shape_usage_paths_models_and_echo(llm):
    resp = complete(llm, TASK_MODEL, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}])
    assert resp.choices[0].message.content == "echo: Be brief.\nping"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model.endswith(TASK_MODEL) and resp.id.startswith("chatcmpl-sim-")
    usage = resp.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 6, 10)  # ceil(words * 4 / 3)

    status, _, body = raw_post(llm, {"model": TASK_MODEL, "messages": [{"role": "user", "content": "x"}]},
                               path="/chat/completions")  # fmt: skip
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: x"
    stream = {"model": TASK_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    status, _, body = raw_post(llm, stream)
    assert status == 400 and "stream" in body["error"]["message"]
    long = {"model": TASK_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "one two three four five"}]}
    status, _, body = raw_post(llm, long)
    assert body["choices"][0]["finish_reason"] == "length" and body["choices"][0]["message"]["content"] == "echo: one"

    req = urllib.request.Request(llm.base_url + "/models", headers={"Authorization": f"Bearer {llm.api_key}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert [m["id"] for m in json.loads(r.read())["data"]] == list(sim.KNOWN_MODELS)


# ---- GEPA reflection -------------------------------------------------------------------------


def exact_match_record(record, output):
    """The reflective record our adapter makes for an ExactMatch scorer."""
    expected = record["expectations"]["expected_response"]
    ok = output == expected
    rationale = f"output {output!r} {'equals' if ok else 'does not equal'} expected {expected!r}"
    return reflective_record(
        record["inputs"], output, expected, Feedback({"ExactMatch": float(ok)}, {"ExactMatch": rationale}).text()
    )


def reflective_records(template, data):
    return [exact_match_record(rec, sim.classify(render(template, rec))) for rec in data]


def gepa_reflect(llm, model, template, data):
    """One reflection through gepa's real path: its prompt renderer, its LM (litellm), its extractor."""
    from gepa.lm import LM
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    lm = LM(f"openai/{model}", api_base=llm.base_url, api_key=llm.api_key)
    inputs = {"current_instruction_doc": template, "dataset_with_feedback": reflective_records(template, data),
              "prompt_template": None}  # fmt: skip
    return InstructionProposalSignature.run(lm, inputs)["new_instruction"]


def test_gepa_reflection_adds_exactly_one_rule_per_call_and_keeps_placeholders(llm):
    step1 = gepa_reflect(llm, REFLECT_MODEL, SEED_INSTRUCTION, DATA[:4])
    assert step1 == "Classify the sentiment of this review.\n" + RULE_ONE_LOWERCASE_WORD + "\n\n{{review}}"
    step2 = gepa_reflect(llm, REFLECT_MODEL, step1, DATA)
    assert step2 == OPTIMAL_INSTRUCTION
    assert gepa_reflect(llm, REFLECT_MODEL, step2, DATA) == OPTIMAL_INSTRUCTION  # no evidence: unchanged
    assert llm.calls["reflection"] == 3

    two_vars = "Product: {{product}}\nClassify the sentiment of this review in one word.\n{{review}}"
    data = [dict(r, inputs={"product": "gadget", **r["inputs"]}) for r in DATA[:4]]
    new = gepa_reflect(llm, REFLECT_MODEL, two_vars, data)
    assert new == RULE_LOWERCASE + "\n" + two_vars  # "Positive" vs "positive": only the lowercase rule
    assert PLACEHOLDER.findall(new) == ["{{product}}", "{{review}}"]


def test_gepa_reflection_with_correctness_feedback_adds_only_the_sarcasm_rule():
    # A judge that ignores format fails only the sarcastic items: the cause is sarcasm, not format.
    data = [r for r in DATA if sim.has_sarcasm_marker(r["inputs"]["review"])][:1] + DATA[:2]
    records = reflective_records(SEED_INSTRUCTION, data)
    for r in records:
        ok = r["Generated Outputs"].lower().rstrip(".").endswith(r["Expected Response"])
        r["Feedback"] = Feedback({"Correctness": float(ok)}, {"Correctness": "judged by the simulated judge"}).text()
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    prompt = InstructionProposalSignature.prompt_renderer(
        {"current_instruction_doc": SEED_INSTRUCTION, "dataset_with_feedback": records, "prompt_template": None}
    )
    answer = sim.respond(REFLECT_MODEL, [{"role": "user", "content": prompt}])
    new = InstructionProposalSignature.output_extractor(answer)["new_instruction"]
    assert new == SEED_INSTRUCTION.replace("\n\n", "\n" + RULE_SARCASM + "\n\n")


def test_gepa_optimize_end_to_end_reaches_full_score(llm):
    import gepa
    from gepa.core.adapter import EvaluationBatch

    class Adapter:
        propose_new_texts = None

        def evaluate(self, batch, candidate, capture_traces=False):
            outs = [content(llm, TASK_MODEL, [{"role": "user", "content": render(candidate["instruction"], r)}])
                    for r in batch]  # fmt: skip
            scores = [float(o == r["expectations"]["expected_response"]) for o, r in zip(outs, batch, strict=True)]
            traces = list(zip(batch, outs, strict=True)) if capture_traces else None
            return EvaluationBatch(outputs=outs, scores=scores, trajectories=traces)

        def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
            return {"instruction": [exact_match_record(rec, out) for rec, out in eval_batch.trajectories]}

    class Quiet:
        def log(self, msg):
            pass

    data = sentiment_dataset(8, seed=11)
    result = gepa.optimize(
        seed_candidate={"instruction": SEED_INSTRUCTION}, trainset=data, adapter=Adapter(),
        reflection_lm=gepa.lm.LM(f"openai/{REFLECT_MODEL}", api_base=llm.base_url, api_key=llm.api_key),
        max_metric_calls=80, logger=Quiet(), seed=0,
    )  # fmt: skip
    assert result.val_aggregate_scores[0] == 0.0
    assert max(result.val_aggregate_scores) == 1.0
    assert result.best_candidate["instruction"] == OPTIMAL_INSTRUCTION


# ---- MetaPrompt ------------------------------------------------------------------------------


def metaprompt_messages(prompts, guidelines=None, examples=None):
    request = MetaPromptRequest(prompts, guidelines, examples)
    user = metaprompt_request(request, dict.fromkeys(prompts, "user"), {name: {"review"} for name in prompts})
    return [{"role": "system", "content": METAPROMPT_SYSTEM_MESSAGE}, {"role": "user", "content": user}]


def test_metaprompt_zero_shot_adds_format_rule_and_guideline_rules(llm):
    answer = json.loads(content(llm, REFLECT_MODEL, metaprompt_messages({"instruction": SEED_INSTRUCTION})))
    assert answer["prompts"] == {"instruction": SEED_INSTRUCTION.replace("\n\n", "\n" + RULE_SINGLE_WORD + "\n\n")}
    assert "zero-shot" in answer["rationale"]

    guidelines = "Answers must be lowercase. Beware of sarcasm."
    msgs = metaprompt_messages({"instruction": SEED_INSTRUCTION}, guidelines=guidelines)
    new = json.loads(content(llm, REFLECT_MODEL, msgs))["prompts"]["instruction"]
    assert new.split("\n") == ["Classify the sentiment of this review.", RULE_SINGLE_WORD, RULE_LOWERCASE, RULE_SARCASM,
                               "", "{{review}}"]  # fmt: skip
    assert exact_match_rate(llm, new) == 1.0
    assert llm.calls["metaprompt"] == 2


def test_metaprompt_few_shot_adds_every_evidenced_rule_at_once(llm):
    examples = [
        MetaPromptExample(
            r["inputs"],
            sim.classify(render(SEED_INSTRUCTION, r)),
            r["expectations"]["expected_response"],
            0.0,
            "no match",
        )
        for r in DATA
    ]
    raw = content(llm, REFLECT_MODEL, metaprompt_messages({"instruction": SEED_INSTRUCTION}, examples=examples))
    new = json.loads(raw)["prompts"]["instruction"]
    assert new == OPTIMAL_INSTRUCTION
    # Passing examples give no evidence, and few-shot adds no best-practice rule: unchanged.
    passing = [dataclasses.replace(e, score=1.0) for e in examples]
    raw = content(llm, REFLECT_MODEL, metaprompt_messages({"instruction": SEED_INSTRUCTION}, examples=passing))
    assert json.loads(raw)["prompts"]["instruction"] == SEED_INSTRUCTION


def test_metaprompt_contract_violations_are_loud_400s(llm):
    msgs = metaprompt_messages({"instruction": SEED_INSTRUCTION})
    with pytest.raises(litellm.BadRequestError, match="expert prompt engineer"):
        complete(llm, REFLECT_MODEL, msgs[1:])
    broken = [msgs[0], {"role": "user", "content": "### Current prompts\n```json\n{not json\n```"}]
    with pytest.raises(litellm.BadRequestError, match="Current prompts"):
        complete(llm, REFLECT_MODEL, broken)
    with pytest.raises(litellm.BadRequestError, match="did not recognize"):
        complete(llm, REFLECT_MODEL, [{"role": "user", "content": "hello"}])
    assert llm.errors == {400: 3}


# ---- misbehaving reflection models -----------------------------------------------------------


def test_misbehaving_models_drop_or_invent_variables(llm):
    dropped = gepa_reflect(llm, REFLECT_DROPS_VARIABLE_MODEL, SEED_INSTRUCTION, DATA[:4])
    assert PLACEHOLDER.findall(dropped) == [] and RULE_ONE_LOWERCASE_WORD in dropped
    invented = gepa_reflect(llm, REFLECT_INVENTS_VARIABLE_MODEL, SEED_INSTRUCTION, DATA[:4])
    assert PLACEHOLDER.findall(invented) == ["{{review}}", "{{made_up}}"] and invented.endswith("Context: {{made_up}}")

    msgs = metaprompt_messages({"instruction": SEED_INSTRUCTION})
    new = json.loads(content(llm, REFLECT_DROPS_VARIABLE_MODEL, msgs))["prompts"]["instruction"]
    assert "{{review}}" not in new
    new = json.loads(content(llm, REFLECT_INVENTS_VARIABLE_MODEL, msgs))["prompts"]["instruction"]
    assert PLACEHOLDER.findall(new) == ["{{review}}", "{{made_up}}"]


# ---- judge -----------------------------------------------------------------------------------


def judge_request(response, expected=None, guidelines=None):
    """A judge's conversation as the worker renders it (the question does not matter to the simulated judge)."""
    request = JudgeRequest({"review": "I love it"}, response, expected_response=expected, guidelines=guidelines)
    return judge_messages(CORRECTNESS_QUESTION, request)


def judge(llm, response, expected=None, guidelines=None):
    return json.loads(content(llm, JUDGE_MODEL, judge_request(response, expected, guidelines)))


def test_judge_correctness_and_guidelines(llm):
    assert judge(llm, "The sentiment of this text is Positive.", expected="positive")["result"] == "yes"
    assert judge(llm, "positive", expected="Positive.")["result"] == "yes"
    no = judge(llm, "Negative", expected="positive")
    assert no["result"] == "no" and "positive" in no["rationale"]
    assert judge(llm, "positive, not negative", expected="positive")["result"] == "no"  # both labels
    assert judge(llm, "positively", expected="positive")["result"] == "no"  # whole words only

    guidelines = ["Use lowercase.", "Answer in a single word.", "No punctuation."]
    assert judge(llm, "positive", guidelines=guidelines)["result"] == "yes"
    for response, failing in (("Positive", "Use lowercase."), ("very positive", "Answer in a single word."),
                              ("positive.", "No punctuation.")):  # fmt: skip
        verdict = judge(llm, response, guidelines=guidelines)
        assert verdict["result"] == "no" and failing in verdict["rationale"], verdict
    assert judge(llm, "Positive!", guidelines=["Be polite."])["result"] == "yes"  # unrecognized passes
    assert judge(llm, "Positive", expected="positive", guidelines=["lowercase"])["result"] == "no"  # both apply
    assert judge(llm, "anything")["result"] == "yes"  # no criterion
    with pytest.raises(litellm.BadRequestError, match="<response>"):
        complete(llm, JUDGE_MODEL, [{"role": "user", "content": "no tags"}])
    assert llm.calls["judge"] == 12


def test_a_share_of_judge_answers_can_be_garbled_by_a_pure_function_of_the_request(llm):
    llm.garble_judge_answers(0.5)
    requests = [judge_request(f"positive {i}") for i in range(40)]

    first = [content(llm, JUDGE_MODEL, messages) for messages in requests]
    again = [content(llm, JUDGE_MODEL, messages) for messages in requests]

    assert first == again  # the same request, the same answer
    garbled = [answer == sim.GARBLED_JUDGE_ANSWER for answer in first]
    assert 10 < sum(garbled) < 30 and llm.garbled_answers == 2 * sum(garbled)
    assert "{" not in sim.GARBLED_JUDGE_ANSWER
    assert all(json.loads(answer)["result"] == "yes" for answer, bad in zip(first, garbled, strict=True) if not bad)
    assert [r["fault"] for r in llm.requests[:40]] == ["garbled" if bad else None for bad in garbled]
    # Asked again (a longer conversation), a garbled request draws anew.
    retried = [
        content(
            llm,
            JUDGE_MODEL,
            [
                *messages,
                {"role": "assistant", "content": sim.GARBLED_JUDGE_ANSWER},
                {"role": "user", "content": "Answer with the JSON object."},
            ],
        )
        for messages, bad in zip(requests, garbled, strict=True)
        if bad
    ]
    assert sim.GARBLED_JUDGE_ANSWER in retried and any(answer.startswith("{") for answer in retried)
    assert content(llm, TASK_MODEL, [{"role": "user", "content": "I love it"}]) != sim.GARBLED_JUDGE_ANSWER

    llm.garble_judge_answers(0)
    assert all(content(llm, JUDGE_MODEL, messages).startswith("{") for messages in requests)


# ---- faults, auth, latency -------------------------------------------------------------------


def test_injected_429_500_503_and_litellm_retries_recover(llm):
    msgs = [{"role": "user", "content": "ping"}]
    llm.inject(429, times=2)
    status, headers, body = raw_post(llm, {"model": TASK_MODEL, "messages": msgs})
    assert status == 429 and headers["Retry-After"] == "0" and body["error"]["code"] == "rate_limit_exceeded"
    assert content(llm, TASK_MODEL, msgs, num_retries=3) == "echo: ping"  # one more 429, then success

    llm.inject(500, times=1)
    llm.inject(503, times=1)
    assert content(llm, TASK_MODEL, msgs, num_retries=3) == "echo: ping"
    assert llm.errors == {429: 2, 500: 1, 503: 1} and llm.pending_faults == 0

    llm.inject(429, times=1, model=JUDGE_MODEL, retry_after=1)
    assert content(llm, TASK_MODEL, msgs) == "echo: ping"  # fault is for the judge only
    with pytest.raises(litellm.RateLimitError):
        complete(llm, JUDGE_MODEL, judge_request("x"), num_retries=0)
    assert [r["fault"] for r in llm.requests if r["fault"]] == ["429", "429", "500", "503", "429"]


def test_wrong_api_key_gets_401_without_echoing_the_key(llm):
    secret = "sk-wrong-secret-1234567890"
    with pytest.raises(litellm.AuthenticationError) as info:
        litellm.completion(model=f"openai/{TASK_MODEL}", api_base=llm.base_url, api_key=secret,
                           messages=[{"role": "user", "content": "hi"}], num_retries=0)  # fmt: skip
    assert secret not in str(info.value) and "1234567890" not in str(info.value)
    status, _, body = raw_post(llm, {"model": TASK_MODEL, "messages": []}, key=secret)
    assert (status, body) == (401, SimulatedLLM.AUTH_ERROR)
    assert secret not in json.dumps(body) and secret not in json.dumps(llm.requests)
    assert raw_post(llm, {"model": TASK_MODEL, "messages": []}, key=None)[0] == 401
    assert llm.errors == {401: 3} and llm.calls["task"] == 0


def test_unknown_model_gets_404_model_not_found(llm):
    with pytest.raises(litellm.NotFoundError, match="sim-nope"):
        complete(llm, "sim-nope", [{"role": "user", "content": "hi"}], num_retries=0)
    status, _, body = raw_post(llm, {"model": "sim-task-v2", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_latency_global_and_per_model_and_injected_timeout(llm):
    msgs = [{"role": "user", "content": "ping"}]
    llm.set_latency(0.2)
    llm.set_latency(0.0, model=JUDGE_MODEL)
    t0 = time.monotonic()
    content(llm, TASK_MODEL, msgs)
    t1 = time.monotonic()
    content(llm, JUDGE_MODEL, judge_request("x"))
    t2 = time.monotonic()
    assert t1 - t0 >= 0.2 and t2 - t1 < 0.2

    llm.reset()  # latency back to the constructor's (0)
    llm.inject_timeout(times=1, seconds=3)
    with pytest.raises(litellm.Timeout):
        complete(llm, TASK_MODEL, msgs, timeout=0.3, num_retries=0)
    t3 = time.monotonic()
    assert content(llm, TASK_MODEL, msgs, timeout=5) == "echo: ping"
    assert time.monotonic() - t3 < 1.0


def test_one_connection_carries_many_requests_as_openai_compatible_servers_keep_alive(llm):
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(llm.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    headers = {"Authorization": f"Bearer {llm.api_key}", "Content-Type": "application/json"}
    bodies = [
        {"model": TASK_MODEL, "messages": [{"role": "user", "content": "ping"}]},
        {"model": "sim-nope", "messages": [{"role": "user", "content": "ping"}]},  # an error answer too
        {"model": TASK_MODEL, "messages": [{"role": "user", "content": "pong"}]},
    ]
    statuses, sockets = [], []
    for body in bodies:
        connection.request("POST", url.path + "/chat/completions", json.dumps(body), headers)
        sockets.append(connection.sock)  # held, so that a new socket cannot reuse the old one's id
        response = connection.getresponse()
        response.read()
        statuses.append((response.status, response.version, response.will_close))
    connection.close()
    assert statuses == [(200, 11, False), (404, 11, False), (200, 11, False)]
    assert all(sock is sockets[0] for sock in sockets)


def test_counters_log_and_reset(llm):
    task = [{"role": "user", "content": "Classify in one word: I love it"}]
    assert llm.stats()["first_request_at"] is None
    before = time.time()
    r1 = complete(llm, TASK_MODEL, task)
    first_request_at = llm.stats()["first_request_at"]
    assert before <= first_request_at <= time.time()
    r2 = complete(llm, JUDGE_MODEL, judge_request("Positive", expected="positive"))
    assert llm.calls == {"task": 1, "reflection": 0, "metaprompt": 0, "judge": 1}
    assert llm.calls_by_model == {TASK_MODEL: 1, JUDGE_MODEL: 1}
    assert llm.tokens["total_tokens"] == r1.usage.total_tokens + r2.usage.total_tokens
    last = llm.last_request(kind="task")
    assert last["model"] == TASK_MODEL and last["status"] == 200 and last["response"] == "Positive"
    assert last["messages"] == [{"role": "user", "content": task[0]["content"]}]
    assert llm.request_count == 2 and llm.stats()["calls"]["judge"] == 1
    assert llm.stats()["first_request_at"] == first_request_at  # the first one's, not the latest
    llm.inject(500, times=5)
    llm.reset()
    assert llm.request_count == 0 and llm.requests == [] and llm.pending_faults == 0
    assert llm.stats()["first_request_at"] is None
    assert llm.calls == dict.fromkeys(sim.KINDS, 0) and llm.tokens["total_tokens"] == 0


def test_no_api_key_accepts_any_key_and_concurrent_requests_are_counted():
    from concurrent.futures import ThreadPoolExecutor

    with SimulatedLLM() as server:
        kwargs = server.litellm_kwargs(TASK_MODEL)
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: litellm.completion(messages=[{"role": "user", "content": f"n{i}"}], **kwargs)
                                 .choices[0].message.content, range(16)))  # fmt: skip
        assert outs == [f"echo: n{i}" for i in range(16)]
        assert server.calls["task"] == 16 and server.request_count == 16


def test_the_simulated_llm_imports_only_the_standard_library_and_promptopt():
    """The worker image runs it, and so does an install without the worker's extra: no litellm, no gepa."""
    code = (
        "import json, sys; before = set(sys.modules); import promptopt.simulated_llm.__main__; "
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before} - sys.stdlib_module_names)))"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(imported) == ["promptopt"]


def test_command_line_prints_base_url_and_serves():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "promptopt.simulated_llm", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
    try:
        base_url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        with urllib.request.urlopen(base_url[: -len("/v1")] + "/health", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        out = litellm.completion(model=f"openai/{TASK_MODEL}", api_base=base_url, api_key="any",
                                 messages=[{"role": "user", "content": "One word: superb"}])  # fmt: skip
        assert out.choices[0].message.content == "Positive"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("command", [["promptopt.simulated_llm"], ["promptopt.example_services", "rag"]])
def test_the_servers_stop_at_once_on_sigterm(command):
    """As a container's PID 1 (the e2e manifests, examples/http-rag.yaml), a process without a SIGTERM handler
    ignores SIGTERM and is killed only when the Pod's grace period is over."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *command, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout.readline().startswith("http://127.0.0.1:")
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()


def test_gepa_reflection_reads_mlflows_reflective_records():
    """MLflow's GepaPromptOptimizer sends records keyed inputs/outputs/expectations/score/rationales."""
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    sarcastic = [r for r in DATA if sim.has_sarcasm_marker(r["inputs"]["review"])][:2]
    records = []
    for index, rec in enumerate(sarcastic):
        out = sim.classify(render(OPTIMAL_INSTRUCTION.replace(RULE_SARCASM + "\n", ""), rec))
        records.append(
            {
                "component_name": "classify",
                "trace": [],
                "score": 0.0,
                "inputs": dict(rec["inputs"]),
                "outputs": out,
                "expectations": dict(rec["expectations"]),
                "rationales": {"ExactMatch": f"output {out!r} does not equal expected 'negative'"},
                "index": index,
            }
        )
    template = OPTIMAL_INSTRUCTION.replace(RULE_SARCASM + "\n", "")
    prompt = InstructionProposalSignature.prompt_renderer(
        {"current_instruction_doc": template, "dataset_with_feedback": records, "prompt_template": None}
    )
    answer = sim.respond(REFLECT_MODEL, [{"role": "user", "content": prompt}])
    assert InstructionProposalSignature.output_extractor(answer)["new_instruction"] == OPTIMAL_INSTRUCTION

    for record in records:  # a perfect score is no evidence
        record["score"] = 1.0
    prompt = InstructionProposalSignature.prompt_renderer(
        {"current_instruction_doc": template, "dataset_with_feedback": records, "prompt_template": None}
    )
    answer = sim.respond(REFLECT_MODEL, [{"role": "user", "content": prompt}])
    assert InstructionProposalSignature.output_extractor(answer)["new_instruction"] == template
