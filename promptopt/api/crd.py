"""Generate the CustomResourceDefinition from the pydantic models.

pydantic's JSON Schema is close to what Kubernetes wants but not structural: it uses $ref/$defs,
anyOf-with-null for optional fields, titles, and `additionalProperties: true` for free-form maps. This
module rewrites it into a structural OpenAPI v3 schema (every node typed, no $ref), so the API server
can prune, default and validate it, and `kubectl explain` can show every field's description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from promptopt.api import v1alpha1

CRD_FILE_NAME = f"{v1alpha1.PLURAL}.{v1alpha1.GROUP}.yaml"

# Keys of pydantic's JSON Schema that an OpenAPI v3 schema in a CRD accepts as they are.
_PASSTHROUGH_KEYS = {
    "type",
    "description",
    "enum",
    "default",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "The job's phase."},
    {"name": "Optimizer", "type": "string", "jsonPath": ".spec.optimizer.type", "description": "GEPA or MetaPrompt."},
    {
        "name": "Progress%",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Metric calls spent, in percent of the budget.",
    },
    # Scores and cost are the worker's formatted copies (status.display): a number column prints every digit.
    {
        "name": "Initial",
        "type": "string",
        "jsonPath": ".status.display.initialScore",
        "description": "Aggregate score of the original prompts.",
    },
    {
        "name": "Best",
        "type": "string",
        "jsonPath": ".status.display.bestScore",
        "description": "Best aggregate score so far.",
    },
    {
        "name": "Duration",
        "type": "string",
        "jsonPath": ".status.duration",
        "description": "How long the job ran, once it ended.",
    },
    {
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why the job is (not) ready.",
    },
    {
        "name": "Test",
        "type": "string",
        "priority": 1,
        "jsonPath": ".status.display.testScore",
        "description": "Aggregate score of the optimized prompts on the held-out test records.",
    },
    {
        "name": "Cost",
        "type": "string",
        "priority": 1,
        "jsonPath": ".status.display.cost",
        "description": "US dollars spent on LLM calls.",
    },
    {
        "name": "Started",
        "type": "date",
        "priority": 1,
        "jsonPath": ".status.startTime",
        "description": "When the job started running.",
    },
    {"name": "Pod", "type": "string", "priority": 1, "jsonPath": ".status.podName", "description": "The worker Pod."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema as a structural OpenAPI v3 schema (no $ref, every node typed)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _to_structural(raw, definitions)


def _to_structural(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, definitions)
    # type and description first: the generated YAML is read by people too.
    ordered = sorted(node.items(), key=lambda item: {"type": 0, "description": 1}.get(item[0], 2))
    out: dict[str, Any] = {k: v for k, v in ordered if k in _PASSTHROUGH_KEYS or k.startswith("x-kubernetes-")}
    if out.get("default", 0) is None:
        del out["default"]  # "None" is how pydantic spells "optional"; Kubernetes spells it by omission
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if exclusive in out:  # JSON Schema's numeric form → OpenAPI v3.0's boolean form
            out[bound], out[exclusive] = out[exclusive], True
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties")
        if properties:
            out["properties"] = {name: _to_structural(sub, definitions) for name, sub in properties.items()}
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _to_structural(extra, definitions)
        elif not properties:
            out["x-kubernetes-preserve-unknown-fields"] = True  # a free-form map (dict[str, Any])
    elif kind == "array":
        out["items"] = _to_structural(node["items"], definitions)
    elif kind is None:
        raise ValueError(f"untyped schema node (not structural): {node}")
    return out


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Inline $ref and collapse Optional (anyOf [X, null]) into X, keeping the outer node's own keys."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = _resolve(definitions[ref.rsplit("/", 1)[-1]], definitions)
        node = {**target, **node}
    variants = node.pop("anyOf", None)
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unions are not structural: {variants}")
        node = {**_resolve(non_null[0], definitions), **node}
    return node


# Fields `kubectl get poj --field-selector` filters on, as MLflow's job search filters by state: the API server
# supports them from Kubernetes 1.31 (beta, on by default; GA in 1.32). 1.30 keeps the field and ignores it unless
# the CustomResourceFieldSelectors feature gate is on.
SELECTABLE_FIELDS = (".status.phase", ".spec.optimizer.type", ".status.workerResult.reason")


def custom_resource_definition() -> dict[str, Any]:
    """The PromptOptimizationJob CRD, generated from the models."""
    spec_schema = structural_schema(v1alpha1.PromptOptimizationJobSpec)
    status_schema = structural_schema(v1alpha1.PromptOptimizationJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{v1alpha1.PLURAL}.{v1alpha1.GROUP}"},
        "spec": {
            "group": v1alpha1.GROUP,
            "names": {
                "kind": v1alpha1.KIND,
                "listKind": f"{v1alpha1.KIND}List",
                "plural": v1alpha1.PLURAL,
                "singular": v1alpha1.SINGULAR,
                "shortNames": list(v1alpha1.SHORT_NAMES),
                "categories": ["promptopt"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": v1alpha1.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "selectableFields": [{"jsonPath": path} for path in SELECTABLE_FIELDS],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": v1alpha1.PromptOptimizationJob.__doc__,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "promptopt.dev/v1alpha1"},
                                "kind": {"type": "string", "description": "PromptOptimizationJob"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated sub-trees in full: kubectl and GitOps diffs read badly through YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd_yaml() -> str:
    header = "# Generated by `promptopt crd` from promptopt/api/v1alpha1.py. Do not edit by hand.\n"
    body = yaml.dump(custom_resource_definition(), Dumper=_PlainDumper, sort_keys=False, width=110, allow_unicode=True)
    return header + body


def write_crd(directory: Path) -> Path:
    path = directory / CRD_FILE_NAME
    path.write_text(render_crd_yaml())
    return path
