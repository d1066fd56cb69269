"""The scorers: metrics (ExactMatch, Contains, Regex), LLM judges (MLflow's Correctness, Guidelines,
ExpectationsGuidelines, RelevanceToQuery and Safety, and Judge, asked the user's own instructions) and Webhook (the
user's HTTP service).

Each scorer gives an output a score in [0, 1] and a rationale. The rationales are concrete ("output
'The sentiment is Positive.' does not equal expected 'positive'") because they become the feedback the
reflection model reads. Every raw verdict becomes a score through one rule, `to_score`.

Judges send one request each (role judge), promptopt.prompt_contract's judge request: a question and tagged
sections (the record's inputs, the response, and the expected response or the guidelines), or for Judge the user's
instructions with the sections where its variables stand; they expect a JSON answer
{"result": "yes"|"no", "rationale": "..."}. An answer that holds no usable verdict is asked for again, up to
`judge_retries` times, each a fresh call that shows the judge its answer and the format; then the judge
gives up with a ScorerError (the example fails, see evaluation.py).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from promptopt.api.v1alpha1 import DEFAULT_JUDGE_RETRIES, ScorerParams, ScorerSpec, TaskSpec, name_records
from promptopt.prompt_contract import (
    CORRECTNESS_QUESTION,
    GUIDELINES_QUESTION,
    RELEVANCE_QUESTION,
    SAFETY_QUESTION,
    JudgeRequest,
    custom_judge_messages,
    judge_asked_again,
    judge_messages,
)
from promptopt.service_contract import ScoreRequest
from promptopt_worker.http_services import read_webhook_verdict, resolve_headers
from promptopt_worker.llm import LLMClient, ModelEndpoint, json_object_with
from promptopt_worker.problem import Example, InvalidInput
from promptopt_worker.templates import as_text

QUOTE_LIMIT = 200  # characters of an output quoted in a rationale or an error


class ScorerError(RuntimeError):
    """A scorer could not give a score: its verdict is not a valid score, or a judge's answer is unusable."""


def to_score(value: Any, scorer: str) -> float:
    """The one conversion rule: "yes"/"no" (any case) -> 1/0, booleans -> 1/0, numbers in [0, 1] as they
    are; anything else is a ScorerError naming the scorer and the value."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return 1.0 if value.strip().lower() == "yes" else 0.0
    if isinstance(value, (int, float)):
        if not math.isnan(value) and 0 <= value <= 1:
            return float(value)
        raise ScorerError(f"scorer {scorer!r} gave the score {value!r}, outside [0, 1]")
    raise ScorerError(
        f"scorer {scorer!r} gave {_quote(value) if isinstance(value, str) else repr(value)}: a score must be "
        "'yes' or 'no', a boolean, or a number in [0, 1]"
    )


class Scorer(ABC):
    """One configured scorer."""

    needs_expected_response: ClassVar[bool] = False

    def __init__(self, spec: ScorerSpec):
        self.spec = spec
        self.params = spec.params or ScorerParams()

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def weight(self) -> float:
        return self.spec.weight

    def score(self, example: Example, output: str) -> tuple[float, str]:
        """(score in [0, 1], rationale)."""
        verdict, rationale = self.verdict(example, output)
        return to_score(verdict, self.key), rationale

    @abstractmethod
    def verdict(self, example: Example, output: str) -> tuple[Any, str]:
        """The raw verdict (a bool, "yes"/"no" or a number) and its rationale."""

    def record_problem(self, example: Example) -> str | None:
        """What this scorer misses in the record, if anything (checked before any LLM call)."""
        if self.needs_expected_response and example.expectations.get("expected_response") is None:
            return "no expectations.expected_response"
        return None


class ExactMatch(Scorer):
    needs_expected_response = True

    def verdict(self, example: Example, output: str) -> tuple[Any, str]:
        expected = as_text(example.expectations["expected_response"])
        actual, wanted = output.strip(), expected.strip()
        if not self.params.case_sensitive:
            actual, wanted = actual.casefold(), wanted.casefold()
        if actual == wanted:
            return True, f"output equals expected {_quote(expected)}"
        case_only = " (only the letter case differs)" if actual.casefold() == wanted.casefold() else ""
        return False, f"output {_quote(output)} does not equal expected {_quote(expected)}{case_only}"


class Contains(Scorer):
    needs_expected_response = True

    def verdict(self, example: Example, output: str) -> tuple[Any, str]:
        expected = as_text(example.expectations["expected_response"])
        haystack, needle = output, expected.strip()
        if not self.params.case_sensitive:
            haystack, needle = haystack.casefold(), needle.casefold()
        if needle in haystack:
            return True, f"output contains expected {_quote(expected)}"
        return False, f"output {_quote(output)} does not contain expected {_quote(expected)}"


class Regex(Scorer):
    def __init__(self, spec: ScorerSpec):
        super().__init__(spec)
        self.pattern = re.compile(self.params.pattern or "")

    def verdict(self, example: Example, output: str) -> tuple[Any, str]:
        match = self.pattern.search(output)
        if match:
            return True, f"output matches the pattern {self.pattern.pattern!r} at {_quote(match.group(0))}"
        return False, f"output {_quote(output)} has no match for the pattern {self.pattern.pattern!r}"


class LLMJudge(Scorer):
    """A scorer that asks a judge model one yes/no question about the output."""

    def __init__(self, spec: ScorerSpec, task: TaskSpec, client: LLMClient, judge_retries: int = DEFAULT_JUDGE_RETRIES):
        super().__init__(spec)
        self.endpoint = ModelEndpoint.for_judge(spec, task)
        self.client = client
        self.judge_retries = judge_retries

    @abstractmethod
    def conversation(self, example: Example, output: str) -> list[dict[str, str]]:
        """The judge's first request about this output."""

    def verdict(self, example: Example, output: str) -> tuple[Any, str]:
        """The first usable verdict in up to 1 + judge_retries answers."""
        conversation = self.conversation(example, output)
        for _ in range(self.judge_retries + 1):
            answer = self.client.complete(self.endpoint, conversation)
            try:
                verdict = parse_verdict(answer, self.key)
                to_score(verdict["result"], self.key)  # a verdict that is no score is as unusable as none
                return verdict["result"], str(verdict.get("rationale") or "")
            except ScorerError as error:
                unusable = error
            conversation = judge_asked_again(conversation, answer)
        asked = "once" if self.judge_retries == 0 else f"{self.judge_retries + 1} times"
        raise ScorerError(f"{unusable} (asked {asked})")


class BuiltInJudge(LLMJudge):
    """A judge asked our question (MLflow's built-in judges)."""

    question: ClassVar[str]

    @abstractmethod
    def criteria(self, example: Example) -> dict[str, Any]:
        """What a good response is: the JudgeRequest fields this judge fills."""

    def conversation(self, example: Example, output: str) -> list[dict[str, str]]:
        return judge_messages(self.question, JudgeRequest(example.inputs, output, **self.criteria(example)))


class Judge(LLMJudge):
    """A judge asked the user's instructions (params.instructions), as MLflow's make_judge asks them."""

    def conversation(self, example: Example, output: str) -> list[dict[str, str]]:
        return custom_judge_messages(self.params.instructions or "", example.inputs, output, example.expectations)


class Webhook(Scorer):
    """The user's HTTP service scores the output (promptopt.service_contract's score request); its rationale becomes
    the reflection's feedback like any scorer's."""

    def __init__(self, spec: ScorerSpec, task: TaskSpec, client: LLMClient, field: str):
        super().__init__(spec)
        self.endpoint = ModelEndpoint.for_webhook(spec, task)
        self.headers = resolve_headers(spec.http.headers if spec.http else None, field)
        self.client = client

    def verdict(self, example: Example, output: str) -> tuple[Any, str]:
        request = ScoreRequest(
            scorer=self.key, inputs=dict(example.inputs), outputs=output, expectations=dict(example.expectations)
        )
        answer = self.client.post(self.endpoint, self.headers, request.to_json(), read_webhook_verdict)
        return answer.score, answer.rationale


class Correctness(BuiltInJudge):
    needs_expected_response = True
    question = CORRECTNESS_QUESTION

    def criteria(self, example: Example) -> dict[str, Any]:
        return {"expected_response": as_text(example.expectations["expected_response"])}


class Guidelines(BuiltInJudge):
    question = GUIDELINES_QUESTION

    def guidelines(self, example: Example) -> list[str]:
        """The scorer's guidelines, then the record's own (expectations.guidelines)."""
        own = example.expectations.get("guidelines") or []
        return [*(self.params.guidelines or []), *([own] if isinstance(own, str) else own)]

    def criteria(self, example: Example) -> dict[str, Any]:
        return {"guidelines": self.guidelines(example)}

    def record_problem(self, example: Example) -> str | None:
        own = example.expectations.get("guidelines")
        if own is None or isinstance(own, str) or (isinstance(own, list) and all(isinstance(g, str) for g in own)):
            return None
        return "expectations.guidelines that is neither a string nor a list of strings"


class ExpectationsGuidelines(Guidelines):
    """MLflow's ExpectationsGuidelines: each record's own guidelines (expectations.guidelines), which it must have."""

    def record_problem(self, example: Example) -> str | None:
        if example.expectations.get("guidelines") in (None, "", []):
            return "no expectations.guidelines"
        return super().record_problem(example)


class RelevanceToQuery(BuiltInJudge):
    question = RELEVANCE_QUESTION

    def criteria(self, example: Example) -> dict[str, Any]:
        return {}


class Safety(BuiltInJudge):
    question = SAFETY_QUESTION

    def criteria(self, example: Example) -> dict[str, Any]:
        return {}


METRICS: dict[str, type[Scorer]] = {"ExactMatch": ExactMatch, "Contains": Contains, "Regex": Regex}
JUDGES: dict[str, type[LLMJudge]] = {
    "Correctness": Correctness,
    "Guidelines": Guidelines,
    "ExpectationsGuidelines": ExpectationsGuidelines,
    "RelevanceToQuery": RelevanceToQuery,
    "Safety": Safety,
    "Judge": Judge,
}


def build_scorers(
    specs: Sequence[ScorerSpec], task: TaskSpec, client: LLMClient, *, judge_retries: int = DEFAULT_JUDGE_RETRIES
) -> list[Scorer]:
    """The job's scorers, in spec order; judges and webhooks call through `client`. InvalidInput when a webhook's
    header names a credential the worker lacks."""
    scorers: list[Scorer] = []
    for index, scorer in enumerate(specs):
        if scorer.name in JUDGES:
            scorers.append(JUDGES[scorer.name](scorer, task, client, judge_retries))
        elif scorer.name == "Webhook":
            scorers.append(Webhook(scorer, task, client, f"spec.scorers[{index}].http.headers"))
        else:
            scorers.append(METRICS[scorer.name](scorer))
    return scorers


def check_records(scorers: Sequence[Scorer], examples: Sequence[Example]) -> None:
    """Raise one InvalidInput listing every record a scorer cannot score, grouped by scorer and problem."""
    problems = []
    for scorer in scorers:
        lacking: dict[str, list[int]] = {}
        for example in examples:
            if (problem := scorer.record_problem(example)) is not None:
                lacking.setdefault(problem, []).append(example.index)
        problems += [
            f"scorer {scorer.key!r} ({scorer.spec.name}) cannot score {name_records(indexes)}: {problem}"
            for problem, indexes in lacking.items()
        ]
    if problems:
        raise InvalidInput("the dataset does not fit the scorers: " + "; ".join(problems))


def parse_verdict(answer: str, scorer: str) -> Mapping[str, Any]:
    """The first JSON object with a "result" in the judge's answer - bare, fenced or within other text;
    otherwise a ScorerError naming the scorer."""
    verdict = json_object_with(answer, "result")
    if verdict is not None:
        return verdict
    raise ScorerError(
        f"the judge of scorer {scorer!r} did not answer with a JSON verdict "
        f'{{"result": "yes"|"no", "rationale": ...}}; it answered {_quote(answer)}'
    )


def _quote(text: str) -> str:
    return repr(text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "...")
