"""The framework's floor: the least a kopf operator can do for a PromptOptimizationJob.

One Pod per job when the job appears, and the Pod deleted when the job is cancelled; no validation, no
status, no queue, no events of its own. The benchmark runs it under the same load as promptopt's operator:
what promptopt adds on top of kopf is the difference.

    kopf run --standalone --all-namespaces bench/floor_operator.py

Environment: FLOOR_WORKER_IMAGE, the Pods' image (the benchmark's kubelet maps it to a trivial command).
Framework settings match promptopt's operator where they are the framework's: Events only for warnings,
the same watch timeout. The Kubernetes client is the same official one, called from kopf's thread pool.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "promptopt.dev", "v1alpha1", "promptoptimizationjobs"
IMAGE = os.environ.get("FLOOR_WORKER_IMAGE", "bench/floor-worker")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    kubernetes.config.load_config()
    memo.core = kubernetes.client.CoreV1Api()


def pod_name(job: str) -> str:
    return f"{job}-worker-1"


# The handlers below take `namespace: str`, which kopf's handler protocols type `str | None` (for cluster-scoped
# resources): jobs are namespaced, so mypy's arg-type check of each registration is waived.


@kopf.on.create(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def create_pod(name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(name), "labels": {"promptopt.dev/job": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": IMAGE, "command": ["promptopt", "worker"]}],
        },
    }
    kopf.adopt(pod, owner=body)
    try:
        memo.core.create_namespaced_pod(namespace, pod, _preload_content=False)
    except kubernetes.client.ApiException as error:
        if error.status != 409:  # already there: created by an earlier try
            raise


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.cancel", new=True)  # type: ignore[arg-type]
def cancel(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        memo.core.delete_namespaced_pod(pod_name(name), namespace, _preload_content=False)
    except kubernetes.client.ApiException as error:
        if error.status != 404:
            raise
