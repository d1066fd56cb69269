"""Prompt templates filled with a record's inputs: `{{ variable }}` becomes the input's text.

`check_inputs` runs before any LLM call and lists every record that lacks a variable some prompt uses,
so a bad dataset fails at once with all its problems; `render` and `messages` then cannot fail on the
checked records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from promptopt.api.v1alpha1 import TEMPLATE_VARIABLE, unfilled_variables
from promptopt_worker.problem import Candidate, Example, PromptTemplate
from promptopt_worker.problem import InvalidInput


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
    if problems := unfilled_variables({p.name: p.text for p in prompts}, {e.index: e.inputs for e in examples}):
        raise TemplateError("the dataset does not fit the prompts: " + "; ".join(problems))
