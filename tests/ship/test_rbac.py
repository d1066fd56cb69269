"""The chart grants the operator and the workers exactly the API calls they make: no fewer, no more.

An API call is (API group, resource, verb). What the code calls is derived three ways and all must agree with
the chart's rules:
- our own calls, read from the source: every kubernetes-client method the operator (promptopt_operator) and
  the worker (promptopt_worker) reference, turned into its HTTP request by the real client;
- kopf's calls for our handlers, derived from kopf's registry of them (the rules kopf's own code follows);
- observed: the real operator run against the emulated API through a job's whole life, every request logged.
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
from promptopt.testing.client import ApiError
from promptopt.testing.emulator import NAMESPACES_ALIAS, EmulatedCluster, KubernetesEmulator, parse_api_path
from promptopt.testing.operator_process import OperatorProcess
from promptopt_operator import kube
from promptopt_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
OPERATOR_PACKAGE = REPO / "operator" / "promptopt_operator"
WORKER_PACKAGE = REPO / "worker" / "promptopt_worker"
CLIENT_APIS = (kubernetes.client.CoreV1Api, kubernetes.client.CustomObjectsApi)
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
    methods = {name: api for api in CLIENT_APIS for name, _ in inspect.getmembers(api, inspect.isfunction)
               if API_OPERATION.match(name)}
    found = set()
    for call in [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]:
        candidates = [(call.func, call.args)] + [(arg, call.args[i + 1:]) for i, arg in enumerate(call.args)]
        for target, args in candidates:
            if not (isinstance(target, ast.Attribute) and target.attr in methods):
                continue
            api = methods[target.attr]
            parameters = [p for p in inspect.signature(getattr(api, target.attr)).parameters.values()
                          if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
            given = {p.name: _value(a, constants) for p, a in zip(parameters, args)}
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
    - Events are created (clients/events.py: kopf.event, and handler failures);
    - CustomResourceDefinitions are listed and watched to notice resources come and go, and namespaces only
      when the operator watches chosen namespaces (_core/reactor/observation.py).
    Discovery (/api, /apis, /version) needs no RBAC rule.
    """
    import kopf

    from promptopt_operator import handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    # The same registries kopf's observation.resource_observer walks.
    registries = [registry._indexing, registry._watching, registry._spawning, registry._changing, registry._webhooks]
    calls = {("", "events", "create"),
             ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
             ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
    if not clusterwide:
        calls |= {("", "namespaces", "list"), ("", "namespaces", "watch")}
    for handler in [h for r in registries for h in r.get_all_handlers()]:
        resource = (handler.selector.group or "", handler.selector.plural or handler.selector.any_name)
        calls |= {(*resource, "list"), (*resource, "watch")}
        if getattr(handler, "requires_finalizer", False) or handler in registry._changing.get_all_handlers():
            calls.add((*resource, "patch"))
    return calls


def operator_calls(clusterwide: bool) -> set[tuple[str, str, str]]:
    return set(kube.API_CALLS) | kopf_calls(clusterwide)


# --- the chart's rules -------------------------------------------------------------------------------------

def rule_calls(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def granted(manifests: list[dict], service_account: str, namespace: str) -> dict[str | None, set]:
    """{namespace, or None for cluster-wide: the calls granted} to a ServiceAccount by the chart's bindings."""
    roles = {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m["rules"]
             for m in manifests if m["kind"] in ("Role", "ClusterRole")}
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
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["serviceAccountName"], deployment["metadata"]["namespace"]


CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


def test_cluster_wide_operator_is_granted_exactly_its_calls(render):
    manifests = render({})
    grants = granted(manifests, *operator_account(manifests))
    assert grants == {None: operator_calls(clusterwide=True)}


def test_namespaced_operator_is_granted_exactly_its_calls_in_each_namespace(render):
    manifests = render({"watchNamespaces": ["team-a", "team-b"]})
    grants = granted(manifests, *operator_account(manifests))
    wanted = operator_calls(clusterwide=False)
    cluster_scoped = {call for call in wanted if call[1] in CLUSTER_SCOPED}
    assert grants == {None: cluster_scoped, "team-a": wanted - cluster_scoped, "team-b": wanted - cluster_scoped}


@pytest.mark.parametrize("values, namespaces", [
    ({}, ["promptopt-system"]),
    ({"watchNamespaces": ["team-a"]}, ["team-a"]),
    ({"watchNamespaces": ["team-a"], "jobNamespaces": ["team-a", "team-b"]}, ["team-a", "team-b"]),
])
def test_workers_are_granted_exactly_their_calls_where_jobs_run(render, values, namespaces):
    manifests = render(values)
    name = OperatorSettings().worker_service_account
    for namespace in namespaces:
        assert granted(manifests, name, namespace) == {namespace: worker_calls()}


def test_no_rbac_is_rendered_when_turned_off(render):
    manifests = render({"rbac": {"create": False}, "watchNamespaces": ["team-a"]})
    assert not [m for m in manifests if m["kind"].endswith(("Role", "RoleBinding"))]


# --- observed ----------------------------------------------------------------------------------------------

@pytest.fixture
def recorded():
    """An EmulatedCluster whose every request is logged: (cluster, [(HTTP method, path, watch, User-Agent)])."""
    log = []

    class RecordingEmulator(KubernetesEmulator):
        async def _handle(self, request):
            log.append((request.method.value.upper(), request.url.path, request.params.get("watch") in ("true", "1"),
                        request.headers.get("User-Agent", "")))
            return await super()._handle(request)

    cluster = EmulatedCluster()
    cluster.emulator = RecordingEmulator()
    with cluster:
        yield cluster, log


def observed_calls(log) -> set[tuple[str, str, str]]:
    """The logged API calls, but the test's own (urllib's) and discovery."""
    calls = set()
    for method, path, watch, user_agent in log:
        path = "/api/v1/namespaces" if path == NAMESPACES_ALIAS else path
        if not user_agent.startswith("Python-urllib") and parse_api_path(path) is not None:
            calls.add(api_call(method, path, watch))
    return calls


def wait_until(predicate, what, operator, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if operator.process.poll() is not None:
            raise AssertionError(f"the operator exited while waiting for {what}:\n{operator.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def job_gone(cluster, name) -> bool:
    try:
        cluster.get("poj", name)
    except ApiError as error:
        return error.code == 404
    return False


@pytest.mark.slow
@pytest.mark.parametrize("clusterwide", [True, False], ids=["cluster-wide", "namespaced"])
def test_the_running_operator_makes_exactly_the_derived_calls(recorded, tmp_path, render, clusterwide):
    """A job created, given its worker Pod, cancelled (the Pod goes) and deleted by its TTL: every call the real
    operator makes on the way is one the chart grants, and together they are the derived set."""
    cluster, log = recorded
    flags = () if clusterwide else ("--namespace", "default")
    operator = OperatorProcess(cluster.kubeconfig, *flags, log_path=tmp_path / "operator.log").start()
    try:
        cluster.create({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "j"}, "spec": {
            "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/sim-reflect"},
            "prompts": [{"name": "p", "template": "Label: {{text}}"}],
            "task": {"model": "openai/sim-task"},
            "ttlSecondsAfterFinished": 0,
        }})
        wait_until(lambda: cluster.list("pods"), "the worker Pod", operator)
        cluster.patch("poj", "j", {"spec": {"cancel": True}})
        wait_until(lambda: job_gone(cluster, "j"), "the job's deletion after its TTL", operator)
    finally:
        operator.stop()
    observed = observed_calls(log)
    manifests = render({} if clusterwide else {"watchNamespaces": ["default"]})
    granted_anywhere = set().union(*granted(manifests, *operator_account(manifests)).values())
    assert observed - granted_anywhere == set(), "calls the chart does not grant"
    assert observed == operator_calls(clusterwide)
