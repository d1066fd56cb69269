"""The operator-wide limit of running jobs: who may start now, and everyone else's place in line."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
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


class Line:
    """The operator's queue as it stands: every job's entry, as its watch last showed it, kept up to date one job at a
    time, with the waiting jobs in order (oldest first) and the count of jobs that hold a slot. A change and a question
    about one job cost O(log n), a plan of the whole queue O(n) without a sort: planning from every job's entry for
    each question made a burst of 10,000 new jobs quadratic.

    A job given a slot is `starting` until its entry shows it started (the watch is behind the Pod creation): it
    holds a slot meanwhile, and has no place in line."""

    def __init__(self) -> None:
        self._entries: dict[JobKey, QueueEntry] = {}
        self._waiting: list[tuple[str, JobKey]] = []  # (created, key) of the waiting jobs, sorted
        self._active = 0  # jobs that hold a slot
        self._starting: set[JobKey] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[QueueEntry]:
        return iter(self._entries.values())

    def get(self, key: JobKey) -> QueueEntry | None:
        return self._entries.get(key)

    def put(self, entry: QueueEntry) -> None:
        """The job as its watch shows it now."""
        self._leave(entry.key)
        if entry.phase not in WAITING_PHASES:
            self._starting.discard(entry.key)  # it has started (or ended): its entry says so now
        self._entries[entry.key] = entry
        self._join(entry.key)

    def remove(self, key: JobKey) -> None:
        self._leave(key)
        self._entries.pop(key, None)
        self._starting.discard(key)

    def start(self, key: JobKey) -> None:
        """The job is given a slot (its Pod is being created): it holds the slot until its entry shows it started."""
        self._leave(key)
        self._starting.add(key)
        self._join(key)

    def start_failed(self, key: JobKey) -> None:
        """Its Pod could not be created: it waits in its place again (or it would hold a slot it never took)."""
        self._leave(key)
        self._starting.discard(key)
        self._join(key)

    def _holds_slot(self, entry: QueueEntry) -> bool:
        return entry.phase in ACTIVE_PHASES or (entry.key in self._starting and entry.phase in WAITING_PHASES)

    def _in_line(self, entry: QueueEntry) -> bool:
        return _waits(entry) and entry.key not in self._starting

    def _leave(self, key: JobKey) -> None:
        if (entry := self._entries.get(key)) is None:
            return
        if self._holds_slot(entry):
            self._active -= 1
        elif self._in_line(entry):
            del self._waiting[bisect.bisect_left(self._waiting, (entry.created, key))]

    def _join(self, key: JobKey) -> None:
        if (entry := self._entries.get(key)) is None:
            return
        if self._holds_slot(entry):
            self._active += 1
        elif self._in_line(entry):
            bisect.insort(self._waiting, (entry.created, key))

    def _free(self, limit: int) -> int:
        return max(0, limit - self._active)

    def slot(self, key: JobKey, limit: int) -> Slot | None:
        """The job's slot if it waits (None if it does not): it may start when fewer jobs wait ahead of it than slots
        are free; otherwise its place in line (1 = next)."""
        entry = self._entries.get(key)
        if entry is None or not self._in_line(entry):
            return None
        ahead = bisect.bisect_left(self._waiting, (entry.created, key))
        free = self._free(limit)
        return Slot(may_start=True) if ahead < free else Slot(may_start=False, position=ahead - free + 1)

    def may_start(self, limit: int) -> list[JobKey]:
        """The waiting jobs that may start now, oldest first."""
        return [key for _, key in self._waiting[: self._free(limit)]]

    def plan(self, limit: int) -> dict[JobKey, Slot]:
        """Every waiting job's slot."""
        free = self._free(limit)
        return {
            key: Slot(may_start=True) if index < free else Slot(may_start=False, position=index - free + 1)
            for index, (_, key) in enumerate(self._waiting)
        }

    def stale_positions(self, limit: int, front: int, tolerance: float | None = None) -> dict[JobKey, int]:
        """The place in line of each waiting job whose stored position is not it: among the first `front` in line,
        any difference; further back, none (tolerance None) or only a position off by more than `tolerance` of the
        place, so that in a line of thousands each start does not cost a write for every job behind it."""
        free = self._free(limit)
        stale = {}
        for index, (_, key) in enumerate(self._waiting[free:]):
            position, was = index + 1, self._entries[key].position
            if was == position:
                continue
            if index < front or (tolerance is not None and (was is None or abs(was - position) > tolerance * position)):
                stale[key] = position
        return stale
