"""Conditions in the Kubernetes shape, chosen so GitOps tools compute the job's health from them.

kstatus (Flux, kpt, Config Sync) reads three condition types: Reconciling=True means in progress,
Stalled=True means failed, and otherwise Ready=True means current. So a job that is queued or running
says Reconciling=True (healthy and progressing, however long it runs), a job that ended badly says
Stalled=True, and only a job that succeeded says Ready=True. Every condition carries the same reason and
message so `kubectl get poj -o wide` and `kubectl describe` explain the state without looking at Pods.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)

# What each phase asserts: (Ready, Reconciling, Stalled).
_PHASE_CONDITIONS = {
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
    previous: Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]]:
    """The job's conditions for a phase; lastTransitionTime moves only when a condition's status changes."""
    before = {c.get("type"): c for c in previous or []}
    result = []
    for kind, status in zip(CONDITION_TYPES, _PHASE_CONDITIONS[phase]):
        old = before.get(kind)
        changed = old is None or old.get("status") != status
        result.append({
            "type": kind,
            "status": status,
            "observedGeneration": generation,
            "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
            "reason": reason,
            "message": message,
        })
    return result
