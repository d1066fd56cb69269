"""The job's lifecycle as one pure function: what the job and its Pods look like now → what to do next.

`decide` is level-based: it looks at the whole observed state every time (the job's status and every
worker Pod of the job, as the operator's watches last delivered them), never at the event that woke it, so a
restarted operator, a missed event or a repeated one all lead to the same decision. Its output is data (a status to
write, a Pod to create or delete, Events to post, when to look again); the reconciler (reconciler.py) carries it out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from promptopt.api.merge_patch import apply_merge_patch
from promptopt.api.times import format_duration, format_time, parse_time
from promptopt.api.v1alpha1 import (
    TERMINAL_PHASES,
    AttemptFailure,
    Phase,
    PromptOptimizationJobSpec,
    PromptOptimizationJobStatus,
    WorkerResult,
    WorkerStatus,
    merged_status,
    read_status,
    status_patch,
)
from promptopt.api.validation import InvalidSpec, parse_spec
from promptopt.worker_contract import EXIT_INVALID_INPUT, PERMANENT_FAILURES, parse_termination_message

from promptopt_operator.conditions import READY, SPEC_APPLIED, condition_status, conditions_for, find_condition
from promptopt_operator.pods import WorkerPod, label_value, pod_name
from promptopt_operator.queue import Slot
from promptopt_operator.settings import OperatorSettings


@dataclass(frozen=True)
class SpecView:
    """What decisions read of one generation of a job's spec. The inline records and prompt templates are left out:
    they grow with what users put in a spec (over a MiB a job), only the worker reads them, and the operator keeps
    every job between events. What decisions need of them is measured before they are dropped."""

    # Without inline records and templates (so its own run_hash() is not the job's); None when the spec is invalid.
    spec: PromptOptimizationJobSpec | None
    problems: tuple[str, ...]
    run_hash: str | None  # spec.run_hash() of the whole spec: the fingerprint a started job holds to
    template_bytes: int  # the inline templates, whose optimized versions go into the status
    json_bytes: int  # the spec as JSON, a part of the object's size


def view_spec(raw: Mapping[str, Any] | None) -> SpecView:
    size = len(json.dumps(raw, separators=(",", ":")))
    try:
        spec = parse_spec(raw)
    except InvalidSpec as invalid:
        return SpecView(None, tuple(invalid.problems), None, 0, size)
    templates = sum(len((p.template or "").encode()) for p in spec.prompts)
    slim = spec.model_copy(update={"prompts": [p.model_copy(update={"template": None}) for p in spec.prompts]})
    if spec.dataset is not None:
        slim = slim.model_copy(update={"dataset": spec.dataset.model_copy(update={"records": None})})
    return SpecView(slim, (), spec.run_hash(), templates, size)


# What the operator reads of a job's metadata: decisions, its writes (resourceVersion), its Events and its Pods' owner
# references and labels (kopf.adopt). Not kept: managedFields, and annotations, where `kubectl apply` keeps a copy
# of the whole spec.
KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
)


@dataclass(frozen=True)
class SlimJob:
    """A job as the operator keeps it between events: its body without the spec and with KEPT_METADATA only
    (apiVersion, kind, metadata and status), the view of its spec, and the whole object's size."""

    body: dict[str, Any]
    spec: SpecView
    size_bytes: int


def slim_job(body: Mapping[str, Any], previous: SlimJob | None = None) -> SlimJob:
    """The job to keep from a body (a watch event's or a write's response). A spec is parsed once per generation:
    `previous`'s view is kept when the body is the same object at the same generation (a status write's response,
    the worker's progress)."""
    metadata = body["metadata"]
    if previous is not None and all(
        previous.body["metadata"].get(key) == metadata.get(key) for key in ("uid", "generation")
    ):
        view = previous.spec
    else:
        view = view_spec(body.get("spec"))
    return _slim({key: value for key, value in body.items() if key != "spec"}, view, "spec" in body)


def written_job(kept: SlimJob, metadata: Mapping[str, Any], status_patch: Mapping[str, Any] | None) -> SlimJob:
    """The job after a write of ours at the kept job's resourceVersion, from the write's response of metadata only
    (a PartialObjectMetadata: kube.py asks for no more, as a whole 1 MiB job per response made the operator's memory
    grow with the jobs' datasets): the kept status with the write's merge patch applied (None: a write of metadata),
    which is the status as written, since the API server applies a write at that resourceVersion or refuses it."""
    status = kept.body.get("status") or {}
    rest = {
        "apiVersion": kept.body.get("apiVersion"),
        "kind": kept.body.get("kind"),
        "metadata": dict(metadata),
        "status": status if status_patch is None else apply_merge_patch(status, status_patch),
    }
    return _slim(rest, kept.spec, has_spec=True)


def _slim(rest: dict[str, Any], view: SpecView, has_spec: bool) -> SlimJob:
    """A job's body without its spec, kept with KEPT_METADATA only, and the view of its spec."""
    # The size of the body as JSON, without serializing the spec again: its place holds `"spec":<spec>`.
    size = len(json.dumps(rest, separators=(",", ":"))) + (len(',"spec":') + view.json_bytes if has_spec else 0)
    metadata = rest["metadata"]
    rest["metadata"] = {key: metadata[key] for key in KEPT_METADATA if key in metadata}
    return SlimJob(rest, view, size)


@dataclass(frozen=True)
class Job:
    """The plain data of a PromptOptimizationJob that decisions need."""

    name: str
    generation: int
    deleting: bool
    spec: PromptOptimizationJobSpec | None  # None when the spec is invalid; without inline records and templates
    spec_problems: Sequence[str]
    status: PromptOptimizationJobStatus
    run_hash: str | None = None  # the whole spec's fingerprint (None when it is invalid)
    size_bytes: int = 0  # the whole object as JSON: it must fit in the API's object size limit with its status
    template_bytes: int = 0  # the inline templates
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Job:
        """A job as the API returns it; an invalid spec becomes spec None with the problems named."""
        return cls.from_slim(slim_job(body))

    @classmethod
    def from_slim(cls, job: SlimJob) -> Job:
        metadata = job.body["metadata"]
        return cls(
            name=metadata["name"],
            generation=int(metadata.get("generation") or 1),
            deleting=bool(metadata.get("deletionTimestamp")),
            spec=job.spec.spec,
            spec_problems=job.spec.problems,
            status=read_status(job.body.get("status")),
            run_hash=job.spec.run_hash,
            size_bytes=job.size_bytes,
            template_bytes=job.spec.template_bytes,
            labels=metadata.get("labels") or {},
        )


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: dict[str, Any]  # a status merge patch (status_patch): operator fields and recovered worker fields
    create_attempt: int | None = None
    delete_pods: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    delete_job: bool = False
    recheck_after: float | None = None  # seconds until time alone changes the decision
    pod_active_deadline: int | None = None  # for a Pod created now: the job's remaining deadline
    labels: dict[str, str] | None = None  # labels the job lacks: to merge into its metadata


@dataclass
class _NextStep:
    """The decision under construction."""

    phase: Phase
    reason: str
    message: str
    fields: PromptOptimizationJobStatus = field(default_factory=PromptOptimizationJobStatus)  # more to write
    create_attempt: int | None = None
    delete_pods: tuple[str, ...] = ()
    recheck_after: float | None = None
    delete_job: bool = False


def retry_delay(failed_attempts: int, settings: OperatorSettings) -> float:
    """Exponential back-off between worker Pods, as batch/v1 Job does (base, 2×base, 4×base, ... capped)."""
    return min(settings.retry_base_delay_seconds * 2 ** max(0, failed_attempts - 1), settings.retry_max_delay_seconds)


def reconcile_error_delay(errors_in_a_row: int) -> float:
    """When to try again after reconciles of a job failed in a row (the API refused or was unreachable): 1 s,
    doubling, at most a minute, so a broken job or an outage does not turn into a tight loop of requests."""
    return min(2.0 ** max(0, errors_in_a_row - 1), 60.0)


# A job's labels that say which registry prompts it starts from, as MLflow's job search filters by source prompt:
# prompt.promptopt.dev/<registry prompt name> = the version or alias its registryUri names.
SOURCE_PROMPT_LABEL_PREFIX = "prompt.promptopt.dev/"


def source_prompt_labels(spec: PromptOptimizationJobSpec | None) -> dict[str, str]:
    """The labels a job's registry prompts give it (a name longer than a label allows is cut, with a hash)."""
    labels = {}
    for prompt in spec.prompts if spec else []:
        if prompt.registry_uri is not None:
            # prompts:/<name>/<version> or prompts:/<name>@<alias> (the API's pattern)
            reference = prompt.registry_uri.removeprefix("prompts:/")
            name, version = reference.split("@", 1) if "@" in reference else reference.split("/", 1)
            labels[SOURCE_PROMPT_LABEL_PREFIX + label_value(name.strip("_.-"))] = version
    return labels


def decide(job: Job, pods: Sequence[WorkerPod], now: datetime, settings: OperatorSettings, slot: Slot) -> Decision:
    decision = _decide(job, pods, now, settings, slot)
    wanted = {} if job.deleting else source_prompt_labels(job.spec)
    if any(job.labels.get(key) != value for key, value in wanted.items()):
        return replace(decision, labels=wanted)
    return decision


def _decide(job: Job, pods: Sequence[WorkerPod], now: datetime, settings: OperatorSettings, slot: Slot) -> Decision:
    status = job.status
    live = tuple(p.name for p in pods if not p.finished and not p.deleting)

    if job.deleting:
        return Decision(status={}, delete_pods=live)
    if status.phase in TERMINAL_PHASES:
        return _finished(job, live, now)
    step = _next_step(job, pods, now, settings, slot, live)
    if pods:
        # Pods are the truth: an operator that died between creating a Pod and recording it catches up here.
        caught_up = PromptOptimizationJobStatus(attempts=_attempts(status, pods))
        if not status.start_time:
            caught_up.start_time = format_time(now)
        step.fields = merged_status(caught_up, step.fields)
    return _decision(job, step, now)


def _attempts(status: PromptOptimizationJobStatus, pods: Sequence[WorkerPod]) -> int:
    return max([status.attempts or 0, *(p.attempt for p in pods)])


def _finished(job: Job, live: tuple[str, ...], now: datetime) -> Decision:
    """A finished job only cleans up: stray Pods go, and the job itself once its TTL has passed."""
    acknowledged = _acknowledge_generation(job)
    ttl = job.spec.ttl_seconds_after_finished if job.spec else None
    completed = parse_time(job.status.completion_time)
    if ttl is None or completed is None:
        return Decision(status=acknowledged, delete_pods=live)
    remaining = (completed + timedelta(seconds=ttl) - now).total_seconds()
    if remaining <= 0:
        return Decision(status={}, delete_pods=live, delete_job=True)
    return Decision(status=acknowledged, delete_pods=live, recheck_after=remaining)


def _acknowledge_generation(job: Job) -> dict[str, Any]:
    """A finished job changes no more, but it says it saw the latest spec: kstatus and Flux wait for
    observedGeneration to catch up before they trust the conditions."""
    if job.status.observed_generation == job.generation:
        return {}
    conditions = [c.model_copy(update={"observed_generation": job.generation}) for c in job.status.conditions or []]
    return status_patch(PromptOptimizationJobStatus(observed_generation=job.generation, conditions=conditions))


def _next_step(
    job: Job, pods: Sequence[WorkerPod], now: datetime, settings: OperatorSettings, slot: Slot, live: tuple[str, ...]
) -> _NextStep:
    spec, status = job.spec, job.status
    if spec is None:
        return _NextStep("Failed", "InvalidSpec", "invalid spec: " + "; ".join(job.spec_problems))
    if spec.cancel:
        return _NextStep(
            "Cancelled",
            "Cancelled",
            "cancelled by spec.cancel; the worker's best result so far is kept",
            delete_pods=live,
        )

    started = parse_time(status.start_time)
    if started and spec.active_deadline_seconds is not None:
        remaining = (started + timedelta(seconds=spec.active_deadline_seconds) - now).total_seconds()
        if remaining <= 0:
            return _NextStep(
                "Failed",
                "DeadlineExceeded",
                f"the job ran longer than activeDeadlineSeconds ({spec.active_deadline_seconds}s)",
                delete_pods=live,
            )

    attempts = _attempts(status, pods)
    current = max(pods, key=lambda p: p.attempt, default=None)
    if attempts == 0:
        if too_large := _too_large(job, settings):
            return _NextStep("Failed", "JobTooLarge", too_large)
        return _first_attempt(job, slot, now)
    if current is None or current.attempt < attempts:
        # The Pod of the latest attempt is gone before it finished (deleted by hand, evicted, lost node).
        return _after_failure(
            spec, status, attempts, now, settings, f"worker Pod of attempt {attempts} disappeared", finished_at=None
        )
    if current.deleting:
        return _NextStep(status.phase or "Running", "PodTerminating", f"worker Pod {current.name} is terminating")
    if current.phase == "Succeeded":
        return _after_success(spec, status, current, attempts, now, settings)
    if current.phase == "Failed":
        return _after_pod_failure(spec, status, current, attempts, now, settings)
    return _while_running(job, current, attempts, now)


# What a job's status takes beyond its optimized prompts (conditions, scores, progress, messages), at most.
STATUS_BASE_BYTES = 16 * 1024


def _too_large(job: Job, settings: OperatorSettings) -> str | None:
    """Why the job cannot work, if its status would not fit beside it: the API server stores an object whole,
    and a status write that takes it over the limit fails, losing the result. The optimized prompts go into
    the status, and GEPA may lengthen them: room for twice the inline templates is kept."""
    needed = job.size_bytes + STATUS_BASE_BYTES + 2 * job.template_bytes
    if needed <= settings.max_object_bytes:
        return None
    return (
        f"the job is {job.size_bytes / 2**20:.2f} MiB and its status needs up to "
        f"{(needed - job.size_bytes) / 2**10:.0f} KiB more, over the {settings.max_object_bytes / 2**20:.2f} MiB "
        "an object may take (etcd's request limit): move spec.dataset.records into a ConfigMap "
        "(spec.dataset.configMapKeyRef), use fewer records, or shorten spec.prompts[].template"
    )


def _first_attempt(job: Job, slot: Slot, now: datetime) -> _NextStep:
    if not slot.may_start:
        fields = (
            PromptOptimizationJobStatus()
            if slot.position is None
            else PromptOptimizationJobStatus(queue_position=slot.position)
        )
        return _NextStep(
            "Queued", "Queued", "waiting for a free slot in the operator's queue (see queuePosition)", fields=fields
        )
    return _NextStep(
        "Pending",
        "PodCreated",
        "worker Pod 1 created",
        create_attempt=1,
        fields=PromptOptimizationJobStatus(
            attempts=1, start_time=format_time(now), queue_position=None, spec_hash=job.run_hash
        ),
    )


def _while_running(job: Job, pod: WorkerPod, attempts: int, now: datetime) -> _NextStep:
    deadline_left = _deadline_left(job, now)
    if pod.phase == "Running":
        return _NextStep(
            "Running", "Running", f"worker Pod {pod.name} is running (attempt {attempts})", recheck_after=deadline_left
        )
    if pod.stuck:
        return _NextStep(
            "Pending",
            pod.reason or "PodPending",
            f"worker Pod {pod.name}: {pod.message or pod.reason}",
            recheck_after=deadline_left,
        )
    if _ready_reason(job.status) == "PodCreated" and job.status.message:
        # Every new Pod waits a moment before it runs: that is no news, and no status write.
        return _NextStep("Pending", "PodCreated", job.status.message, recheck_after=deadline_left)
    return _NextStep(
        "Pending", "PodPending", f"waiting for worker Pod {pod.name} to start", recheck_after=deadline_left
    )


def _deadline_left(job: Job, now: datetime) -> float | None:
    started = parse_time(job.status.start_time)
    if job.spec is None or job.spec.active_deadline_seconds is None or started is None:
        return None
    return max(0.0, (started + timedelta(seconds=job.spec.active_deadline_seconds) - now).total_seconds())


def _after_success(
    spec: PromptOptimizationJobSpec,
    status: PromptOptimizationJobStatus,
    pod: WorkerPod,
    attempts: int,
    now: datetime,
    settings: OperatorSettings,
) -> _NextStep:
    recovered = _recover_worker_fields(status, pod)
    result = _worker_result(status, recovered)
    if result is not None and result.reason == "Cancelled":
        # Stopped by SIGTERM though nobody set spec.cancel (eviction, drain): the work is not done.
        return _after_failure(
            spec,
            status,
            attempts,
            now,
            settings,
            f"worker Pod {pod.name} was stopped before it finished",
            pod.finished_at,
        )
    reason = result.reason if result else "Completed"
    message = result.message if result else "the optimization finished"
    # The worker's reason (Completed, GoalReached, NoImprovement): what `-o wide`'s REASON adds to PHASE.
    return _NextStep("Succeeded", reason, message, fields=recovered)


def _after_pod_failure(
    spec: PromptOptimizationJobSpec,
    status: PromptOptimizationJobStatus,
    pod: WorkerPod,
    attempts: int,
    now: datetime,
    settings: OperatorSettings,
) -> _NextStep:
    recovered = _recover_worker_fields(status, pod)
    result = _worker_result(status, recovered)
    if pod.exit_code == EXIT_INVALID_INPUT or (result is not None and result.reason in PERMANENT_FAILURES):
        reason = result.reason if result else "InvalidInput"
        return _NextStep(
            "Failed", reason, (result.message if result else None) or _describe_pod_failure(pod), fields=recovered
        )
    step = _after_failure(spec, status, attempts, now, settings, _describe_pod_failure(pod), pod.finished_at)
    step.fields = merged_status(step.fields, recovered)
    return step


def _worker_result(status: PromptOptimizationJobStatus, recovered: PromptOptimizationJobStatus) -> WorkerResult | None:
    return recovered.worker_result if "worker_result" in recovered.model_fields_set else status.worker_result


def _after_failure(
    spec: PromptOptimizationJobSpec,
    status: PromptOptimizationJobStatus,
    attempts: int,
    now: datetime,
    settings: OperatorSettings,
    what: str,
    finished_at: str | None,
) -> _NextStep:
    if attempts > spec.backoff_limit:
        return _NextStep(
            "Failed",
            "BackoffLimitExceeded",
            f"the worker failed {attempts} time(s), more than backoffLimit {spec.backoff_limit}; last: {what}",
        )
    delay = retry_delay(attempts, settings)
    # A Pod that vanished has no finish time: the first reconcile that misses it records one, and the back-off
    # counts from that record (of this attempt: an earlier attempt's failure says nothing about this one).
    recorded = status.last_failure if status.last_failure and status.last_failure.attempt == attempts else None
    failed = parse_time(finished_at) or (parse_time(recorded.time) if recorded else None) or now
    wait = (failed + timedelta(seconds=delay) - now).total_seconds()
    failure = AttemptFailure(attempt=attempts, time=format_time(failed), message=what)
    if wait > 0:
        return _NextStep(
            "Pending",
            "BackoffRetry",
            f"attempt {attempts} failed ({what}); retrying in {wait:.0f}s",
            fields=PromptOptimizationJobStatus(last_failure=failure),
            recheck_after=wait,
        )
    return _NextStep(
        "Pending",
        "PodCreated",
        f"worker Pod {attempts + 1} created after: {what}",
        fields=PromptOptimizationJobStatus(last_failure=failure, attempts=attempts + 1),
        create_attempt=attempts + 1,
    )


def _describe_pod_failure(pod: WorkerPod) -> str:
    detail = pod.termination_message if pod.reason in (None, "Error") else pod.message or pod.termination_message
    exit_part = f" (exit code {pod.exit_code})" if pod.exit_code is not None else ""
    text = f"worker Pod {pod.name} failed: {pod.reason or 'Error'}{exit_part}"
    if pod.reason == "OOMKilled":
        # The log's last line says nothing of why: the kernel killed the worker mid-sentence.
        return (
            f"{text}: the worker needed more memory than its limit; raise spec.worker.resources.limits.memory "
            "(or the chart's worker.resources for every job)"
        )
    summary = _summary_message(detail)
    return f"{text}: {summary}" if summary else text


def _summary_message(detail: str | None) -> str | None:
    """A termination message is the worker's JSON summary or, on a crash, the tail of its log."""
    if not detail:
        return None
    message = parse_termination_message(detail)
    if message is not None and message.worker_result is not None:
        return message.worker_result.message
    return detail.strip().splitlines()[-1][:500]


def _recover_worker_fields(status: PromptOptimizationJobStatus, pod: WorkerPod) -> PromptOptimizationJobStatus:
    """Worker-owned fields the status lacks but the Pod's termination message carries (the worker could not
    reach the API to write them)."""
    message = parse_termination_message(pod.termination_message)
    if message is None:
        return PromptOptimizationJobStatus()
    return PromptOptimizationJobStatus(
        **{
            name: getattr(message, name)
            for name in WorkerStatus.model_fields
            if getattr(message, name) is not None and not getattr(status, name)
        }
    )


# Transitions that post no Event, as the batch Job controller posts one when it creates a Pod and one when the
# job ends, not when a Pod starts running: the phase in status says it, and an Event per job less matters at
# hundreds of jobs. Every trouble, each Pod created and each end still post one.
SILENT_REASONS = frozenset({"Running"})


def _decision(job: Job, step: _NextStep, now: datetime) -> Decision:
    status = job.status
    changed = (status.phase, _ready_reason(status)) != (step.phase, step.reason)
    fields = merged_status(
        PromptOptimizationJobStatus(phase=step.phase, message=step.message, observed_generation=job.generation),
        step.fields,
    )
    if step.create_attempt is not None:
        fields.pod_name = pod_name(job.name, step.create_attempt)
    recheck_after = step.recheck_after
    if step.phase in TERMINAL_PHASES and not status.completion_time:
        fields.completion_time = format_time(now)
        fields.queue_position = None
        if started := parse_time(fields.start_time or status.start_time):
            fields.duration = format_duration((now - started).total_seconds())
        if job.spec and job.spec.ttl_seconds_after_finished is not None:
            recheck_after = float(job.spec.ttl_seconds_after_finished)  # then the TTL deletes the job
    spec_applied = _spec_applied(job, fields.spec_hash or status.spec_hash)
    fields.conditions = conditions_for(
        step.phase, step.reason, step.message, job.generation, format_time(now), status.conditions, spec_applied
    )
    events: tuple[Event, ...] = ()
    if changed and step.reason not in SILENT_REASONS:
        warning = step.phase in ("Failed",) or step.reason in (
            "BackoffRetry",
            "ImagePullBackOff",
            "ErrImagePull",
            "CreateContainerConfigError",
            "Unschedulable",
        )
        events = (Event("Warning" if warning else "Normal", step.reason, step.message),)
    if spec_applied and not spec_applied[0] and condition_status(status.conditions, SPEC_APPLIED) != "False":
        events += (Event("Warning", spec_applied[1], spec_applied[2]),)
    pod_deadline = None
    if step.create_attempt is not None and job.spec and job.spec.active_deadline_seconds is not None:
        started = parse_time(fields.start_time or status.start_time) or now
        pod_deadline = int((started + timedelta(seconds=job.spec.active_deadline_seconds) - now).total_seconds())
    return Decision(
        status=_only_changes(status, status_patch(fields)),
        create_attempt=step.create_attempt,
        delete_pods=step.delete_pods,
        events=events,
        delete_job=step.delete_job,
        recheck_after=recheck_after,
        pod_active_deadline=pod_deadline,
    )


def pod_refused(
    job: Job,
    namespace: str,
    attempt: int,
    refusal: str,
    now: datetime,
    settings: OperatorSettings,
    refusals_in_a_row: int,
) -> Decision:
    """The job when the API server refused its worker Pod (PodRefused: `refusal` is what it said): it waits, Pending,
    with Stalled=True and a message that says what to do; a FailedCreate Event (the Job controller's reason) says it
    when it is news. It is tried again, backing off, as the fix may come at any time."""
    name = pod_name(job.name, attempt)
    advice = _refusal_advice(namespace, refusal, settings)
    message = f"worker Pod {name} could not be created: {advice + '; the API server said: ' if advice else ''}{refusal}"
    fields = PromptOptimizationJobStatus(
        phase="Pending",
        message=message,
        observed_generation=job.generation,
        conditions=conditions_for(
            "Pending", "FailedCreate", message, job.generation, format_time(now), job.status.conditions, stalled=True
        ),
    )
    patch = _only_changes(job.status, status_patch(fields))
    return Decision(
        status=patch,
        events=(Event("Warning", "FailedCreate", f"Error creating: {refusal}"),) if patch else (),
        recheck_after=reconcile_error_delay(refusals_in_a_row),
    )


def _refusal_advice(namespace: str, refusal: str, settings: OperatorSettings) -> str:
    """What to do about a refused worker Pod, for the refusals a misconfigured namespace meets."""
    if missing := re.search(r'serviceaccount "([^"]+)" not found', refusal):
        if missing.group(1) != settings.worker_service_account:
            return (
                f"spec.worker.serviceAccountName names {missing.group(1)}, which namespace {namespace} lacks: "
                "create it, or leave the field out for the chart's worker ServiceAccount"
            )
        return (
            f"namespace {namespace} has no worker ServiceAccount {missing.group(1)}: add {namespace} to the "
            "chart's jobNamespaces (which creates it, with its Role), or apply the job in a namespace it lists"
        )
    if 'cannot create resource "pods"' in refusal:
        return (
            f"the operator may not create Pods in namespace {namespace}: add {namespace} to the chart's "
            "watchNamespaces and jobNamespaces, or apply the job in a namespace they list"
        )
    if "exceeded quota" in refusal:
        return f"a ResourceQuota of namespace {namespace} is used up: raise it, or lower spec.worker.resources"
    if "violates PodSecurity" in refusal:
        return (
            f"Pod Security admission of namespace {namespace} refuses the worker: check spec.worker (image, "
            "volumes) against the namespace's level"
        )
    return ""


def _spec_applied(job: Job, started_hash: str | None) -> tuple[bool, str, str] | None:
    """Whether the running job still runs the current spec (None before it starts)."""
    if started_hash is None or job.run_hash is None:
        return None
    if job.run_hash == started_hash:
        return True, "SpecUnchanged", "the job runs its current spec"
    return (
        False,
        "SpecChangedAfterStart",
        "the spec changed after the job started and is not applied to it (only cancel and "
        "ttlSecondsAfterFinished are); create a new job to run the changed spec",
    )


def _ready_reason(status: PromptOptimizationJobStatus) -> str | None:
    return ready.reason if (ready := find_condition(status.conditions, READY)) else None


def _only_changes(status: PromptOptimizationJobStatus, patch: dict[str, Any]) -> dict[str, Any]:
    """Drop fields whose value is already stored, so an unchanged state patches nothing."""
    stored = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {key: value for key, value in patch.items() if stored.get(key) != value}
