from promptopt_operator.queue import QueueEntry, plan


def entry(name, created, phase=None, cancelled=False):
    return QueueEntry(("ns", name), created, phase, cancelled)


def test_oldest_waiting_jobs_take_the_free_slots():
    slots = plan(
        [
            entry("a", "2026-01-01T00:00:03Z"),
            entry("b", "2026-01-01T00:00:01Z"),
            entry("c", "2026-01-01T00:00:02Z"),
            entry("run", "2026-01-01T00:00:00Z", "Running"),
        ],
        limit=2,
    )
    assert slots[("ns", "b")].may_start
    assert not slots[("ns", "c")].may_start and slots[("ns", "c")].position == 1
    assert slots[("ns", "a")].position == 2
    assert ("ns", "run") not in slots


def test_no_slot_when_full_and_finished_jobs_free_theirs():
    full = [entry("r1", "1", "Running"), entry("r2", "2", "Pending"), entry("w", "3", "Queued")]
    assert plan(full, limit=2)[("ns", "w")].position == 1
    freed = [entry("r1", "1", "Succeeded"), entry("r2", "2", "Pending"), entry("w", "3", "Queued")]
    assert plan(freed, limit=2)[("ns", "w")].may_start


def test_cancelled_waiting_jobs_keep_no_place():
    slots = plan([entry("x", "1", "Queued", cancelled=True), entry("y", "2", "Queued")], limit=0)
    assert ("ns", "x") not in slots and slots[("ns", "y")].position == 1


def test_one_jobs_slot_is_its_slot_in_the_whole_plan():
    """slot_for answers for one job what plan answers for all, on queues of every shape: ties in creation time,
    cancelled and finished jobs, full and free limits."""
    import random

    from promptopt_operator.queue import slot_for

    rng = random.Random(7)
    phases = [None, "Queued", "Pending", "Running", "Succeeded", "Failed", "Cancelled"]
    for _ in range(300):
        entries = [
            entry(
                f"j{i}", f"2026-01-01T00:00:{rng.randrange(10):02d}Z", rng.choice(phases), cancelled=rng.random() < 0.1
            )
            for i in range(rng.randrange(1, 25))
        ]
        limit = rng.randrange(0, 8)
        slots = plan(entries, limit)
        for e in entries:
            assert slot_for(entries, e.key, limit) == slots.get(e.key), (e, limit)
    assert slot_for([entry("a", "1")], ("ns", "unknown"), 1) is None
