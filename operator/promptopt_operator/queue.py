"""The operator-wide limit of running jobs: who may start now, and everyone else's place in line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from promptopt.api.v1alpha1 import ACTIVE_PHASES, WAITING_PHASES

JobKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Slot:
    """The queue's answer for a job that waits for its first Pod. `position` None leaves the stored position
    as it is: positions shift whenever any job starts, and rewriting every waiting job's status on each shift
    would cost O(waiting jobs) writes per start, so they are refreshed on a timer instead."""

    may_start: bool
    position: int | None = None


@dataclass(frozen=True)
class QueueEntry:
    key: JobKey
    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text)
    phase: str | None
    cancelled: bool = False
    position: int | None = None  # status.queuePosition as stored


def _waits(entry: QueueEntry) -> bool:
    # A cancelled job that never started ends without a Pod: it must not take anyone's place.
    return entry.phase in WAITING_PHASES and not entry.cancelled


def plan(entries: Iterable[QueueEntry], limit: int) -> dict[JobKey, Slot]:
    """Slots for the waiting jobs: the oldest ones start while slots are free, the rest get a position (1 = next)."""
    entries = list(entries)
    active = sum(1 for e in entries if e.phase in ACTIVE_PHASES)
    waiting = sorted((e for e in entries if _waits(e)), key=lambda e: (e.created, e.key))
    free = max(0, limit - active)
    slots = {}
    for index, entry in enumerate(waiting):
        if index < free:
            slots[entry.key] = Slot(may_start=True)
        else:
            slots[entry.key] = Slot(may_start=False, position=index - free + 1)
    return slots


def slot_for(entries: Iterable[QueueEntry], key: JobKey, limit: int) -> Slot | None:
    """plan(entries, limit).get(key), in one pass without sorting: a job arriving in a burst of thousands is planned
    alone (planning the whole queue for each of them made a burst quadratic with a sort in every step)."""
    entries = list(entries)
    mine = next((e for e in entries if e.key == key), None)
    if mine is None or not _waits(mine):
        return None
    place = (mine.created, mine.key)
    active = ahead = 0
    for entry in entries:
        if entry.phase in ACTIVE_PHASES:
            active += 1
        elif _waits(entry) and (entry.created, entry.key) < place:
            ahead += 1
    free = max(0, limit - active)
    return Slot(may_start=True) if ahead < free else Slot(may_start=False, position=ahead - free + 1)


def stale_positions(
    entries: Iterable[QueueEntry], limit: int, front: int, tolerance: float | None = None
) -> dict[JobKey, int]:
    """The place in line of each waiting job whose stored position is not it: among the first `front` in line, any
    difference; further back, none (tolerance None) or only a position off by more than `tolerance` of the place, so
    that in a line of thousands each start does not cost a write for every job behind it."""
    entries = list(entries)
    stored = {e.key: e.position for e in entries}
    waiting = sorted(
        ((key, slot.position) for key, slot in plan(entries, limit).items() if slot.position is not None),
        key=lambda item: item[1],
    )

    def stale(index: int, key: JobKey, position: int) -> bool:
        was = stored[key]
        if was == position:
            return False
        if index < front:
            return True
        return tolerance is not None and (was is None or abs(was - position) > tolerance * position)

    return {key: position for index, (key, position) in enumerate(waiting) if stale(index, key, position)}
