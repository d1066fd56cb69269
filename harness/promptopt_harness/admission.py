"""What the Kubernetes API server does to a custom resource on create/update, for tests.

Pruning of unknown fields (`prune` also names them, for strict field validation and its warnings), defaulting,
OpenAPI v3 schema validation and the CRD's CEL rules (`x-kubernetes-validations`, evaluated with cel-python), in
that order, as the real API server does.
No library does the four together over a CRD schema (jsonschema neither prunes, defaults nor runs CEL),
so this walks the structural schema itself; it covers the keywords our generated CRDs use.
"""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any

import celpy

_JSON_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


class Rejected(ValueError):
    """The API server's 422: the object is invalid; `problems` are "<field path>: <message>" lines."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def admit(schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server would store it, or Rejected with every problem found."""
    stored = copy.deepcopy(obj)
    prune(schema, stored)
    problems: list[str] = []
    _walk(schema, stored, "", problems, top=True)
    if problems:
        raise Rejected(problems)
    return stored


def prune(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Drop, in place, the fields the schema does not declare; return their paths (``spec.x``, ``spec.l[0].y``),
    sorted, as the API server names them in a strict decoding error or a warning. Metadata is not the schema's."""
    pruned: list[str] = []
    _prune(schema, obj, "", pruned, top=True)
    return sorted(pruned)


def _prune(schema: dict[str, Any], value: Any, path: str, pruned: list[str], top: bool = False) -> None:
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _prune(schema["items"], item, f"{path}[{index}]", pruned)
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    properties = schema.get("properties", {})
    for key in list(value):
        if key in properties:
            if not (top and key == "metadata"):
                _prune(properties[key], value[key], _join(path, key), pruned)
        elif isinstance(schema.get("additionalProperties"), dict):
            _prune(schema["additionalProperties"], value[key], _join(path, key), pruned)
        elif "additionalProperties" not in schema and not (top and key in ("apiVersion", "kind", "metadata")):
            del value[key]
            pruned.append(_join(path, key))


def _walk(schema: dict[str, Any], value: Any, path: str, problems: list[str], top: bool = False) -> None:
    before = len(problems)
    kind = schema.get("type")
    if kind and not _has_type(value, kind):
        problems.append(f"{path or '<root>'}: Invalid value: must be of type {kind}")
        return
    if kind == "object":
        _walk_object(schema, value, path, problems, top)
    elif kind == "array":
        _check_size(schema, len(value), path, problems, "minItems", "maxItems", "items")
        for index, item in enumerate(value):
            _walk(schema["items"], item, f"{path}[{index}]", problems)
    else:
        _check_scalar(schema, value, path, problems)
    if len(problems) == before:  # like the API server: CEL runs on schema-valid values only
        _check_rules(schema, value, path, problems)


def _walk_object(schema: dict[str, Any], value: dict, path: str, problems: list[str], top: bool) -> None:
    properties = schema.get("properties", {})
    for key, sub in properties.items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
    for key in schema.get("required", []):
        if key not in value:
            problems.append(f"{_join(path, key)}: Required value")
    for key, item in value.items():
        if key in properties:
            if key == "metadata" and top:
                continue
            _walk(properties[key], item, _join(path, key), problems)
        elif isinstance(schema.get("additionalProperties"), dict):
            _walk(schema["additionalProperties"], item, _join(path, key), problems)


def _check_scalar(schema: dict[str, Any], value: Any, path: str, problems: list[str]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(f'"{v}"' for v in schema["enum"])
        problems.append(f'{path}: Unsupported value: "{value}": supported values: {supported}')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minimum, maximum = schema.get("minimum"), schema.get("maximum")
        if minimum is not None:
            exclusive = schema.get("exclusiveMinimum", False)
            if value < minimum or (exclusive and value == minimum):
                or_equal = "" if exclusive else "or equal to "
                problems.append(f"{path}: Invalid value: {value}: should be greater than {or_equal}{minimum}")
        if maximum is not None:
            exclusive = schema.get("exclusiveMaximum", False)
            if value > maximum or (exclusive and value == maximum):
                or_equal = "" if exclusive else "or equal to "
                problems.append(f"{path}: Invalid value: {value}: should be less than {or_equal}{maximum}")
    if isinstance(value, str):
        _check_size(schema, len(value), path, problems, "minLength", "maxLength", "characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f'{path}: Invalid value: "{value}": should match \'{schema["pattern"]}\'')


def _check_size(schema: dict[str, Any], size: int, path: str, problems: list[str], low: str, high: str,
                unit: str) -> None:
    if low in schema and size < schema[low]:
        problems.append(f"{path}: Invalid value: must have at least {schema[low]} {unit}")
    if high in schema and size > schema[high]:
        problems.append(f"{path}: Too many: {size}: must have at most {schema[high]} {unit}")


def _check_rules(schema: dict[str, Any], value: Any, path: str, problems: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        if not _evaluate(rule["rule"], value):
            where = path + rule.get("fieldPath", "")
            problems.append(f"{where or '<root>'}: Invalid value: {rule.get('message') or rule['rule']}")


def _evaluate(rule: str, value: Any) -> bool:
    result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, celpy.CELEvalError):
        raise result
    return bool(result)


@lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def _has_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind not in ("boolean",):
        return False
    return isinstance(value, _JSON_TYPES[kind])


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
