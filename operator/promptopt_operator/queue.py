"""The operator-wide limit of running jobs: who may start now, and everyone else's place in line."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from promptopt_operator.lifecycle import Slot

# Phases that hold a slot: the job has (or is about to get) a worker Pod.
ACTIVE_PHASES = ("Pending", "Running")
# Phases of jobs that have not started yet.
WAITING_PHASES = (None, "Queued")

JobKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class QueueEntry:
    key: JobKey
    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text)
    phase: str | None
    cancelled: bool = False
    position: int | None = None  # status.queuePosition as stored


def plan(entries: Iterable[QueueEntry], limit: int) -> dict[JobKey, Slot]:
    """Slots for the waiting jobs: the oldest ones start while slots are free, the rest get a position (1 = next)."""
    entries = list(entries)
    active = sum(1 for e in entries if e.phase in ACTIVE_PHASES)
    # A cancelled job that never started ends without a Pod: it must not take anyone's place.
    waiting = sorted((e for e in entries if e.phase in WAITING_PHASES and not e.cancelled),
                     key=lambda e: (e.created, e.key))
    free = max(0, limit - active)
    slots = {}
    for index, entry in enumerate(waiting):
        if index < free:
            slots[entry.key] = Slot(may_start=True)
        else:
            slots[entry.key] = Slot(may_start=False, position=index - free + 1)
    return slots


def stale_positions(entries: Iterable[QueueEntry], limit: int, front: int | None = None) -> dict[JobKey, int]:
    """The place in line of each waiting job, among the first `front` (None: all), whose stored position is not it."""
    entries = list(entries)
    stored = {e.key: e.position for e in entries}
    waiting = sorted(((key, slot.position) for key, slot in plan(entries, limit).items() if slot.position is not None),
                     key=lambda item: item[1])
    return {key: position for key, position in waiting[:front] if stored[key] != position}
