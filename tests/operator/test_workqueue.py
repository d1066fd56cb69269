"""The work queue on its own: what client-go's rate-limited queue promises (one entry per key, one worker per key,
the earliest delayed add, a back-off that grows until forgotten), on asyncio."""

import asyncio

import pytest

from promptopt_operator.workqueue import WorkQueue


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def doubling(failures):
    return 10.0 * 2 ** (failures - 1)


def test_a_key_is_queued_once_and_keys_come_out_oldest_first():
    async def scenario():
        waits = []
        queue = WorkQueue(doubling, waits.append)
        for key in ("a", "b", "a", "c", "b"):
            queue.add(key)
        assert len(queue) == 3
        taken = [await queue.get() for _ in range(3)]
        assert len(queue) == 0 and len(waits) == 3 and all(wait >= 0 for wait in waits)
        return taken

    assert run(scenario()) == ["a", "b", "c"]


def test_a_key_added_while_worked_on_comes_back_when_done_and_never_to_two_workers():
    async def scenario():
        queue = WorkQueue(doubling)
        queue.add("a")
        assert await queue.get() == "a"
        queue.add("a")
        queue.add("a")
        assert len(queue) == 0  # a second worker must not have it while the first does
        queue.done("a")
        assert len(queue) == 1
        assert await queue.get() == "a"
        queue.done("a")
        assert len(queue) == 0
        await queue.idle()

    run(scenario())


def test_idle_waits_for_the_work_under_way():
    async def scenario():
        queue, order = WorkQueue(doubling), []
        queue.add("a")

        async def worker():
            key = await queue.get()
            await asyncio.sleep(0.05)
            order.append("worked")
            queue.done(key)

        task = asyncio.create_task(worker())
        await queue.idle()
        order.append("idle")
        await task
        return order

    assert run(scenario()) == ["worked", "idle"]


def test_a_delayed_add_keeps_the_earliest_time_asked_for():
    async def scenario():
        queue = WorkQueue(doubling)
        queue.add_after("a", 60)
        queue.add_after("a", 120)  # later: the earlier one stands
        assert 59 < queue.delayed("a") <= 60
        assert len(queue) == 0
        queue.add_after("a", 0.01)  # sooner: it replaces the later one
        assert await queue.get() == "a"
        assert queue.delayed("a") is None
        queue.done("a")
        queue.add_after("b", 0)  # no delay: at once
        assert len(queue) == 1

    run(scenario())


def test_failures_back_off_until_forgotten():
    async def scenario():
        queue = WorkQueue(doubling)
        assert [queue.add_rate_limited("a") for _ in range(3)] == [10.0, 20.0, 40.0]
        assert queue.requeues("a") == 3
        assert 9 < queue.delayed("a") <= 10  # the earliest of the three adds
        queue.forget("a")
        assert queue.requeues("a") == 0
        assert queue.add_rate_limited("a") == 10.0
        assert queue.requeues("b") == 0  # keys back off on their own

    run(scenario())


def test_a_discarded_key_leaves_nothing_behind():
    async def scenario():
        queue = WorkQueue(doubling)
        queue.add_rate_limited("a")
        queue.discard("a")
        assert queue.requeues("a") == 0 and queue.delayed("a") is None

    run(scenario())


def test_a_shut_down_queue_takes_no_more_keys_and_drops_delayed_ones():
    async def scenario():
        queue = WorkQueue(doubling)
        queue.add_after("a", 60)
        queue.shut_down()
        queue.add("b")
        queue.add_after("c", 1)
        assert len(queue) == 0 and queue.delayed("a") is None and queue.delayed("c") is None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), 0.1)

    run(scenario())
