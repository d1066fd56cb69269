"""The emulator answers as kube-apiserver does: every test sends the same requests to the real server (a namespace
of its own) and to the emulator, and expects the same outcomes from both (status codes, Status reasons, pruning,
resourceVersions, generations, deletion, watch events, selectors). Outcomes only: uids, timestamps and the exact
resourceVersion numbers differ by nature. Where the two differ on purpose, the test says so and why."""
import json
import pathlib
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import yaml

EXAMPLE_JOB = yaml.safe_load((pathlib.Path(__file__).parents[2] / "examples" / "gepa-sentiment.yaml").read_text())
MIB = 1024 * 1024
MERGE_PATCH = "application/merge-patch+json"


@pytest.fixture(params=["real", "emulated"])
def server(request):
    """The real API server (the `cluster` fixture: a fresh namespace, as the test admin) or a fresh emulator (its
    `default` namespace): both a ClusterApi whose `namespace` is the test's."""
    return request.getfixturevalue("cluster" if request.param == "real" else "emulated_cluster")


@pytest.fixture
def is_real(server, request):
    return request.node.callspec.params["server"] == "real"


@dataclass(frozen=True)
class Answer:
    code: int
    body: Any
    warning: str | None

    @property
    def outcome(self) -> tuple[int, str | None]:
        """The status code and, for an error, the Status reason: what both servers must agree on."""
        return self.code, self.body.get("reason") if self.code >= 400 and isinstance(self.body, dict) else None

    @property
    def meta(self) -> dict[str, Any]:
        return self.body["metadata"]


def call(server, method, path, body=None, *, params=None, content_type="application/json", data=None) -> Answer:
    """One request as it is: no retries, the answer's code, JSON body and Warning header."""
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {server.token}"} if server.token else {})
    response = requests.request(method, server.url + path, params=params, headers=headers, timeout=30,
                                data=data if data is not None else None if body is None else json.dumps(body),
                                verify=str(server.ca_file) if server.ca_file else True)
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    return Answer(response.status_code, response.json() if is_json else response.text, response.headers.get("Warning"))


def jobs_path(server) -> str:
    return server.path("poj")


def job_path(server, name, subresource=None) -> str:
    return server.path("poj", name, subresource=subresource)


def job(name, **spec_changes) -> dict[str, Any]:
    return {**EXAMPLE_JOB, "metadata": {"name": name}, "spec": {**EXAMPLE_JOB["spec"], **spec_changes}}


def watch(server, path, count, **params) -> list[tuple[str, Any]]:
    """The first `count` events of a watch as (type, name or Status reason)."""
    headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
    with requests.get(server.url + path, params={"watch": "true", "timeoutSeconds": "5", **params}, headers=headers,
                      stream=True, timeout=15, verify=str(server.ca_file) if server.ca_file else True) as response:
        events = [json.loads(line) for line, _ in zip(filter(None, response.iter_lines()), range(count), strict=False)]
    return [(e["type"], e["object"].get("reason") if e["type"] == "ERROR" else e["object"]["metadata"]["name"])
            for e in events]


# --- creating and reading ------------------------------------------------------------------------------------

def test_creation_and_its_refusals(server):
    created = call(server, "POST", jobs_path(server), job("a"))
    assert created.outcome == (201, None) and created.meta["generation"] == 1
    assert "status" not in created.body  # a create cannot set the status of a resource with a status subresource
    outcomes = [call(server, "POST", jobs_path(server), body).outcome for body in [
        job("a"),  # again
        {**job("b"), "metadata": {"name": "b", "namespace": "elsewhere"}},  # the URL names another namespace
        {**job("b"), "metadata": {}},  # no name
        {**job("b"), "metadata": {"name": "B_b"}},  # not a DNS subdomain
        {**job("b"), "metadata": {"name": "b", "labels": {"k": "x" * 64}}},  # label value over 63
        {**job("b"), "kind": "Other"},
        {**job("b"), "apiVersion": "promptopt.dev/v1"},
        {**job("b"), "metadata": {"name": "b", "resourceVersion": "5"}},
        {**job("b"), "spec": {}},  # the schema's required fields
    ]]
    assert outcomes == [(409, "AlreadyExists"), (400, "BadRequest"), (422, "Invalid"), (422, "Invalid"),
                        (422, "Invalid"), (422, "Invalid"), (400, "BadRequest"), (500, None), (422, "Invalid")]
    missing_namespace = call(server, "POST", server.in_namespace("nowhere").path("poj"), job("b"))
    assert (missing_namespace.outcome, missing_namespace.body["message"]) == ((404, "NotFound"),
                                                                              'namespaces "nowhere" not found')
    missing = call(server, "GET", job_path(server, "nope"))
    assert (missing.outcome, missing.body["message"]) == ((404, "NotFound"),
                                                          'promptoptimizationjobs.promptopt.dev "nope" not found')
    assert call(server, "GET", jobs_path(server)).body["kind"] == "PromptOptimizationJobList"


def test_generate_name(server):
    created = call(server, "POST", jobs_path(server), {**job(""), "metadata": {"generateName": "run-"}})
    assert created.code == 201 and created.meta["name"].startswith("run-") and len(created.meta["name"]) == 9


# --- writing: resourceVersion, generation, optimistic locking ------------------------------------------------

def test_resource_versions_change_on_writes_and_generations_on_spec_changes(server):
    first = call(server, "POST", jobs_path(server), job("a")).meta
    spec = call(server, "PATCH", job_path(server, "a"), {"spec": {"backoffLimit": 3}}, content_type=MERGE_PATCH).meta
    labels = call(server, "PATCH", job_path(server, "a"), {"metadata": {"labels": {"l": "1"}}},
                  content_type=MERGE_PATCH).meta
    status = call(server, "PATCH", job_path(server, "a", "status"), {"status": {"phase": "Running"}},
                  content_type=MERGE_PATCH).meta
    no_op = call(server, "PATCH", job_path(server, "a"), {"spec": {"backoffLimit": 3}}, content_type=MERGE_PATCH)
    versions = [int(m["resourceVersion"]) for m in (first, spec, labels, status)]
    assert versions == sorted(set(versions))  # every write a newer version
    assert [m["generation"] for m in (first, spec, labels, status)] == [1, 2, 2, 2]  # only the spec counts
    assert no_op.code == 200 and no_op.meta["resourceVersion"] == status["resourceVersion"]  # no write at all

    stale = first["resourceVersion"]
    conflict = call(server, "PATCH", job_path(server, "a"), {"metadata": {"resourceVersion": stale, "labels": {}}},
                    content_type=MERGE_PATCH)
    assert conflict.outcome == (409, "Conflict") and conflict.body["message"] == (
        'Operation cannot be fulfilled on promptoptimizationjobs.promptopt.dev "a": the object has been modified; '
        'please apply your changes to the latest version and try again')
    tested = call(server, "PATCH", job_path(server, "a"),  # kopf's finalizer patch
                  [{"op": "test", "path": "/metadata/resourceVersion", "value": stale},
                   {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}],
                  content_type="application/json-patch+json")
    assert tested.outcome == (422, "Invalid")

    current = call(server, "GET", job_path(server, "a")).body
    unconditional = call(server, "PUT", job_path(server, "a"), {**current, "metadata": {"name": "a"}})
    assert unconditional.outcome == (422, "Invalid")  # a custom resource is replaced at a resourceVersion only
    replaced = call(server, "PUT", job_path(server, "a"), {**current, "spec": {**current["spec"], "backoffLimit": 1},
                                                            "status": {"phase": "Forged"}})
    assert replaced.code == 200 and replaced.meta["generation"] == 3
    assert replaced.body["status"] == {"phase": "Running"}  # the main resource cannot write the status


def test_the_status_subresource_splits_what_each_path_writes(server):
    call(server, "POST", jobs_path(server), job("a"))
    main = call(server, "PATCH", job_path(server, "a"), {"status": {"phase": "Forged"}, "spec": {"backoffLimit": 4}},
                content_type=MERGE_PATCH).body
    assert "status" not in main and main["spec"]["backoffLimit"] == 4
    sub = call(server, "PATCH", job_path(server, "a", "status"),
               {"status": {"phase": "Running"}, "spec": {"backoffLimit": 5}}, content_type=MERGE_PATCH).body
    assert sub["status"] == {"phase": "Running"} and sub["spec"]["backoffLimit"] == 4


# --- unknown fields ------------------------------------------------------------------------------------------

def test_unknown_fields_are_pruned_with_warnings_or_refused_when_strict(server):
    misspelled = job("a", optimizer={**EXAMPLE_JOB["spec"]["optimizer"], "gepa": {
        **EXAMPLE_JOB["spec"]["optimizer"]["gepa"], "maxMetricCall": 5}})
    strict = call(server, "POST", jobs_path(server), misspelled, params={"fieldValidation": "Strict"})
    assert (strict.outcome, strict.body["message"]) == ((400, "BadRequest"), (
        'PromptOptimizationJob in version "v1alpha1" cannot be handled as a PromptOptimizationJob: strict decoding '
        'error: unknown field "spec.optimizer.gepa.maxMetricCall"'))
    warned = call(server, "POST", jobs_path(server), misspelled)  # the default is Warn
    assert warned.code == 201 and "maxMetricCall" not in warned.body["spec"]["optimizer"]["gepa"]
    assert warned.warning == '299 - "unknown field \\"spec.optimizer.gepa.maxMetricCall\\""'

    status = call(server, "PATCH", job_path(server, "a", "status"), {"status": {"phase": "Running", "bogus": 1}},
                  content_type=MERGE_PATCH)  # the CRD's status schema is strict too
    assert status.body["status"] == {"phase": "Running"}
    assert status.warning == '299 - "unknown field \\"status.bogus\\""'
    ignored = call(server, "PATCH", job_path(server, "a"), {"spec": {"zz": 1}}, params={"fieldValidation": "Ignore"},
                   content_type=MERGE_PATCH)
    assert (ignored.code, ignored.warning, "zz" in ignored.body["spec"]) == (200, None, False)
    strict_patch = call(server, "PATCH", job_path(server, "a"), {"spec": {"zz": 1}, "extra": 2},
                        params={"fieldValidation": "Strict"}, content_type=MERGE_PATCH)
    assert strict_patch.outcome == (422, "Invalid")
    assert strict_patch.body["message"].endswith(
        'strict decoding error: unknown field "extra", unknown field "spec.zz"')
    assert call(server, "POST", jobs_path(server), job("b"), params={"fieldValidation": "Bogus"}).outcome == (
        422, "Invalid")


# --- limits --------------------------------------------------------------------------------------------------

def with_records(name, count, review_bytes) -> dict[str, Any]:
    """A job whose inline dataset makes it about count × review_bytes large."""
    records = [{"inputs": {"review": f"{i:05d}" + "x" * review_bytes},
                "expectations": {"expected_response": "positive"}}
               for i in range(count)]
    return job(name, dataset={**EXAMPLE_JOB["spec"]["dataset"], "records": records})


def test_size_limits(server):
    annotations = {**job("a"), "metadata": {"name": "a", "annotations": {"a": "x" * (256 * 1024)}}}
    too_many = call(server, "POST", jobs_path(server), annotations)
    assert too_many.outcome == (422, "Invalid")
    assert [(c["field"], c["reason"]) for c in too_many.body["details"]["causes"]] == [
        ("metadata.annotations", "FieldValueTooLong"), ("<nil>", "FieldValueInvalid")]
    assert call(server, "POST", jobs_path(server), with_records("fits", 5000, 200)).code == 201  # about 1.3 MiB
    etcd = call(server, "POST", jobs_path(server), with_records("etcd", 5000, 300))  # about 1.6 MiB
    assert (etcd.outcome, etcd.body["message"]) == ((500, None), "etcdserver: request is too large")
    client = call(server, "POST", jobs_path(server), with_records("client", 5000, 470))  # about 2.5 MiB
    assert client.outcome == (500, None)
    assert client.body["message"].startswith("rpc error: code = ResourceExhausted desc = trying to send message "
                                             "larger than max (")
    body = call(server, "POST", jobs_path(server), data=b"x" * (3 * MIB + 1))
    assert (body.outcome, body.body["message"]) == ((413, "RequestEntityTooLarge"),
                                                    "Request entity too large: limit is 3145728")


# --- deleting ------------------------------------------------------------------------------------------------

def test_finalizers_hold_the_deletion_until_released(server):
    call(server, "POST", jobs_path(server), {**job("a"), "metadata": {"name": "a", "finalizers": ["x/y"]}})
    marked = call(server, "DELETE", job_path(server, "a"))
    assert marked.code == 200 and marked.meta["deletionTimestamp"] and marked.meta["generation"] == 2
    again = call(server, "DELETE", job_path(server, "a"))
    assert again.code == 200 and again.meta["resourceVersion"] == marked.meta["resourceVersion"]
    assert call(server, "GET", job_path(server, "a")).meta["finalizers"] == ["x/y"]
    released = call(server, "PATCH", job_path(server, "a"), {"metadata": {"finalizers": None}},
                    content_type=MERGE_PATCH)
    assert released.code == 200 and call(server, "GET", job_path(server, "a")).code == 404


def pod(name, **spec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox"}], "terminationGracePeriodSeconds": 10, **spec}}


def test_scheduled_pods_are_deleted_gracefully(server):
    pods = server.path("pods")
    assert call(server, "POST", pods, pod("running", nodeName="local-kubelet")).code == 201
    assert call(server, "POST", pods, pod("pending")).code == 201
    graceful = call(server, "DELETE", server.path("pods", "running"))
    assert graceful.code == 200 and graceful.meta["deletionGracePeriodSeconds"] == 10
    assert call(server, "GET", server.path("pods", "running")).code == 200  # until the kubelet confirms
    assert call(server, "DELETE", server.path("pods", "running"), {"gracePeriodSeconds": 0}).code == 200
    assert call(server, "DELETE", server.path("pods", "pending")).code == 200  # never scheduled: gone at once
    assert [call(server, "GET", server.path("pods", name)).code for name in ("running", "pending")] == [404, 404]


# --- watching and selecting ----------------------------------------------------------------------------------

def test_watch_events_in_order_and_resumed_from_a_resource_version(server):
    since = call(server, "GET", jobs_path(server)).meta["resourceVersion"]
    added = call(server, "POST", jobs_path(server), job("a")).meta["resourceVersion"]
    call(server, "PATCH", job_path(server, "a"), {"spec": {"backoffLimit": 3}}, content_type=MERGE_PATCH)
    call(server, "DELETE", job_path(server, "a"))
    assert watch(server, jobs_path(server), 3, resourceVersion=since) == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert watch(server, jobs_path(server), 2, resourceVersion=added) == [("MODIFIED", "a"), ("DELETED", "a")]
    # From before the resource was served (the real server's watch cache; the emulator's event history).
    assert watch(server, jobs_path(server), 1, resourceVersion="1") == [("ERROR", "Expired")]


def test_label_selectors_filter_lists_and_watches(server):
    for name, labels in [("a", {"team": "x", "tier": "1"}), ("b", {"team": "y"}), ("c", {})]:
        call(server, "POST", jobs_path(server), {**job(name), "metadata": {"name": name, "labels": labels}})

    def names(selector):
        return [j["metadata"]["name"] for j in call(server, "GET", jobs_path(server),
                                                    params={"labelSelector": selector}).body["items"]]
    assert [names(s) for s in ("team", "team=x,tier", "team!=x", "team in (y,z)", "!team")] == [
        ["a", "b"], ["a"], ["b", "c"], ["b"], ["c"]]
    assert call(server, "GET", jobs_path(server), params={"labelSelector": "a=b,("}).outcome == (400, "BadRequest")
    by_name = call(server, "GET", jobs_path(server), params={"fieldSelector": "metadata.name=b"}).body["items"]
    assert [j["metadata"]["name"] for j in by_name] == ["b"]
    unsupported = call(server, "GET", jobs_path(server), params={"fieldSelector": "spec.cancel=true"})
    assert (unsupported.outcome, unsupported.body["message"]) == ((400, "BadRequest"),
                                                                  "field label not supported: spec.cancel")

    since = call(server, "GET", jobs_path(server)).meta["resourceVersion"]
    for labels in ({"run": "yes"}, {"run": "yes", "more": "1"}, {"run": "no"}):
        call(server, "PATCH", job_path(server, "c"), {"metadata": {"labels": labels}}, content_type=MERGE_PATCH)
    assert watch(server, jobs_path(server), 3, resourceVersion=since, labelSelector="run=yes") == [
        ("ADDED", "c"), ("MODIFIED", "c"), ("DELETED", "c")]  # entering and leaving the selection


def test_a_live_watch_sees_changes_as_they_happen(server):
    since = call(server, "GET", jobs_path(server)).meta["resourceVersion"]
    threading.Timer(0.5, lambda: call(server, "POST", jobs_path(server), job("late"))).start()
    assert watch(server, jobs_path(server), 1, resourceVersion=since) == [("ADDED", "late")]


# --- patch types and what only the real server has -----------------------------------------------------------

def test_patch_types(server, is_real):
    call(server, "POST", jobs_path(server), job("a"))
    strategic = call(server, "PATCH", job_path(server, "a"), {"metadata": {"labels": {"a": "b"}}},
                     content_type="application/strategic-merge-patch+json")
    assert strategic.outcome == (415, "UnsupportedMediaType")  # custom resources take no strategic merge patch
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
    call(server, "POST", server.path("configmaps"), config_map)
    builtin = call(server, "PATCH", server.path("configmaps", "c"), {"data": {"k": "w"}},
                   content_type="application/strategic-merge-patch+json")
    assert (builtin.code, builtin.body["data"]) == (200, {"k": "w"})
    applied = call(server, "PATCH", job_path(server, "a"), job("a"), params={"fieldManager": "test", "force": "true"},
                   content_type="application/apply-patch+yaml")
    # The emulator does not do server-side apply (field ownership, removal of fields a manager stopped applying):
    # it refuses it rather than approximate it with a merge. Nothing that runs against it applies.
    assert applied.outcome == ((200, None) if is_real else (415, "UnsupportedMediaType"))


def test_what_the_emulator_leaves_out(server, is_real):
    """Legitimate differences: the emulator has no authentication and no ServiceAccount tokens (every client is
    the same anonymous admin; the kubelet falls back to its own kubeconfig for a Pod's token)."""
    anonymous = requests.get(server.url + jobs_path(server), timeout=10,
                             verify=str(server.ca_file) if server.ca_file else True)
    assert anonymous.status_code == (403 if is_real else 200)  # system:anonymous may not list jobs
    call(server, "POST", server.path("serviceaccounts"),
         {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "worker"}})
    token = call(server, "POST", server.path("serviceaccounts", "worker", subresource="token"),
                 {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    assert token.code == (201 if is_real else 404)
