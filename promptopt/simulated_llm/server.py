"""A simulated OpenAI-compatible LLM server: a deterministic TEST DOUBLE, not a language model.

Tests, benchmarks and the offline quickstart (``promptopt run examples/...yaml`` on a machine
without an LLM key) point litellm at this server instead of a real provider. Every answer is a
pure function of the request, so prompt optimization against it is reproducible. Standard
library only: the quickstart installs no test dependencies.

Usage::

    with SimulatedLLM(api_key="sk-sim") as llm:
        litellm.completion(model="openai/sim-task", api_base=llm.base_url, api_key="sk-sim",
                           messages=[{"role": "user", "content": "..."}])
        assert llm.calls["task"] == 1

    python -m promptopt.simulated_llm --port 8765   # prints the base URL, serves until ^C

HTTP API (non-streaming OpenAI chat completions)
-----------------------------------------------
``POST /v1/chat/completions`` and ``POST /chat/completions``; ``GET /v1/models`` (and ``/models``);
``GET /health`` (no auth). ``stream: true`` gets a 400. Answers carry ``id``, ``model``,
``choices[0].message.content``, ``finish_reason`` ("stop", or "length" when ``max_tokens`` /
``max_completion_tokens`` cut the answer) and ``usage`` with a deterministic token estimate
(``ceil(words * 4 / 3)``, see :func:`estimate_tokens`). litellm reaches it as model
``openai/<name>`` with ``api_base=<base_url>`` and any api_key (the configured one if set).

Errors use OpenAI's body ``{"error": {"message", "type", "code"}}``: a wrong or missing bearer token
when ``api_key`` is set -> 401 ``invalid_api_key`` (the received key is never echoed), an unknown
model -> 404 ``model_not_found``, a request breaking a contract below -> 400. Faults can be injected
(:meth:`SimulatedLLM.inject`, :meth:`SimulatedLLM.inject_timeout`), a share of judge answers made
unparseable (:meth:`SimulatedLLM.garble_judge_answers`), latency configured globally or per model, and
every request is counted and logged (:attr:`SimulatedLLM.calls`, ``requests``, ...).

Models (exact names; the ``model`` field selects the behaviour)
---------------------------------------------------------------
``sim-task`` (TASK_MODEL)
    The program under optimization, in a sentiment-classification world where a better
    instruction truly scores higher. The prompt is every message content joined by newlines.
    Sentiment = majority of lexicon words in the prompt (POSITIVE_WORDS vs NEGATIVE_WORDS; a tie is
    negative). A sarcasm marker (SARCASM_MARKERS: "yeah right", "oh great", "just what i needed",
    "as if", "/s") flips it, but only if the prompt mentions sarcasm ("sarcas"). Format: if the
    prompt asks for a single word ("single word", "one word", "only the label") the answer is the
    bare label, else "The sentiment of this text is <Label>."; the label is lowercase if the prompt
    says "lowercase", else Capitalized. So SEED_INSTRUCTION scores 0 on exact match against
    "positive"/"negative" and OPTIMAL_INSTRUCTION (three rules) scores 100%. A prompt without any
    lexicon word gets ``"echo: " + prompt``.
``sim-judge`` (JUDGE_MODEL)
    See "Judge contract" below.
``sim-reflect`` (REFLECT_MODEL)
    Answers gepa's reflection (instruction-proposal) prompt and our MetaPrompt contract.
``sim-reflect-drops-variable`` / ``sim-reflect-invents-variable``
    Like ``sim-reflect``, but every proposed template loses its first ``{{placeholder}}`` /
    gains a final line ``Context: {{made_up}}``.

The rules the reflection models write (module constants, no lexicon word in any of them):
RULE_SINGLE_WORD, RULE_LOWERCASE, RULE_SARCASM, and RULE_ONE_LOWERCASE_WORD (the single-word and
lowercase rules as one line, written when one example shows both faults: a sentence where a
lowercase word was expected). A new rule becomes a line just before the first line holding a
``{{placeholder}}`` (before the blank lines that precede it), or is appended if there is none;
every existing placeholder is kept.

GEPA reflection (sim-reflect)
-----------------------------
Recognized by gepa 0.1.4's default instruction-proposal wording ("I provided an assistant with the
following instructions" / "Your task is to write a new instruction"), or by any request holding a
``` fence and a "# Example 1" header. The current instruction is the text between the first pair
of ``` fences. The examples are gepa's markdown rendering of the reflective dataset ("# Example N",
"## Inputs" with one "### <variable>" per template variable, "## Generated Outputs",
"## Expected Response" (optional), "## Feedback"). An example counts as failing if its feedback
has a scorer line with a failing value (``Name: 0.0``, ``Name: no``/``false``/``fail``, any number
below 1), or - without parseable scores - if the output differs from the expected response.
MLflow's GepaPromptOptimizer renders its records differently and is understood too: "## outputs",
"## expectations" with "### expected_response", and "## score" (the aggregate; failing below 1)
standing in for a missing "## Feedback".
For each failing example the model finds the cause: a wrong label on an input with a sarcasm
marker -> sarcasm rule; a sentence where one word was expected -> single-word rule (fused with the
lowercase rule when the label's case is wrong too); the right word in the wrong case -> lowercase
rule. It adds ONLY THE FIRST missing rule (order: format, lowercase, sarcasm) per call, so
improvement is gradual: SEED_INSTRUCTION -> + RULE_ONE_LOWERCASE_WORD (75% exact match on
:func:`sentiment_dataset`) -> + RULE_SARCASM (100%). Both steps raise exact match, so gepa's
strict-improvement acceptance takes them (the single-word or lowercase rule alone would not).
The answer is one sentence, then the new instruction inside ``` fences (unchanged if no evidence).

MetaPrompt contract (sim-reflect)
---------------------------------
Request: a system message starting with "You are an expert prompt engineer"; a user message
with sections, each starting with a line ``### <Title>`` (unknown sections are ignored)::

    ### Current prompts
    ```json
    {"<prompt name>": "<template with {{variables}}>"}
    ```
    ### Template variables          (optional: the variables, free text)
    ### Guidelines                  (optional: free text)
    ### Examples                    (optional: few-shot; absent or [] means zero-shot)
    ```json
    [{"inputs": {...}, "output": "...", "expected": "..."|null,
      "score": 0.0|null, "rationale": "..."|null}]
    ```

Answer: a bare JSON object (no fences) with every prompt name::

    {"prompts": {"<prompt name>": "<new template>"}, "rationale": "<why>"}

Zero-shot adds RULE_SINGLE_WORD (best practice: specify the output format) plus each rule whose
keyword is in the guidelines ("lowercase" -> RULE_LOWERCASE, "sarcas" -> RULE_SARCASM). Few-shot
adds every rule the examples give evidence for (all at once, failing examples: ``score`` < 1, or
output != expected when score is null) plus the guideline rules. Rules already present are not
repeated. A request with "### Current prompts" but without the system message or the JSON object
gets a 400 that says what is missing.

Judge contract (sim-judge)
--------------------------
Request: any system message; the user message holds tagged sections ``<request>...</request>``,
``<response>...</response>`` and ``<expected_response>...</expected_response>`` (Correctness)
and/or ``<guidelines>...</guidelines>`` (Guidelines). Answer: a bare JSON object
``{"result": "yes"|"no", "rationale": "..."}``.

* Correctness: "yes" iff the expected response, normalized (lowercase, punctuation -> spaces,
  whitespace collapsed), appears as a whole word sequence in the normalized response and, when
  the expected response is "positive"/"negative", the other label does not appear.
* Guidelines: one guideline per line (bullets allowed). Recognized checks: "lowercase" -> the
  response has no uppercase letter; "single word"/"one word" -> exactly one whitespace-separated
  word; "no punctuation"/"without punctuation" -> no ASCII punctuation. Unrecognized guidelines
  pass. A "no" rationale quotes the failing guideline.
* Both sections present -> "yes" iff both pass. Neither (e.g. a Safety-style prompt) -> "yes"
  ("no criterion recognized"). No ``<response>`` tag -> 400.
* After :meth:`SimulatedLLM.garble_judge_answers` (fraction), that share of judge requests gets
  GARBLED_JUDGE_ANSWER instead, prose with no JSON in it. Which requests is decided by a hash of their
  messages: the same request always gets the same answer, and a judge asked again (a longer
  conversation) draws anew. The tags are read from the first user message, so a re-asked judge that
  draws a usable answer gives the same verdict.
"""

from __future__ import annotations

import argparse
import collections
import copy
import hashlib
import json
import random
import re
import string
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "TASK_MODEL",
    "JUDGE_MODEL",
    "REFLECT_MODEL",
    "REFLECT_DROPS_VARIABLE_MODEL",
    "REFLECT_INVENTS_VARIABLE_MODEL",
    "REFLECT_MODELS",
    "KNOWN_MODELS",
    "KINDS",
    "POSITIVE_WORDS",
    "NEGATIVE_WORDS",
    "SARCASM_MARKERS",
    "SEED_INSTRUCTION",
    "OPTIMAL_INSTRUCTION",
    "RULE_SINGLE_WORD",
    "RULE_LOWERCASE",
    "RULE_ONE_LOWERCASE_WORD",
    "RULE_SARCASM",
    "METAPROMPT_SYSTEM_PREFIX",
    "GARBLED_JUDGE_ANSWER",
    "SimulatedLLM",
    "SimulatedLLMError",
    "respond",
    "classify",
    "true_label",
    "has_sarcasm_marker",
    "estimate_tokens",
    "sentiment_dataset",
    "main",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

TASK_MODEL = "sim-task"
JUDGE_MODEL = "sim-judge"
REFLECT_MODEL = "sim-reflect"
REFLECT_DROPS_VARIABLE_MODEL = "sim-reflect-drops-variable"
REFLECT_INVENTS_VARIABLE_MODEL = "sim-reflect-invents-variable"
REFLECT_MODELS = (REFLECT_MODEL, REFLECT_DROPS_VARIABLE_MODEL, REFLECT_INVENTS_VARIABLE_MODEL)
KNOWN_MODELS = (TASK_MODEL, JUDGE_MODEL) + REFLECT_MODELS

#: Request kinds counted by :attr:`SimulatedLLM.calls`.
KINDS = ("task", "reflection", "metaprompt", "judge")

POSITIVE_WORDS = frozenset(
    ["love", "great", "excellent", "wonderful", "amazing", "fantastic", "delightful", "enjoyed", "superb", "brilliant"]
)
NEGATIVE_WORDS = frozenset(
    ["hate", "terrible", "awful", "horrible", "worst", "boring", "disappointing", "broken", "useless", "dreadful"]
)
SARCASM_MARKERS = ("yeah right", "oh great", "just what i needed", "as if", "/s")

SEED_INSTRUCTION = "Classify the sentiment of this review.\n\n{{review}}"
RULE_SINGLE_WORD = "Answer with a single word: only the label."
RULE_LOWERCASE = "Write the label in lowercase."
RULE_ONE_LOWERCASE_WORD = "Answer with only the label, written as one lowercase word."
RULE_SARCASM = "Watch for sarcasm: sarcastic praise means the opposite label."
OPTIMAL_INSTRUCTION = (
    "Classify the sentiment of this review.\n" + RULE_ONE_LOWERCASE_WORD + "\n" + RULE_SARCASM + "\n\n{{review}}"
)

METAPROMPT_SYSTEM_PREFIX = "You are an expert prompt engineer"
GEPA_REFLECTION_MARKERS = (
    "I provided an assistant with the following instructions",
    "Your task is to write a new instruction",
)
MADE_UP_LINE = "Context: {{made_up}}"
GARBLED_JUDGE_ANSWER = "Honestly, the response seems reasonable to me, more or less."

_SINGLE_WORD_RE = re.compile(r"\b(?:single|one)[\s-]word\b|\bonly the label\b", re.I)
_LOWERCASE_RE = re.compile(r"\blower[\s-]?case\b", re.I)
_NO_PUNCT_RE = re.compile(r"\b(?:no|without)\s+punctuation\b", re.I)
_SARCASM_MARKER_RE = re.compile(
    r"\byeah,?\s+right\b|\boh,?\s+great\b|\bjust what i needed\b|\bas if\b|(?<!\S)/s(?=$|[\s.,!?])", re.I
)
_PLACEHOLDER_RE = re.compile(r"\{\{\s*[\w.\-]+\s*\}\}")
_WORD_RE = re.compile(r"[a-z]+")
_LABELS = ("positive", "negative")


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


# --------------------------------------------------------------------------------------------
# The simulated world: pure functions
# --------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Deterministic token estimate: ceil(whitespace-separated words * 4 / 3)."""
    return (4 * len(text.split()) + 2) // 3


def has_sarcasm_marker(text: str) -> bool:
    return _SARCASM_MARKER_RE.search(text) is not None


def _lexicon_counts(text: str) -> tuple[int, int]:
    words = _WORD_RE.findall(text.lower())
    return sum(w in POSITIVE_WORDS for w in words), sum(w in NEGATIVE_WORDS for w in words)


def _flip(label: str) -> str:
    return "negative" if label == "positive" else "positive"


def true_label(text: str) -> str | None:
    """The sentiment a perfectly instructed sim-task gives ``text`` (sarcasm applied), or None."""
    pos, neg = _lexicon_counts(text)
    if pos + neg == 0:
        return None
    label = "positive" if pos > neg else "negative"
    return _flip(label) if has_sarcasm_marker(text) else label


def classify(prompt: str) -> str:
    """The sim-task answer to a rendered prompt (see the module docstring)."""
    pos, neg = _lexicon_counts(prompt)
    if pos + neg == 0:
        return "echo: " + prompt
    label = "positive" if pos > neg else "negative"
    if "sarcas" in prompt.lower() and has_sarcasm_marker(prompt):
        label = _flip(label)
    if not _LOWERCASE_RE.search(prompt):
        label = label.capitalize()
    if _SINGLE_WORD_RE.search(prompt):
        return label
    return f"The sentiment of this text is {label}."


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _contains_phrase(haystack_norm: str, needle_norm: str) -> bool:
    return bool(needle_norm) and f" {needle_norm} " in f" {haystack_norm} "


# ---- rules and templates -------------------------------------------------------------------


def _missing(rule: str, template: str) -> bool:
    """Whether ``template`` lacks what ``rule`` asks for (by the same cues sim-task reacts to)."""
    if rule == RULE_SINGLE_WORD:
        return not _SINGLE_WORD_RE.search(template)
    if rule == RULE_LOWERCASE:
        return not _LOWERCASE_RE.search(template)
    if rule == RULE_ONE_LOWERCASE_WORD:
        return not _SINGLE_WORD_RE.search(template) and not _LOWERCASE_RE.search(template)
    if rule == RULE_SARCASM:
        return "sarcas" not in template.lower()
    raise ValueError(rule)


def _insert_rule(template: str, rule: str) -> str:
    lines = template.split("\n")
    for i, line in enumerate(lines):
        if _PLACEHOLDER_RE.search(line):
            j = i
            while j > 0 and not lines[j - 1].strip():
                j -= 1
            lines.insert(j, rule)
            return "\n".join(lines)
    return template.rstrip("\n") + "\n" + rule if template.strip() else rule


def _misbehave(model: str, template: str) -> str:
    if model == REFLECT_DROPS_VARIABLE_MODEL:
        return _PLACEHOLDER_RE.sub("", template, count=1).rstrip()
    if model == REFLECT_INVENTS_VARIABLE_MODEL and MADE_UP_LINE not in template:
        return template.rstrip("\n") + "\n" + MADE_UP_LINE
    return template


def _output_label(output: str) -> str | None:
    words = set(_WORD_RE.findall(output.lower()))
    found = [lab for lab in _LABELS if lab in words]
    return found[0] if len(found) == 1 else None


def _example_rules(inputs_text: str, output: str, expected: str | None, failing: bool) -> list[str]:
    """Rules one failing example gives evidence for, most important cause first."""
    if not failing or expected is None:
        return []
    out, exp = output.strip(), expected.strip()
    exp_label = _normalize(exp) if _normalize(exp) in _LABELS else None
    if exp_label is not None and _output_label(out) != exp_label:
        # Wrong label: only sarcasm explains it in this world.
        return [RULE_SARCASM] if has_sarcasm_marker(inputs_text) else []
    rules = []
    if len(exp.split()) == 1 and len(out.split()) > 1:
        rules.append(RULE_SINGLE_WORD)
        # The expected word appears in the sentence but in another case.
        exp_word = _normalize(exp)
        tokens = re.findall(r"[A-Za-z0-9]+", out)
        if exp == exp.lower() and any(t.lower() == exp_word and t != exp_word for t in tokens):
            rules.append(RULE_LOWERCASE)
    elif out != exp and out.lower() == exp.lower() and exp == exp.lower():
        rules.append(RULE_LOWERCASE)
    return rules


def _rules_to_add(evidence: list[list[str]], template: str, first_only: bool) -> list[str]:
    """Missing rules in priority order (format, lowercase, sarcasm); fused format rule if needed."""
    found = {r for rules in evidence for r in rules}
    fused = any(RULE_SINGLE_WORD in rules and RULE_LOWERCASE in rules for rules in evidence)
    ordered: list[str] = []
    if fused and _missing(RULE_ONE_LOWERCASE_WORD, template):
        ordered.append(RULE_ONE_LOWERCASE_WORD)
    else:
        for rule in (RULE_SINGLE_WORD, RULE_LOWERCASE):
            if rule in found and _missing(rule, template):
                ordered.append(rule)
    if RULE_SARCASM in found and _missing(RULE_SARCASM, template):
        ordered.append(RULE_SARCASM)
    return ordered[:1] if first_only else ordered


_REASONS = {
    RULE_ONE_LOWERCASE_WORD: (
        "the assistant wrote a sentence with a capitalized label where one lowercase word was expected"
    ),
    RULE_SINGLE_WORD: "the assistant wrote a sentence where a single word was expected",
    RULE_LOWERCASE: "the assistant wrote the right word in the wrong letter case",
    RULE_SARCASM: "the assistant took sarcastic inputs literally and gave the opposite label",
}

_SCORE_LINE_RE = re.compile(
    r"^\s*[-*]?\s*[A-Za-z][\w .()/\-]{0,60}?\s*:\s*(yes|no|true|false|pass|passed|fail|failed|-?\d+(?:\.\d+)?)\b",
    re.I | re.M,
)


def _feedback_failed(feedback: str) -> bool | None:
    values = _SCORE_LINE_RE.findall(feedback or "")
    if not values:
        return None
    for v in values:
        v = v.lower()
        if v in ("no", "false", "fail", "failed"):
            return True
        if v not in ("yes", "true", "pass", "passed") and float(v) < 1.0:
            return True
    return False


# ---- GEPA reflection -----------------------------------------------------------------------


def _is_gepa_reflection(text: str) -> bool:
    if any(m in text for m in GEPA_REFLECTION_MARKERS):
        return True
    return "```" in text and re.search(r"^# Example 1\s*$", text, re.M) is not None


def _split_sections(body: str, level: int) -> dict[str, str]:
    header = re.compile(r"^" + "#" * level + r" (.+?)\s*$", re.M)
    matches = list(header.finditer(body))
    sections: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        sections[m.group(1).strip()] = body[m.end() : end].strip()
    return sections


_OUTPUT_KEYS = ("generated outputs", "generated output", "output", "outputs", "response")
_EXPECTED_KEYS = ("expected response", "expected output", "expected")


def _parse_gepa_request(text: str) -> tuple[str, list[dict[str, Any]]]:
    first = text.find("```")
    if first < 0:
        raise SimulatedLLMError(400, "gepa reflection request without ``` fences around the current instruction")
    start = first + 3
    marker = text.find("\n```\n\nThe following are examples", start)
    end = marker if marker >= 0 else text.find("```", start)
    if end < 0:
        raise SimulatedLLMError(400, "gepa reflection request: unterminated ``` fence around the current instruction")
    instruction = text[start:end]
    instruction = instruction[1:] if instruction.startswith("\n") else instruction
    instruction = instruction[:-1] if instruction.endswith("\n") and marker < 0 else instruction
    rest = text[end + 3 :]
    first_ex = re.search(r"^# Example \d+\s*$", rest, re.M)
    examples: list[dict[str, Any]] = []
    if first_ex:
        region = rest[first_ex.start() :]
        closing = list(re.finditer(r"^```\s*$", region, re.M))
        if closing:
            region = region[: closing[-1].start()]
        for chunk in re.split(r"^# Example \d+\s*$", region, flags=re.M)[1:]:
            sections = {k.lower(): v for k, v in _split_sections(chunk, 2).items()}
            inputs_body = sections.get("inputs", "")
            inputs = _split_sections(inputs_body, 3) or ({"input": inputs_body} if inputs_body else {})
            output = next((sections[k] for k in _OUTPUT_KEYS if k in sections), "")
            expected = next((sections[k] for k in _EXPECTED_KEYS if k in sections), None)
            if expected is None and "expectations" in sections:  # MLflow's records: a dict of expectations
                expectations = {k.lower(): v for k, v in _split_sections(sections["expectations"], 3).items()}
                expected = expectations.get("expected_response")
            feedback = sections.get("feedback", "")
            if not feedback and "score" in sections:  # MLflow's records: the aggregate score, no feedback text
                feedback = f"score: {sections['score']}"
            if expected is None:
                m = re.search(r"expected '([^']*)'", feedback) or re.search(r'expected "([^"]*)"', feedback)
                expected = m.group(1) if m else None
            examples.append({"inputs": inputs, "output": output, "expected": expected, "feedback": feedback})
    return instruction, examples


def _gepa_answer(model: str, text: str) -> str:
    instruction, examples = _parse_gepa_request(text)
    evidence = []
    for ex in examples:
        failed = _feedback_failed(ex["feedback"])
        if failed is None:
            failed = ex["expected"] is None or ex["output"].strip() != ex["expected"].strip()
        inputs_text = "\n".join(str(v) for v in ex["inputs"].values())
        evidence.append(_example_rules(inputs_text, ex["output"], ex["expected"], failed))
    rules = _rules_to_add(evidence, instruction, first_only=True)
    if rules:
        new = _insert_rule(instruction, rules[0])
        sentence = f"Looking at the examples, {_REASONS[rules[0]]}, so I added one rule and kept the rest."
    else:
        new = instruction
        sentence = "No example shows a fault that a new rule would fix, so the instruction stays as it is."
    new = _misbehave(model, new)
    return f"{sentence}\n```\n{new}\n```"


# ---- MetaPrompt ----------------------------------------------------------------------------


def _json_after(section: str, what: str, want: type) -> Any:
    """Decode the first JSON value of type ``want`` in a section (fenced or not)."""
    opener = "{" if want is dict else "["
    idx = section.find(opener)
    if idx < 0:
        raise SimulatedLLMError(400, f"metaprompt contract: the '### {what}' section has no JSON {want.__name__}")
    try:
        value, _ = json.JSONDecoder().raw_decode(section[idx:])
    except json.JSONDecodeError as exc:
        raise SimulatedLLMError(400, f"metaprompt contract: the '### {what}' JSON is invalid: {exc}") from None
    if not isinstance(value, want):
        raise SimulatedLLMError(400, f"metaprompt contract: the '### {what}' JSON must be a {want.__name__}")
    return value


def _guideline_rules(guidelines: str) -> list[str]:
    rules = []
    if _SINGLE_WORD_RE.search(guidelines):
        rules.append(RULE_SINGLE_WORD)
    if _LOWERCASE_RE.search(guidelines):
        rules.append(RULE_LOWERCASE)
    if "sarcas" in guidelines.lower():
        rules.append(RULE_SARCASM)
    return rules


def _metaprompt_answer(model: str, system: str | None, user: str) -> str:
    if system is None or not system.lstrip().startswith(METAPROMPT_SYSTEM_PREFIX):
        raise SimulatedLLMError(
            400, f"metaprompt contract: the system message must start with {METAPROMPT_SYSTEM_PREFIX!r}"
        )
    sections = {k.lower(): v for k, v in _split_sections(user, 3).items()}
    if "current prompts" not in sections:
        raise SimulatedLLMError(400, "metaprompt contract: the user message needs a '### Current prompts' section")
    prompts = _json_after(sections["current prompts"], "Current prompts", dict)
    if not prompts or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise SimulatedLLMError(
            400, "metaprompt contract: '### Current prompts' must map prompt names to template strings"
        )
    guidelines = sections.get("guidelines", "")
    examples: list[Any] = []
    if sections.get("examples", "").strip():
        examples = _json_after(sections["examples"], "Examples", list)
    evidence: list[list[str]] = []
    for ex in examples:
        if not isinstance(ex, dict):
            raise SimulatedLLMError(400, "metaprompt contract: each example must be a JSON object")
        inputs = ex.get("inputs") or {}
        inputs_text = "\n".join(str(v) for v in inputs.values()) if isinstance(inputs, dict) else str(inputs)
        output = str(ex.get("output") or "")
        expected = ex.get("expected")
        expected = None if expected is None else str(expected)
        score = ex.get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            failing = score < 1.0
        else:
            failing = expected is None or output.strip() != expected.strip()
        evidence.append(_example_rules(inputs_text, output, expected, failing))

    guideline_rules = _guideline_rules(guidelines)
    new_prompts: dict[str, str] = {}
    added_any: list[str] = []
    for name, template in prompts.items():
        if examples:
            rules = _rules_to_add(evidence, template, first_only=False)
        else:
            rules = [RULE_SINGLE_WORD] if _missing(RULE_SINGLE_WORD, template) else []
        for rule in guideline_rules:
            if rule not in rules and _missing(rule, template) and not (
                rule in (RULE_SINGLE_WORD, RULE_LOWERCASE) and RULE_ONE_LOWERCASE_WORD in rules
            ):
                rules.append(rule)
        for rule in rules:
            template = _insert_rule(template, rule)
            if rule not in added_any:
                added_any.append(rule)
        new_prompts[name] = _misbehave(model, template)
    mode = f"few-shot ({len(examples)} examples)" if examples else "zero-shot"
    if added_any:
        rationale = f"{mode}: added " + " ".join(repr(r) for r in added_any)
        if not examples:
            rationale += " (best practice: state the output format; the rest follows the guidelines)"
    else:
        rationale = f"{mode}: nothing to add; the prompts are unchanged"
    return json.dumps({"prompts": new_prompts, "rationale": rationale})


# ---- Judge ---------------------------------------------------------------------------------


def _tag(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>(.*?)</{name}>", text, re.S)
    return m.group(1).strip() if m else None


def _judge_answer(text: str) -> str:
    response = _tag(text, "response")
    if response is None:
        raise SimulatedLLMError(400, "judge contract: the request needs a <response>...</response> section")
    expected = _tag(text, "expected_response")
    guidelines = _tag(text, "guidelines")
    failures: list[str] = []
    passes: list[str] = []
    if expected is not None:
        resp_n, exp_n = _normalize(response), _normalize(expected)
        if not _contains_phrase(resp_n, exp_n):
            failures.append(f"The response does not contain the expected response {expected!r}.")
        elif exp_n in _LABELS and _contains_phrase(resp_n, _flip(exp_n)):
            failures.append(f"The response also names the other label {_flip(exp_n)!r}.")
        else:
            passes.append(f"the response states the expected response {expected!r}")
    if guidelines is not None:
        for raw in guidelines.splitlines():
            item = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", raw).strip()
            if not item:
                continue
            checks = []
            if _LOWERCASE_RE.search(item):
                checks.append(("lowercase", response == response.lower(), "it has uppercase letters"))
            if re.search(r"\b(?:single|one)[\s-]word\b", item, re.I):
                checks.append(("single word", len(response.split()) == 1, f"it has {len(response.split())} words"))
            if _NO_PUNCT_RE.search(item):
                ok = not any(c in string.punctuation for c in response)
                checks.append(("no punctuation", ok, "it has punctuation"))
            for name, ok, why in checks:
                if ok:
                    passes.append(f"guideline {item!r} ({name}) is met")
                else:
                    failures.append(f"The response does not follow the guideline {item!r}: {why}.")
    if failures:
        return json.dumps({"result": "no", "rationale": " ".join(failures)})
    if expected is None and guidelines is None:
        rationale = "No criterion recognized (no <expected_response> or <guidelines>); passing by default."
    elif passes:
        rationale = "Yes: " + "; ".join(passes) + "."
    else:
        rationale = "No recognized guideline applies; passing by default."
    return json.dumps({"result": "yes", "rationale": rationale})


# ---- dispatch ------------------------------------------------------------------------------


def _respond(model: str, messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(kind, content) for a chat request; raises SimulatedLLMError on contract violations."""
    if model not in KNOWN_MODELS:
        raise SimulatedLLMError(
            404,
            f"The model '{model}' does not exist (the simulated LLM knows {', '.join(KNOWN_MODELS)})",
            code="model_not_found",
        )
    texts = [_content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    full = "\n".join(texts)
    if model == TASK_MODEL:
        return "task", classify(full)
    if model == JUDGE_MODEL:
        return "judge", _judge_answer(full)
    if re.search(r"^###\s+Current prompts\s*$", full, re.M | re.I):
        system = next(
            (_content_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "system"),
            None,
        )
        user = "\n".join(
            _content_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") != "system"
        )
        return "metaprompt", _metaprompt_answer(model, system, user)
    if _is_gepa_reflection(full):
        return "reflection", _gepa_answer(model, full)
    raise SimulatedLLMError(
        400,
        f"{model} did not recognize the request: expected gepa's instruction-proposal prompt or the MetaPrompt "
        "contract (see promptopt.simulated_llm)",
    )


def respond(model: str, messages: list[dict[str, Any]]) -> str:
    """The content the server would answer for ``model`` and ``messages`` (no HTTP, no faults).

    Raises :class:`SimulatedLLMError` for an unknown model or a request breaking a contract.
    """
    return _respond(model, messages)[1]


def _draw(messages: list[dict[str, Any]]) -> float:
    """A number in [0, 1) fixed by the messages: the same request draws the same, another one anew."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --------------------------------------------------------------------------------------------
# Sample data
# --------------------------------------------------------------------------------------------

_SUBJECTS = [
    "film", "phone", "novel", "hotel stay", "pair of headphones", "restaurant", "video game", "laptop",
    "concert", "coffee maker", "museum tour", "podcast",
]  # fmt: skip
_POS_ADJ = ["great", "excellent", "wonderful", "amazing", "fantastic", "delightful", "superb", "brilliant"]
_NEG_ADJ = ["terrible", "awful", "horrible", "boring", "disappointing", "broken", "useless", "dreadful"]
_POS_TEMPLATES = [
    "The {subject} was {adj}.",
    "I love this {subject}; the whole thing felt {adj}.",
    "What {a_adj} {subject}. I enjoyed every minute of it.",
    "Honestly {a_adj} {subject}, and the price was fair too.",
    "I enjoyed the {subject} a lot. {Adj} from start to finish.",
]
_NEG_TEMPLATES = [
    "The {subject} was {adj}.",
    "I hate this {subject}; it felt {adj}.",
    "What {a_adj} {subject}. I want my money back.",
    "The {subject} turned out {adj}, and support never replied.",
    "Truly the worst {subject} I have tried. {Adj} and slow.",
]
_SARCASTIC_TEMPLATES = [  # praise words plus a sarcasm marker, no negative word: the truth is negative
    "Oh great, the {subject} stopped working after one day.",
    "Yeah right, {a_adj} {subject}. It lasted ten minutes.",
    "Just what I needed: {a_adj} {subject} that never shows up on time.",
    "A truly {adj} {subject}, as if anyone could sit through three hours of that.",
    "Wow, {adj} {subject}, I just love waiting two weeks for a refund /s",
]


def sentiment_dataset(n: int = 20, seed: int = 0, sarcasm_ratio: float = 0.25) -> list[dict[str, Any]]:
    """``n`` deterministic MLflow-format records for the simulated sentiment world.

    Each record is ``{"inputs": {"review": str}, "expectations": {"expected_response":
    "positive"|"negative"}}``. ``round(n * sarcasm_ratio)`` reviews are sarcastic praise (expected
    "negative"); the rest are split evenly between plain positive and plain negative reviews.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    n_sarcastic = round(n * sarcasm_ratio)
    rest = n - n_sarcastic
    kinds = ["sarcastic"] * n_sarcastic + ["positive"] * ((rest + 1) // 2) + ["negative"] * (rest // 2)
    rng.shuffle(kinds)
    seen: set[str] = set()
    records = []
    for kind in kinds:
        templates, adjs, expected = {
            "positive": (_POS_TEMPLATES, _POS_ADJ, "positive"),
            "negative": (_NEG_TEMPLATES, _NEG_ADJ, "negative"),
            "sarcastic": (_SARCASTIC_TEMPLATES, _POS_ADJ, "negative"),
        }[kind]
        for _attempt in range(50):
            adj = rng.choice(adjs)
            a_adj = ("an " if adj[0] in "aeiou" else "a ") + adj
            review = rng.choice(templates).format(
                subject=rng.choice(_SUBJECTS), adj=adj, Adj=adj.capitalize(), a_adj=a_adj
            )
            if review not in seen:
                break
        seen.add(review)
        records.append({"inputs": {"review": review}, "expectations": {"expected_response": expected}})
    return records


# --------------------------------------------------------------------------------------------
# The HTTP server
# --------------------------------------------------------------------------------------------

_STATUS_ERRORS = {
    400: ("Bad request (simulated fault)", "invalid_request_error", None),
    429: ("Rate limit reached for requests (simulated fault)", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (simulated fault)", "server_error", None),
    502: ("Bad gateway (simulated fault)", "server_error", None),
    503: ("The engine is currently overloaded (simulated fault)", "server_error", "service_unavailable"),
}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    server_version = "SimulatedLLM/1.0"
    sim: SimulatedLLM  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.sim.verbose:
            sys.stderr.write("simulated-llm: " + (format % args) + "\n")

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (ConnectionError, OSError):
            pass  # the client gave up (e.g. after an injected timeout)

    def _authorized(self) -> bool:
        key = self.sim.api_key
        if key is None:
            return True
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer ") :].strip() == key

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif path in ("/v1/models", "/models"):
            if not self._authorized():
                self._send(401, SimulatedLLM.AUTH_ERROR)
                return
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "promptopt-simulated"} for m in KNOWN_MODELS]
            self._send(200, {"object": "list", "data": data})
        else:
            self._send(404, SimulatedLLMError(404, f"Unknown path {path}").body())

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, SimulatedLLMError(404, f"Unknown path {path}").body())
            return
        status, body, headers = self.sim._handle_chat(raw, self._authorized())
        if status is not None:
            self._send(status, body, headers)


class SimulatedLLM:
    """A deterministic OpenAI-compatible TEST DOUBLE serving the simulated models over HTTP.

    ``SimulatedLLM(api_key=None, latency_s=0.0, host="127.0.0.1", port=0, log_size=1000,
    verbose=False)``; a context manager (``start``/``stop``). ``port=0`` picks a free port.
    All methods are thread-safe.
    """

    AUTH_ERROR = {
        "error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}
    }

    def __init__(
        self,
        api_key: str | None = None,
        latency_s: float = 0.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_size: int = 1000,
        verbose: bool = False,
    ):
        self.api_key = api_key
        self.host = host
        self.port = port
        self.verbose = verbose
        self._initial_latency = float(latency_s)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=log_size)
        self._init_state()

    def _init_state(self) -> None:
        self._latency = self._initial_latency
        self._model_latency: dict[str, float] = {}
        self._faults: list[dict[str, Any]] = []
        self._garbled_fraction = 0.0
        self._garbled = 0
        self._seq = 0
        self._calls = {k: 0 for k in KINDS}
        self._calls_by_model: dict[str, int] = {}
        self._errors: dict[int, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._log.clear()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> SimulatedLLM:
        if self._server is not None:
            return self
        self._stopping.clear()
        handler = type("SimulatedLLMHandler", (_Handler,), {"sim": self})
        server = ThreadingHTTPServer((self.host, self.port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="simulated-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes requests sleeping in latency / injected timeouts
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> SimulatedLLM:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` (the server must be started)."""
        if self._server is None:
            raise RuntimeError("SimulatedLLM is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def litellm_kwargs(self, model: str = TASK_MODEL) -> dict[str, Any]:
        """Keyword arguments for ``litellm.completion`` reaching ``model`` on this server."""
        return {"model": f"openai/{model}", "api_base": self.base_url, "api_key": self.api_key or "sk-simulated"}

    # ---- configuration and fault injection ---------------------------------------------

    def set_latency(self, seconds: float, model: str | None = None) -> None:
        """Fixed delay before every answer: globally, or for one model (overrides the global one)."""
        with self._lock:
            if model is None:
                self._latency = float(seconds)
            else:
                self._model_latency[model] = float(seconds)

    def inject(self, status: int, times: int = 1, *, model: str | None = None, retry_after: int = 0) -> None:
        """The next ``times`` chat requests (to ``model`` if given) get HTTP ``status``.

        The body is an OpenAI-style error; 429 carries ``Retry-After: <retry_after>`` (seconds) and
        ``retry-after-ms`` (10 when retry_after is 0, so SDK retries are immediate).
        Faults queue in order with :meth:`inject_timeout`.
        """
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        with self._lock:
            self._faults.append({"kind": "status", "status": int(status), "times": int(times), "model": model,
                                 "retry_after": int(retry_after)})  # fmt: skip

    def inject_timeout(self, times: int = 1, seconds: float = 5.0, *, model: str | None = None) -> None:
        """The next ``times`` chat requests (to ``model`` if given) hang ``seconds`` before answering normally."""
        with self._lock:
            self._faults.append({"kind": "timeout", "seconds": float(seconds), "times": int(times), "model": model})

    def garble_judge_answers(self, fraction: float) -> None:
        """From now on, about ``fraction`` of judge requests get GARBLED_JUDGE_ANSWER (no JSON verdict) instead of
        the judge's answer; which ones is a pure function of each request's messages. 0 turns it off."""
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be between 0 and 1")
        with self._lock:
            self._garbled_fraction = float(fraction)

    @property
    def garbled_answers(self) -> int:
        """Judge answers garbled so far."""
        with self._lock:
            return self._garbled

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(f["times"] for f in self._faults)

    def reset(self) -> None:
        """Clear counters, the request log, pending faults and latency settings (back to the constructor's)."""
        with self._lock:
            self._init_state()

    # ---- observability ------------------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """Successful (200) calls per kind: task, reflection, metaprompt, judge."""
        with self._lock:
            return dict(self._calls)

    @property
    def calls_by_model(self) -> dict[str, int]:
        """Successful (200) calls per model name."""
        with self._lock:
            return dict(self._calls_by_model)

    @property
    def errors(self) -> dict[int, int]:
        """Error answers per HTTP status (401, 404, injected faults, contract 400s...)."""
        with self._lock:
            return dict(self._errors)

    @property
    def request_count(self) -> int:
        """Every chat-completion request received, whatever its answer."""
        with self._lock:
            return self._seq

    @property
    def tokens(self) -> dict[str, int]:
        """Token usage summed over successful answers."""
        with self._lock:
            return {
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "total_tokens": self._prompt_tokens + self._completion_tokens,
            }

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recent chat requests, oldest first: seq, model, kind, status, messages, prompt, response,
        prompt_tokens, completion_tokens, fault, elapsed_s. Credentials are never recorded."""
        with self._lock:
            return copy.deepcopy(list(self._log))

    def last_request(self, kind: str | None = None, model: str | None = None) -> dict[str, Any] | None:
        """The most recent logged request matching ``kind`` / ``model``, or None."""
        with self._lock:
            for rec in reversed(self._log):
                if (kind is None or rec["kind"] == kind) and (model is None or rec["model"] == model):
                    return copy.deepcopy(rec)
        return None

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter."""
        return {
            "requests": self.request_count,
            "calls": self.calls,
            "calls_by_model": self.calls_by_model,
            "errors": self.errors,
            "tokens": self.tokens,
        }

    # ---- request handling (called from server threads) ---------------------------------

    def _take_fault(self, model: str | None) -> dict[str, Any] | None:
        for fault in self._faults:
            if fault["model"] is None or fault["model"] == model:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _finish(self, rec: dict[str, Any], status: int, response: str, started: float) -> None:
        rec["status"] = status
        rec["response"] = response
        rec["elapsed_s"] = round(time.monotonic() - started, 4)
        with self._lock:
            if status == 200:
                self._calls[rec["kind"]] = self._calls.get(rec["kind"], 0) + 1
                self._calls_by_model[rec["model"]] = self._calls_by_model.get(rec["model"], 0) + 1
                self._prompt_tokens += rec["prompt_tokens"]
                self._completion_tokens += rec["completion_tokens"]
            else:
                self._errors[status] = self._errors.get(status, 0) + 1
            self._log.append(rec)

    def _handle_chat(self, raw: bytes, authorized: bool) -> tuple[int | None, dict[str, Any], dict[str, str] | None]:
        started = time.monotonic()
        with self._lock:
            self._seq += 1
            seq = self._seq
        rec: dict[str, Any] = {"seq": seq, "model": None, "kind": None, "messages": [], "prompt": "",
                               "prompt_tokens": 0, "completion_tokens": 0, "fault": None}  # fmt: skip

        def fail(err: SimulatedLLMError, headers: dict[str, str] | None = None):
            self._finish(rec, err.status, err.message, started)
            return err.status, err.body(), headers

        try:
            req = json.loads(raw or b"null")
        except ValueError:
            return fail(SimulatedLLMError(400, "The request body is not valid JSON"))
        if not isinstance(req, dict):
            return fail(SimulatedLLMError(400, "The request body must be a JSON object"))
        model = req.get("model")
        messages = req.get("messages")
        rec["model"] = model if isinstance(model, str) else None
        if isinstance(messages, list):
            rec["messages"] = [
                {"role": m.get("role"), "content": _content_text(m.get("content"))}
                for m in messages
                if isinstance(m, dict)
            ]
            rec["prompt"] = "\n".join(m["content"] for m in rec["messages"])

        with self._lock:
            delay = self._model_latency.get(model, self._latency) if isinstance(model, str) else self._latency
        if delay > 0 and self._stopping.wait(delay):
            return None, {}, None

        if not authorized:
            err = SimulatedLLMError(401, "Incorrect API key provided", code="invalid_api_key")
            return fail(err)

        with self._lock:
            fault = self._take_fault(rec["model"])
        if fault is not None and fault["kind"] == "timeout":
            rec["fault"] = "timeout"
            if self._stopping.wait(fault["seconds"]):
                return None, {}, None
        elif fault is not None:
            status = fault["status"]
            rec["fault"] = str(status)
            message, type_, code = _STATUS_ERRORS.get(status, (f"Simulated HTTP {status}", "server_error", None))
            headers = None
            if status == 429:  # like OpenAI, also in ms; the openai SDK ignores a 0 and backs off ~0.5 s
                ra = fault["retry_after"]
                headers = {"Retry-After": str(ra), "retry-after-ms": str(ra * 1000 if ra > 0 else 10)}
            return fail(SimulatedLLMError(status, message, type_, code), headers)

        if not isinstance(model, str) or not isinstance(messages, list):
            return fail(SimulatedLLMError(400, "The request needs 'model' (string) and 'messages' (array)"))
        if req.get("stream"):
            msg = "stream=true is not supported by the simulated LLM"
            return fail(SimulatedLLMError(400, msg, code="unsupported_parameter"))
        try:
            kind, content = _respond(model, messages)
        except SimulatedLLMError as err:
            if err.status != 404:
                rec["kind"] = "task" if model == TASK_MODEL else "judge" if model == JUDGE_MODEL else None
            return fail(err)
        except Exception as exc:  # a bug in the double must surface, not hang the client
            msg = f"simulated LLM internal error: {exc!r}"
            return fail(SimulatedLLMError(500, msg, "server_error", "sim_internal_error"))

        with self._lock:
            garble = kind == "judge" and _draw(rec["messages"]) < self._garbled_fraction
            self._garbled += garble
        if garble:
            content, rec["fault"] = GARBLED_JUDGE_ANSWER, "garbled"
        finish_reason = "stop"
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        if isinstance(limit, int) and limit > 0 and estimate_tokens(content) > limit:
            keep = max(1, (limit * 3) // 4)
            ends = [m.end() for m in re.finditer(r"\S+", content)]
            content = content[: ends[keep - 1]] if keep <= len(ends) else content
            finish_reason = "length"
        prompt_tokens = estimate_tokens(rec["prompt"])
        completion_tokens = estimate_tokens(content)
        rec.update(kind=kind, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self._finish(rec, 200, content, started)
        body = {
            "id": f"chatcmpl-sim-{seq:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "simulated-llm",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return 200, body, None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m promptopt.simulated_llm",
        description="Run the simulated OpenAI-compatible LLM (a deterministic test double) in the foreground. "
        "Prints its base URL on the first line of stdout.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--api-key", default=None, help="require this bearer token (default: accept any)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before every answer")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    args = parser.parse_args(argv)
    llm = SimulatedLLM(
        api_key=args.api_key, latency_s=args.latency, host=args.host, port=args.port, verbose=args.verbose
    )
    llm.start()
    print(llm.base_url, flush=True)
    print(
        f"simulated LLM (test double) serving {', '.join(KNOWN_MODELS)}; litellm model 'openai/<name>', "
        f"api_base={llm.base_url}. Ctrl-C stops it.",
        file=sys.stderr,
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        llm.stop()
    return 0

