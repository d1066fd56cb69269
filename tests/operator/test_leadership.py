"""Leader election: the claim rules as pure functions, then the elector on a real API server's Lease."""

import asyncio
from datetime import UTC, datetime, timedelta

import kubernetes
import pytest

from promptopt_operator.kube import KubeClient
from promptopt_operator.leadership import Claim, Lease, LeaseElector, Timing, claim, lease_body, read_lease, released

NOW = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
TIMING = Timing()


def held_by(holder, renewed=NOW, transitions=3, resource_version="7"):
    return Lease(
        holder=holder,
        lease_seconds=15,
        acquired=NOW - timedelta(minutes=5),
        renewed=renewed,
        transitions=transitions,
        resource_version=resource_version,
    )


def test_the_first_candidate_creates_the_lease():
    step = claim(None, "a", NOW, NOW, TIMING)
    assert step == Claim(write=Lease("a", 15, NOW, NOW, 0), create=True)


def test_a_lease_renewed_in_time_is_left_to_its_holder_and_looked_at_again_soon():
    step = claim(held_by("b", renewed=NOW - timedelta(seconds=3)), "a", NOW, NOW - timedelta(seconds=3), TIMING)
    assert step == Claim(wait_seconds=TIMING.follower_retry_seconds)
    # Just before it runs out, the next look is when it does.
    step = claim(held_by("b", renewed=NOW - timedelta(seconds=14.5)), "a", NOW, NOW, TIMING)
    assert step == Claim(wait_seconds=0.5)


def test_a_lease_not_renewed_for_its_duration_is_taken_with_one_more_transition():
    lease = held_by("b", renewed=NOW - timedelta(seconds=16))
    step = claim(lease, "a", NOW, NOW - timedelta(seconds=16), TIMING)
    assert step == Claim(write=Lease("a", 15, NOW, NOW, 4, resource_version="7"))


def test_expiry_counts_from_the_earlier_of_the_holders_renewal_and_when_it_was_seen():
    # The holder's clock is behind ours (its renewTime looks old), but it renewed a moment ago as far as we saw.
    lease = held_by("b", renewed=NOW - timedelta(seconds=60))
    assert claim(lease, "a", NOW, NOW - timedelta(seconds=1), TIMING).write is not None
    # Unchanged for a minute as far as we saw, though its renewTime (the holder's clock ahead of ours) says a second
    # ago: client-go's rule, the holder is dead.
    lease = held_by("b", renewed=NOW - timedelta(seconds=1))
    assert claim(lease, "a", NOW, NOW - timedelta(seconds=60), TIMING).write is not None
    # Renewed and seen a moment ago: held.
    assert claim(lease, "a", NOW, NOW - timedelta(seconds=1), TIMING).write is None


def test_a_released_lease_is_taken_at_once():
    lease = released(held_by("b"), NOW)
    assert lease.holder is None and lease.lease_seconds == 1
    assert claim(lease, "a", NOW, NOW, TIMING).write.holder == "a"


def test_the_holder_renews_keeping_its_acquire_time():
    lease = held_by("a", renewed=NOW - timedelta(seconds=2))
    step = claim(lease, "a", NOW, NOW, TIMING)
    assert step.write == Lease("a", 15, lease.acquired, NOW, 3, resource_version="7") and not step.create


def test_a_lease_is_written_and_read_as_client_go_writes_it():
    body = lease_body("promptopt", held_by("a"))
    assert body["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "leaseTransitions": 3,
        "acquireTime": "2026-12-07T09:55:00.000000Z",
        "renewTime": "2026-12-07T10:00:00.000000Z",
    }
    assert body["metadata"] == {"name": "promptopt", "resourceVersion": "7"}
    assert read_lease(body) == held_by("a")


# --- on a real API server ---------------------------------------------------------------------------------------

FAST = Timing(lease_seconds=2, renew_deadline_seconds=1.5, retry_seconds=0.3, follower_retry_seconds=0.2)


@pytest.fixture
def kube_client(cluster):
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    return KubeClient(kubernetes.client.ApiClient(configuration))


class Candidate:
    def __init__(self, kube, namespace, identity, timing=FAST):
        self.started, self.stopped = asyncio.Event(), asyncio.Event()

        async def stopped():
            self.stopped.set()

        self.elector = LeaseElector(kube, namespace, "operator", identity, self.started.set, stopped, timing)
        self.elector.start()


async def eventually(event, timeout):
    await asyncio.wait_for(event.wait(), timeout)


def test_one_candidate_leads_and_a_follower_takes_over_at_once_when_it_hands_the_lease_back(cluster, kube_client):
    async def run():
        a = Candidate(kube_client, cluster.namespace, "a")
        await eventually(a.started, 5)
        b = Candidate(kube_client, cluster.namespace, "b")
        await asyncio.sleep(3 * FAST.lease_seconds)  # renewed all along: b never leads
        assert a.elector.leading and not b.elector.leading and not b.started.is_set()
        handed_back = asyncio.get_running_loop().time()
        await a.elector.stop()
        await eventually(b.started, 5)
        taken_after = asyncio.get_running_loop().time() - handed_back
        assert not a.stopped.is_set()  # a stop is not a loss
        await b.elector.stop()
        return taken_after

    taken_after = asyncio.run(run())
    assert taken_after < FAST.lease_seconds  # not left to run out
    lease = read_lease(cluster.get("leases", "operator"))
    assert lease.holder is None and lease.transitions == 1


def test_a_follower_takes_a_dead_leaders_lease_when_it_runs_out(cluster, kube_client):
    async def run():
        a = Candidate(kube_client, cluster.namespace, "a")
        await eventually(a.started, 5)
        b = Candidate(kube_client, cluster.namespace, "b")
        await asyncio.sleep(FAST.lease_seconds)
        a.elector._task.cancel()  # dies: no renewal, no hand-back
        died = asyncio.get_running_loop().time()
        await eventually(b.started, 5)
        taken_after = asyncio.get_running_loop().time() - died
        await b.elector.stop()
        return taken_after

    taken_after = asyncio.run(run())
    assert FAST.lease_seconds - FAST.retry_seconds <= taken_after <= FAST.lease_seconds + 1


def test_a_leader_whose_lease_another_took_stops_leading(cluster, kube_client):
    async def run():
        a = Candidate(kube_client, cluster.namespace, "a")
        await eventually(a.started, 5)
        cluster.patch("leases", "operator", {"spec": {"holderIdentity": "intruder"}})
        await eventually(a.stopped, 5)
        assert not a.elector.leading

    asyncio.run(run())
