"""Prompt templates filled with a record's inputs: `{{ variable }}` becomes the input's text.

`check_inputs` runs before any LLM call and lists every record that lacks a variable some prompt uses,
so a bad dataset fails at once with all its problems; `render` and `messages` then cannot fail on the
checked records.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from promptopt.api.v1alpha1 import TEMPLATE_VARIABLE, template_variables
from promptopt_worker.problem import Candidate, Example, PromptTemplate
from promptopt_worker.problem import InvalidInput

MAX_LISTED = 10  # records named in one problem message; the rest are counted


class TemplateError(InvalidInput):
    """A record lacks an input a prompt template uses."""


def as_text(value: Any) -> str:
    """How an input or expectation value appears in text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, inputs: Mapping[str, Any], *, prompt: str, record: int | None = None) -> str:
    """`template` with every `{{variable}}` replaced by the input's text; `prompt` and `record` (its
    index in the dataset) name the culprit when an input is missing."""

    def fill(match: Any) -> str:
        variable = match.group(1)
        if variable not in inputs:
            where = "the inputs" if record is None else f"record {record}"
            raise TemplateError(
                f"prompt {prompt!r} uses {{{{{variable}}}}}, but {where} has no input {variable!r} "
                f"(inputs: {', '.join(sorted(inputs)) or 'none'})"
            )
        return as_text(inputs[variable])

    return TEMPLATE_VARIABLE.sub(fill, template)


def messages(
    prompts: Sequence[PromptTemplate], candidate: Candidate, inputs: Mapping[str, Any], *, record: int | None = None
) -> list[dict[str, str]]:
    """The chat messages of one request: each prompt (text from `candidate`) rendered, in list order."""
    return [
        {"role": p.role, "content": render(candidate[p.name], inputs, prompt=p.name, record=record)} for p in prompts
    ]


def check_inputs(prompts: Sequence[PromptTemplate], examples: Sequence[Example]) -> None:
    """Raise one TemplateError listing every (prompt, variable) that some records cannot fill."""
    problems = []
    for prompt in prompts:
        for variable in sorted(template_variables(prompt.text)):
            lacking = [e.index for e in examples if variable not in e.inputs]
            if lacking:
                problems.append(
                    f"prompt {prompt.name!r} uses {{{{{variable}}}}}, but {name_records(lacking)} "
                    f"{'has' if len(lacking) == 1 else 'have'} no input {variable!r}"
                )
    if problems:
        raise TemplateError("the dataset does not fit the prompts: " + "; ".join(problems))


def name_records(indexes: Iterable[int]) -> str:
    """Names records in problem messages: record 3, or records 1, 4, 9 (the first MAX_LISTED, then a count)."""
    indexes = list(indexes)
    listed = ", ".join(str(i) for i in indexes[:MAX_LISTED])
    more = f" and {len(indexes) - MAX_LISTED} more" if len(indexes) > MAX_LISTED else ""
    return f"record{'s' if len(indexes) > 1 else ''} {listed}{more}"
