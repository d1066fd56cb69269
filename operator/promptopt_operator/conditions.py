"""Conditions in the Kubernetes shape, chosen so GitOps tools compute the job's health from them.

kstatus (Flux, kpt, Config Sync) reads three condition types: Reconciling=True means in progress,
Stalled=True means failed, and otherwise Ready=True means current. So a job that is queued or running
says Reconciling=True (healthy and progressing, however long it runs), a job that ended badly says
Stalled=True, and only a job that succeeded says Ready=True. Batch users wait as for a Job: Complete=True or
Failed=True appear when the job ends. Every condition carries the same reason and
message so `kubectl get poj -o wide` and `kubectl describe` explain the state without looking at Pods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from promptopt.api.v1alpha1 import Condition

ConditionStatus = Literal["True", "False", "Unknown"]

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)
# batch/v1 Job's end conditions, so that `kubectl wait --for=condition=Complete` (or Failed) works as for a Job:
# added, True, when the job ends, as the Job controller adds them. A cancelled job did not complete: Failed,
# reason Cancelled.
COMPLETE = "Complete"
FAILED = "Failed"
_END_CONDITIONS = {"Succeeded": COMPLETE, "Failed": FAILED, "Cancelled": FAILED}
# False when the spec changed after the job started: the change is not applied to the running job.
SPEC_APPLIED = "SpecApplied"

# What each phase asserts: (Ready, Reconciling, Stalled).
_PHASE_CONDITIONS: dict[str, tuple[ConditionStatus, ConditionStatus, ConditionStatus]] = {
    "Pending": ("False", "True", "False"),
    "Queued": ("False", "True", "False"),
    "Running": ("False", "True", "False"),
    "Succeeded": ("True", "False", "False"),
    "Failed": ("False", "False", "True"),
    "Cancelled": ("False", "False", "True"),
}


def conditions_for(
    phase: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
    previous: Sequence[Condition] | None,
    spec_applied: tuple[bool, str, str] | None = None,
    stalled: bool = False,
) -> list[Condition]:
    """The job's conditions for a phase, and SpecApplied (status, reason, message) once the job has started.
    `stalled`: the job waits on something only a person can fix (Stalled=True while it still waits).

    lastTransitionTime moves only when a condition's status changes.
    """
    before = {c.type: c for c in previous or []}
    ready, reconciling, stall = _PHASE_CONDITIONS[phase]
    wanted = [
        (kind, status, reason, message)
        for kind, status in zip(CONDITION_TYPES, (ready, reconciling, "True" if stalled else stall), strict=True)
    ]
    if phase in _END_CONDITIONS:
        wanted.append((_END_CONDITIONS[phase], "True", reason, message))
    if spec_applied is not None:
        applied, applied_reason, applied_message = spec_applied
        wanted.append((SPEC_APPLIED, "True" if applied else "False", applied_reason, applied_message))
    return [
        _condition(kind, status, why, text, generation, now, before.get(kind)) for kind, status, why, text in wanted
    ]


def set_condition(
    conditions: Sequence[Condition] | None,
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """The conditions with `kind` set, the others as they are (apimachinery's SetStatusCondition)."""
    others = [c for c in conditions or [] if c.type != kind]
    return [*others, _condition(kind, status, reason, message, generation, now, find_condition(conditions, kind))]


def find_condition(conditions: Sequence[Condition] | None, kind: str) -> Condition | None:
    """apimachinery's FindStatusCondition."""
    return next((c for c in conditions or [] if c.type == kind), None)


def condition_status(conditions: Sequence[Condition] | None, kind: str) -> str | None:
    return condition.status if (condition := find_condition(conditions, kind)) else None


def _condition(
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
    previous: Condition | None,
) -> Condition:
    """One condition; its lastTransitionTime moves only when its status changes."""
    unchanged_since = previous.last_transition_time if previous is not None and previous.status == status else None
    return Condition(
        type=kind,
        status=status,
        observed_generation=generation,
        last_transition_time=unchanged_since or now,
        reason=reason,
        message=message,
    )
