"""Carries out lifecycle decisions: take the job and its Pods as last seen, decide, act, and look again when time
says so.

Whatever says a job needs a look (a change of the job or of one of its Pods, a deadline, a TTL, a retry, the periodic
sweep, a new leader) adds its key to a work queue (workqueue.py), which workers take it from: a burst of events for
one job is one reconcile. Two things go around the queue, in order, one at a time: starting waiting jobs (so that
Pods are created in the order the jobs were) and writing the places in line of one plan of the queue. Either way
one reconcile per job runs at a time (a lock per job).

A reconcile decides on the job as its watch last delivered it (or as our own last write left it), never on a
GET of its own: a read per reconcile was a third of the operator's requests. What could be stale is guarded by
the API server's optimistic concurrency: the status patch carries the resourceVersion it was decided on, and if the
job changed since (a 409), the newer job is on its way through the watch, and its event is reconciled whatever it
says. Pod creation needs no such guard: a Pod's name is its job's and its attempt's, so deciding twice on an old
body cannot create a second Pod.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from promptopt.api.times import format_time, parse_time
from promptopt.api.v1alpha1 import TERMINAL_PHASES, WAITING_PHASES, read_status
from promptopt.worker_contract import PERMANENT_FAILURES

from promptopt_operator.kube import KubeClient, PodRefused, Refused, StaleJob
from promptopt_operator.lifecycle import (
    Decision,
    Event,
    Job,
    SlimJob,
    decide,
    pod_refused,
    reconcile_error_delay,
    slim_job,
    written_job,
)
from promptopt_operator.metrics import OperatorMetrics
from promptopt_operator.output import (
    SETTLED_REASONS,
    DeliveryOutcome,
    OutputPlan,
    conflict,
    foreign_owner,
    output_plan,
    output_status,
    registration_outcome,
    registration_status,
    replacement,
    write_failed,
)
from promptopt_operator.pods import WorkerPod, observe_pod, worker_pod_manifest
from promptopt_operator.queue import JobKey, Line, QueueEntry, Slot
from promptopt_operator.settings import OperatorSettings
from promptopt_operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

# A change of the queue (a start, a job that finished or left) is followed this soon by fresh positions for the
# jobs at its front; further back they refresh on the timer (rewriting every waiting job on each start would
# cost O(waiting) writes a start).
QUEUE_POSITION_DELAY_SECONDS = 1.0
EXACT_QUEUE_POSITIONS = 50
# Further back the sweep rewrites a position only when it is off by more than this share: a job's position is then
# written a few times while it waits, not once a sweep.
QUEUE_POSITION_TOLERANCE = 0.1
# How often every job is looked at again whatever happened: a safety net for anything a watch missed, and fresh
# queue positions for the whole line.
SWEEP_SECONDS = 30.0
# Reconciles at once (controller-runtime's MaxConcurrentReconciles): as many as the Kubernetes client has threads
# for the status writes and Pod creations that most reconciles make (kube.py).
RECONCILE_WORKERS = 16

# Posts an Event about a job (kopf.event in the operator).
EventPoster = Callable[[dict[str, Any], Event], None]


def post_with_kopf(body: dict[str, Any], event: Event) -> None:
    # kopf reads a body's apiVersion, kind and metadata only, through any mapping (a kopf.Body by type).
    kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)


def decision_inputs(body: dict[str, Any]) -> tuple:
    """What of a job's body can change a decision. Events that change none of it (the worker's progress
    reports, kopf's bookkeeping, the echo of the operator's own status writes) need no reconcile."""
    metadata, status = body.get("metadata") or {}, read_status(body.get("status"))
    return (
        metadata.get("generation"),
        bool(metadata.get("deletionTimestamp")),
        status.phase,
        status.attempts,
        status.worker_result.reason if status.worker_result else None,
    )


def queue_entry(namespace: str, name: str, body: dict[str, Any]) -> QueueEntry:
    spec = body.get("spec") or {}
    status = read_status(body.get("status"))
    return QueueEntry(
        key=(namespace, name),
        created=body["metadata"].get("creationTimestamp") or "",
        phase=status.phase,
        cancelled=bool(spec.get("cancel")),
        position=status.queue_position,
    )


@dataclass(eq=False)
class JobRecord:
    """What the reconciler keeps of one job, from its first event until forget() drops it whole."""

    # The job as last seen, from its watch events and from the responses to our own writes: slim_job's form, without
    # the inline records and templates, so that memory does not grow with what users put in specs.
    job: SlimJob
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reconcile of a job at a time
    decided: tuple | None = None  # decision_inputs as the last reconcile left them
    # Output writes (spec.output) that failed in a row: their retries back off. Not the work queue's failures, which
    # count reconciles that failed: a failed output write is a reconcile that went through, and says so in status.
    output_failures: int = 0
    created: dict[str, WorkerPod] = field(default_factory=dict)  # Pods created whose first event has not come

    def keep(self, body: dict[str, Any]) -> None:
        self.job = slim_job(body, self.job)


class Reconciler:
    def __init__(
        self,
        kube: KubeClient,
        settings: OperatorSettings,
        metrics: OperatorMetrics,
        post_event: EventPoster = post_with_kopf,
    ):
        self.kube, self.settings, self.metrics, self.post_event = kube, settings, metrics, post_event
        # Whether this replica acts on jobs: always, unless replicas elect a leader (leadership.py). A follower
        # keeps every job's latest body and kopf's indexes as the leader does, so that it can take over at once.
        self.leading = True
        metrics.leader.set(1)
        # The queue: every job's entry, loaded at start from kopf's index (filled from the initial list before any
        # handler runs, so a restarted operator knows every running job before it starts a waiting one), then kept
        # up to date from each job's events.
        self.line = Line()
        # kopf's index of worker Pods by job (observe_pod of each).
        self.pod_index: Mapping[JobKey, Iterable[WorkerPod]] = {}
        # Every job seen, from its first event until it is forgotten.
        self._jobs: dict[JobKey, JobRecord] = {}
        # The jobs that need a look, and the count of their failed reconciles in a row (their back-off).
        self.queue: WorkQueue[JobKey] = WorkQueue(reconcile_error_delay, metrics.workqueue_wait_seconds.observe)
        metrics.workqueue_depth.set_function(lambda: len(self.queue))
        self._waking: asyncio.Task | None = None
        self._refreshing_positions: asyncio.Task | None = None
        # The workers and the sweep, from start() until close(), and the context they and every task run in.
        self._background: list[asyncio.Task] = []
        self._context: contextvars.Context | None = None
        # Every other task this reconciler starts, kept until it ends: the loop holds only weak references to tasks.
        self._tasks: set[asyncio.Task] = set()
        # observe_pod of each worker Pod as last seen.
        self._pods_seen: dict[tuple[str, str], WorkerPod] = {}

    # -- the queue ---------------------------------------------------------------------------------------

    def job_seen(self, key: JobKey, body: dict[str, Any]) -> bool:
        """Keep the job as last seen; whether it says something a decision has not taken into account yet."""
        self.line.put(queue_entry(*key, body))
        record = self._jobs.get(key)
        if record is None:
            record = self._jobs[key] = JobRecord(slim_job(body))
        else:
            record.keep(body)
        return record.decided != decision_inputs(record.job.body)

    def record(self, key: JobKey) -> JobRecord | None:
        """What the reconciler keeps of a job (None: not seen, or forgotten)."""
        return self._jobs.get(key)

    def enqueue(self, key: JobKey) -> None:
        """The job needs a look: a worker reconciles it (once for any number of calls before it does)."""
        self.queue.add(key)

    @property
    def running_tasks(self) -> int:
        """Tasks of this reconciler under way, but its workers and sweep (which run until it is closed)."""
        return len(self._tasks)

    async def finish_tasks(self) -> None:
        """Wait until the work queue has run dry and every task this reconciler started, and every task those
        started, has ended (but the workers and the sweep; delayed rechecks may still come)."""
        while True:
            await self.queue.idle()
            if not self._tasks:
                return
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def pod_changed(self, namespace: str, pod: dict[str, Any], deleted: bool) -> bool:
        """Whether a Pod event says something new (the kubelet also writes what no decision reads)."""
        key = (namespace, pod["metadata"]["name"])
        if deleted:
            self._pods_seen.pop(key, None)
            return True
        observed = observe_pod(pod)
        if self._pods_seen.get(key) == observed:
            return False
        self._pods_seen[key] = observed
        return True

    def forget(self, key: JobKey) -> None:
        self.line.remove(key)
        self._jobs.pop(key, None)
        self.queue.discard(key)

    # -- leadership ----------------------------------------------------------------------------------------

    def take_over(self) -> None:
        """This replica leads from now on: decide on every job, as a restarted operator does on its first list (what
        the last leader left undone, a TTL or an output delivery due, a queue slot freed), running jobs first."""
        self.leading = True
        self.metrics.leader.set(1)
        for entry in sorted(self.line, key=lambda entry: entry.phase in (*WAITING_PHASES, *TERMINAL_PHASES)):
            self.enqueue(entry.key)
        self.wake_waiting()

    def stop_leading(self) -> None:
        """Act on no job from now on (a reconcile a worker takes does nothing while this replica follows)."""
        self.leading = False
        self.metrics.leader.set(0)

    @property
    def started(self) -> bool:
        return bool(self._background)

    def start(self, jobs: Iterable[QueueEntry] = (), context: contextvars.Context | None = None) -> None:
        """Start the workers and the sweep, knowing `jobs` (every job listed so far), in `context` (a copy of the
        current one by default), as every task of this reconciler: kopf.event finds kopf's Event queue in context
        variables that kopf sets for its handlers only, so the operator starts the reconciler from its first handler
        (handlers.py)."""
        for entry in jobs:
            self.line.put(entry)
        self._context = context or contextvars.copy_context()
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._work(), context=self._context) for _ in range(RECONCILE_WORKERS)]
        self._background.append(loop.create_task(self._sweep_forever(), context=self._context))

    async def close(self) -> None:
        """Stop every task of this reconciler (the operator is stopping): kopf would wait 5 s for them to end."""
        self.stop_leading()
        self.queue.shut_down()
        tasks = [*self._background, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(*key)
            finally:
                self.queue.done(key)

    def phases(self) -> list[str | None]:
        return [e.phase for e in self.line]

    def _spawn(self, coroutine: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine, context=self._context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def wake_waiting(self) -> None:
        """A slot may have freed: start the waiting jobs that may start now, oldest first."""
        if self._waking is None or self._waking.done():
            self._waking = self._spawn(self._start_waiting())

    def queue_changed(self) -> None:
        """Refresh the positions at the queue's front soon (once for a burst of changes)."""
        if self._refreshing_positions is None or self._refreshing_positions.done():
            self._refreshing_positions = self._spawn(self._refresh_positions())

    async def _refresh_positions(self) -> None:
        await asyncio.sleep(QUEUE_POSITION_DELAY_SECONDS)
        for key, position in self.line.stale_positions(self.settings.max_running_jobs, EXACT_QUEUE_POSITIONS).items():
            await self.reconcile(*key, queue_position=position)

    async def _sweep_forever(self) -> None:
        # Ours rather than a kopf timer per job: kopf puts a finalizer on every object a timer watches (two more
        # writes per job, and a deletion that waits for the operator), and each timer would plan the whole queue.
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except Exception:
                logger.exception("sweeping the jobs failed; trying again in %.0f s", SWEEP_SECONDS)

    async def sweep(self) -> None:
        """Every unfinished job once more: each waiting job whose stored place in line is out of date gets its place
        (from one plan of the queue), and the others are queued to be reconciled on what was last seen of them."""
        limit = self.settings.max_running_jobs
        if self.line.may_start(limit):
            self.wake_waiting()
        unfinished = [e.key for e in self.line if e.phase not in (*TERMINAL_PHASES, *WAITING_PHASES)]
        for key, position in self.line.stale_positions(limit, EXACT_QUEUE_POSITIONS, QUEUE_POSITION_TOLERANCE).items():
            await self.reconcile(*key, queue_position=position)
        for key in unfinished:
            self.enqueue(key)

    async def _start_waiting(self) -> None:
        # One at a time, in the queue's order, so Pods are created in the order the jobs were created;
        # until nothing more may start (slots freed while this runs are taken too).
        limit = self.settings.max_running_jobs
        while startable := self.line.may_start(limit):
            for key in startable:
                await self.reconcile(*key)
            if all(self.line.slot(key, limit) is not None for key in startable):
                break  # all of them still wait (none could start): do not spin
        self.queue_changed()  # whether jobs started or one left the line, the others' places moved

    # -- worker Pods ---------------------------------------------------------------------------------------

    def _pods_of(self, key: JobKey) -> list[WorkerPod]:
        """The job's worker Pods: kopf's index (complete before any handler runs, so a restarted operator sees
        every Pod), plus the Pods this operator created whose first event has not arrived yet."""
        indexed = {pod.name: pod for pod in self.pod_index.get(key, [])}
        record = self._jobs.get(key)
        created = record.created if record is not None else {}
        for name in [name for name in created if name in indexed]:
            del created[name]
        return [*indexed.values(), *created.values()]

    # -- reconcile ---------------------------------------------------------------------------------------

    async def reconcile(self, namespace: str, name: str, *, queue_position: int | None = None) -> None:
        """Decide and act for one job. `queue_position`: a waiting job's place in line from a plan the caller made,
        written as it is (such a reconcile never starts the job: starts are wake_waiting's, from a fresh plan);
        None: a waiting job is planned now and keeps the position stored, unless it is new."""
        key = (namespace, name)
        record = self._jobs.get(key)
        if not self.leading or record is None:
            return  # a follower; or gone, or not seen yet (a Pod's event before its job's): its job's event decides
        async with record.lock:
            started = time.monotonic()
            try:
                await self._reconcile(key, record, queue_position)
                self.queue.forget(key)
            except PodRefused:
                self.queue.add_rate_limited(key)  # said in the job's status, with this retry (_decide_and_act)
            except Exception:
                self.metrics.reconcile_errors.inc()
                delay = self.queue.add_rate_limited(key)
                logger.exception(
                    "reconciling %s/%s failed (%d in a row); retrying in %.0f s",
                    namespace,
                    name,
                    self.queue.requeues(key),
                    delay,
                )
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    async def _reconcile(self, key: JobKey, record: JobRecord, queue_position: int | None) -> None:
        try:
            await self._decide_and_act(key, record, queue_position)
        except StaleJob:
            # A write crossed the body we decided on (the worker's report, a user's edit): the watch brings the job
            # as it is now, and its event is reconciled whatever it says.
            logger.debug("%s/%s changed under a decision; deciding again on its next event", *key)
            record.decided = None

    async def _decide_and_act(self, key: JobKey, record: JobRecord, queue_position: int | None) -> None:
        kept = record.job
        job = Job.from_slim(kept)
        pods = self._pods_of(key)
        slot = Slot(may_start=False)
        if not job.status.attempts and job.status.phase in WAITING_PHASES:
            if queue_position is not None:
                slot = Slot(may_start=False, position=queue_position)
            else:
                # Only a job that waits to start needs its place in line.
                slot = self.line.slot(key, self.settings.max_running_jobs) or slot
                if job.status.phase == "Queued":
                    slot = Slot(slot.may_start)
        decision = decide(job, pods, datetime.now(UTC), self.settings, slot)
        try:
            await self._act(key, kept, job, decision)
        except PodRefused as refused:
            # The Pod create comes first in _act: nothing else was done. Say it, with the retry that reconcile() then
            # asks the work queue for (which counts the refusals in a row, and forgets them on a success).
            refusals = self.queue.requeues(key) + 1
            logger.warning("the worker Pod of %s/%s was refused (%d in a row): %s", *key, refusals, refused)
            assert decision.create_attempt is not None
            await self._act(
                key,
                kept,
                job,
                pod_refused(
                    job, key[0], decision.create_attempt, str(refused), datetime.now(UTC), self.settings, refusals
                ),
            )
            raise

    async def _act(self, key: JobKey, kept: SlimJob, job: Job, decision: Decision) -> None:
        namespace, name = key
        body = kept.body
        if decision.create_attempt is not None:
            await self._create_pod(key, body, job, decision)
        for pod in decision.delete_pods:
            await self.kube.delete_pod(namespace, pod, self.settings.worker_grace_period_seconds)
        written = kept
        if decision.status:
            patched = await self.kube.patch_job_status(
                namespace, name, decision.status, body["metadata"]["resourceVersion"]
            )
            if patched is None or key not in self._jobs:  # deleted (and forgotten) while this reconcile ran
                self.forget(key)
                return
            written = self._keep(key, kept, patched, decision.status)
            self._count_failure(job, decision)
        delivers = job.spec is not None and (job.spec.output or job.spec.mlflow) and not job.deleting
        if delivers and (written.body.get("status") or {}).get("phase") in TERMINAL_PHASES:
            written = await self._deliver_ending(key, body["metadata"]["uid"], written)
            if key not in self._jobs:
                return
        if decision.labels:  # after the status write, which is decided on the body's resourceVersion
            labelled = await self.kube.label_job(namespace, name, decision.labels)
            if labelled is None or key not in self._jobs:
                self.forget(key)
                return
            written = self._keep(key, written, labelled, None)
        if (record := self._jobs.get(key)) is not None:
            record.decided = decision_inputs(written.body)
        for event in decision.events:
            self.post_event(body, event)
        if decision.delete_job:
            await self.kube.delete_job(namespace, name)
        if decision.recheck_after is not None:
            self.recheck(key, decision.recheck_after)

    def _keep(
        self, key: JobKey, kept: SlimJob, metadata: dict[str, Any], status_patch: dict[str, Any] | None
    ) -> SlimJob:
        """The job as our write on `kept` left it (the metadata its response gave, and the status patch it applied;
        None: a write of metadata), kept unless the watch brought the job while the write was under way: that body
        is this write's echo, or newer, or older with the echo on its way, and the watch delivers in order."""
        written = written_job(kept, metadata, status_patch)
        record = self._jobs[key]
        if record.job is kept:
            record.job = written
        return written

    async def _deliver_ending(self, key: JobKey, uid: str, written: SlimJob) -> SlimJob:
        """What an ended job delivers: its output (spec.output) and the condition of its MLflow registration; the
        job as written."""
        ended = Job.from_slim(written)
        worker_running = any(not pod.finished for pod in self._pods_of(key))
        if (output := output_plan(ended, uid, worker_running)) is not None:
            written = await self._deliver(key, written, ended, output)
            if key not in self._jobs:
                return written
            ended = Job.from_slim(written)
        if (registered := registration_outcome(ended)) is not None:
            written = await self._record_delivery(
                key, written, registered, registration_status(ended, registered, format_time(datetime.now(UTC)))
            )
        return written

    async def _deliver(self, key: JobKey, kept: SlimJob, job: Job, plan: OutputPlan) -> SlimJob:
        """Write the ended job's output (spec.output), record the outcome in its status and say it in an Event; the
        job as written. A write the API refused or failed is tried again, backing off."""
        namespace, name = key
        outcome = plan.outcome
        if plan.manifest is not None:
            try:
                if not await self.kube.create_config_map(namespace, plan.manifest):
                    existing = await self.kube.read_config_map(namespace, plan.name) or {}
                    if owner := foreign_owner(existing, name):
                        outcome = conflict(plan, owner)
                    else:
                        await self.kube.replace_config_map(namespace, plan.name, replacement(plan, existing))
            except Refused as error:
                outcome = write_failed(plan, str(error))
        patched = await self._record_delivery(
            key, kept, outcome, output_status(job, plan, outcome, format_time(datetime.now(UTC)))
        )
        if (record := self._jobs.get(key)) is not None:
            if outcome.reason in SETTLED_REASONS:
                record.output_failures = 0
            else:
                record.output_failures += 1
                self.recheck(key, reconcile_error_delay(record.output_failures))
        return patched

    async def _record_delivery(
        self, key: JobKey, kept: SlimJob, outcome: DeliveryOutcome, patch: dict[str, Any]
    ) -> SlimJob:
        """Write an ended job's delivery outcome into its status and post it as an Event; the job as written."""
        patched = await self.kube.patch_job_status(*key, patch, kept.body["metadata"]["resourceVersion"])
        if patched is None or key not in self._jobs:
            self.forget(key)
            return kept
        written = self._keep(key, kept, patched, patch)
        self.post_event(kept.body, Event("Normal" if outcome.written else "Warning", outcome.reason, outcome.message))
        return written

    async def _create_pod(self, key: JobKey, body: dict[str, Any], job: Job, decision: Decision) -> None:
        namespace, name = key
        assert job.spec is not None and job.run_hash is not None and decision.create_attempt is not None
        spec_hash = job.status.spec_hash or decision.status.get("specHash") or job.run_hash
        manifest = worker_pod_manifest(
            name,
            body["metadata"]["uid"],
            job.spec,
            decision.create_attempt,
            self.settings,
            decision.pod_active_deadline,
            spec_hash,
        )
        kopf.adopt(manifest, owner=cast(kopf.Body, body))
        self.line.start(key)  # before the request: plans made while it is under way count the slot as taken
        try:
            created = await self.kube.create_pod(namespace, manifest)
        except Exception:
            self.line.start_failed(key)  # or the job would hold a slot it never took, and wait behind itself
            raise
        if (record := self._jobs.get(key)) is not None:
            record.created[manifest["metadata"]["name"]] = observe_pod(manifest)
        if created:
            self.metrics.pods_created.inc()
            if decision.create_attempt == 1:
                job_created = parse_time(body["metadata"].get("creationTimestamp"))
                if job_created:
                    self.metrics.pod_launch_seconds.observe((datetime.now(UTC) - job_created).total_seconds())
            else:
                self.metrics.retries.inc()

    def _count_failure(self, job: Job, decision: Decision) -> None:
        reason = next((c["reason"] for c in decision.status.get("conditions", []) if c["type"] == "Ready"), None)
        if reason in ("BackoffRetry", "BackoffLimitExceeded", "DeadlineExceeded", *PERMANENT_FAILURES):
            self.metrics.pod_failures.labels(reason=reason).inc()

    def recheck(self, key: JobKey, delay: float) -> None:
        """Reconcile the job again in `delay` seconds (or sooner, if an earlier recheck of it is due)."""
        if key not in self._jobs:
            return  # forgotten: nothing is left to look at
        # A little late rather than early: a decision taken a hair before a deadline would only wait again.
        self.queue.add_after(key, delay + 0.05)
