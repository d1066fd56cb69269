"""Leader election: of the operator's replicas, only the one that holds a coordination.k8s.io Lease acts on jobs.

The others keep their watches and kopf's indexes as warm as the leader's (they see every job and Pod), serve health
and metrics, and take over when the leader's Lease runs out (it was killed) or at once when it hands the Lease back
(it was stopped, as in a rolling update).

Ours rather than kopf's peering or the kubernetes client's `leaderelection`: kopf's peering elects no leader (peers
of the same priority all pause, and a paused operator stops its watches, so nothing stays warm); the client's
elector runs in blocking threads, never hands the Lease back on shutdown, and makes a follower wait out a whole
lease duration even after the holder released it. The rules are client-go's (the Lease's fields, renewals every
retry period, leadership lost when no renewal succeeds within the renew deadline, an empty holder free to take).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """client-go's defaults, which kube-controller-manager and kube-scheduler keep."""

    lease_seconds: int = 15  # how long a Lease holds without renewal
    renew_deadline_seconds: float = 10.0  # the holder gives up leading when no renewal succeeded for this long
    retry_seconds: float = 2.0  # the holder renews this often
    # A follower looks this often, so that a Lease handed back is taken within about a second.
    follower_retry_seconds: float = 1.0


@dataclass(frozen=True)
class Lease:
    """A Lease's spec, and the resourceVersion it was read at (None for one not created yet)."""

    holder: str | None
    lease_seconds: int
    acquired: datetime | None
    renewed: datetime | None
    transitions: int
    resource_version: str | None = None


@dataclass(frozen=True)
class Claim:
    """What a candidate does next: write the Lease (`write`; `create` if none exists), or wait `wait_seconds`."""

    write: Lease | None = None
    create: bool = False
    wait_seconds: float = 0.0


def _micro_time(moment: datetime) -> str:
    # metav1.MicroTime, as client-go writes it.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_lease(body: dict[str, Any]) -> Lease:
    spec = body.get("spec") or {}

    def moment(field: str) -> datetime | None:
        return datetime.fromisoformat(spec[field]) if spec.get(field) else None

    return Lease(
        holder=spec.get("holderIdentity") or None,
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquired=moment("acquireTime"),
        renewed=moment("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=body.get("metadata", {}).get("resourceVersion"),
    )


def lease_body(name: str, lease: Lease) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "holderIdentity": lease.holder,
        "leaseDurationSeconds": lease.lease_seconds,
        "leaseTransitions": lease.transitions,
    }
    if lease.acquired:
        spec["acquireTime"] = _micro_time(lease.acquired)
    if lease.renewed:
        spec["renewTime"] = _micro_time(lease.renewed)
    metadata: dict[str, Any] = {"name": name}
    if lease.resource_version:
        metadata["resourceVersion"] = lease.resource_version  # the write fails (409) if another got there first
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def expires(lease: Lease, observed: datetime) -> datetime:
    """When a Lease held by another runs out. client-go counts from when this candidate saw its last change, so that
    clocks need not agree; that can add up to a retry period to a takeover. The holder's own renewTime is used when
    it is earlier: a follower whose clock is ahead of the holder's by less than the lease duration less a renewal
    period (13 s) still never takes a Lease that is being renewed, and a follower takes a dead holder's Lease within
    the lease duration of its last renewal."""
    last = min(lease.renewed, observed) if lease.renewed else observed
    return last + timedelta(seconds=lease.lease_seconds)


def claim(lease: Lease | None, me: str, now: datetime, observed: datetime, timing: Timing) -> Claim:
    """The next step of candidate `me`, given the Lease as read (None: there is none) and when its content last
    changed as far as `me` saw (`observed`)."""
    fresh = Lease(holder=me, lease_seconds=timing.lease_seconds, acquired=now, renewed=now, transitions=0)
    if lease is None:
        return Claim(write=fresh, create=True)
    if lease.holder == me:
        return Claim(write=replace(lease, renewed=now, lease_seconds=timing.lease_seconds))
    if lease.holder is not None and now < (end := expires(lease, observed)):
        return Claim(wait_seconds=min(timing.follower_retry_seconds, (end - now).total_seconds()))
    return Claim(write=replace(fresh, transitions=lease.transitions + 1, resource_version=lease.resource_version))


def released(lease: Lease, now: datetime) -> Lease:
    """The Lease handed back on a graceful stop (client-go's ReleaseOnCancel): no holder, so a follower takes it on
    its next look rather than after the lease duration."""
    return replace(lease, holder=None, lease_seconds=1, acquired=now, renewed=now)


class LeaseStore(Protocol):
    """The Lease calls the elector makes (KubeClient in the operator)."""

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None: ...

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None: ...


class LeaseElector:
    """Campaigns for the Lease `namespace/name` as `identity`: `on_started_leading` once it holds it,
    `on_stopped_leading` if it loses it (no renewal within the renew deadline, or another holder wrote it); `stop()`
    ends the campaign and hands a held Lease back."""

    def __init__(
        self,
        store: LeaseStore,
        namespace: str,
        name: str,
        identity: str,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], Awaitable[None]],
        timing: Timing = Timing(),
    ):
        self.store, self.namespace, self.name, self.identity, self.timing = store, namespace, name, identity, timing
        self._on_started, self._on_stopped = on_started_leading, on_stopped_leading
        self._held: Lease | None = None  # the Lease as this candidate last wrote it, while it leads
        self._seen: tuple[Lease, datetime] | None = None  # the Lease's content as last read, and when it changed
        self._task: asyncio.Task | None = None

    @property
    def leading(self) -> bool:
        return self._held is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._campaign())

    async def stop(self) -> None:
        """End the campaign; a held Lease is handed back (client-go's ReleaseOnCancel), so a follower takes over on
        its next look rather than when the Lease runs out."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._held is None:
            return
        held, self._held = self._held, None
        try:
            await self.store.replace_lease(
                self.namespace, self.name, lease_body(self.name, released(held, datetime.now(UTC)))
            )
            logger.info("%s handed the leader Lease %s/%s back", self.identity, self.namespace, self.name)
        except Exception as error:
            logger.warning(
                "the leader Lease %s/%s could not be handed back (a follower takes it when it runs out): %s",
                self.namespace,
                self.name,
                error,
            )

    async def _campaign(self) -> None:
        clock = asyncio.get_running_loop().time
        while not await self._try_to_acquire():
            pass
        logger.info("%s leads: it holds the Lease %s/%s", self.identity, self.namespace, self.name)
        self._on_started()
        renewed = clock()
        while True:
            await asyncio.sleep(self.timing.retry_seconds)
            if await self._try_to_renew():
                renewed = clock()
            elif self._held is None or clock() - renewed > self.timing.renew_deadline_seconds:
                logger.error(
                    "%s lost the leader Lease %s/%s (%s)",
                    self.identity,
                    self.namespace,
                    self.name,
                    "another holds it" if self._held is None else f"no renewal for {clock() - renewed:.0f} s",
                )
                self._held = None
                await self._on_stopped()
                return

    async def _read(self) -> Lease | None:
        body = await self.store.read_lease(self.namespace, self.name)
        now = datetime.now(UTC)
        lease = read_lease(body) if body else None
        if lease is not None:
            content = replace(lease, resource_version=None)
            if self._seen is None or self._seen[0] != content:
                if self._seen is not None and lease.holder != self._seen[0].holder:
                    logger.info("the leader Lease %s/%s is held by %s", self.namespace, self.name, lease.holder)
                self._seen = (content, now)
        return lease

    async def _try_to_acquire(self) -> bool:
        try:
            lease = await self._read()
            now = datetime.now(UTC)
            step = claim(lease, self.identity, now, self._seen[1] if self._seen else now, self.timing)
            if step.write is not None:
                manifest = lease_body(self.name, step.write)
                written = await (
                    self.store.create_lease(self.namespace, manifest)
                    if step.create
                    else self.store.replace_lease(self.namespace, self.name, manifest)
                )
                if written is not None:
                    self._held = read_lease(written)
                    return True
                step = Claim(wait_seconds=self.timing.follower_retry_seconds)  # another candidate wrote first
        except Exception as error:  # an API server restarting, a timeout: a later try may succeed
            logger.warning("the leader Lease %s/%s could not be read or written: %s", self.namespace, self.name, error)
            step = Claim(wait_seconds=self.timing.follower_retry_seconds)
        await asyncio.sleep(step.wait_seconds)
        return False

    async def _try_to_renew(self) -> bool:
        """Renew from the Lease as last written (one request); after a conflict, read who holds it."""
        assert self._held is not None
        try:
            now = datetime.now(UTC)
            step = claim(self._held, self.identity, now, now, self.timing)
            assert step.write is not None
            written = await self.store.replace_lease(self.namespace, self.name, lease_body(self.name, step.write))
            if written is not None:
                self._held = read_lease(written)
                return True
            lease = await self._read()
            self._held = lease if lease is not None and lease.holder == self.identity else None
        except Exception as error:
            logger.warning("the leader Lease %s/%s could not be renewed: %s", self.namespace, self.name, error)
        return False
