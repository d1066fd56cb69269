"""The emulated Kubernetes API behaves as a real API server where kopf, kubectl and clients notice."""
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

from promptopt.testing.client import ApiError
from promptopt.testing.emulator import (
    AGE_COLUMN, NAME_COLUMN, EmulatedCluster, KubernetesEmulator, apply_json_patch,
    apply_merge_patch, build_table, crd_columns, declare_crd, human_age, jsonpath_values, load_crds,
    parse_api_path, parse_field_selector, parse_label_selector, without_patch_directives,
)

GROUP, VERSION, PLURAL = "promptopt.dev", "v1alpha1", "promptoptimizationjobs"
POJ_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

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
    """These are the emulator's own tests."""
    return emulated_cluster


@pytest.fixture
def cluster():
    """These tests exercise the server's generic behaviour with free-form specs: no admission here."""
    with EmulatedCluster() as emulated:
        yield emulated


def job(name, **fields):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PromptOptimizationJob", "metadata": {"name": name}, **fields}


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
    assert all(r.matches(obj) for r in parse_field_selector(selector)) is expected


def test_merge_patch_merges_dicts_replaces_lists_and_removes_nulls():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}
    assert apply_merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3], "x": None}) == {"a": {"c": 2, "d": 3}, "l": [3]}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}  # untouched


def test_strategic_merge_directives_are_dropped():
    patch = {"$setElementOrder/containers": [{"name": "a"}], "spec": {"containers": [{"name": "a", "$patch": "x"}]}}
    assert without_patch_directives(patch) == {"spec": {"containers": [{"name": "a"}]}}


def test_a_failed_json_patch_test_is_422():
    obj = {"metadata": {"resourceVersion": "5"}}
    assert apply_json_patch(obj, [{"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
                                  {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}])["metadata"]["finalizers"] == ["f"]
    with pytest.raises(Exception) as raised:
        apply_json_patch(obj, [{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}])
    assert raised.value.status == 422


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


# --- objects through the kubernetes client and raw HTTP -----------------------------------------

def test_created_objects_get_server_metadata(cluster):
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    created = api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, job("a", spec={"x": 1}))
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"]) and RFC3339.fullmatch(meta["creationTimestamp"])
    assert int(meta["resourceVersion"]) > 0
    assert requests.post(cluster.url + POJ_PATH, json=job("b")).status_code == 201


def test_generate_name_makes_unique_names(cluster):
    names = {cluster.create(job(None) | {"metadata": {"generateName": "run-"}})["metadata"]["name"] for _ in range(20)}
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
    assert requests.get(cluster.url + "/apis/nothing.test/v1/things").status_code == 404


def test_generation_counts_spec_changes_and_every_write_gets_a_newer_resource_version(cluster):
    versions = [int(cluster.create(job("a", spec={"x": 1}))["metadata"]["resourceVersion"])]
    for patch, subresource, generation in [({"spec": {"x": 2}}, None, 2),
                                           ({"metadata": {"labels": {"l": "1"}}}, None, 2),
                                           ({"status": {"phase": "Running"}}, "status", 2),
                                           ({"spec": {"y": 1}}, None, 3)]:
        meta = cluster.patch("poj", "a", patch, subresource=subresource)["metadata"]
        assert meta["generation"] == generation
        versions.append(int(meta["resourceVersion"]))
    assert versions == sorted(set(versions))
    unchanged = cluster.patch("poj", "a", {"spec": {"y": 1}})["metadata"]["resourceVersion"]
    assert int(unchanged) == versions[-1]  # a no-op write is not a write


def test_the_status_subresource_owns_the_status(cluster):
    created = cluster.create(job("a", spec={"x": 1}, status={"phase": "Forged"}))
    assert "status" not in created
    cluster.patch("poj", "a", {"status": {"phase": "Running"}, "spec": {"x": 9}}, subresource="status")
    after_main_patch = cluster.patch("poj", "a", {"status": {"phase": "Forged"}, "spec": {"x": 2}})
    assert after_main_patch["status"] == {"phase": "Running"} and after_main_patch["spec"] == {"x": 2}
    replaced = cluster.request("PUT", cluster.path("poj", "a"), dict(after_main_patch, spec={"x": 3}, status={}))
    assert replaced["spec"] == {"x": 3} and replaced["status"] == {"phase": "Running"}
    assert cluster.get("poj", "a", namespace="default")["metadata"]["generation"] == 3


def test_kopfs_json_patch_tests_the_resource_version(cluster):
    version = cluster.create(job("a"))["metadata"]["resourceVersion"]
    add_finalizer = {"op": "add", "path": "/metadata/finalizers", "value": ["kopf.zalando.org/KopfFinalizerMarker"]}
    patched = cluster.patch("poj", "a", [{"op": "test", "path": "/metadata/resourceVersion", "value": version}, add_finalizer])
    assert patched["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    with pytest.raises(ApiError) as stale:
        cluster.patch("poj", "a", [{"op": "test", "path": "/metadata/resourceVersion", "value": version}, add_finalizer])
    assert stale.value.code == 422
    with pytest.raises(ApiError) as conflict:
        cluster.patch("poj", "a", {"metadata": {"resourceVersion": version, "labels": {"x": "y"}}})
    assert conflict.value.code == 409


def test_lists_are_typed_and_filtered_by_selectors(cluster):
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    cluster.create(job("a") | {"metadata": {"name": "a", "labels": {"team": "x", "tier": "1"}}})
    cluster.create(job("b") | {"metadata": {"name": "b", "labels": {"team": "y"}}})
    cluster.create(job("c") | {"metadata": {"name": "c", "namespace": "other"}})
    listed = cluster.request("GET", POJ_PATH)
    assert listed["kind"] == "PromptOptimizationJobList" and listed["apiVersion"] == f"{GROUP}/{VERSION}"
    assert int(listed["metadata"]["resourceVersion"]) >= 5

    def names(path, **params):
        return [o["metadata"]["name"] for o in cluster.request("GET", path, params=params)["items"]]
    assert names(POJ_PATH) == ["a", "b"]
    assert names(f"/apis/{GROUP}/{VERSION}/{PLURAL}") == ["a", "b", "c"]
    assert names(POJ_PATH, labelSelector="team in (x,z),tier") == ["a"]
    assert names(POJ_PATH, labelSelector="team!=x") == ["b"]
    assert names(f"/apis/{GROUP}/{VERSION}/{PLURAL}", fieldSelector="metadata.namespace=other") == ["c"]
    assert names(POJ_PATH, fieldSelector="metadata.name=b") == ["b"]
    assert names("/api/v1/namespaces") == ["default", "other"]
    assert cluster.get("namespace", "other")["status"]["phase"] == "Active"


def test_watches_resume_from_a_resource_version_without_replaying(cluster):
    cluster.create(job("old"))
    since = cluster.request("GET", POJ_PATH)["metadata"]["resourceVersion"]
    cluster.patch("poj", "old", {"spec": {"x": 1}})
    in_background(lambda: cluster.create(job("new")))
    events = watch_lines(cluster, POJ_PATH, 2, resourceVersion=since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("MODIFIED", "old"), ("ADDED", "new")]
    assert all(int(e["object"]["metadata"]["resourceVersion"]) > int(since) for e in events)
    everything = watch_lines(cluster, POJ_PATH, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in everything] == [("ADDED", "new"), ("ADDED", "old")]


def test_the_kubernetes_client_lists_and_watches(cluster):
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    cluster.create(job("a"))
    listed = api.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    in_background(lambda: cluster.delete("poj", "a"))
    stream = kubernetes.watch.Watch().stream(api.list_namespaced_custom_object, GROUP, VERSION, "default", PLURAL,
                                             resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5)
    event = next(stream)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "a")


def test_watches_see_objects_enter_and_leave_their_label_selection(cluster):
    cluster.create(job("a"))

    def relabel():
        cluster.patch("poj", "a", {"metadata": {"labels": {"run": "yes"}}})
        cluster.patch("poj", "a", {"spec": {"x": 1}})
        cluster.patch("poj", "a", {"metadata": {"labels": {"run": "no"}}})
    in_background(relabel)
    events = watch_lines(cluster, POJ_PATH, 3, labelSelector="run=yes", resourceVersion="1")
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


def test_a_watch_ends_after_its_timeout(cluster):
    started = time.monotonic()
    assert watch_lines(cluster, POJ_PATH, 1, timeoutSeconds="1") == []
    assert time.monotonic() - started < 3


def test_finalizers_hold_the_deletion_until_released(cluster):
    cluster.create(job("a") | {"metadata": {"name": "a", "finalizers": ["x/y"]}})
    marked = cluster.delete("poj", "a")
    assert RFC3339.fullmatch(marked["metadata"]["deletionTimestamp"])
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 0 and marked["metadata"]["generation"] == 2
    assert cluster.get("poj", "a")["metadata"]["finalizers"] == ["x/y"]
    cluster.patch("poj", "a", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiError) as gone:
        cluster.get("poj", "a")
    assert gone.value.code == 404


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


def test_deleting_an_owner_deletes_its_dependents_like_the_garbage_collector(cluster):
    owner = cluster.create(job("owner"))
    other_owner = cluster.create(job("other-owner"))
    reference = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PromptOptimizationJob", "name": "owner",
                 "uid": owner["metadata"]["uid"], "controller": True}
    other_reference = dict(reference, name="other-owner", uid=other_owner["metadata"]["uid"], controller=False)
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}})
    for name, namespace, references, extra in [
        ("plain", "default", [reference], {}),
        ("finalized", "default", [reference], {"finalizers": ["x/y"]}),
        ("shared", "default", [reference, other_reference], {}),
        ("foreign", "elsewhere", [reference], {}),
    ]:
        cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name, "namespace": namespace, "ownerReferences": references, **extra}})
    cluster.create(pod("worker", nodeName="node-1") | {"metadata": {"name": "worker", "ownerReferences": [reference]}})

    cluster.delete("poj", "owner")
    remaining = {o["metadata"]["name"]: o for o in cluster.request("GET", "/api/v1/configmaps")["items"]}
    assert set(remaining) == {"finalized", "shared", "foreign"}
    assert remaining["finalized"]["metadata"]["deletionTimestamp"]
    assert remaining["shared"]["metadata"]["ownerReferences"] == [other_reference]
    assert cluster.get("pod", "worker")["metadata"]["deletionGracePeriodSeconds"] == 30  # graceful, as by the GC


def test_deleting_a_namespace_deletes_its_contents(cluster):
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "temp"}})
    cluster.create(job("a") | {"metadata": {"name": "a", "namespace": "temp"}})
    cluster.delete("namespace", "temp")
    assert cluster.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}")["items"] == []


def test_collections_can_be_deleted_by_selector(cluster):
    for name, team in [("a", "x"), ("b", "x"), ("c", "y")]:
        cluster.create(job(name) | {"metadata": {"name": name, "labels": {"team": team}}})
    deleted = cluster.request("DELETE", POJ_PATH, params={"labelSelector": "team=x"})
    assert [o["metadata"]["name"] for o in deleted["items"]] == ["a", "b"]
    assert [o["metadata"]["name"] for o in cluster.list("poj")] == ["c"]


def test_discovery_describes_resources_as_kubectl_expects(cluster):
    core = cluster.request("GET", "/api/v1")
    assert core["groupVersion"] == "v1"
    entries = {e["name"]: e for e in cluster.request("GET", f"/apis/{GROUP}/{VERSION}")["resources"]}
    main, status = entries[PLURAL], entries[f"{PLURAL}/status"]
    assert main["shortNames"] == ["poj"] and main["categories"] == ["promptopt"] and main["namespaced"] is True
    assert set(main["verbs"]) >= {"create", "get", "list", "watch", "patch", "update", "delete", "deletecollection"}
    assert "shortNames" not in status and status["verbs"] == ["get", "patch", "update"]
    groups = {g["name"]: g for g in cluster.request("GET", "/apis")["groups"]}
    assert groups[GROUP]["preferredVersion"]["groupVersion"] == f"{GROUP}/{VERSION}"
    assert {"events.k8s.io", "apiextensions.k8s.io", "coordination.k8s.io"} <= set(groups)


def test_crds_created_through_the_api_are_served(cluster):
    crd = cluster.create(WIDGETS_CRD)
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]} == {"NamesAccepted": "True", "Established": "True"}
    widget = cluster.create({"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert widget["metadata"]["namespace"] == "default"
    assert [o["metadata"]["name"] for o in cluster.list("wd")] == ["w"]


def test_crds_are_declared_from_a_folder_without_http(tmp_path):
    (tmp_path / "widgets.yaml").write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Namespace"}, WIDGETS_CRD]))
    emulator = KubernetesEmulator()
    [resource] = load_crds(emulator, tmp_path)
    info = emulator.resources[resource]
    assert (resource.group, resource.version, resource.plural) == ("example.test", "v1", "widgets")
    assert (info.kind, info.singular, info.namespaced, info.shortnames, info.categories, info.subresources) == (
        "Widget", "widget", True, {"wd"}, {"gadgets"}, {"status"})
    assert declare_crd(emulator, WIDGETS_CRD) == [resource]


def test_tables_for_custom_and_builtin_resources(cluster):
    cluster.create(WIDGETS_CRD)
    path = "/apis/example.test/v1/namespaces/default/widgets"
    cluster.create({"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 2}})
    cluster.patch("widget", "w", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status")
    table = requests.get(cluster.url + path, headers={"Accept": TABLE}).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Ready", "Size", "Owner"]
    assert table["rows"][0]["cells"] == ["w", "True", 2, None]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    cluster.create(pod("p"))
    pods = requests.get(cluster.url + "/api/v1/namespaces/default/pods/p", headers={"Accept": TABLE}).json()
    assert [c["name"] for c in pods["columnDefinitions"][:5]] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert pods["rows"][0]["cells"][:4] == ["p", "0/1", "Pending", 0]


# --- kubectl --------------------------------------------------------------------------------------

def test_kubectl_works_with_custom_resources(kubectl):
    manifest = yaml.safe_dump(job("j1", spec={"optimizer": {"type": "GEPA"}}))
    assert "created" in kubectl("apply", "-f", "-", input=manifest).stdout
    assert "configured" in kubectl("apply", "--validate=false", "-f", "-",
                                   input=manifest.replace("GEPA", "MetaPrompt")).stdout
    kubectl("patch", "poj", "j1", "--type=merge", "-p", '{"metadata": {"labels": {"team": "x"}}}')
    ready = {"type": "Ready", "status": "False", "reason": "Optimizing"}
    kubectl("patch", "poj", "j1", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Running", "conditions": [ready]}}))
    listing = kubectl("get", "poj").stdout.splitlines()
    assert listing[0].split() == ["NAME", "PHASE", "OPTIMIZER", "PROGRESS%", "INITIAL", "BEST", "AGE"]
    assert listing[1].split()[:3] == ["j1", "Running", "MetaPrompt"]
    assert "Optimizing" in kubectl("get", "poj", "-o", "wide", "-l", "team=x").stdout
    fetched = yaml.safe_load(kubectl("get", "poj", "j1", "-o", "yaml").stdout)
    assert fetched["spec"]["optimizer"]["type"] == "MetaPrompt" and fetched["metadata"]["generation"] == 2
    assert "Phase:     Running" in kubectl("describe", "poj", "j1").stdout
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(job("j2")))
    assert "deleted" in kubectl("delete", "poj", "j1", "j2").stdout
    assert "No resources found" in kubectl("get", "poj").stderr


def test_kubectl_declares_crds_and_works_with_builtins(kubectl):
    kubectl("apply", "-f", "-", input=yaml.safe_dump(WIDGETS_CRD))
    kubectl("wait", "--for=condition=Established", "crd/widgets.example.test", "--timeout=5s")
    kubectl("apply", "-f", "-", input="apiVersion: example.test/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}")
    assert kubectl("get", "wd").stdout.splitlines()[1].split() == ["w", "3"]
    for value in ("one", "two"):
        kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: {value}}}")
    assert kubectl("get", "cm", "c", "-o", "jsonpath={.data.k}").stdout == "two"
    kubectl("run", "p", "--image=busybox")
    assert kubectl("get", "pods").stdout.splitlines()[1].split()[:4] == ["p", "0/1", "Pending", "0"]
    assert "default" in kubectl("get", "ns").stdout


@pytest.mark.timeout(20)
def test_kubectl_watches(cluster, tmp_path):
    cluster.create(job("a"))
    command = ["/usr/bin/kubectl", "--kubeconfig", str(cluster.kubeconfig), "--cache-dir", str(tmp_path),
               "get", "poj", "-w"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as watcher:
        try:
            header, listed = watcher.stdout.readline(), watcher.stdout.readline()
            cluster.patch("poj", "a", {"status": {"phase": "Done"}}, subresource="status")
            changed = watcher.stdout.readline()
        finally:
            watcher.terminate()
    assert header.split()[:2] == ["NAME", "PHASE"] and listed.split()[0] == "a"
    assert changed.split()[:2] == ["a", "Done"]


def test_kubectl_explains_custom_resources_from_their_schema(kubectl):
    explained = kubectl("explain", "poj.spec").stdout
    assert "KIND:       PromptOptimizationJob" in explained and "FIELDS:" in explained


# --- kopf and the command line ------------------------------------------------------------------

OPERATOR = textwrap.dedent("""
    import pathlib
    import kopf

    FIRED = pathlib.Path(__file__).with_name("fired.log")

    @kopf.on.create("promptopt.dev", "v1alpha1", "promptoptimizationjobs")
    def created(name, body, patch, **_):
        with FIRED.open("a") as log:
            log.write(f"created {name}\\n")
        patch.status["phase"] = "Running"
        kopf.info(body, reason="Started", message="the job started")

    @kopf.on.delete("promptopt.dev", "v1alpha1", "promptoptimizationjobs")
    def deleted(name, **_):
        with FIRED.open("a") as log:
            log.write(f"deleted {name}\\n")
""")


@pytest.fixture
def operator(cluster, tmp_path):
    """A minimal real kopf operator against the cluster; returns its log of handler calls."""
    (tmp_path / "operator.py").write_text(OPERATOR)
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    process = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-A", str(tmp_path / "operator.py")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield tmp_path / "fired.log"
    process.terminate()
    process.wait(timeout=10)


def test_a_kopf_operator_handles_creation_and_deletion_once(cluster, kubectl, operator):
    kubectl("apply", "-f", "-", input=yaml.safe_dump(job("j", spec={"optimizer": {"type": "GEPA"}})))
    handled = cluster.wait_for("poj", "j", lambda o: o and o.get("status", {}).get("phase") == "Running", timeout=15)
    assert "kopf.zalando.org/KopfFinalizerMarker" in handled["metadata"]["finalizers"]
    assert kubectl("get", "poj").stdout.splitlines()[1].split()[:3] == ["j", "Running", "GEPA"]
    kubectl("delete", "poj", "j", "--timeout=10s")
    assert operator.read_text().splitlines() == ["created j", "deleted j"]
    assert eventually(lambda: [e["message"] for e in cluster.list("events")] == ["the job started"])


def test_the_command_line_serves_until_terminated(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen([sys.executable, "-m", "promptopt.testing.emulator", "--kubeconfig", str(kubeconfig)],
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
    with pytest.raises(ApiError) as log:
        cluster.request("GET", cluster.path("pod", "p", subresource="log"))
    assert log.value.code == 404


def test_custom_resources_can_be_admitted_against_their_schema():
    from promptopt.testing.admission import admit

    example = yaml.safe_load((pathlib.Path(__file__).parents[2] / "examples" / "gepa-sentiment.yaml").read_text())
    with EmulatedCluster(admission=admit) as cluster:
        with pytest.raises(ApiError) as invalid:
            cluster.create(job("empty"))
        assert invalid.value.code == 422 and "spec: Required value" in invalid.value.body["message"]
        example["spec"]["unknownField"] = 1
        created = cluster.create(example)
        assert "unknownField" not in created["spec"]  # pruned, as the API server does


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
