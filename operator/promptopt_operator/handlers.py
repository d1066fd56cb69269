"""kopf handlers: the operator's edge. Each one only routes an event to the Reconciler."""
from __future__ import annotations

import logging
from typing import Any

import kopf

from promptopt.api.v1alpha1 import GROUP, PLURAL, TERMINAL_PHASES, VERSION, read_status

from promptopt_operator.kube import KubeClient
from promptopt_operator.metrics import OperatorMetrics
from promptopt_operator.pods import COMPONENT_LABELS, JOB_NAME_ANNOTATION, observe_pod
from promptopt_operator.reconciler import Reconciler, queue_entry
from promptopt_operator.settings import OperatorSettings

JOBS = (GROUP, VERSION, PLURAL)
FINALIZER = f"{GROUP}/cleanup"
QUEUE_REFRESH_SECONDS = 30


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings: OperatorSettings = memo.settings
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in annotations: our status schema is strict and has no room for it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # kopf keeps the last handled "essence" (the spec, by default) in an annotation; the API server refuses
    # annotations over 256 KiB in all, and from then on every metadata patch (the finalizer's too) fails. No
    # handler here reacts to spec diffs (the reconciler compares generations and specHash), so keep it small.
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, ignored_fields=["spec"])
    # Events are for the job's transitions (posted explicitly); handler chatter stays in the operator's log.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    metrics = OperatorMetrics(lambda: memo.reconciler.phases())
    memo.reconciler = Reconciler(KubeClient(), operator_settings, metrics)
    if operator_settings.metrics_port:
        metrics.serve(operator_settings.metrics_port)


WORKER_PODS = {"app.kubernetes.io/managed-by": COMPONENT_LABELS["app.kubernetes.io/managed-by"]}

# The handlers below take `namespace: str`, which kopf's handler protocols type `str | None` (for cluster-scoped
# resources): jobs and Pods are namespaced, so mypy's arg-type check of each registration is waived.


@kopf.index(*JOBS)  # type: ignore[arg-type]
def job_queue(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, name): queue_entry(namespace, name, dict(body))}


@kopf.index("v1", "pods", labels=WORKER_PODS)  # type: ignore[arg-type]
def worker_pods(namespace: str, annotations: kopf.Annotations, body: kopf.Body, **_: Any) -> dict | None:
    job_name = annotations.get(JOB_NAME_ANNOTATION)
    return {(namespace, job_name): observe_pod(dict(body))} if job_name else None


@kopf.on.event(*JOBS)  # type: ignore[arg-type]
async def job_changed(type: str, body: kopf.Body, meta: kopf.Meta, status: kopf.Status, namespace: str, name: str,
                      memo: kopf.Memo, job_queue: kopf.Index, worker_pods: kopf.Index, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    reconciler.index, reconciler.pod_index = job_queue, worker_pods
    if type == "DELETED":
        reconciler.forget((namespace, name))
        reconciler.wake_waiting()
        return
    if read_status(status).phase in TERMINAL_PHASES:
        reconciler.wake_waiting()  # its slot is free now
    if meta.get("deletionTimestamp"):
        return  # job_deleted handles it
    if FINALIZER not in meta.get("finalizers", []):
        return  # kopf adds its finalizer first; acting now would only race that patch (a 422 and a retry)
    if reconciler.needs_reconcile((namespace, name), dict(body)):
        await reconciler.reconcile(namespace, name)


@kopf.on.event("v1", "pods", labels=WORKER_PODS)  # type: ignore[arg-type]
async def worker_pod_changed(type: str, body: kopf.Body, annotations: kopf.Annotations, namespace: str,
                             memo: kopf.Memo, job_queue: kopf.Index, worker_pods: kopf.Index, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    reconciler.index, reconciler.pod_index = job_queue, worker_pods
    job_name = annotations.get(JOB_NAME_ANNOTATION)
    if job_name and reconciler.pod_changed(namespace, dict(body), deleted=type == "DELETED"):
        await reconciler.reconcile(namespace, job_name)


@kopf.on.delete(*JOBS)  # type: ignore[arg-type]
async def job_deleted(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Deleting a job deletes its Pods first (the finalizer makes sure), then the job goes."""
    await memo.reconciler.reconcile(namespace, name)


@kopf.timer(*JOBS, interval=QUEUE_REFRESH_SECONDS, initial_delay=QUEUE_REFRESH_SECONDS,  # type: ignore[arg-type]
            when=lambda status, **_: read_status(status).phase not in TERMINAL_PHASES)
async def refresh(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A safety net for anything a watch missed, and fresh queue positions for waiting jobs."""
    await memo.reconciler.reconcile(namespace, name, refresh_queue_position=True)
