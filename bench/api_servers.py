"""The API server the operator benchmarks run against, and the processes around it.

`KubeApiServer` is a real control plane: etcd, kube-apiserver and kube-controller-manager
(promptopt_harness.realkube) with Node,RBAC authorization. The benchmark runs as the admin; promptopt's operator as
the chart's ServiceAccount with the chart's RBAC (as `helm install` creates them); the floor as a ServiceAccount of
its own with the least kopf and its handlers need (bench/floor_rbac.yaml); the kubelet as its node and as
system:kube-scheduler. The requests it served are counted from its audit log, by client (client -> "verb
resource[/subresource]" -> count, with " -> CODE" on errors): the kubelet and the scheduler by user, the operator's
by User-Agent too (kopf's own, its Kubernetes client's).
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV
from promptopt_harness import chart, realkube
from promptopt_harness.processes import stop_process

BENCH_DIR = Path(__file__).resolve().parent
CHART = BENCH_DIR.parent / "deploy" / "helm" / "promptopt"
NAMESPACE = "default"  # where the benchmark's jobs and Pods live
FLOOR_RBAC = BENCH_DIR / "floor_rbac.yaml"
FLOOR_SERVICE_ACCOUNT = (chart.RELEASE_NAMESPACE, "promptopt-bench-floor")
STOP_TIMEOUT_S = 20  # how long a stopped server or kubelet gets before SIGKILL


def start(
    name: str,
    command: list[str],
    workdir: Path,
    ready: Callable[[Path], Any],
    timeout: float = 30,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """A process of the benchmark, its output in workdir/NAME.log, once ready(log path) holds; stopped again
    if it exits or is not ready in time."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **LITELLM_BUNDLED_COST_MAP_ENV, **(env or {})},
        )
    try:
        wait_until(
            lambda: ready(log_path),
            timeout,
            lambda: f"the {name} did not start:\n{log_path.read_text()}",
            process=process,
        )
    except BaseException:
        stop_process(process, STOP_TIMEOUT_S)
        raise
    return process


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    describe: Callable[[], str],
    process: subprocess.Popen | None = None,
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise RuntimeError(describe())
        if time.monotonic() > deadline:
            raise TimeoutError(describe())
        time.sleep(interval)


class KubeApiServer:
    """A real control plane with the chart's RBAC and the floor's; see the module. Start and stop it with `with`;
    `requests()` once stopped."""

    title: str  # the server, as the report names it
    api_processes = ("kube-apiserver", "etcd")  # the keys of pids() whose CPU is the API server's

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.cluster = realkube.RealCluster(workdir / "kube")
        self.title = f"kube-apiserver v{self.cluster.version}"
        self.admin_kubeconfig = self.cluster.kubeconfig  # the benchmark's own identity
        self.kubelet_kubeconfig = self.cluster.kubelet_kubeconfig
        self.scheduler_kubeconfig = self.cluster.scheduler_kubeconfig
        self._service_accounts = {"floor": FLOOR_SERVICE_ACCOUNT}  # and "ours", from the chart once rendered

    @staticmethod
    def unavailable() -> str | None:
        """Why the server cannot run on this machine (its binaries cannot be built), or None."""
        try:
            realkube.ensure_binaries()
        except realkube.RealKubeUnavailable as error:
            return str(error)
        return None

    def __enter__(self) -> KubeApiServer:
        try:
            self.cluster.start()
            self.cluster.create_namespace(chart.RELEASE_NAMESPACE)
            with chart.loaded_chart(CHART) as loaded:
                rbac = [
                    m for m in chart.render(loaded, {"jobNamespaces": [NAMESPACE]}) if m["kind"] in chart.RBAC_KINDS
                ]
            (operator,) = [
                m["metadata"]
                for m in rbac
                if m["kind"] == "ServiceAccount" and m["metadata"]["namespace"] == chart.RELEASE_NAMESPACE
            ]
            self._service_accounts["ours"] = (operator["namespace"], operator["name"])
            for manifest in [*rbac, *yaml.safe_load_all(FLOOR_RBAC.read_text())]:
                self.cluster.apply(manifest)
            # The floor's Pods name no ServiceAccount: the API refuses them until the controller manager has
            # made the namespace's default one.
            self.cluster.wait_for(
                "serviceaccounts", "default", lambda account: account is not None, namespace=NAMESPACE, timeout=30
            )
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()

    def operator_kubeconfig(self, operator: str) -> Path:
        """The identity of the operator under test: "ours" (promptopt's) or "floor" (bench/floor_operator.py)."""
        namespace, name = self._service_accounts[operator]
        return self.cluster.service_account_kubeconfig(
            namespace, name, self.workdir / f"{operator}.kubeconfig", NAMESPACE
        )

    def pids(self) -> dict[str, int]:
        """The server's processes while it runs, by name."""
        return self.cluster.pids()

    def requests(self) -> dict[str, dict[str, int]]:
        """Every request it served, client -> what -> count: read once it has stopped, when the count is whole
        (a watch is logged when it ends, and the log is written in batches, flushed as the server shuts down)."""
        operators = {realkube.service_account_user(*account) for account in self._service_accounts.values()}
        counts = collections.Counter(
            (audit_client(event, operators), audit_what(event)) for event in self.audit_events()
        )
        found: dict[str, dict[str, int]] = {}
        for (client, what), count in sorted(counts.items()):
            found.setdefault(client, {})[what] = count
        return found

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """Every request it served, as its audit log has them (whole once it has stopped, as for requests())."""
        return self.cluster.audit_events()

    def describe(self) -> dict[str, Any]:
        return {"title": self.title, "api_processes": list(self.api_processes)}


def client_of(user_agent: str) -> str:
    """The client behind a User-Agent: kopf's own requests, the official Kubernetes client the operators call,
    this benchmark, or another."""
    if user_agent.startswith("kopf/"):
        return "kopf"
    if user_agent.startswith("OpenAPI-Generator/"):
        return "kubernetes-client"
    if user_agent.startswith("promptopt-bench"):
        return "bench"
    return "other"


def audit_client(event: dict[str, Any], operator_users: Iterable[str]) -> str:
    """Who made an audited request: the operator under test by User-Agent (kopf, kubernetes-client); the kubelet
    and the scheduler it plays by user; the admin's requests as the benchmark's (its User-Agent) or the admin's
    (the controller manager, the cluster's set-up)."""
    user, agent = event["user"]["username"], event.get("userAgent", "")
    if user in operator_users:
        return client_of(agent)
    if user == realkube.ADMIN_USER:
        return "bench" if client_of(agent) == "bench" else f"admin: {agent.split('/')[0]}"
    return {realkube.KUBELET_USER: "kubelet", realkube.SCHEDULER_USER: "scheduler"}.get(user, user)


def audit_what(event: dict[str, Any]) -> str:
    """ "verb resource[/subresource]" ("discovery" for the non-resource paths), with the code when it is an
    error."""
    ref = event.get("objectRef")
    what = (
        "discovery"
        if ref is None
        else f"{event['verb']} {ref['resource']}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    )
    code = event.get("responseStatus", {}).get("code", 200)
    return what if code < 300 else f"{what} -> {code}"
