"""kopf handlers: the operator's edge. Each one only tells the Reconciler what it saw, which queues the job."""

from __future__ import annotations

import contextvars
import logging
import socket
import uuid
from typing import Any

import kopf

from promptopt.api.v1alpha1 import GROUP, PLURAL, TERMINAL_PHASES, VERSION, read_status

from promptopt_operator.kube import KubeClient
from promptopt_operator.leadership import LeaseElector
from promptopt_operator.metrics import OperatorMetrics
from promptopt_operator.pods import COMPONENT_LABELS, JOB_NAME_ANNOTATION, observe_pod
from promptopt_operator.reconciler import Reconciler, queue_entry
from promptopt_operator.settings import OperatorSettings

JOBS = (GROUP, VERSION, PLURAL)
EVENT_SOURCE = COMPONENT_LABELS["app.kubernetes.io/managed-by"]  # promptopt-operator
# Earlier builds of the operator put this finalizer on every job; kopf takes it off any job that still has it, as no
# handler here needs one: a job's Pods are its dependents (ownerReferences), and the garbage collector deletes
# them with the job, with their grace period, whether the operator runs or not.
LEGACY_FINALIZER = f"{GROUP}/cleanup"


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf compares each event's "essence" (a deep copy of the body) with the last handled one, for the handlers
    that react to changes (on.create/update/resume). This operator has none (the reconciler compares what
    decisions read, decision_inputs), so building the copy was a tenth of its CPU, spent on nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass  # nothing is kept: no annotation is written


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings: OperatorSettings = memo.settings
    # Only event and index handlers: kopf keeps no progress or diff-base annotations and no finalizer on jobs.
    settings.persistence.finalizer = LEGACY_FINALIZER
    settings.persistence.diffbase_storage = NoDiffBase()
    # Events are for the job's transitions (posted explicitly); handler chatter stays in the operator's log.
    settings.posting.level = logging.WARNING
    # Who posted them, in `kubectl describe`'s From column (kopf's default says "kopf"); the instance is the Pod.
    settings.posting.reporting_component = EVENT_SOURCE
    settings.posting.reporting_instance = socket.gethostname()
    settings.watching.server_timeout = 300
    # kopf's worker for an object keeps the object's last event (its whole body, a 1 MiB dataset included) while it
    # waits for the next one, 5 s by default: every job changed in the last 5 s stayed in memory. A worker that
    # idles for a tenth of a second (kopf's batch window) lets it go; a later event starts a new one.
    settings.queueing.idle_timeout = 0.1
    metrics = OperatorMetrics(lambda: memo.reconciler.phases())
    kube = KubeClient()
    reconciler = memo.reconciler = Reconciler(kube, operator_settings, metrics)
    if operator_settings.metrics_port:
        metrics.serve(operator_settings.metrics_port)
    memo.elector = None
    if operator_settings.leader_election_namespace:
        # A follower until the Lease is won: it watches and indexes everything, and acts on nothing.
        reconciler.stop_leading()

        async def lost() -> None:
            reconciler.stop_leading()
            memo.lost_leadership.set()

        memo.elector = LeaseElector(
            kube,
            operator_settings.leader_election_namespace,
            operator_settings.leader_election_lease,
            f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
            reconciler.take_over,
            lost,
        )
        memo.elector.start()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    # Stop acting before the Lease is handed back: the follower that takes it must be the only one that acts.
    await memo.reconciler.close()
    if memo.elector is not None:
        await memo.elector.stop()


WORKER_PODS = {"app.kubernetes.io/managed-by": COMPONENT_LABELS["app.kubernetes.io/managed-by"]}

# The handlers below take `namespace: str`, which kopf's handler protocols type `str | None` (for cluster-scoped
# resources): jobs and Pods are namespaced, so mypy's arg-type check of each registration is waived.


# The index functions are async though they never await: kopf runs a plain function in a thread, and the hop
# costs more than these microseconds of work, twice for every event.


@kopf.index(*JOBS)  # type: ignore[arg-type]
async def job_queue(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, name): queue_entry(namespace, name, dict(body))}


@kopf.index("v1", "pods", labels=WORKER_PODS)  # type: ignore[arg-type]
async def worker_pods(namespace: str, annotations: kopf.Annotations, body: kopf.Body, **_: Any) -> dict | None:
    job_name = annotations.get(JOB_NAME_ANNOTATION)
    return {(namespace, job_name): observe_pod(dict(body))} if job_name else None


def current_reconciler(memo: kopf.Memo, job_queue: kopf.Index, worker_pods: kopf.Index) -> Reconciler:
    """The Reconciler, with kopf's index of worker Pods as it stands. The first handler starts it, with every job of
    kopf's index (complete before any handler runs), in a copy of its context: kopf.event finds kopf's Event queue
    through context variables that kopf sets for handlers, not for startup."""
    reconciler: Reconciler = memo.reconciler
    reconciler.pod_index = worker_pods
    if not reconciler.started:
        reconciler.start([entry for store in job_queue.values() for entry in store], contextvars.copy_context())
    return reconciler


@kopf.on.event(*JOBS)  # type: ignore[arg-type]
async def job_changed(
    type: str,
    body: kopf.Body,
    status: kopf.Status,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    job_queue: kopf.Index,
    worker_pods: kopf.Index,
    **_: Any,
) -> None:
    reconciler = current_reconciler(memo, job_queue, worker_pods)
    if type == "DELETED":
        reconciler.forget((namespace, name))
        reconciler.wake_waiting()
        return
    if read_status(status).phase in TERMINAL_PHASES:
        reconciler.wake_waiting()  # its slot is free now
    if reconciler.job_seen((namespace, name), dict(body)):
        reconciler.enqueue((namespace, name))


@kopf.on.event("v1", "pods", labels=WORKER_PODS)  # type: ignore[arg-type]
async def worker_pod_changed(
    type: str,
    body: kopf.Body,
    annotations: kopf.Annotations,
    namespace: str,
    memo: kopf.Memo,
    job_queue: kopf.Index,
    worker_pods: kopf.Index,
    **_: Any,
) -> None:
    reconciler = current_reconciler(memo, job_queue, worker_pods)
    job_name = annotations.get(JOB_NAME_ANNOTATION)
    if job_name and reconciler.pod_changed(namespace, dict(body), deleted=type == "DELETED"):
        reconciler.enqueue((namespace, job_name))
