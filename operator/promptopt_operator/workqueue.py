"""A rate-limited work queue of job keys, after client-go's (k8s.io/client-go/util/workqueue), on asyncio.

Events say "look at this job again"; workers take keys and reconcile. A key is queued at most once however many
events name it (the reconcile decides on the job as last seen, so one look covers them all), and one worker at a
time has it: a key added while it is being worked on is queued again when that work is done. Delayed adds (a
deadline, a TTL) keep the earliest time asked for, and a failed key comes back after a delay that grows with its
failures in a row until it is forgotten.

Ours, not a library's: kopf has no work queue (each object's events go to a task of their own), and client-go's is
Go. What it adds to client-go's: discard(), for a job that is gone (client-go leaves its timers to fire into a
reconcile that finds nothing), delayed(), to see when a key is due, and idle(), to wait for the work to run out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class WorkQueue(Generic[Key]):
    def __init__(
        self, backoff: Callable[[int], float], observe_wait: Callable[[float], None] = lambda seconds: None
    ) -> None:
        """`backoff(n)`: the delay after n failures in a row; `observe_wait`: told how long each key waited."""
        self._backoff, self._observe_wait = backoff, observe_wait
        self._ready: asyncio.Queue[Key] = asyncio.Queue()  # FIFO, and it wakes a worker waiting in get()
        self._dirty: dict[Key, float] = {}  # keys to be worked on, and since when (monotonic)
        self._processing: set[Key] = set()
        self._delayed: dict[Key, tuple[float, asyncio.TimerHandle]] = {}  # key -> (due, its timer)
        self._failures: dict[Key, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._shut_down = False

    def __len__(self) -> int:
        """Keys ready to be worked on (client-go's depth): neither those being worked on nor delayed ones."""
        return self._ready.qsize()

    def add(self, key: Key) -> None:
        if self._shut_down or key in self._dirty:
            return
        self._dirty[key] = time.monotonic()
        if key not in self._processing:  # else done() queues it
            self._ready.put_nowait(key)
            self._idle.clear()

    def add_after(self, key: Key, delay: float) -> None:
        """Add the key in `delay` seconds, unless an earlier add of it is due already."""
        if self._shut_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if (waiting := self._delayed.get(key)) is not None:
            if waiting[0] <= due:
                return
            waiting[1].cancel()
        self._delayed[key] = (due, loop.call_at(due, self._due, key))

    def _due(self, key: Key) -> None:
        self._delayed.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: Key) -> float:
        """Count a failure of the key's work and add it after the back-off that failures in a row earn; the delay."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = self._backoff(failures)
        self.add_after(key, delay)
        return delay

    def requeues(self, key: Key) -> int:
        """Failures in a row of the key's work since it was last forgotten."""
        return self._failures.get(key, 0)

    def forget(self, key: Key) -> None:
        """The key's work went through: its next failure starts the back-off over."""
        self._failures.pop(key, None)

    def discard(self, key: Key) -> None:
        """The key is gone for good: drop its delayed add and its failures (a queued add finds nothing to do)."""
        self.forget(key)
        if (waiting := self._delayed.pop(key, None)) is not None:
            waiting[1].cancel()

    def delayed(self, key: Key) -> float | None:
        """In how many seconds the key's delayed add is due (None: none is)."""
        waiting = self._delayed.get(key)
        return None if waiting is None else waiting[0] - asyncio.get_running_loop().time()

    async def get(self) -> Key:
        """The oldest ready key, once there is one; call done(key) when its work is over."""
        key = await self._ready.get()
        self._processing.add(key)
        self._observe_wait(time.monotonic() - self._dirty.pop(key))
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:  # added while it was worked on
            self._ready.put_nowait(key)
        elif not self._processing and not self._ready.qsize():
            self._idle.set()

    async def idle(self) -> None:
        """Until no key is ready or being worked on (delayed ones may still come)."""
        await self._idle.wait()

    def shut_down(self) -> None:
        """Take no more keys and drop the delayed ones (the workers are the caller's to stop)."""
        self._shut_down = True
        for _, timer in self._delayed.values():
            timer.cancel()
        self._delayed.clear()
