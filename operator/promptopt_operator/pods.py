"""The worker Pod: its manifest (built from the job) and what its status means (read back from it).

Both directions are pure functions over plain dicts, so every rule here is tested without a cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from promptopt.api.v1alpha1 import PromptOptimizationJobSpec
from promptopt.worker_contract import (
    ATTEMPT_ENV,
    CHECKPOINT_DIR_ENV,
    JOB_NAME_ENV,
    JOB_NAMESPACE_ENV,
    LITELLM_BUNDLED_COST_MAP_ENV,
    SPEC_HASH_ENV,
    TERMINATION_MESSAGE_PATH,
    TERMINATION_MESSAGE_PATH_ENV,
)

from promptopt_operator.settings import OperatorSettings

JOB_LABEL = "promptopt.dev/job"
ATTEMPT_LABEL = "promptopt.dev/attempt"
# The exact job name (label values are cut to 63 characters).
JOB_NAME_ANNOTATION = "promptopt.dev/job-name"
COMPONENT_LABELS = {
    "app.kubernetes.io/name": "promptopt-worker",
    "app.kubernetes.io/component": "worker",
    "app.kubernetes.io/managed-by": "promptopt-operator",
}
CONTAINER_NAME = "worker"
SCRATCH_DIR = "/tmp"
CHECKPOINT_MOUNT = "/var/lib/promptopt/checkpoints"


def pod_name(job_name: str, attempt: int) -> str:
    """A deterministic name per attempt, so a second create of the same attempt conflicts instead of duplicating."""
    suffix = f"-worker-{attempt}"
    if len(job_name) + len(suffix) <= 63:
        return job_name + suffix
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:8]
    return f"{job_name[: 63 - len(suffix) - 9].rstrip('-.')}-{digest}{suffix}"


def label_value(name: str) -> str:
    """Label values are at most 63 characters; long job names are shortened with a hash."""
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def worker_pod_manifest(
    job_name: str,
    job_uid: str,
    spec: PromptOptimizationJobSpec,
    attempt: int,
    settings: OperatorSettings,
    active_deadline_seconds: int | None,
    spec_hash: str,
) -> dict[str, Any]:
    """The worker Pod for one attempt (owner reference and namespace are added by kopf.adopt).

    `spec_hash` is the fingerprint of the spec the job started with: a worker that finds another spec (it was
    changed after the start) refuses to run it rather than silently optimizing something else.
    """
    worker = spec.worker
    env = [
        {"name": JOB_NAME_ENV, "value": job_name},
        {"name": JOB_NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": ATTEMPT_ENV, "value": str(attempt)},
        {"name": SPEC_HASH_ENV, "value": spec_hash},
        {"name": TERMINATION_MESSAGE_PATH_ENV, "value": TERMINATION_MESSAGE_PATH},
        *({"name": name, "value": value} for name, value in LITELLM_BUNDLED_COST_MAP_ENV.items()),
        # The root filesystem is read-only: everything that writes (Python, litellm, gepa) goes to scratch.
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
    ]
    for variable in worker.env if worker and worker.env else []:
        env.append(variable.model_dump(by_alias=True, exclude_none=True))
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {"sizeLimit": settings.worker_scratch_size}}]
    mounts = [{"name": "scratch", "mountPath": SCRATCH_DIR}]
    if worker and worker.checkpoint_claim_name:
        volumes.append({"name": "checkpoint", "persistentVolumeClaim": {"claimName": worker.checkpoint_claim_name}})
        mounts.append({"name": "checkpoint", "mountPath": CHECKPOINT_MOUNT})
        # One folder per job object: a job deleted and created again under its name starts afresh.
        env.append({"name": CHECKPOINT_DIR_ENV, "value": f"{CHECKPOINT_MOUNT}/{job_name}-{job_uid}"})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": (worker and worker.image) or settings.worker_image,
        "imagePullPolicy": (worker and worker.image_pull_policy) or settings.worker_image_pull_policy,
        "command": ["promptopt", "worker"],
        "env": env,
        "resources": (
            worker.resources.model_dump(by_alias=True, exclude_none=True)
            if worker and worker.resources
            else settings.worker_resources
        ),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.credentials:
        container["envFrom"] = [{"secretRef": {"name": spec.credentials.secret_ref.name}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": (worker and worker.service_account_name) or settings.worker_service_account,
        "terminationGracePeriodSeconds": settings.worker_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.worker_uid,
            "runAsGroup": settings.worker_uid,
            "fsGroup": settings.worker_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if active_deadline_seconds is not None:
        pod_spec["activeDeadlineSeconds"] = max(1, active_deadline_seconds)
    if worker and worker.node_selector:
        pod_spec["nodeSelector"] = dict(worker.node_selector)
    if worker and worker.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in worker.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job_name, attempt),
            "labels": {**COMPONENT_LABELS, JOB_LABEL: label_value(job_name), ATTEMPT_LABEL: str(attempt)},
            "annotations": {JOB_NAME_ANNOTATION: job_name},
        },
        "spec": pod_spec,
    }


# Waiting reasons that mean the Pod cannot start until someone fixes something.
STUCK_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "Unschedulable",
    }
)


@dataclass(frozen=True)
class WorkerPod:
    """What the operator needs to know of one worker Pod."""

    name: str
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    deleting: bool
    reason: str | None = None  # why it is stuck or how it ended (ImagePullBackOff, OOMKilled, Error, ...)
    message: str | None = None
    exit_code: int | None = None
    termination_message: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def stuck(self) -> bool:
        return self.phase == "Pending" and self.reason in STUCK_REASONS


def observe_pod(pod: dict[str, Any]) -> WorkerPod:
    """Read a worker Pod's status the way a person would in `kubectl describe pod`."""
    metadata, status = pod.get("metadata", {}), pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    reason, message = status.get("reason"), status.get("message")
    exit_code = termination_message = finished_at = None
    for container in status.get("containerStatuses") or []:
        if container.get("name") != CONTAINER_NAME:
            continue
        state = container.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            reason, message = state["waiting"].get("reason"), state["waiting"].get("message")
        if "terminated" in state:
            terminated = state["terminated"]
            exit_code = terminated.get("exitCode")
            reason = reason or terminated.get("reason")
            termination_message = terminated.get("message")
            finished_at = terminated.get("finishedAt")
            if terminated.get("reason") == "OOMKilled":
                reason = "OOMKilled"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and reason is None:
            reason, message = condition.get("reason"), condition.get("message")
    if phase == "Failed" and reason is None:
        reason = "Error"
    labels = metadata.get("labels") or {}
    return WorkerPod(
        name=metadata.get("name", ""),
        attempt=int(labels.get(ATTEMPT_LABEL, "0") or 0),
        phase=phase,
        deleting=bool(metadata.get("deletionTimestamp")),
        reason=reason,
        message=message,
        exit_code=exit_code,
        termination_message=termination_message,
        finished_at=finished_at,
    )
