"""The failover benchmark: two replicas of promptopt's operator electing a leader on a real kube-apiserver; the leader
is killed (SIGKILL) or stopped (SIGTERM, as a rolling update or a drain stops it), and a job created at that moment
waits for the new leader: the time from the signal to that job's Pod is the time to the new leader's first action.

A stopped leader's job is created once it has handed the Lease back (it stops acting before that, so that it cannot
be the old leader that acts), and the time still counts from the signal. After each round the
replica that went is started again, as its Deployment would, and the next round waits until it follows.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.api_servers import KubeApiServer, wait_until
from bench.operator_load import SLEEP_IMAGE, Cluster, Observer, create_jobs, observing, summary
from promptopt_harness.chart import RELEASE_NAMESPACE
from promptopt_harness.operator_process import OperatorProcess
from promptopt_operator.leadership import Timing

LEASE = "promptopt"  # the chart's, which its Role lets the operator read and write
HOW = {"kill": signal.SIGKILL, "stop": signal.SIGTERM}


@dataclasses.dataclass(frozen=True)
class FailoverConfig:
    rounds: int = 3  # of each: kill, stop
    timeout_s: float = 120


def is_leader(replica: OperatorProcess) -> bool:
    return any(line == "promptopt_leader 1.0" for line in replica.scrape().splitlines())


def lease_holder(cluster: Cluster) -> str | None:
    lease = cluster.api.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NAMESPACE}/leases/{LEASE}")
    return lease["spec"].get("holderIdentity")


def fail_over(cluster: Cluster, seen: Observer, leader: OperatorProcess, how: str, job: str, timeout: float) -> float:
    """Seconds from the signal that ends `leader` to the Pod of `job`, created as it goes."""
    assert leader.process is not None
    holder = lease_holder(cluster)
    signalled = time.monotonic()
    leader.process.send_signal(HOW[how])
    if how == "stop":
        # A stopping leader stops acting before it hands the Lease back: once it has, an action on a new job is the
        # new leader's.
        wait_until(lambda: lease_holder(cluster) != holder, timeout, lambda: "the Lease to be handed back")
    create_jobs(cluster.api, seen, [job])
    wait_until(lambda: job in seen.pod_created, timeout, lambda: f"the new leader to act on {job}")
    leader.process.wait(30)
    return seen.pod_created[job] - signalled


def run(config: FailoverConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    unavailable = KubeApiServer.unavailable()
    if unavailable:
        progress(f"failover: not run: {unavailable}")
        return {"unavailable": unavailable}
    timing = Timing()
    results: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "lease_seconds": timing.lease_seconds,
        "retry_seconds": timing.retry_seconds,
    }
    with tempfile.TemporaryDirectory(prefix="promptopt-bench-") as workdir, Cluster(Path(workdir)) as cluster:
        results["server"] = cluster.server.title
        kubeconfig = cluster.server.operator_kubeconfig("ours")
        logs = itertools.count(1)

        def replica() -> OperatorProcess:
            return OperatorProcess(
                kubeconfig,
                "--leader-election-namespace",
                RELEASE_NAMESPACE,
                "--leader-election-lease",
                LEASE,
                "--worker-image",
                SLEEP_IMAGE,
                log_path=cluster.workdir / f"operator-{next(logs)}.log",
            ).start(timeout=60)

        first = replica()
        wait_until(lambda: is_leader(first), 30, lambda: "the first replica to lead")
        replicas = [first, replica()]
        seconds: dict[str, list[float]] = {how: [] for how in HOW}
        try:
            with observing(cluster.api) as seen:
                for round_ in range(config.rounds):
                    for how in HOW:
                        progress(f"failover: round {round_ + 1} of {config.rounds}: {how} the leader")
                        (leader,) = [r for r in replicas if is_leader(r)]
                        (follower,) = [r for r in replicas if r is not leader]
                        seconds[how].append(fail_over(cluster, seen, leader, how, f"{how}-{round_}", config.timeout_s))
                        assert is_leader(follower)
                        replicas = [follower, replica()]  # as its Deployment replaces it
        finally:
            for r in replicas:
                r.stop(timeout=30)
    results["first_action_s"] = {how: {**summary(values), "all": values} for how, values in seconds.items()}
    return results
