"""The prompt contract read back: the simulated LLM's parsing of the requests promptopt.prompt_contract renders.

Only the simulator reads these requests, so their parsing lives here, beside the models that answer them; the worker
renders them and never parses them. tests/worker/test_prompt_contract.py renders each request with the worker's own
code (and gepa's reflection prompt with gepa's own, from our adapter's records) and parses it back here, so a change
of one side that the other does not follow fails there.

gepa's reflection prompt is gepa's to render: the parsing below reads its instruction-proposal template (the current
instruction in a ``` block, then the records as markdown in another), as that test pins it to the installed gepa.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from promptopt.prompt_contract import (
    CURRENT_PROMPTS,
    ContractError,
    EXAMPLES,
    EXPECTED_RESPONSE,
    FEEDBACK,
    GENERATED_OUTPUTS,
    GUIDELINES,
    INPUTS,
    METAPROMPT_SYSTEM_MESSAGE,
    NOT_SCORED,
    Feedback,
    JudgeRequest,
    MetaPromptExample,
    MetaPromptRequest,
)


def _sections(body: str, level: int) -> dict[str, str]:
    """Markdown sections at a header level (``## Title``): title → text up to the next header of that level."""
    headers = list(re.finditer(r"^" + "#" * level + r" (.+?)[ \t]*$", body, re.M))
    return {
        header.group(1): body[header.end() : following.start() if following else len(body)].strip()
        for header, following in zip(headers, [*headers[1:], None], strict=True)
    }


# ---------------------------------------------------------------------------------------------
# Judges


def parse_judge_request(user_message: str) -> JudgeRequest:
    """The JudgeRequest in the first user message of a judge's conversation."""

    def tagged(tag: str) -> str | None:
        found = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", user_message, re.S)
        return found.group(1) if found else None

    request, response = tagged("request"), tagged("response")
    if request is None or response is None:
        raise ContractError("judge contract: the request needs <request>...</request> and <response>...</response>")
    try:
        inputs = json.loads(request)
    except json.JSONDecodeError as error:
        raise ContractError(f"judge contract: <request> is not JSON: {error}") from None
    if not isinstance(inputs, dict):
        raise ContractError("judge contract: <request> must be a JSON object of the record's inputs")
    guidelines = tagged("guidelines")
    return JudgeRequest(
        inputs=inputs,
        response=response,
        expected_response=tagged("expected_response"),
        guidelines=None if guidelines is None else [line.removeprefix("- ") for line in guidelines.split("\n")],
        question=user_message.split("\n\n<", 1)[0],
    )


@dataclass(frozen=True)
class CustomJudgeRequest:
    """A Judge scorer's request: its instructions (the variables left as `{{ name }}`) and the values they were
    filled with (None for a variable the instructions do not use)."""

    instructions: str
    inputs: Mapping[str, Any] | None = None
    outputs: str | None = None
    expectations: Mapping[str, Any] | None = None


def is_custom_judge_request(user_message: str) -> bool:
    return (
        "<response>" not in user_message
        and re.search(r"^<(inputs|outputs|expectations)>$", user_message, re.M) is not None
    )


def parse_custom_judge_request(user_message: str) -> CustomJudgeRequest:
    """The CustomJudgeRequest that prompt_contract.custom_judge_messages rendered into this user message."""
    found: dict[str, str] = {}

    def restore(section: re.Match[str]) -> str:
        found[section[1]] = section[2]
        return "{{ " + section[1] + " }}"

    instructions = re.sub(r"\n<(inputs|outputs|expectations)>\n(.*?)\n</\1>\n", restore, user_message, flags=re.S)
    if not found:
        raise ContractError("custom judge contract: the request needs <inputs>, <outputs> or <expectations> sections")
    parsed: dict[str, Any] = {}
    for name in ("inputs", "expectations"):
        if name in found:
            try:
                parsed[name] = json.loads(found[name])
            except json.JSONDecodeError as error:
                raise ContractError(f"custom judge contract: <{name}> is not JSON: {error}") from None
            if not isinstance(parsed[name], dict):
                raise ContractError(f"custom judge contract: <{name}> must be a JSON object")
    return CustomJudgeRequest(instructions, parsed.get("inputs"), found.get("outputs"), parsed.get("expectations"))


# ---------------------------------------------------------------------------------------------
# MetaPrompt


def is_metaprompt_request(text: str) -> bool:
    return re.search(rf"^### {CURRENT_PROMPTS}$", text, re.M) is not None


def parse_metaprompt_request(system: str | None, user: str) -> MetaPromptRequest:
    """The MetaPromptRequest of a conversation with this system message and user message."""
    if system != METAPROMPT_SYSTEM_MESSAGE:
        raise ContractError(
            "metaprompt contract: the system message must be METAPROMPT_SYSTEM_MESSAGE "
            f"({METAPROMPT_SYSTEM_MESSAGE[:40]!r}...)"
        )
    sections = _sections(user, 3)
    if CURRENT_PROMPTS not in sections:
        raise ContractError(f"metaprompt contract: the user message needs a '### {CURRENT_PROMPTS}' section")
    prompts = _json_in(sections[CURRENT_PROMPTS], CURRENT_PROMPTS, dict)
    if not prompts or not all(isinstance(template, str) for template in prompts.values()):
        raise ContractError(f"metaprompt contract: '### {CURRENT_PROMPTS}' must map prompt names to templates")
    examples = None
    if EXAMPLES in sections:
        names = [f.name for f in fields(MetaPromptExample)]
        shown = _json_in(sections[EXAMPLES], EXAMPLES, list)
        if not all(isinstance(example, dict) and sorted(example) == sorted(names) for example in shown):
            raise ContractError(f"metaprompt contract: each example must be an object of {', '.join(names)}")
        examples = [MetaPromptExample(**example) for example in shown]
    return MetaPromptRequest(prompts=prompts, guidelines=sections.get(GUIDELINES), examples=examples)


def _json_in(section: str, title: str, kind: type) -> Any:
    """The JSON value of a section, fenced as ```json ... ```."""
    found = re.fullmatch(r"```json\n(.*)\n```", section, re.S)
    try:
        value = json.loads(found.group(1)) if found else None
    except json.JSONDecodeError as error:
        raise ContractError(f"metaprompt contract: the '### {title}' JSON is invalid: {error}") from None
    if not isinstance(value, kind):
        raise ContractError(f"metaprompt contract: '### {title}' must hold a ```json fenced {kind.__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# GEPA's reflection prompt, rendered by gepa from our adapter's records (prompt_contract.reflective_record)

# MLflow's GepaPromptOptimizer builds records of its own (the benchmark's peer, bench/mlflow_peer.py, sends them to
# the simulator): its outputs, its expectations (one "### <name>" each) and the aggregate score, no feedback.
MLFLOW_INPUTS, MLFLOW_OUTPUTS, MLFLOW_EXPECTATIONS, MLFLOW_SCORE = "inputs", "outputs", "expectations", "score"
# gepa's default instruction-proposal template (gepa.strategies.instruction_proposal): the current instruction in a
# ``` block, then the records in another.
GEPA_REFLECTION_MARKERS = (
    "I provided an assistant with the following instructions",
    "Your task is to write a new instruction",
)
_GEPA_EXAMPLES_INTRO = "\n```\n\nThe following are examples"


def parse_feedback(text: str) -> Feedback:
    """The Feedback whose `text()` this is (scores to two decimals; a line that starts no verdict continues the one
    before, as a rationale may have several lines)."""
    scores: dict[str, float] = {}
    rationales: dict[str, str] = {}
    failure: str | None = None
    last: str | None = None  # the scorer whose verdict a continuation line belongs to
    for index, line in enumerate(text.split("\n") if text else []):
        verdict = re.fullmatch(r"(.+?): (\d\.\d\d)(?: — (.*))?", line)
        if index == 0 and line.startswith(f"{NOT_SCORED}: "):
            failure = line.removeprefix(f"{NOT_SCORED}: ")
        elif verdict:
            last, scores[verdict[1]] = verdict[1], float(verdict[2])
            if verdict[3] is not None:
                rationales[last] = verdict[3]
        elif last is not None:
            rationales[last] = rationales.get(last, "") + "\n" + line
        elif failure is not None:
            failure += "\n" + line
        else:
            raise ContractError(f"feedback contract: {line!r} is no scorer's verdict")
    return Feedback(scores, rationales, failure)


@dataclass(frozen=True)
class ReflectionExample:
    """One example of a reflection prompt: `scores` per scorer from our records' feedback, or MLflow's aggregate
    under "score"."""

    inputs: Mapping[str, str]
    output: str
    expected: str | None
    scores: Mapping[str, float]


@dataclass(frozen=True)
class ReflectionRequest:
    instruction: str
    examples: Sequence[ReflectionExample]


def is_reflection_request(text: str) -> bool:
    """gepa's default wording, or any prompt with a ``` block and gepa's markdown of records."""
    if any(marker in text for marker in GEPA_REFLECTION_MARKERS):
        return True
    return "```" in text and re.search(r"^# Example 1$", text, re.M) is not None


def parse_reflection_request(text: str) -> ReflectionRequest:
    """The current instruction (the text of the first ``` block) and the examples of a gepa reflection prompt."""
    first = text.find("```")
    if first < 0:
        raise ContractError("gepa reflection request without ``` fences around the current instruction")
    start = first + len("```\n")
    # gepa's template follows the instruction's block with the examples' intro: the instruction may hold ``` itself.
    intro = text.find(_GEPA_EXAMPLES_INTRO, start)
    end = intro if intro >= 0 else text.find("\n```", start)
    if end < 0:
        raise ContractError("gepa reflection request: unterminated ``` fence around the current instruction")
    instruction, rest = text[start:end], text[end + len("\n```") :]
    examples = []
    records = re.split(r"^# Example \d+$", rest.rsplit("\n```", 1)[0], flags=re.M)[1:]
    for record in records:
        sections = _sections(record, 2)
        if GENERATED_OUTPUTS in sections:
            expected = sections.get(EXPECTED_RESPONSE)
            scores = dict(parse_feedback(sections.get(FEEDBACK, "")).scores)
            inputs = _sections(sections.get(INPUTS, ""), 3)
        elif MLFLOW_OUTPUTS in sections:
            expected = _sections(sections.get(MLFLOW_EXPECTATIONS, ""), 3).get("expected_response")
            scores = {MLFLOW_SCORE: float(sections[MLFLOW_SCORE])} if MLFLOW_SCORE in sections else {}
            inputs = _sections(sections.get(MLFLOW_INPUTS, ""), 3)
        else:
            raise ContractError(
                f"gepa reflection request: an example without '## {GENERATED_OUTPUTS}' "
                f"(ours) or '## {MLFLOW_OUTPUTS}' (MLflow's)"
            )
        output = sections.get(GENERATED_OUTPUTS, sections.get(MLFLOW_OUTPUTS, ""))
        examples.append(ReflectionExample(inputs=inputs, output=output, expected=expected, scores=scores))
    return ReflectionRequest(instruction=instruction, examples=examples)
