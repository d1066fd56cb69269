"""Parse jobs with the API models and turn pydantic's errors into messages that name the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from promptopt.api.v1alpha1 import FieldError, PromptOptimizationJobSpec


class InvalidSpec(ValueError):
    """A job whose spec the models reject; `problems` are "<field path>: <what is wrong>" lines."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def field_path(location: tuple[int | str, ...], root: str = "spec") -> str:
    """`("scorers", 0, "weight")` → `spec.scorers[0].weight`, the way kubectl and the API server write it."""
    path = root
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe(error: ValidationError, root: str = "spec") -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        location = field_path(item["loc"], root)
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            location += f".{cause.field}"
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against `kubectl explain poj.spec`"
        problems.append(f"{location}: {message}")
    return problems


def parse_spec(spec: Mapping[str, Any] | None) -> PromptOptimizationJobSpec:
    """The job's spec as a model, or InvalidSpec naming every field that is wrong."""
    if spec is None:
        raise InvalidSpec(["spec: required"])
    try:
        return PromptOptimizationJobSpec.model_validate(spec)
    except ValidationError as error:
        raise InvalidSpec(describe(error)) from None
