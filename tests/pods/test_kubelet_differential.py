"""The process kubelet (promptopt_harness.kubelet, which the fast tiers still use) held to the real one: the same
Pods on both, and what each reports of them (phase, reasons, exit codes, termination messages) must agree.

Where they differ on purpose the process kubelet says so in its docstring (no images: OOMKilled and pull
failures are injected by image name; no isolation); those are tested on the real node alone
(tests/pods/test_worker_pods.py)."""

import pytest

from promptopt_harness.jobs import eventually

pytestmark = pytest.mark.slow

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

# name: (the container's shell script, more of its spec, more of the Pod's spec)
CASES = {
    "succeeds-with-a-message": ("echo done > /dev/termination-log", {}, {}),
    "fails-with-a-message": ("echo bad input > /dev/termination-log; exit 3", {}, {}),
    "fails-message-from-its-log": (
        "echo first; echo last words; exit 2",
        {"terminationMessagePolicy": "FallbackToLogsOnError"},
        {},
    ),
    "succeeds-log-not-taken": ("echo only a log line", {"terminationMessagePolicy": "FallbackToLogsOnError"}, {}),
    "past-its-deadline": ("sleep 60", {}, {"activeDeadlineSeconds": 2}),
    "missing-secret": ("true", {"envFrom": [{"secretRef": {"name": "no-such-secret"}}]}, {}),
    "missing-configmap-key": (
        "true",
        {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "kube-root-ca.crt", "key": "no-such-key"}}}]},
        {},
    ),
}


def pod_manifest(name, image):
    script, container, spec = CASES[name]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                    "securityContext": RESTRICTED_CONTAINER,
                    **container,
                }
            ],
            **spec,
        },
    }


def settled(pod):
    """What both kubelets must agree on, once the Pod has ended or is stuck waiting."""
    if pod is None:
        return None
    status = pod.get("status") or {}
    (container,) = status.get("containerStatuses") or [{}]
    state = container.get("state") or {}
    waiting = state.get("waiting", {}).get("reason")
    if status.get("phase") not in ("Succeeded", "Failed") and waiting in (None, "ContainerCreating"):
        return None
    ((kind, detail),) = state.items()
    return {
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "state": kind,
        "stateReason": detail.get("reason"),
        "exitCode": detail.get("exitCode"),
        # The waiting messages name the object alike; only the real one says more after it.
        "message": (detail.get("message") or "").split(":")[0] if kind == "waiting" else detail.get("message"),
    }


def run_everywhere(cluster, image):
    for name in CASES:
        cluster.create(pod_manifest(name, image))
    return {
        name: eventually(lambda name=name: settled(cluster.get("pods", name)), 60, f"{name} to settle")
        for name in CASES
    }


def test_the_process_kubelet_reports_what_the_real_one_does(pods, cluster, kubelet):
    real = run_everywhere(pods.cluster, pods.images.worker.reference)
    local = run_everywhere(cluster, pods.images.worker.reference)
    assert real == {
        "succeeds-with-a-message": {
            "phase": "Succeeded",
            "reason": None,
            "state": "terminated",
            "stateReason": "Completed",
            "exitCode": 0,
            "message": "done\n",
        },
        "fails-with-a-message": {
            "phase": "Failed",
            "reason": None,
            "state": "terminated",
            "stateReason": "Error",
            "exitCode": 3,
            "message": "bad input\n",
        },
        "fails-message-from-its-log": {
            "phase": "Failed",
            "reason": None,
            "state": "terminated",
            "stateReason": "Error",
            "exitCode": 2,
            "message": "first\nlast words\n",
        },
        "succeeds-log-not-taken": {
            "phase": "Succeeded",
            "reason": None,
            "state": "terminated",
            "stateReason": "Completed",
            "exitCode": 0,
            "message": None,
        },
        # sh handles no SIGTERM: as PID 1 it ignores it, and the grace period's SIGKILL ends it.
        "past-its-deadline": {
            "phase": "Failed",
            "reason": "DeadlineExceeded",
            "state": "terminated",
            "stateReason": "Error",
            "exitCode": 137,
            "message": None,
        },
        "missing-secret": {
            "phase": "Pending",
            "reason": None,
            "state": "waiting",
            "stateReason": "CreateContainerConfigError",
            "exitCode": None,
            "message": 'secret "no-such-secret" not found',
        },
        "missing-configmap-key": {
            "phase": "Pending",
            "reason": None,
            "state": "waiting",
            "stateReason": "CreateContainerConfigError",
            "exitCode": None,
            "message": "couldn't find key no-such-key in ConfigMap " + pods.cluster.namespace + "/kube-root-ca.crt",
        },
    }
    local["missing-configmap-key"]["message"] = local["missing-configmap-key"]["message"].replace(
        cluster.namespace, pods.cluster.namespace
    )
    assert {name: local[name] for name in CASES if local[name] != real[name]} == {}
