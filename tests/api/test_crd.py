"""The committed CRD is exactly what the models generate, and it is a good structural schema."""
from pathlib import Path

import pytest
import yaml

from promptopt.api import crd, v1alpha1
from promptopt.cli import main

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "crds" / crd.CRD_FILE_NAME


def test_committed_crd_matches_generated(tmp_path):
    assert main(["crd", "-o", str(tmp_path)]) == 0
    generated = (tmp_path / crd.CRD_FILE_NAME).read_text()
    assert COMMITTED.read_text() == generated, "crds/ is stale: run `promptopt crd -o crds`"


def _schema():
    document = yaml.safe_load(COMMITTED.read_text())
    (version,) = document["spec"]["versions"]
    return document, version, version["schema"]["openAPIV3Schema"]


def _nodes(node, path="<root>"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def test_names_and_scope():
    document, version, _ = _schema()
    names = document["spec"]["names"]
    assert document["metadata"]["name"] == "promptoptimizationjobs.promptopt.dev"
    assert (names["kind"], names["plural"], names["shortNames"]) == ("PromptOptimizationJob", "promptoptimizationjobs", ["poj"])
    assert document["spec"]["scope"] == "Namespaced"
    assert (version["name"], version["subresources"]) == ("v1alpha1", {"status": {}})


def test_schema_is_structural_and_documented():
    _, _, schema = _schema()
    text = COMMITTED.read_text()
    assert "$ref" not in text and "anyOf" not in text and "title:" not in text
    for path, node in _nodes(schema):
        assert "type" in node, f"{path} has no type"
        is_field = path.count(".") >= 2 and not path.endswith(("[]", "}"))
        if is_field:  # every field kubectl explain can show; list items and map values are described by it
            assert node.get("description"), f"{path} has no description"


def test_every_spec_field_is_reachable_for_kubectl_explain():
    _, _, schema = _schema()
    optimizer = schema["properties"]["spec"]["properties"]["optimizer"]
    assert set(optimizer["properties"]) >= {"type", "reflectionModel", "gepa", "metaPrompt", "options"}
    gepa = optimizer["properties"]["gepa"]["properties"]
    assert gepa["maxMetricCalls"]["default"] == 100
    assert gepa["candidateSelection"]["enum"] == ["pareto", "current_best", "epsilon_greedy"]


def test_printer_columns_use_filters_not_positions():
    _, version, _ = _schema()
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[:5] == ["Phase", "Optimizer", "Progress%", "Initial", "Best"]
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    for column in columns.values():
        assert "[-1:]" not in column["jsonPath"]
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'


def test_exclusive_bounds_use_openapi_v3_booleans():
    _, _, schema = _schema()
    fraction = schema["properties"]["spec"]["properties"]["dataset"]["properties"]["validationFraction"]
    assert fraction == {**fraction, "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "exclusiveMaximum": True}


def test_unions_are_rejected_by_the_generator():
    from typing import Union

    from pydantic import BaseModel, Field

    class Ambiguous(BaseModel):
        value: Union[int, str] = Field(description="either")

    with pytest.raises(ValueError, match="not structural"):
        crd.structural_schema(Ambiguous)


def test_constants_match_crd():
    document, version, _ = _schema()
    assert f"{document['spec']['group']}/{version['name']}" == v1alpha1.API_VERSION


def test_committed_api_reference_matches_generated(tmp_path):
    from promptopt.api import docs

    assert main(["api-docs", "-o", str(tmp_path)]) == 0
    committed = REPO / "docs" / docs.DOCS_FILE_NAME
    assert committed.read_text() == (tmp_path / docs.DOCS_FILE_NAME).read_text(), "run `promptopt api-docs`"
    assert "`spec.optimizer.gepa.maxMetricCalls`" in committed.read_text()
