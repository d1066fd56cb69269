"""The operator's queue (queue.Line): who may start, everyone else's place in line, kept one change at a time and
checked against a plan made from scratch (sort every waiting job) on random queues."""

import random

import pytest

from promptopt.api.v1alpha1 import ACTIVE_PHASES, WAITING_PHASES
from promptopt_operator.queue import Line, QueueEntry, Slot


def entry(name, created, phase=None, cancelled=False, position=None):
    return QueueEntry(("ns", name), created, phase, cancelled, position)


def line_of(*entries):
    line = Line()
    for e in entries:
        line.put(e)
    return line


def planned_from_scratch(entries, starting, limit):
    """The plan by its definition: jobs holding a slot are counted, and the waiting ones, oldest first, take the
    free slots; the rest are numbered from 1."""
    holding = sum(1 for e in entries if e.phase in ACTIVE_PHASES or (e.key in starting and e.phase in WAITING_PHASES))
    waiting = sorted(
        (e for e in entries if e.phase in WAITING_PHASES and not e.cancelled and e.key not in starting),
        key=lambda e: (e.created, e.key),
    )
    free = max(0, limit - holding)
    return {
        e.key: Slot(may_start=True) if i < free else Slot(may_start=False, position=i - free + 1)
        for i, e in enumerate(waiting)
    }


def test_oldest_waiting_jobs_take_the_free_slots():
    line = line_of(
        entry("a", "2026-01-01T00:00:03Z"),
        entry("b", "2026-01-01T00:00:01Z"),
        entry("c", "2026-01-01T00:00:02Z"),
        entry("run", "2026-01-01T00:00:00Z", "Running"),
    )
    assert line.may_start(limit=2) == [("ns", "b")]
    assert line.slot(("ns", "c"), limit=2) == Slot(may_start=False, position=1)
    assert line.slot(("ns", "a"), limit=2) == Slot(may_start=False, position=2)
    assert line.slot(("ns", "run"), limit=2) is None


def test_no_slot_when_full_and_finished_jobs_free_theirs():
    line = line_of(entry("r1", "1", "Running"), entry("r2", "2", "Pending"), entry("w", "3", "Queued"))
    assert line.slot(("ns", "w"), limit=2).position == 1
    line.put(entry("r1", "1", "Succeeded"))
    assert line.slot(("ns", "w"), limit=2).may_start


def test_cancelled_waiting_jobs_keep_no_place():
    line = line_of(entry("x", "1", "Queued", cancelled=True), entry("y", "2", "Queued"))
    assert line.plan(limit=0) == {("ns", "y"): Slot(may_start=False, position=1)}


def test_a_starting_job_holds_its_slot_until_its_entry_shows_it_started_or_its_pod_failed():
    line = line_of(entry("a", "1", "Queued"), entry("b", "2", "Queued"))
    line.start(("ns", "a"))
    assert line.may_start(limit=1) == [] and line.slot(("ns", "b"), limit=1).position == 1
    line.put(entry("a", "1", "Queued"))  # an older event of it: still starting
    assert line.may_start(limit=1) == []
    line.start_failed(("ns", "a"))
    assert line.may_start(limit=1) == [("ns", "a")]
    line.start(("ns", "a"))
    line.put(entry("a", "1", "Pending"))
    line.put(entry("a", "1", "Succeeded"))  # it ended: its slot is free
    assert line.may_start(limit=1) == [("ns", "b")]
    line.remove(("ns", "b"))
    assert line.plan(limit=1) == {} and len(line) == 1


def test_the_line_kept_one_change_at_a_time_is_the_plan_made_from_scratch():
    """On queues of every shape: ties in creation time, cancelled and finished jobs, jobs starting and failing to,
    jobs deleted, full and free limits."""
    rng = random.Random(7)
    phases = [None, "Queued", "Pending", "Running", "Succeeded", "Failed", "Cancelled"]
    for _ in range(200):
        line, entries, starting = Line(), {}, set()
        for _ in range(rng.randrange(1, 60)):
            key = ("ns", f"j{rng.randrange(25)}")
            change = rng.random()
            if change < 0.6 or key not in entries:
                created = entries[key].created if key in entries else f"{rng.randrange(10):02d}"
                entries[key] = QueueEntry(key, created, rng.choice(phases), cancelled=rng.random() < 0.1)
                if entries[key].phase not in WAITING_PHASES:
                    starting.discard(key)
                line.put(entries[key])
            elif change < 0.75:
                line.start(key)
                starting.add(key)
            elif change < 0.85:
                line.start_failed(key)
                starting.discard(key)
            else:
                line.remove(key)
                del entries[key]
                starting.discard(key)
            limit = rng.randrange(0, 8)
            expected = planned_from_scratch(entries.values(), starting, limit)
            assert line.plan(limit) == expected
            assert line.may_start(limit) == [key for key, slot in expected.items() if slot.may_start]
            for key in entries:
                assert line.slot(key, limit) == expected.get(key)
    assert Line().slot(("ns", "unknown"), 1) is None


@pytest.mark.parametrize(
    "front, tolerance, refreshed",
    [
        (1, None, {"w1": 1}),
        (5, None, {"w1": 1, "w2": 2, "w3": 3}),
        # Behind the front: w2 is off by 1 of 2 (50%), w3 by 1 of 3 (33%), w4 stored 44 for 40 (10%, not more).
        (1, 0.1, {"w1": 1, "w2": 2, "w3": 3}),
        (1, 0.05, {"w1": 1, "w2": 2, "w3": 3, "w4": 40}),
    ],
)
def test_the_front_of_the_queue_is_refreshed_exactly_and_the_rest_when_far_off(front, tolerance, refreshed):
    """Rewriting every waiting job's position on every start would cost O(waiting) writes a start."""
    line = line_of(
        entry("w0", "1", "Running"),
        entry("w1", "2", "Queued", position=2),
        entry("w2", "3", "Queued", position=3),
        entry("w3", "4", "Queued", position=4),
        *(entry(f"x{i:02d}", f"5{i:02d}", "Queued", position=i + 4) for i in range(36)),
        entry("w4", "6", "Queued", position=44),
    )
    found = line.stale_positions(limit=1, front=front, tolerance=tolerance)
    assert {key[1]: position for key, position in found.items() if not key[1].startswith("x")} == refreshed
