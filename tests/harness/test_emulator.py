"""The emulated Kubernetes API behaves as a real API server where kopf, kubectl and clients notice, and refuses
what kube-apiserver refuses. Each expected answer below is what kube-apiserver 1.33 gave to the same request;
tests/harness/test_differential.py keeps the two side by side."""
import base64
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import kubernetes.client
import kubernetes.watch
import pytest
import requests
import yaml
from kubernetes.client.exceptions import ApiException

from promptopt_harness.client import ApiError
from promptopt_harness.emulator import (
    AGE_COLUMN, NAME_COLUMN, PODS, EmulatedCluster, apply_json_patch, apply_merge_patch, build_table, crd_columns,
    decode_protobuf, human_age, jsonpath_values, parse_api_path, parse_field_selector, parse_label_selector,
    without_patch_directives,
)

GROUP, VERSION, PLURAL = "promptopt.dev", "v1alpha1", "promptoptimizationjobs"
POJ_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
WIDGETS_PATH = "/apis/example.test/v1/namespaces/default/widgets"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
EXAMPLE_JOB = yaml.safe_load((pathlib.Path(__file__).parents[2] / "examples" / "gepa-sentiment.yaml").read_text())
MIB = 1024 * 1024

# Free-form objects (any spec, a status subresource, printer columns) for the server's generic behaviour.
WIDGETS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.test"},
    "spec": {
        "group": "example.test",
        "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"],
                  "categories": ["gadgets"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Owner", "type": "string", "jsonPath": ".spec.owner", "priority": 1},
            ],
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }],
    },
}


@pytest.fixture
def cluster(emulated_cluster):
    """These are the emulator's own tests: the emulator, serving the repo's CRDs and widgets."""
    emulated_cluster.create(WIDGETS_CRD)
    return emulated_cluster


def widget(name, **fields):
    return {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": name}, **fields}


def job(name, **metadata):
    """The example GEPA job (valid against the CRD) under another name."""
    return {**EXAMPLE_JOB, "metadata": {"name": name, **metadata}}


def pod(name, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox"}], **spec}}


def watch_lines(cluster, path, count, headers=None, **params):
    """The first `count` events of a watch (the server ends it after 5 s at the latest)."""
    params = {"watch": "true", "timeoutSeconds": "5", **params}
    with requests.get(cluster.url + path, params=params, headers=headers, stream=True, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        events = []
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) == count:
                break
        return events


def eventually(condition, timeout=5.0):
    """Poll `condition` until it is true; False if it never was within the timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def in_background(action, delay=0.2):
    """Run `action` soon in another thread (while this one reads a watch stream)."""
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


def refused(call, *args, **kwargs):
    """The ApiError a request is answered with (the test fails if it succeeds)."""
    with pytest.raises(ApiError) as error:
        call(*args, **kwargs)
    return error.value


# --- pure logic --------------------------------------------------------------------------------

@pytest.mark.parametrize("selector, labels, expected", [
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),
    ("a!=b", {"a": "b"}, False),
    ("e in (x, y)", {"e": "y"}, True),
    ("e in (x,y)", {"e": "z"}, False),
    ("e notin (x,y)", {}, True),
    ("g", {"g": ""}, True),
    ("!f", {"f": "1"}, False),
    ("a=b,c!=d,e in (x,y),!f,g", {"a": "b", "c": "x", "e": "x", "g": "1"}, True),
    ("a=b,c!=d,e in (x,y),!f,g", {"a": "b", "c": "x", "e": "x", "g": "1", "f": "1"}, False),
    ("app.kubernetes.io/name=x", {"app.kubernetes.io/name": "x"}, True),
])
def test_label_selectors(selector, labels, expected):
    assert all(r.matches(labels) for r in parse_label_selector(selector)) is expected


def test_a_malformed_label_selector_is_a_bad_request():
    with pytest.raises(Exception, match="unable to parse"):
        parse_label_selector("a=b,(")


@pytest.mark.parametrize("selector, expected", [
    ("metadata.name=x", True), ("metadata.name!=x", False), ("metadata.namespace==ns", True),
    ("spec.nodeName=", True), ("spec.nodeName!=", False), ("metadata.name=x,metadata.namespace=other", False),
])
def test_field_selectors(selector, expected):
    obj = {"metadata": {"name": "x", "namespace": "ns"}, "spec": {}}
    assert all(r.matches(obj) for r in parse_field_selector(selector, PODS)) is expected


def test_only_the_fields_a_resource_indexes_can_be_selected():
    with pytest.raises(Exception) as unsupported:
        parse_field_selector("spec.cancel=true", parse_api_path(POJ_PATH).resource)
    assert (unsupported.value.status, unsupported.value.message) == (400, "field label not supported: spec.cancel")


def test_merge_patch_merges_dicts_replaces_lists_and_removes_nulls():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}
    patch = {"a": {"b": None, "d": 3}, "l": [3], "x": None}
    assert apply_merge_patch(target, patch) == {"a": {"c": 2, "d": 3}, "l": [3]}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}  # untouched


def test_strategic_merge_directives_are_dropped():
    patch = {"$setElementOrder/containers": [{"name": "a"}], "spec": {"containers": [{"name": "a", "$patch": "x"}]}}
    assert without_patch_directives(patch) == {"spec": {"containers": [{"name": "a"}]}}


def test_a_failed_json_patch_test_is_422():
    obj = {"metadata": {"resourceVersion": "5"}}
    test_then_add = [{"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
                     {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    assert apply_json_patch(obj, test_then_add)["metadata"]["finalizers"] == ["f"]
    with pytest.raises(Exception) as raised:
        apply_json_patch(obj, [{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}])
    assert (raised.value.status, raised.value.message) == (422, "the server rejected our request due to an error "
                                                                "in our request")


@pytest.mark.parametrize("seconds, text", [
    (-5, "<invalid>"), (0, "0s"), (119, "119s"), (120, "2m"), (200, "3m20s"), (900, "15m"), (3 * 3600, "3h"),
    (5 * 3600 + 600, "5h10m"), (20 * 3600, "20h"), (76 * 3600, "3d4h"), (100 * 86400, "100d"),
    (3 * 365 * 86400 + 30 * 86400, "3y30d"), (10 * 365 * 86400, "10y"),
])
def test_ages_print_like_the_api_server(seconds, text):
    assert human_age(seconds) == text


def test_jsonpath_filters_as_in_printer_columns():
    obj = {"status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]}}
    assert jsonpath_values(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert jsonpath_values(obj, ".spec.missing") == []


def test_crd_tables_have_name_and_the_declared_columns_or_age():
    version = WIDGETS_CRD["spec"]["versions"][0]
    assert [c.name for c in crd_columns(version)] == ["Name", "Ready", "Size", "Owner"]
    assert crd_columns({"name": "v1"}) == [NAME_COLUMN, AGE_COLUMN]
    obj = {"metadata": {"name": "w", "creationTimestamp": "2020-01-01T00:00:00Z"},
           "spec": {"size": 3}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    table = build_table(crd_columns(version), [obj], include_object="None", resource_version="7")
    assert table["rows"] == [{"cells": ["w", "True", 3, None]}]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 1]


def test_namespace_urls_are_parsed_as_namespaces():
    assert parse_api_path("/api/v1/namespaces").resource.plural == "namespaces"
    ns = parse_api_path("/api/v1/namespaces/x/status")
    assert (ns.resource.plural, ns.namespace, ns.name, ns.subresource) == ("namespaces", None, "x", "status")
    pods = parse_api_path("/api/v1/namespaces/x/pods/p/log")
    assert (pods.resource.plural, pods.namespace, pods.name, pods.subresource) == ("pods", "x", "p", "log")


def test_protobuf_bodies_of_the_kinds_kubectl_creates_decode_to_their_json():
    # What `kubectl create namespace x` sends (from kubectl -v=8): every field written, even the empty ones.
    namespace = bytes.fromhex("6b3873000a0f0a02763112094e616d657370616365"
                              "12190a110a017812001a0022002a003200380042001200" "1a020a00" "1a002200")
    assert decode_protobuf(namespace) == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    with pytest.raises(Exception) as pod_body:
        decode_protobuf(b"k8s\x00\x0a\x09\x0a\x02v1\x12\x03Pod\x12\x00")
    assert pod_body.value.status == 415


# --- objects through the kubernetes client and raw HTTP -----------------------------------------

def test_created_objects_get_server_metadata(cluster):
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    created = api.create_namespaced_custom_object("example.test", "v1", "default", "widgets",
                                                  widget("a", spec={"x": 1}))
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"]) and RFC3339.fullmatch(meta["creationTimestamp"])
    assert int(meta["resourceVersion"]) > 0
    assert requests.post(cluster.url + WIDGETS_PATH, json=widget("b")).status_code == 201


def test_generate_name_makes_unique_names(cluster):
    names = {cluster.create(widget(None) | {"metadata": {"generateName": "run-"}})["metadata"]["name"]
             for _ in range(20)}
    assert len(names) == 20 and all(re.fullmatch(r"run-[a-z0-9]{5}", n) for n in names)


def test_errors_are_status_objects(cluster):
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    cluster.create(job("a"))
    with pytest.raises(ApiException) as duplicate:
        api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, job("a"))
    assert duplicate.value.status == 409 and json.loads(duplicate.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as missing:
        api.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "nope")
    status = json.loads(missing.value.body)
    assert missing.value.status == 404 and status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["message"] == f'{PLURAL}.{GROUP} "nope" not found'
    assert status["details"] == {"name": "nope", "group": GROUP, "kind": PLURAL}
    assert refused(cluster.get, "configmaps", "nope").body["details"] == {"name": "nope", "kind": "configmaps"}
    assert requests.get(cluster.url + "/apis/nothing.test/v1/things").status_code == 404


def test_generation_counts_spec_changes_and_every_write_gets_a_newer_resource_version(cluster):
    versions = [int(cluster.create(widget("a", spec={"x": 1}))["metadata"]["resourceVersion"])]
    for patch, subresource, generation in [({"spec": {"x": 2}}, None, 2),
                                           ({"metadata": {"labels": {"l": "1"}}}, None, 2),
                                           ({"status": {"phase": "Running"}}, "status", 2),
                                           ({"spec": {"y": 1}}, None, 3)]:
        meta = cluster.patch("widget", "a", patch, subresource=subresource)["metadata"]
        assert meta["generation"] == generation
        versions.append(int(meta["resourceVersion"]))
    assert versions == sorted(set(versions))
    unchanged = cluster.patch("widget", "a", {"spec": {"y": 1}})["metadata"]["resourceVersion"]
    assert int(unchanged) == versions[-1]  # a no-op write is not a write


def test_the_status_subresource_owns_the_status(cluster):
    created = cluster.create(widget("a", spec={"x": 1}, status={"phase": "Forged"}))
    assert "status" not in created
    cluster.patch("widget", "a", {"status": {"phase": "Running"}, "spec": {"x": 9}}, subresource="status")
    after_main_patch = cluster.patch("widget", "a", {"status": {"phase": "Forged"}, "spec": {"x": 2}})
    assert after_main_patch["status"] == {"phase": "Running"} and after_main_patch["spec"] == {"x": 2}
    replaced = cluster.request("PUT", cluster.path("widget", "a"), dict(after_main_patch, spec={"x": 3}, status={}))
    assert replaced["spec"] == {"x": 3} and replaced["status"] == {"phase": "Running"}
    assert cluster.get("widget", "a")["metadata"]["generation"] == 3


def test_a_custom_resource_is_replaced_only_at_a_resource_version(cluster):
    current = cluster.create(widget("a", spec={"x": 1}))
    unconditional = {**current, "metadata": {"name": "a"}}
    error = refused(cluster.request, "PUT", cluster.path("widget", "a"), unconditional)
    assert (error.code, error.body["reason"]) == (422, "Invalid")
    assert error.body["message"] == ('widgets.example.test "a" is invalid: metadata.resourceVersion: Invalid value: '
                                     '0x0: must be specified for an update')
    stale = {**current, "metadata": {"name": "a", "resourceVersion": "1"}}
    assert refused(cluster.request, "PUT", cluster.path("widget", "a"), stale).code == 409


def test_kopfs_json_patch_tests_the_resource_version(cluster):
    version = cluster.create(widget("a"))["metadata"]["resourceVersion"]
    add_finalizer = {"op": "add", "path": "/metadata/finalizers", "value": ["kopf.zalando.org/KopfFinalizerMarker"]}
    patched = cluster.patch("widget", "a", [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
                                            add_finalizer])
    assert patched["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}, add_finalizer]
    assert refused(cluster.patch, "widget", "a", stale).code == 422
    stale_merge = {"metadata": {"resourceVersion": version, "labels": {"x": "y"}}}
    assert refused(cluster.patch, "widget", "a", stale_merge).code == 409


def test_lists_are_typed_and_filtered_by_selectors(cluster):
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    cluster.create(widget("a") | {"metadata": {"name": "a", "labels": {"team": "x", "tier": "1"}}})
    cluster.create(widget("b") | {"metadata": {"name": "b", "labels": {"team": "y"}}})
    cluster.create(widget("c") | {"metadata": {"name": "c", "namespace": "other"}})
    listed = cluster.request("GET", WIDGETS_PATH)
    assert listed["kind"] == "WidgetList" and listed["apiVersion"] == "example.test/v1"
    assert int(listed["metadata"]["resourceVersion"]) >= 5

    def names(path, **params):
        return [o["metadata"]["name"] for o in cluster.request("GET", path, params=params)["items"]]
    assert names(WIDGETS_PATH) == ["a", "b"]
    assert names("/apis/example.test/v1/widgets") == ["a", "b", "c"]
    assert names(WIDGETS_PATH, labelSelector="team in (x,z),tier") == ["a"]
    assert names(WIDGETS_PATH, labelSelector="team!=x") == ["b"]
    assert names("/apis/example.test/v1/widgets", fieldSelector="metadata.namespace=other") == ["c"]
    assert names(WIDGETS_PATH, fieldSelector="metadata.name=b") == ["b"]
    assert names("/api/v1/namespaces") == ["default", "other"]
    assert cluster.get("namespace", "other")["status"]["phase"] == "Active"
    unsupported = refused(cluster.request, "GET", WIDGETS_PATH, params={"fieldSelector": "spec.size=1"})
    assert (unsupported.code, unsupported.body["message"]) == (400, "field label not supported: spec.size")


def test_watches_resume_from_a_resource_version_without_replaying(cluster):
    cluster.create(widget("old"))
    since = cluster.request("GET", WIDGETS_PATH)["metadata"]["resourceVersion"]
    cluster.patch("widget", "old", {"spec": {"x": 1}})
    in_background(lambda: cluster.create(widget("new")))
    events = watch_lines(cluster, WIDGETS_PATH, 2, resourceVersion=since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("MODIFIED", "old"), ("ADDED", "new")]
    assert all(int(e["object"]["metadata"]["resourceVersion"]) > int(since) for e in events)
    everything = watch_lines(cluster, WIDGETS_PATH, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in everything] == [("ADDED", "new"), ("ADDED", "old")]


def test_a_watch_from_before_a_resource_was_served_is_gone(cluster):
    """The real server's watch cache starts when a resource is first served: older versions are 410 Gone."""
    served_at = int(cluster.request("GET", WIDGETS_PATH)["metadata"]["resourceVersion"])
    [event] = watch_lines(cluster, WIDGETS_PATH, 1, resourceVersion="1")
    assert event["type"] == "ERROR" and (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    assert event["object"]["message"] == f"too old resource version: 1 ({served_at})"


def test_the_kubernetes_client_lists_and_watches(cluster):
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    cluster.create(widget("a"))
    listed = api.list_namespaced_custom_object("example.test", "v1", "default", "widgets")
    in_background(lambda: cluster.delete("widget", "a"))
    stream = kubernetes.watch.Watch().stream(api.list_namespaced_custom_object, "example.test", "v1", "default",
                                             "widgets", resource_version=listed["metadata"]["resourceVersion"],
                                             timeout_seconds=5)
    event = next(stream)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "a")


def test_watches_see_objects_enter_and_leave_their_label_selection(cluster):
    since = cluster.create(widget("a"))["metadata"]["resourceVersion"]

    def relabel():
        cluster.patch("widget", "a", {"metadata": {"labels": {"run": "yes"}}})
        cluster.patch("widget", "a", {"spec": {"x": 1}})
        cluster.patch("widget", "a", {"metadata": {"labels": {"run": "no"}}})
    in_background(relabel)
    events = watch_lines(cluster, WIDGETS_PATH, 3, labelSelector="run=yes", resourceVersion=since)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


def test_a_watch_ends_after_its_timeout(cluster):
    assert watch_lines(cluster, WIDGETS_PATH, 1, timeoutSeconds="1") == []


def test_initial_events_are_refused_as_by_a_server_without_watch_lists(cluster):
    error = refused(cluster.request, "GET", WIDGETS_PATH, params={"watch": "true", "sendInitialEvents": "true"})
    assert (error.code, error.body["reason"]) == (422, "Invalid") and "WatchList feature gate" in error.body["message"]


def test_finalizers_hold_the_deletion_until_released(cluster):
    cluster.create(widget("a") | {"metadata": {"name": "a", "finalizers": ["x/y"]}})
    marked = cluster.delete("widget", "a")
    assert RFC3339.fullmatch(marked["metadata"]["deletionTimestamp"])
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 0 and marked["metadata"]["generation"] == 2
    assert cluster.get("widget", "a")["metadata"]["finalizers"] == ["x/y"]
    cluster.patch("widget", "a", {"metadata": {"finalizers": None}})
    assert refused(cluster.get, "widget", "a").code == 404


def test_scheduled_pods_are_deleted_gracefully_until_the_kubelet_confirms(cluster):
    api = kubernetes.client.CoreV1Api(cluster.api_client())
    cluster.create(pod("running", nodeName="node-1", terminationGracePeriodSeconds=10))
    cluster.create(pod("unscheduled"))
    cluster.create(pod("finished", nodeName="node-1"))
    cluster.patch("pod", "finished", {"status": {"phase": "Succeeded"}}, subresource="status")

    api.delete_namespaced_pod("running", "default")
    terminating = cluster.get("pod", "running")
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 10
    assert terminating["metadata"]["deletionTimestamp"] > terminating["metadata"]["creationTimestamp"]
    api.delete_namespaced_pod("running", "default")  # a repeated deletion changes nothing
    assert cluster.get("pod", "running")["metadata"]["resourceVersion"] == terminating["metadata"]["resourceVersion"]
    api.delete_namespaced_pod("running", "default", grace_period_seconds=0)  # what the kubelet sends
    for name in ("unscheduled", "finished"):
        api.delete_namespaced_pod(name, "default")
    assert cluster.list("pods") == []


def test_only_single_objects_are_deleted(cluster):
    """No collections and no namespaces: the emulator has no namespace controller (the real cluster does)."""
    cluster.create(widget("a"))
    assert refused(cluster.request, "DELETE", WIDGETS_PATH).code == 405
    assert refused(cluster.delete, "namespace", "default").code == 405
    assert [w["metadata"]["name"] for w in cluster.list("widgets")] == ["a"]


def test_discovery_describes_resources_as_kubectl_expects(cluster):
    core = cluster.request("GET", "/api/v1")
    assert core["groupVersion"] == "v1"
    entries = {e["name"]: e for e in cluster.request("GET", f"/apis/{GROUP}/{VERSION}")["resources"]}
    main, status = entries[PLURAL], entries[f"{PLURAL}/status"]
    assert main["shortNames"] == ["poj"] and main["categories"] == ["promptopt"] and main["namespaced"] is True
    assert set(main["verbs"]) == {"create", "get", "list", "watch", "patch", "update", "delete"}
    assert "shortNames" not in status and status["verbs"] == ["get", "patch", "update"]
    groups = {g["name"]: g for g in cluster.request("GET", "/apis")["groups"]}
    assert groups[GROUP]["preferredVersion"]["groupVersion"] == f"{GROUP}/{VERSION}"
    assert {"events.k8s.io", "apiextensions.k8s.io", "coordination.k8s.io"} <= set(groups)
    assert cluster.request("GET", f"/apis/{GROUP}")["versions"] == [{"groupVersion": f"{GROUP}/{VERSION}",
                                                                      "version": VERSION}]


def test_crds_created_through_the_api_are_served(cluster):
    crd = cluster.get("customresourcedefinitions", "widgets.example.test")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    created = cluster.create(widget("w"))
    assert created["metadata"]["namespace"] == "default"
    assert [o["metadata"]["name"] for o in cluster.list("wd")] == ["w"]


def test_tables_for_custom_and_builtin_resources(cluster):
    cluster.create(widget("w", spec={"size": 2}))
    cluster.patch("widget", "w", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                  subresource="status")
    table = requests.get(cluster.url + WIDGETS_PATH, headers={"Accept": TABLE}).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Ready", "Size", "Owner"]
    assert table["rows"][0]["cells"] == ["w", "True", 2, None]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    cluster.create(pod("p"))
    pods = requests.get(cluster.url + "/api/v1/namespaces/default/pods/p", headers={"Accept": TABLE}).json()
    assert [c["name"] for c in pods["columnDefinitions"][:5]] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert pods["rows"][0]["cells"][:4] == ["p", "0/1", "Pending", 0]


# --- what the real server refuses -----------------------------------------------------------------

def test_annotations_over_256_kib_in_total_are_invalid(cluster):
    limit = 256 * 1024
    cluster.create(job("at-limit", annotations={"a": "x" * (limit - 1)}))  # key and value count
    error = refused(cluster.create, job("over", annotations={"a": "x" * limit}))
    assert (error.code, error.body["reason"]) == (422, "Invalid")
    assert error.body["message"].startswith('PromptOptimizationJob.promptopt.dev "over" is invalid: '
                                            '[metadata.annotations: Too long: may not be more than 262144 bytes, ')
    assert [(c["field"], c["reason"]) for c in error.body["details"]["causes"]] == [
        ("metadata.annotations", "FieldValueTooLong"), ("<nil>", "FieldValueInvalid")]  # CEL not run, and said so
    grown = refused(cluster.patch, "poj", "at-limit", {"metadata": {"annotations": {"b": "y"}}})
    assert grown.code == 422 and cluster.get("poj", "at-limit")["metadata"]["annotations"].keys() == {"a"}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"a": "x" * limit}}}
    assert refused(cluster.create, config_map).body["message"] == (
        'ConfigMap "c" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes')


def test_names_and_labels_are_validated(cluster):
    bad_name = refused(cluster.create, job("Bad_Name"))
    assert bad_name.code == 422 and bad_name.body["details"]["causes"][0]["message"].startswith(
        'Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of')
    long_value = refused(cluster.create, job("good", labels={"k": "x" * 64}))
    assert long_value.body["details"]["causes"][0] == {
        "reason": "FieldValueInvalid", "field": "metadata.labels",
        "message": f'Invalid value: "{"x" * 64}": must be no more than 63 characters'}
    bad_key = refused(cluster.create, job("good", annotations={"bad key": "x"}))
    assert bad_key.body["details"]["causes"][0]["message"].startswith(
        'Invalid value: "bad key": name part must consist of alphanumeric characters')
    assert refused(cluster.create, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}).code == 422


def test_objects_are_created_in_existing_namespaces_only(cluster):
    error = refused(cluster.create, job("j", namespace="nope"))
    assert (error.code, error.body["message"], error.body["details"]) == (
        404, 'namespaces "nope" not found', {"name": "nope", "kind": "namespaces"})


def test_strict_field_validation_refuses_unknown_fields(cluster):
    """What kubectl sends: a misspelled field is refused, naming it, instead of being dropped."""
    misspelled = job("typo")
    misspelled["spec"] = {**misspelled["spec"], "optimizer": {**misspelled["spec"]["optimizer"], "gepa": {
        **misspelled["spec"]["optimizer"]["gepa"], "maxMetricCall": 5}}}
    error = refused(cluster.create, misspelled | {"extra": 1}, fieldValidation="Strict")
    assert (error.code, error.body["reason"]) == (400, "BadRequest")
    assert error.body["message"] == (
        'PromptOptimizationJob in version "v1alpha1" cannot be handled as a PromptOptimizationJob: strict decoding '
        'error: unknown field "extra", unknown field "spec.optimizer.gepa.maxMetricCall"')
    cluster.create(job("j"))
    patch = {"spec": {"optimizer": {"gepa": {"maxMetricCall": 3}}}}
    error = refused(cluster.request, "PATCH", cluster.path("poj", "j"), patch, params={"fieldValidation": "Strict"},
                    content_type="application/merge-patch+json")
    assert (error.code, error.body["reason"], error.body["details"]["causes"][0]["field"]) == (422, "Invalid", "patch")
    assert error.body["message"].startswith(' "" is invalid: patch: Invalid value: "{\\"apiVersion\\":')
    assert error.body["message"].endswith('": strict decoding error: unknown field "spec.optimizer.gepa.maxMetricCall"')
    status = refused(cluster.request, "PATCH", cluster.path("poj", "j", subresource="status"),
                     {"status": {"bogus": 1}}, params={"fieldValidation": "Strict"},
                     content_type="application/merge-patch+json")
    assert status.body["message"].endswith('strict decoding error: unknown field "status.bogus"')
    bogus = refused(cluster.create, job("k"), fieldValidation="Bogus")
    assert bogus.body["message"] == ('CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: '
                                     '"Bogus": supported values: "", "Ignore", "Strict", "Warn"')


@pytest.mark.parametrize("validation, warned", [("Warn", True), (None, True), ("Ignore", False)])
def test_unknown_fields_are_otherwise_pruned_with_a_warning(cluster, validation, warned):
    params = {"fieldValidation": validation} if validation else {}
    body = job("j") | {"extra": 1, "status": {"bogus": 1}}
    created = requests.post(cluster.url + POJ_PATH, json=body, params=params)
    assert created.status_code == 201 and "extra" not in created.json()
    warning = '299 - "unknown field \\"extra\\"", 299 - "unknown field \\"status.bogus\\""'
    assert created.headers.get("Warning") == (warning if warned else None)
    patched = requests.patch(cluster.url + POJ_PATH + "/j/status", json={"status": {"phase": "Running", "x": 1}},
                             params=params, headers={"Content-Type": "application/merge-patch+json"})
    assert patched.json()["status"] == {"phase": "Running"}
    assert patched.headers.get("Warning") == ('299 - "unknown field \\"status.x\\""' if warned else None)


def test_bodies_up_to_3_mib_are_read_and_larger_ones_refused_with_a_status(cluster):
    too_large = requests.post(cluster.url + WIDGETS_PATH, data=b"x" * (3 * MIB + 1),
                              headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413 and too_large.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 413,
        "reason": "RequestEntityTooLarge", "message": "Request entity too large: limit is 3145728"}


@pytest.mark.parametrize("size, message", [
    (int(1.6 * MIB), "etcdserver: request is too large"),
    (int(2.5 * MIB), "rpc error: code = ResourceExhausted desc = trying to send message larger than max"),
])
def test_objects_too_large_for_etcd_are_a_server_error(cluster, size, message):
    """etcd takes requests up to 1.5 MiB, and the apiserver's etcd client sends at most 2 MiB (the real answers)."""
    error = refused(cluster.create, widget("big", spec={"blob": "x" * size}))
    assert error.code == 500 and error.body["message"].startswith(message) and "reason" not in error.body
    cluster.create(widget("fits", spec={"blob": "x" * int(1.4 * MIB)}))
    grown = refused(cluster.patch, "widget", "fits", {"status": {"blob": "x" * size}}, subresource="status")
    assert grown.code == 500 and "status" not in cluster.get("widget", "fits")


def test_patch_types_are_those_the_real_server_takes(cluster):
    cluster.create(job("j"))
    strategic = refused(cluster.request, "PATCH", cluster.path("poj", "j"), {"metadata": {"labels": {"a": "b"}}},
                        content_type="application/strategic-merge-patch+json")
    assert (strategic.code, strategic.body["message"]) == (415, (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json"))
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    labelled = cluster.request("PATCH", cluster.path("configmaps", "c"), {"metadata": {"labels": {"a": "b"}}},
                               content_type="application/strategic-merge-patch+json")
    assert labelled["metadata"]["labels"] == {"a": "b"}
    assert refused(cluster.apply, job("j")).code == 415  # server-side apply is not emulated


def test_dry_runs_are_refused_rather_than_written(cluster):
    assert refused(cluster.create, widget("a"), dryRun="All").code == 400
    assert cluster.list("widgets") == []


# --- kubectl --------------------------------------------------------------------------------------

def test_kubectl_works_with_custom_resources(kubectl):
    manifest = yaml.safe_dump(job("j1"))
    assert "created" in kubectl("apply", "-f", "-", input=manifest).stdout
    changed = manifest.replace("backoffLimit: 2", "backoffLimit: 3")
    assert "configured" in kubectl("apply", "-f", "-", input=changed).stdout
    kubectl("patch", "poj", "j1", "--type=merge", "-p", '{"metadata": {"labels": {"team": "x"}}}')
    ready = {"type": "Ready", "status": "False", "reason": "Optimizing"}
    kubectl("patch", "poj", "j1", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Running", "conditions": [ready]}}))
    listing = kubectl("get", "poj").stdout.splitlines()
    assert listing[0].split() == ["NAME", "PHASE", "OPTIMIZER", "PROGRESS%", "INITIAL", "BEST", "DURATION", "AGE"]
    assert listing[1].split()[:3] == ["j1", "Running", "GEPA"]
    assert "Optimizing" in kubectl("get", "poj", "-o", "wide", "-l", "team=x").stdout
    fetched = yaml.safe_load(kubectl("get", "poj", "j1", "-o", "yaml").stdout)
    assert fetched["spec"]["backoffLimit"] == 3 and fetched["metadata"]["generation"] == 2
    assert "Phase:     Running" in kubectl("describe", "poj", "j1").stdout
    assert "deleted" in kubectl("delete", "poj", "j1").stdout
    assert "No resources found" in kubectl("get", "poj").stderr


def test_kubectl_apply_refuses_a_misspelled_field(kubectl):
    manifest = yaml.safe_dump(job("j1")).replace("maxMetricCalls:", "maxMetricCall:")
    refusal = kubectl("apply", "-f", "-", input=manifest, check=False)
    assert refusal.returncode != 0 and 'unknown field "spec.optimizer.gepa.maxMetricCall"' in refusal.stderr


def test_kubectl_creates_what_it_sends_as_protobuf(kubectl, cluster):
    kubectl("create", "namespace", "team-a")
    kubectl("create", "secret", "generic", "llm-credentials", "--from-literal=OPENAI_API_KEY=sk-x", "-n", "team-a")
    kubectl("create", "configmap", "prompts", "--from-literal=prompt=Hello {{name}}", "-n", "team-a")
    kubectl("create", "serviceaccount", "worker", "-n", "team-a")
    assert cluster.get("namespace", "team-a")["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    secret = cluster.get("secrets", "llm-credentials", namespace="team-a")
    assert base64.b64decode(secret["data"]["OPENAI_API_KEY"]) == b"sk-x" and secret["type"] == "Opaque"
    assert cluster.get("configmaps", "prompts", namespace="team-a")["data"] == {"prompt": "Hello {{name}}"}
    assert cluster.exists("serviceaccounts", "worker", namespace="team-a")


def test_kubectl_declares_crds_and_works_with_builtins(kubectl):
    kubectl("wait", "--for=condition=Established", "crd/widgets.example.test", "--timeout=5s")
    kubectl("apply", "-f", "-", input="apiVersion: example.test/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}")
    assert kubectl("get", "wd").stdout.splitlines()[1].split() == ["w", "3"]
    for value in ("one", "two"):
        kubectl("apply", "-f", "-",
                input=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: {value}}}")
    assert kubectl("get", "cm", "c", "-o", "jsonpath={.data.k}").stdout == "two"
    kubectl("run", "p", "--image=busybox")
    assert kubectl("get", "pods").stdout.splitlines()[1].split()[:4] == ["p", "0/1", "Pending", "0"]
    assert "default" in kubectl("get", "ns").stdout


@pytest.mark.timeout(20)
def test_kubectl_watches(cluster, tmp_path):
    cluster.create(widget("a"))
    command = ["/usr/bin/kubectl", "--kubeconfig", str(cluster.kubeconfig), "--cache-dir", str(tmp_path),
               "get", "wd", "-w"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as watcher:
        try:
            header, listed = watcher.stdout.readline(), watcher.stdout.readline()
            cluster.patch("widget", "a", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                          subresource="status")
            changed = watcher.stdout.readline()
        finally:
            watcher.terminate()
    assert header.split()[:2] == ["NAME", "READY"] and listed.split()[0] == "a"
    assert changed.split()[:2] == ["a", "True"]


def test_kubectl_explains_custom_resources_from_their_schema(kubectl):
    explained = kubectl("explain", "poj.spec").stdout
    assert "KIND:       PromptOptimizationJob" in explained and "FIELDS:" in explained


# --- kopf and the command line ------------------------------------------------------------------

OPERATOR = textwrap.dedent("""
    import pathlib
    import kopf

    FIRED = pathlib.Path(__file__).with_name("fired.log")

    @kopf.on.create("example.test", "v1", "widgets")
    def created(name, body, patch, **_):
        with FIRED.open("a") as log:
            log.write(f"created {name}\\n")
        patch.status["phase"] = "Running"
        kopf.info(body, reason="Started", message="the widget started")

    @kopf.on.delete("example.test", "v1", "widgets")
    def deleted(name, **_):
        with FIRED.open("a") as log:
            log.write(f"deleted {name}\\n")
""")


@pytest.fixture
def operator(cluster, tmp_path):
    """A minimal real kopf operator against the cluster; returns its log of handler calls."""
    script = tmp_path / "operator.py"
    script.write_text(OPERATOR)
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    process = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-A", str(script)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield tmp_path / "fired.log"
    process.terminate()
    process.wait(timeout=10)


def test_a_kopf_operator_handles_creation_and_deletion_once(cluster, kubectl, operator):
    kubectl("apply", "-f", "-", input=yaml.safe_dump(widget("w", spec={"size": 1})))
    handled = cluster.wait_for("widget", "w", lambda o: o and o.get("status", {}).get("phase") == "Running", timeout=15)
    assert "kopf.zalando.org/KopfFinalizerMarker" in handled["metadata"]["finalizers"]
    kubectl("delete", "wd", "w", "--timeout=10s")
    assert operator.read_text().splitlines() == ["created w", "deleted w"]
    assert eventually(lambda: [e["message"] for e in cluster.list("events")] == ["the widget started"])


def test_the_command_line_serves_until_terminated(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen([sys.executable, "-m", "promptopt_harness.emulator", "--kubeconfig", str(kubeconfig)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert "Serving the emulated Kubernetes API at http://127.0.0.1:" in process.stdout.readline()
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        assert requests.get(server + POJ_PATH).json()["kind"] == "PromptOptimizationJobList"
    finally:
        process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_two_clusters_are_independent():
    with EmulatedCluster() as first, EmulatedCluster() as second:
        first.create(job("only-here"))
        assert second.list("poj") == [] and first.url != second.url


def test_only_the_status_subresource_is_emulated(cluster):
    cluster.create(pod("p"))
    assert cluster.request("GET", cluster.path("pod", "p", subresource="status"))["metadata"]["name"] == "p"
    assert refused(cluster.request, "GET", cluster.path("pod", "p", subresource="log")).code == 404


def test_custom_resources_are_admitted_against_their_schema(cluster):
    invalid = refused(cluster.create, {**job("empty"), "spec": {}})
    assert invalid.code == 422 and "spec.optimizer: Required value" in invalid.body["message"]
    assert [c["reason"] for c in invalid.body["details"]["causes"]][0] == "FieldValueRequired"


def test_secret_string_data_is_stored_as_base64_data(cluster):
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                    "stringData": {"OPENAI_API_KEY": "sk-abc"}, "data": {"OTHER": "eA=="}})
    stored = cluster.get("secrets", "s")
    assert "stringData" not in stored and stored["data"] == {"OPENAI_API_KEY": "c2stYWJj", "OTHER": "eA=="}
    cluster.patch("secrets", "s", {"stringData": {"OPENAI_API_KEY": "sk-new"}})
    assert cluster.get("secrets", "s")["data"]["OPENAI_API_KEY"] == "c2stbmV3"


def test_namespaces_can_be_watched(cluster):
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    events = watch_lines(cluster, "/api/v1/namespaces", 2)
    assert {(e["type"], e["object"]["metadata"]["name"]) for e in events} == {("ADDED", "default"), ("ADDED", "team-a")}
