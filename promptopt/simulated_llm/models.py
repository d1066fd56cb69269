"""The simulated models: their names, which request each one recognises, and its answer. A pure function of the
request (:func:`respond`); the requests are read by promptopt.simulated_llm.requests from the definition the worker
renders them from (promptopt.prompt_contract), so a request the worker changed is one the simulator reads the same
way, or refuses with a 400.

``sim-task`` (TASK_MODEL)
    The program under optimization: :func:`promptopt.simulated_llm.world.classify` of every message content joined
    by newlines.
``sim-judge`` (JUDGE_MODEL)
    The judge request of the first user message (the tags; a judge asked again gives the same verdict). Answer: a
    bare JSON object ``{"result": "yes"|"no", "rationale": "..."}``. Correctness: "yes" iff the world's
    ``correctness_failure`` finds none; Guidelines: "yes" iff every check of every guideline passes (unrecognized
    guidelines pass; a "no" rationale quotes the failing guideline); both -> "yes" iff both pass; neither (e.g. a
    Safety-style prompt) -> "yes" ("no criterion recognized").
``sim-reflect`` (REFLECT_MODEL)
    Answers gepa's reflection prompt and the MetaPrompt request.

    GEPA reflection: an example fails if a scorer's score is below 1 (MLflow's records: the aggregate score), or,
    with no score, if the output differs from the expected response. The model adds ONLY THE FIRST missing rule
    the failing examples give evidence for (order: format, lowercase, sarcasm) per call, so improvement is
    gradual: SEED_INSTRUCTION -> + RULE_ONE_LOWERCASE_WORD (75% exact match on ``sentiment_dataset``) ->
    + RULE_SARCASM (100%). Both steps raise exact match, so gepa's strict-improvement acceptance takes them (the
    single-word or lowercase rule alone would not). The answer is one sentence, then the new instruction inside
    ``` fences (unchanged if no evidence).

    MetaPrompt: the answer is a bare JSON object ``{"prompts": {name: new template}, "rationale": why}`` with every
    prompt. Zero-shot adds RULE_SINGLE_WORD (best practice: specify the output format) plus each rule the
    guidelines ask for ("lowercase" -> RULE_LOWERCASE, "sarcas" -> RULE_SARCASM). Few-shot adds every rule the
    examples give evidence for, all at once (failing examples: ``score`` < 1, or output != expected when the score
    is null), plus the guideline rules. Rules already present are not repeated.
``sim-reflect-drops-variable`` / ``sim-reflect-invents-variable``
    Like ``sim-reflect``, but every proposed template loses its first ``{{placeholder}}`` / gains a final line
    ``Context: {{made_up}}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from promptopt import prompt_contract
from promptopt.prompt_contract import ContractError
from promptopt.simulated_llm import requests, world
from promptopt.simulated_llm.world import RULE_LOWERCASE, RULE_ONE_LOWERCASE_WORD, RULE_SINGLE_WORD

TASK_MODEL = "sim-task"
JUDGE_MODEL = "sim-judge"
REFLECT_MODEL = "sim-reflect"
REFLECT_DROPS_VARIABLE_MODEL = "sim-reflect-drops-variable"
REFLECT_INVENTS_VARIABLE_MODEL = "sim-reflect-invents-variable"
REFLECT_MODELS = (REFLECT_MODEL, REFLECT_DROPS_VARIABLE_MODEL, REFLECT_INVENTS_VARIABLE_MODEL)
KNOWN_MODELS = (TASK_MODEL, JUDGE_MODEL) + REFLECT_MODELS

#: The kinds of request, as :func:`answer` names them (and SimulatedLLM.calls counts them).
KINDS = ("task", "reflection", "metaprompt", "judge")

MADE_UP_LINE = "Context: {{made_up}}"


class SimulatedLLMError(Exception):
    """A request the simulated LLM refuses, with the HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def message_text(content: Any) -> str:
    """A chat message's content as text (OpenAI content parts joined by newlines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _misbehave(model: str, template: str) -> str:
    if model == REFLECT_DROPS_VARIABLE_MODEL:
        return world.PLACEHOLDER_RE.sub("", template, count=1).rstrip()
    if model == REFLECT_INVENTS_VARIABLE_MODEL and MADE_UP_LINE not in template:
        return template.rstrip("\n") + "\n" + MADE_UP_LINE
    return template


def _reflection_answer(model: str, text: str) -> str:
    request = requests.parse_reflection_request(text)
    evidence = []
    for example in request.examples:
        if example.scores:
            failing = any(score < 1 for score in example.scores.values())
        else:
            failing = example.expected is None or example.output.strip() != example.expected.strip()
        inputs_text = "\n".join(example.inputs.values())
        evidence.append(world.example_rules(inputs_text, example.output, example.expected, failing))
    rules = world.rules_to_add(evidence, request.instruction, first_only=True)
    if rules:
        new = world.insert_rule(request.instruction, rules[0])
        sentence = f"Looking at the examples, {world.RULE_REASONS[rules[0]]}, so I added one rule and kept the rest."
    else:
        new = request.instruction
        sentence = "No example shows a fault that a new rule would fix, so the instruction stays as it is."
    return f"{sentence}\n```\n{_misbehave(model, new)}\n```"


def _metaprompt_answer(model: str, system: str | None, user: str) -> str:
    request = requests.parse_metaprompt_request(system, user)
    evidence: list[list[str]] = []
    for example in request.examples or []:
        inputs_text = "\n".join(str(value) for value in example.inputs.values())
        expected = None if example.expected is None else str(example.expected)
        if isinstance(example.score, (int, float)) and not isinstance(example.score, bool):
            failing = example.score < 1.0
        else:
            failing = expected is None or example.output.strip() != expected.strip()
        evidence.append(world.example_rules(inputs_text, example.output, expected, failing))

    guideline_rules = world.guideline_rules(request.guidelines or "")
    new_prompts: dict[str, str] = {}
    added: list[str] = []
    for name, template in request.prompts.items():
        if request.examples:
            rules = world.rules_to_add(evidence, template, first_only=False)
        else:
            rules = [RULE_SINGLE_WORD] if world.missing(RULE_SINGLE_WORD, template) else []
        for rule in guideline_rules:
            if (
                rule not in rules
                and world.missing(rule, template)
                and not (rule in (RULE_SINGLE_WORD, RULE_LOWERCASE) and RULE_ONE_LOWERCASE_WORD in rules)
            ):
                rules.append(rule)
        for rule in rules:
            template = world.insert_rule(template, rule)
            if rule not in added:
                added.append(rule)
        new_prompts[name] = _misbehave(model, template)
    mode = f"few-shot ({len(request.examples)} examples)" if request.examples else "zero-shot"
    if added:
        rationale = f"{mode}: added " + " ".join(repr(rule) for rule in added)
        if not request.examples:
            rationale += " (best practice: state the output format; the rest follows the guidelines)"
    else:
        rationale = f"{mode}: nothing to add; the prompts are unchanged"
    return json.dumps({"prompts": new_prompts, "rationale": rationale})


def _judge_answer(user: str) -> str:
    if requests.is_custom_judge_request(user):
        custom = requests.parse_custom_judge_request(user)
        expected = (custom.expectations or {}).get("expected_response")
        asks_correctness = expected is not None and _ASKS_CORRECTNESS.search(custom.instructions) is not None
        return _verdict(
            custom.outputs or "",
            str(expected) if asks_correctness else None,
            [custom.instructions],
            unrecognized="No criterion recognized in the instructions; passing by default.",
        )
    request = requests.parse_judge_request(user)
    if request.question in _FAILURE_CHECKS:
        what, check = _FAILURE_CHECKS[request.question]
        failure = check(request.response)
        return json.dumps(
            {"result": "no", "rationale": failure}
            if failure
            else {"result": "yes", "rationale": f"Yes: the response {what}."}
        )
    return _verdict(request.response, request.expected_response, request.guidelines)


# The judges whose question is about the response alone (MLflow's RelevanceToQuery and Safety).
_FAILURE_CHECKS = {
    prompt_contract.RELEVANCE_QUESTION: ("addresses the request", world.relevance_failure),
    prompt_contract.SAFETY_QUESTION: ("holds nothing unsafe", world.safety_failure),
}


# A Judge's instructions ask for correctness when they speak of the expected or correct answer.
_ASKS_CORRECTNESS = re.compile(r"\b(expected|correct)", re.I)


def _verdict(
    response: str,
    expected: str | None,
    guidelines: Sequence[str] | None,
    unrecognized: str = "No recognized guideline applies; passing by default.",
) -> str:
    """The judge's answer: the response must state `expected` (when given) and pass every check the guidelines
    (or a Judge's instructions) ask for."""
    failures: list[str] = []
    passes: list[str] = []
    if expected is not None:
        if failure := world.correctness_failure(response, expected):
            failures.append(failure)
        else:
            passes.append(f"the response states the expected response {expected!r}")
    for guideline in (g.strip() for g in guidelines or []):
        for check, passed, why_not in world.guideline_checks(guideline, response):
            if passed:
                passes.append(f"guideline {guideline!r} ({check}) is met")
            else:
                failures.append(f"The response does not follow the guideline {guideline!r}: {why_not}.")
    if failures:
        return json.dumps({"result": "no", "rationale": " ".join(failures)})
    if expected is None and guidelines is None:
        rationale = "No criterion recognized (no <expected_response> or <guidelines>); passing by default."
    elif passes:
        rationale = "Yes: " + "; ".join(passes) + "."
    else:
        rationale = unrecognized
    return json.dumps({"result": "yes", "rationale": rationale})


def answer(model: str, messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(kind, content) of the answer to a chat request; a SimulatedLLMError for an unknown model (404) or a request
    breaking its contract (400)."""
    if model not in KNOWN_MODELS:
        raise SimulatedLLMError(
            404,
            f"The model '{model}' does not exist (the simulated LLM knows {', '.join(KNOWN_MODELS)})",
            code="model_not_found",
        )
    chat = [(m.get("role"), message_text(m.get("content"))) for m in messages if isinstance(m, dict)]
    full = "\n".join(text for _, text in chat)
    try:
        if model == TASK_MODEL:
            return "task", world.classify(full)
        if model == JUDGE_MODEL:
            return "judge", _judge_answer(next((text for role, text in chat if role == "user"), ""))
        if requests.is_metaprompt_request(full):
            system = next((text for role, text in chat if role == "system"), None)
            user = "\n".join(text for role, text in chat if role != "system")
            return "metaprompt", _metaprompt_answer(model, system, user)
        if requests.is_reflection_request(full):
            return "reflection", _reflection_answer(model, full)
    except ContractError as error:
        raise SimulatedLLMError(400, str(error)) from None
    raise SimulatedLLMError(
        400,
        f"{model} did not recognize the request: expected gepa's instruction-proposal prompt or the MetaPrompt "
        "request (see promptopt.prompt_contract)",
    )


def respond(model: str, messages: list[dict[str, Any]]) -> str:
    """The content the server would answer for ``model`` and ``messages`` (no HTTP, no faults)."""
    return answer(model, messages)[1]
