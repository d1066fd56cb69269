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
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "PromptOptimizationJob",
        "promptoptimizationjobs",
        ["poj"],
    )
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
    # No server-side default: the worker tells an explicit budget (which wins over auto) from the default.
    assert "default" not in gepa["maxMetricCalls"] and gepa["auto"]["enum"] == ["light", "medium", "heavy"]
    assert set(gepa["earlyStopping"]["properties"]) == {"goal", "patience"}
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
    from pydantic import BaseModel, Field

    class Ambiguous(BaseModel):
        value: int | str = Field(description="either")

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


def _every_field(model: type) -> dict:
    """A status document that sets every field of `model` (nested models, lists of them, maps), in wire names."""
    import types
    import typing

    from pydantic import BaseModel

    def value_for(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            return value_for(args[0])
        if origin is typing.Literal:
            return args[0]
        if origin is list:
            return [value_for(args[0])]
        if origin is dict:
            return {"key": value_for(args[1])}
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return _every_field(annotation)
        return {bool: True, int: 3, float: 0.5, str: "2026-12-01T00:00:00Z"}[annotation]

    return {field.alias or name: value_for(field.annotation) for name, field in model.model_fields.items()}


def test_every_status_field_of_the_models_survives_a_real_api_server(cluster):
    """The API server prunes what the CRD's status schema lacks, without a word: a status that sets every field
    of the models comes back whole, so nothing the operator or the worker writes is lost."""
    status = _every_field(v1alpha1.PromptOptimizationJobStatus)
    assert v1alpha1.status_patch(v1alpha1.read_status(status)) == status  # and the models write it as it is
    cluster.create(
        {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": "full"},
            "spec": {
                "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/x"},
                "prompts": [{"name": "p", "template": "hi"}],
                "task": {"model": "openai/y"},
            },
        }
    )
    stored = cluster.patch("poj", "full", {"status": status}, subresource="status")["status"]
    assert stored == status


def test_the_crd_is_accepted_by_a_real_api_server_and_its_cel_costs_are_checked(real_cluster):
    """The server checks the structural schema and estimates every CEL rule's cost at CRD creation: the
    committed CRD passes, and the same CRD with a rule over an unbounded list is refused (the check is live)."""
    from promptopt_harness.client import ApiError

    document = yaml.safe_load(COMMITTED.read_text())
    document["spec"]["group"] = "check.promptopt.dev"  # the cluster serves the real one already
    document["metadata"]["name"] = f"{document['spec']['names']['plural']}.check.promptopt.dev"
    real_cluster.create(document, dryRun="All")
    spec_schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    dataset = spec_schema["properties"]["dataset"]
    del dataset["properties"]["records"]["maxItems"]
    dataset["x-kubernetes-validations"].append(
        {
            "rule": "!has(self.records) || self.records.all(r, self.records.exists_one(q, q.inputs == r.inputs))",
            "message": "records must be unique",
        }
    )
    with pytest.raises(ApiError) as refused:
        real_cluster.create(document, dryRun="All")
    assert refused.value.code == 422 and "estimated rule cost exceeds budget" in refused.value.body["message"]
