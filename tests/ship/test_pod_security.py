"""Every Pod the project runs passes the Pod Security Standard "restricted" profile: the operator's (from the
chart) and the workers' (as the operator builds them), so both run in namespaces labelled
pod-security.kubernetes.io/enforce=restricted.

The checker is plain functions over a Pod spec, following the profile's controls
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), baseline ones included.
"""

import copy

import pytest

from promptopt.api.validation import parse_spec
from promptopt_operator.pods import worker_pod_manifest
from promptopt_operator.settings import OperatorSettings

ALLOWED_VOLUME_SOURCES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
ALLOWED_SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}


def all_containers(pod_spec: dict) -> list[dict]:
    return [
        *pod_spec.get("initContainers", []),
        *pod_spec.get("containers", []),
        *pod_spec.get("ephemeralContainers", []),
    ]


def host_namespace_violations(pod_spec: dict) -> list[str]:
    return [f"{field}: true" for field in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(field)]


def volume_violations(pod_spec: dict) -> list[str]:
    problems = []
    for volume in pod_spec.get("volumes", []):
        sources = set(volume) - {"name"}
        if not sources <= ALLOWED_VOLUME_SOURCES:
            problems.append(f"volume {volume['name']}: type {', '.join(sorted(sources))} is not allowed")
    return problems


def container_violations(container: dict, pod_context: dict) -> list[str]:
    name, context = container["name"], container.get("securityContext") or {}
    problems = []
    if context.get("privileged"):
        problems.append(f"{name}: privileged")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation must be false")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append(f"{name}: capabilities must drop ALL")
    if not set(capabilities.get("add") or []) <= ALLOWED_ADDED_CAPABILITIES:
        problems.append(f"{name}: only NET_BIND_SERVICE may be added")
    if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
        problems.append(f"{name}: runAsNonRoot must be true")
    if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
        problems.append(f"{name}: runAsUser must not be 0")
    seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
    if seccomp not in ALLOWED_SECCOMP_TYPES:
        problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp}")
    if any(port.get("hostPort") for port in container.get("ports", [])):
        problems.append(f"{name}: hostPort")
    if context.get("procMount", "Default") != "Default":
        problems.append(f"{name}: procMount must be Default")
    return problems


def restricted_violations(pod_spec: dict) -> list[str]:
    """What keeps this Pod spec out of the "restricted" profile (empty: it passes)."""
    pod_context = pod_spec.get("securityContext") or {}
    problems = host_namespace_violations(pod_spec) + volume_violations(pod_spec)
    if pod_context.get("runAsUser") == 0:
        problems.append("pod: runAsUser must not be 0")
    if (pod_context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("pod: seccompProfile Unconfined")
    for container in all_containers(pod_spec):
        problems += container_violations(container, pod_context)
    return problems


# --- the checker itself ----------------------------------------------------------------------------------

RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
    "volumes": [{"name": "scratch", "emptyDir": {}}],
}


def changed(path: str, value) -> dict:
    """RESTRICTED_POD with the field at the dotted path (list indexes as numbers) set to value."""
    pod = copy.deepcopy(RESTRICTED_POD)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    target = pod
    for part in parents:
        target = target[part]
    target[last] = value
    return pod


def test_checker_passes_a_restricted_pod():
    assert restricted_violations(RESTRICTED_POD) == []
    assert restricted_violations(changed("containers.0.securityContext.capabilities.add", ["NET_BIND_SERVICE"])) == []
    assert (
        restricted_violations(
            changed("securityContext.seccompProfile", {"type": "Localhost", "localhostProfile": "p.json"})
        )
        == []
    )


@pytest.mark.parametrize(
    "path, value",
    [
        ("hostNetwork", True),
        ("hostPID", True),
        ("hostIPC", True),
        ("volumes", [{"name": "host", "hostPath": {"path": "/"}}]),
        ("securityContext.runAsNonRoot", False),
        ("securityContext.runAsUser", 0),
        ("securityContext.seccompProfile", {"type": "Unconfined"}),
        ("securityContext", {"runAsNonRoot": True}),  # no seccomp profile at all
        ("containers.0.securityContext.privileged", True),
        ("containers.0.securityContext.allowPrivilegeEscalation", True),
        ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}),
        ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
        ("containers.0.securityContext.runAsNonRoot", False),
        ("containers.0.securityContext.procMount", "Unmasked"),
        ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}]),
        ("initContainers", [{"name": "init"}]),
    ],
)
def test_checker_rejects_each_control(path, value):
    assert restricted_violations(changed(path, value))


# --- the project's Pods ----------------------------------------------------------------------------------


def test_the_charts_pods_are_restricted(manifests):
    """The operator's, and the demo LLM's where the values deploy it."""
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == [], deployment["metadata"]["name"]


WORKER_SPECS = {
    "minimal": {
        "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/gpt-4.1"},
        "prompts": [{"name": "p", "template": "Say hi to {{name}}"}],
        "task": {"model": "openai/gpt-4.1-mini"},
    },
    "every worker option": {
        "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/gpt-4.1"},
        "prompts": [{"name": "p", "template": "Say hi to {{name}}"}],
        "task": {"model": "openai/gpt-4.1-mini"},
        "credentials": {"secretRef": {"name": "llm-credentials"}},
        "activeDeadlineSeconds": 600,
        "worker": {
            "image": "registry.example/worker:custom",
            "serviceAccountName": "team-worker",
            "checkpointClaimName": "gepa-checkpoints",
            "resources": {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}},
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
            "env": [
                {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
        },
    },
}


@pytest.mark.parametrize("spec", WORKER_SPECS.values(), ids=WORKER_SPECS.keys())
def test_worker_pod_is_restricted(spec):
    pod = worker_pod_manifest(
        job_name="job",
        job_uid="0c1d",
        spec=parse_spec(spec),
        attempt=1,
        settings=OperatorSettings(),
        active_deadline_seconds=600,
        spec_hash="hash",
    )
    assert restricted_violations(pod["spec"]) == []
