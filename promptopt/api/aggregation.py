"""spec.aggregation: a CEL expression over one record's scores (`scores.<scorer key>`, each in [0, 1]) that gives the
record's aggregate score, as MLflow's optimize_prompts takes an `aggregation` function of the per-scorer scores.

CEL's standard library has no minimum or maximum of numbers, so two functions are added: `min` and `max`, of two or
more numbers or of one list (`min(scores.correctness, scores.safety)`, `max([scores.a, scores.b])`).

The API model compiles the expression (`compile_aggregation`), so a job whose expression cannot run fails before any
Pod: it must parse, read only the job's scorer keys (`scores.<key>` or `scores["<key>"]`), and give a number in
[0, 1] for a record every scorer gave 1. The worker runs the same compiled expression on every scored record;
a record it gives no number in [0, 1] is an AggregationError naming spec.aggregation.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Collection, Mapping
from typing import Any

import celpy
from celpy import celtypes
from lark import Token, Tree

FIELD = "spec.aggregation"
MAX_LENGTH = 1024  # characters: an aggregation is a formula, not a program
# The functions CEL lacks, by name: the least and the greatest of two or more numbers, or of one list.
EXTREMES = {"min": min, "max": max}


class AggregationError(ValueError):
    """The expression cannot be compiled, or gave no number in [0, 1] for a record; the message follows the field's
    name (spec.aggregation)."""


def _extreme(name: str) -> Any:
    pick = EXTREMES[name]

    def extreme(*args: Any) -> celtypes.DoubleType:
        values: list[Any] = list(args[0]) if len(args) == 1 and isinstance(args[0], celtypes.ListType) else list(args)
        if not values or any(not _is_number(value) for value in values):
            raise TypeError(f"{name}() takes numbers: two or more, or one list of them")
        return celtypes.DoubleType(pick(float(value) for value in values))

    return extreme


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool | celtypes.BoolType)


class Aggregation:
    """A compiled spec.aggregation: call it with one record's scores by scorer key."""

    def __init__(self, expression: str, program: Any):
        self.expression = expression
        self._program = program

    def __call__(self, scores: Mapping[str, float]) -> float:
        activation = {
            "scores": celtypes.MapType(
                {celtypes.StringType(key): celtypes.DoubleType(value) for key, value in scores.items()}
            )
        }
        try:
            value = self._program.evaluate(activation)
        except celpy.CELEvalError as error:
            value = error
        if isinstance(value, celpy.CELEvalError):
            why = str(value.args[0]).split(" (in activation")[0]  # celpy appends every name it knows
            raise AggregationError(f"failed for the scores {dict(scores)}: {why}")
        if not _is_number(value) or math.isnan(value) or not 0 <= value <= 1:
            shown = json.dumps(bool(value) if isinstance(value, celtypes.BoolType) else value, default=str)
            raise AggregationError(f"gave {shown} for the scores {dict(scores)}: it must give a number in [0, 1]")
        return float(value)


def compile_aggregation(expression: str, keys: Collection[str]) -> Aggregation:
    """The expression, compiled for scorers `keys`; AggregationError (saying what to fix) when it does not parse,
    reads another key, or gives no number in [0, 1] when every scorer gives 1."""
    environment = celpy.Environment()
    try:
        tree = environment.compile(expression)
    except celpy.CELParseError as error:
        where = f" at column {error.column}" if getattr(error, "column", None) else ""
        raise AggregationError(f"is not a CEL expression{where}: {' '.join(str(error).split())}") from None
    if unknown := sorted(set(_score_keys(tree)) - set(keys)):
        raise AggregationError(
            f"reads {', '.join(f'scores.{key}' for key in unknown)}: the job's scorers are "
            f"{', '.join(sorted(keys)) or 'none'} (a scorer's key is its label, else its name)"
        )
    aggregation = Aggregation(
        expression, environment.program(tree, functions={name: _extreme(name) for name in EXTREMES})
    )
    aggregation(dict.fromkeys(keys, 1.0))  # a record every scorer gave 1: what cannot give a number here never will
    return aggregation


def _score_keys(tree: Tree) -> list[str]:
    """Every key the expression reads of `scores` (scores.<key>, scores["<key>"]); AggregationError for an index
    that is not a string literal, which cannot be checked."""
    keys = []
    for node in tree.iter_subtrees():
        if node.data not in ("member_dot", "member_index") or _innermost(node.children[0]) != ("ident", "scores"):
            continue
        selector = node.children[1]
        if isinstance(selector, Token):  # scores.<key>
            keys.append(str(selector))
            continue
        kind, text = _innermost(selector)
        try:
            key = ast.literal_eval(text) if kind == "literal" else None
        except (ValueError, SyntaxError):
            key = None
        if not isinstance(key, str):
            raise AggregationError(
                'write scores.<key> or scores["<key>"] with a scorer\'s key; an index '
                "computed at run time cannot be checked"
            )
        keys.append(key)
    return keys


def _innermost(node: Any) -> tuple[str, str]:
    """(rule, text) of the one leaf a chain of single-child nodes ends in (an identifier, a literal); ("", "") when
    the node is more than that."""
    while isinstance(node, Tree) and len(node.children) == 1 and isinstance(node.children[0], Tree):
        node = node.children[0]
    if isinstance(node, Tree) and len(node.children) == 1 and isinstance(node.children[0], Token):
        return str(node.data), str(node.children[0])
    return "", ""
