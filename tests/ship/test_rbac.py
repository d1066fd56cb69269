"""The chart grants the operator and the workers exactly the API calls they make: no fewer, no more.

An API call is (API group, resource, verb). What the code calls is derived three ways and all must agree with
the chart's rules:
- our own calls, read from the source: every kubernetes-client method the operator (promptopt_operator) and
  the worker (promptopt_worker) reference, turned into its HTTP request by the real client;
- kopf's calls for our handlers, derived from kopf's registry of them (the rules kopf's own code follows);
- observed: the real operator and worker run as the chart's ServiceAccounts against a real API server, whose
  authorizer refuses whatever the chart does not grant and whose audit log shows every call they made.
"""

import ast
import importlib
import inspect
import re
import time
from pathlib import Path

import kubernetes
import pytest

from promptopt.api.v1alpha1 import API_VERSION, KIND
from promptopt_harness.chart import RELEASE_NAMESPACE
from promptopt_harness.client import ApiError
from promptopt_harness.kube_rest import parse_api_path
from promptopt_harness.operator_process import OperatorProcess
from promptopt_harness.realkube import service_account_user
from promptopt_operator import kube
from promptopt_operator.handlers import JOBS, LEGACY_FINALIZER  # registers the handlers with kopf
from promptopt_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
OPERATOR_PACKAGE = REPO / "operator" / "promptopt_operator"
WORKER_PACKAGE = REPO / "worker" / "promptopt_worker"
CLIENT_APIS = (kubernetes.client.CoreV1Api, kubernetes.client.CustomObjectsApi, kubernetes.client.CoordinationV1Api)
HTTP_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update"}
# The client's methods that call the API (not close(), ...).
API_OPERATION = re.compile(r"^(connect|create|delete|get|list|patch|read|replace)_")


# --- calls in the source -----------------------------------------------------------------------------------


class _Recorded(Exception):
    pass


def request_of(api_class, method: str, arguments: dict) -> tuple[str, str]:
    """(HTTP method, URL path) of one client call, as the real kubernetes client builds it (nothing is sent)."""
    api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="http://recorder"))

    def record(method, url, *args, **kwargs):
        raise _Recorded(method, url)

    api_client.call_api = record
    try:
        getattr(api_class(api_client), method)(**arguments)
    except _Recorded as recorded:
        http_method, url = recorded.args
        return http_method, url.removeprefix("http://recorder").split("?")[0]
    raise AssertionError(f"{api_class.__name__}.{method} sent nothing")


def api_call(http_method: str, path: str, watch: bool = False) -> tuple[str, str, str]:
    """(API group, resource, RBAC verb) of a request to a resource URL."""
    parsed = parse_api_path(path)
    resource = parsed.resource.plural + (f"/{parsed.subresource}" if parsed.subresource else "")
    if http_method == "GET":
        verb = "watch" if watch else "get" if parsed.name else "list"
    elif http_method == "DELETE":
        verb = "delete" if parsed.name else "deletecollection"
    else:
        verb = HTTP_VERBS[http_method]
    return parsed.resource.group, resource, verb


def _value(node: ast.expr, constants: dict):
    """A call argument's value when the source fixes it (a literal or a module constant such as GROUP)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and isinstance(constants.get(node.id), str):
        return constants[node.id]
    return None


def calls_in_module(path: Path, constants: dict) -> set[tuple[str, str, str]]:
    """Every kubernetes-client call in a module: `api.read_namespaced_config_map(...)`, and also a method passed to
    a helper with its arguments after it (`self._call(self._custom.get_namespaced_custom_object, GROUP, ...)`)."""
    methods = {
        name: api
        for api in CLIENT_APIS
        for name, _ in inspect.getmembers(api, inspect.isfunction)
        if API_OPERATION.match(name)
    }
    found = set()
    for call in [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]:
        candidates = [(call.func, call.args)] + [(arg, call.args[i + 1 :]) for i, arg in enumerate(call.args)]
        for target, args in candidates:
            if not (isinstance(target, ast.Attribute) and target.attr in methods):
                continue
            api = methods[target.attr]
            parameters = [
                p
                for p in inspect.signature(getattr(api, target.attr)).parameters.values()
                if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
            ]
            given = {p.name: _value(a, constants) for p, a in zip(parameters, args, strict=False)}
            given.update({k.arg: _value(k.value, constants) for k in call.keywords if k.arg})
            arguments = {p.name: given.get(p.name) or ({} if p.name == "body" else "x") for p in parameters}
            found.add(api_call(*request_of(api, target.attr, arguments)))
    return found


def calls_in_package(folder: Path, package: str) -> set[tuple[str, str, str]]:
    found = set()
    for path in sorted(folder.glob("*.py")):
        module = importlib.import_module(f"{package}.{path.stem}") if path.stem != "__init__" else None
        found |= calls_in_module(path, vars(module) if module else {})
    return found


def test_kube_api_calls_lists_every_call_the_operator_makes():
    assert calls_in_package(OPERATOR_PACKAGE, "promptopt_operator") == set(kube.API_CALLS)


def worker_calls() -> set[tuple[str, str, str]]:
    return calls_in_package(WORKER_PACKAGE, "promptopt_worker")


def test_the_worker_reads_its_job_and_configmaps_and_writes_its_status():
    assert worker_calls() == {
        ("promptopt.dev", "promptoptimizationjobs", "get"),
        ("promptopt.dev", "promptoptimizationjobs/status", "patch"),
        ("", "configmaps", "get"),
    }


# --- kopf's calls ------------------------------------------------------------------------------------------


def kopf_calls(clusterwide: bool) -> set[tuple[str, str, str]]:
    """What kopf itself calls for our handlers (kopf 1.45):
    - every resource with a handler of any kind is listed, then watched (kopf/_cogs/clients/watching.py);
    - a resource with a handler that needs a finalizer (on.delete, timers) or keeps progress (on.create/update/
      delete) is patched: the finalizer, and the progress and diff-base annotations (clients/patching.py);
    - kopf takes its finalizer (settings.persistence.finalizer) off any watched object that has it though no
      handler needs it (reactor/processing.py): jobs, which earlier builds of the operator gave it, are patched;
    - Events are created (clients/events.py: kopf.event, and handler failures);
    - CustomResourceDefinitions are listed and watched to notice resources come and go, and namespaces only
      when the operator watches chosen namespaces (_core/reactor/observation.py).
    Discovery (/api, /apis, /version) needs no RBAC rule.
    """
    import kopf

    registry = kopf.get_default_registry()
    # The same registries kopf's observation.resource_observer walks.
    registries = [registry._indexing, registry._watching, registry._spawning, registry._changing, registry._webhooks]
    calls = {
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
    if not clusterwide:
        calls |= {("", "namespaces", "list"), ("", "namespaces", "watch")}
    for handler in [h for r in registries for h in r.get_all_handlers()]:
        resource = (handler.selector.group or "", handler.selector.plural or handler.selector.any_name)
        calls |= {(*resource, "list"), (*resource, "watch")}
        if getattr(handler, "requires_finalizer", False) or handler in registry._changing.get_all_handlers():
            calls.add((*resource, "patch"))
    calls.add((JOBS[0], JOBS[2], "patch"))  # LEGACY_FINALIZER
    return calls


LEASE_CALLS = {call for call in kube.API_CALLS if call[1] == "leases"}  # in the release namespace only


def operator_calls(clusterwide: bool) -> set[tuple[str, str, str]]:
    return set(kube.API_CALLS) | kopf_calls(clusterwide)


# --- the chart's rules -------------------------------------------------------------------------------------


def rule_calls(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def granted(manifests: list[dict], service_account: str, namespace: str) -> dict[str | None, set]:
    """{namespace, or None for cluster-wide: the calls granted} to a ServiceAccount by the chart's bindings."""
    roles = {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m["rules"]
        for m in manifests
        if m["kind"] in ("Role", "ClusterRole")
    }
    grants: dict[str | None, set] = {}
    for binding in [m for m in manifests if m["kind"] in ("RoleBinding", "ClusterRoleBinding")]:
        if {"kind": "ServiceAccount", "name": service_account, "namespace": namespace} not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace")
        role_namespace = scope if binding["roleRef"]["kind"] == "Role" else None
        rules = roles[(binding["roleRef"]["kind"], role_namespace, binding["roleRef"]["name"])]
        grants.setdefault(scope, set()).update(rule_calls(rules))
    return grants


def operator_account(manifests):
    (deployment,) = [
        m
        for m in manifests
        if m["kind"] == "Deployment" and m["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    return deployment["spec"]["template"]["spec"]["serviceAccountName"], deployment["metadata"]["namespace"]


CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


def test_cluster_wide_operator_is_granted_exactly_its_calls(render):
    manifests = render({})
    grants = granted(manifests, *operator_account(manifests))
    assert grants == {None: operator_calls(clusterwide=True) - LEASE_CALLS, RELEASE_NAMESPACE: LEASE_CALLS}


def test_namespaced_operator_is_granted_exactly_its_calls_in_each_namespace(render):
    manifests = render({"watchNamespaces": ["team-a", "team-b"]})
    grants = granted(manifests, *operator_account(manifests))
    wanted = operator_calls(clusterwide=False) - LEASE_CALLS
    cluster_scoped = {call for call in wanted if call[1] in CLUSTER_SCOPED}
    assert grants == {
        None: cluster_scoped,
        "team-a": wanted - cluster_scoped,
        "team-b": wanted - cluster_scoped,
        RELEASE_NAMESPACE: LEASE_CALLS,
    }


def test_only_the_leader_election_lease_may_be_read_and_written(render):
    (role,) = [m for m in render({}) if m["kind"] == "Role" and m["metadata"]["name"] == "promptopt-leader-election"]
    by_verb = {verb: rule.get("resourceNames") for rule in role["rules"] for verb in rule["verbs"]}
    # Kubernetes cannot limit create to a name (the object has none yet when it is authorized).
    assert by_verb == {"create": None, "get": ["promptopt"], "update": ["promptopt"]}


@pytest.mark.parametrize(
    "values, namespaces",
    [
        ({}, ["promptopt-system"]),
        ({"watchNamespaces": ["team-a"]}, ["team-a"]),
        ({"watchNamespaces": ["team-a"], "jobNamespaces": ["team-a", "team-b"]}, ["team-a", "team-b"]),
    ],
)
def test_workers_are_granted_exactly_their_calls_where_jobs_run(render, values, namespaces):
    manifests = render(values)
    name = OperatorSettings().worker_service_account
    for namespace in namespaces:
        assert granted(manifests, name, namespace) == {namespace: worker_calls()}


def test_no_rbac_is_rendered_when_turned_off(render):
    manifests = render({"rbac": {"create": False}, "watchNamespaces": ["team-a"]})
    assert not [m for m in manifests if m["kind"].endswith(("Role", "RoleBinding"))]


# --- observed on a real API server --------------------------------------------------------------------------


def audited_calls(cluster, username: str, since: str) -> tuple[set[tuple[str, str, str]], list[dict]]:
    """The API calls `username` made since `since` (RFC 3339; other tests run as the same ServiceAccount), from the
    API server's audit log (discovery has no object and is left out), and the requests the authorizer refused."""
    calls, forbidden = set(), []
    for event in cluster.audit_events(username):
        target = event.get("objectRef")
        if not target or event["requestReceivedTimestamp"] < since:
            continue
        resource = target["resource"] + (f"/{target['subresource']}" if target.get("subresource") else "")
        calls.add((target.get("apiGroup", ""), resource, event["verb"]))
        if event.get("responseStatus", {}).get("code") == 403:
            forbidden.append(event)
    return calls, forbidden


def wait_until(predicate, what, operator, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if operator.process.poll() is not None:
            raise AssertionError(f"the operator exited while waiting for {what}:\n{operator.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{operator.log()[-3000:]}")
        time.sleep(0.05)


def job_gone(cluster, name) -> bool:
    try:
        cluster.get("poj", name)
    except ApiError as error:
        return error.code == 404
    return False


def metaprompt_job(name, llm, **spec):
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/sim-reflect"},
            "prompts": [{"name": "p", "template": "Label: {{text}}"}],
            "task": {"model": "openai/sim-task", "apiBase": llm.base_url},
            "credentials": {"secretRef": {"name": "llm-credentials"}},
            **spec,
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("clusterwide", [True, False], ids=["cluster-wide", "namespaced"])
def test_operator_and_workers_make_exactly_the_granted_calls_on_a_real_api_server(
    cluster, kubelet, llm, install_rbac, tmp_path, render, clusterwide
):
    """The operator runs as the chart's ServiceAccount and the workers as theirs, with only the RBAC the chart
    renders, through jobs' whole lives: one runs to success, replaces the output an earlier job of its name left in
    a ConfigMap, and is deleted by its TTL, one is cancelled while its
    worker runs (the operator deletes the Pod), and one carries the finalizer earlier builds put on jobs, which
    kopf takes off so its deletion completes. The real authorizer refuses none of their calls, and the calls the
    audit log shows are exactly the derived ones: the chart grants nothing they do not use."""
    import base64
    from datetime import UTC, datetime

    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    values = {} if clusterwide else {"watchNamespaces": [cluster.namespace]}
    kubeconfig = install_rbac(**values)
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-credentials"},
            "data": {"OPENAI_API_KEY": base64.b64encode(llm.api_key.encode()).decode()},
        }
    )
    # As the chart runs it: electing a leader through the Lease it grants (none yet, so it is created).
    try:
        cluster.delete("leases", "promptopt", namespace=RELEASE_NAMESPACE)
    except ApiError as error:
        assert error.code == 404
    flags = (
        "--leader-election-namespace",
        RELEASE_NAMESPACE,
        "--leader-election-lease",
        "promptopt",
        *(() if clusterwide else ("--namespace", cluster.namespace)),
    )
    operator = OperatorProcess(kubeconfig, *flags, log_path=tmp_path / "operator.log").start()
    try:
        legacy = metaprompt_job("legacy", llm, cancel=True)
        legacy["metadata"]["finalizers"] = [LEGACY_FINALIZER]
        cluster.create(legacy)
        cluster.delete("poj", "legacy")
        wait_until(lambda: job_gone(cluster, "legacy"), "kopf to take the old finalizer off", operator)
        # An earlier job of the same name left its output: the operator's create meets it, reads it and replaces it.
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "done-prompts",
                    "labels": {"app.kubernetes.io/managed-by": "promptopt-operator"},
                    "annotations": {"promptopt.dev/job-name": "done"},
                },
                "data": {"p": "an earlier result"},
            }
        )
        cluster.create(
            metaprompt_job("done", llm, ttlSecondsAfterFinished=0, output={"configMap": {"name": "done-prompts"}})
        )
        wait_until(lambda: job_gone(cluster, "done"), "the finished job's deletion by its TTL", operator)
        assert cluster.get("configmaps", "done-prompts")["data"]["p"] != "an earlier result"
        llm.set_latency(5)  # the worker waits in its first LLM call until the cancel
        cluster.create(metaprompt_job("stopped", llm))
        wait_until(
            lambda: (cluster.get("poj", "stopped").get("status") or {}).get("phase") == "Running",
            "the second job's worker",
            operator,
        )
        cluster.patch("poj", "stopped", {"spec": {"cancel": True}})
        wait_until(
            lambda: not [p for p in cluster.list("pods") if not p["metadata"].get("deletionTimestamp")],
            "the cancelled job's Pod to go",
            operator,
        )
    finally:
        operator.stop()
    manifests = render({**values, "jobNamespaces": [cluster.namespace]})
    operator_user = service_account_user(*reversed(operator_account(manifests)))
    worker_user = service_account_user(cluster.namespace, OperatorSettings().worker_service_account)
    # The audit log is written in batches, a second apart: wait for the last calls to reach it.
    wait_until(
        lambda: ("", "pods", "delete") in audited_calls(cluster, operator_user, since)[0], "the audit log", operator
    )

    observed, forbidden = audited_calls(cluster, operator_user, since)
    assert forbidden == [], "calls the chart does not grant the operator"
    assert observed == operator_calls(clusterwide)
    worker_observed, worker_forbidden = audited_calls(cluster, worker_user, since)
    assert worker_forbidden == [], "calls the chart does not grant the workers"
    # ConfigMaps are read only by jobs that take sources from them; these take none.
    assert worker_observed == worker_calls() - {("", "configmaps", "get")}
