"""The API servers the operator benchmark runs against, behind one interface, and the processes around them.

A scenario does not know which server it talks to. It starts one (a context manager), takes its kubeconfigs
(the benchmark's own, the local kubelet's and its scheduler's, each operator's), reads the CPU of the
processes that are the server, and, once the server has stopped, the requests it served by client
(client -> "verb resource[/subresource]" -> count, with " -> CODE" on errors).

- `EmulatedApiServer` (`--api emulator`): bench/counting_emulator.py, one process, no authentication: every
  client has the same kubeconfig, and requests are told apart by their User-Agent.
- `RealApiServer` (`--api real`): etcd, kube-apiserver and kube-controller-manager (promptopt_harness.realkube)
  with Node,RBAC authorization. The benchmark runs as the admin; promptopt's operator as the chart's
  ServiceAccount with the chart's RBAC (as `helm install` creates them); the floor as a ServiceAccount of its
  own with the least kopf and its handlers need (bench/floor_rbac.yaml); the kubelet as its node and as
  system:kube-scheduler. Requests are counted from the audit log by user, and the operator's by User-Agent
  too (kopf's own, its Kubernetes client's), as on the emulator.
"""
from __future__ import annotations

import abc
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from bench.counting_emulator import by_client, client_of
from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV
from promptopt_harness import chart, realkube
from promptopt_harness.processes import stop_process

BENCH_DIR = Path(__file__).resolve().parent
CHART = BENCH_DIR.parent / "deploy" / "helm" / "promptopt"
NAMESPACE = "default"  # where the benchmark's jobs and Pods live
FLOOR_RBAC = BENCH_DIR / "floor_rbac.yaml"
FLOOR_SERVICE_ACCOUNT = (chart.RELEASE_NAMESPACE, "promptopt-bench-floor")
STOP_TIMEOUT_S = 20  # how long a stopped server or kubelet gets before SIGKILL


def start(name: str, command: list[str], workdir: Path, ready: Callable[[Path], Any], timeout: float = 30,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process of the benchmark, its output in workdir/NAME.log, once ready(log path) holds; stopped again
    if it exits or is not ready in time."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **LITELLM_BUNDLED_COST_MAP_ENV, **(env or {})})
    try:
        wait_until(lambda: ready(log_path), timeout, lambda: f"the {name} did not start:\n{log_path.read_text()}",
                   process=process)
    except BaseException:
        stop_process(process, STOP_TIMEOUT_S)
        raise
    return process


def wait_until(predicate: Callable[[], Any], timeout: float, describe: Callable[[], str],
               process: subprocess.Popen | None = None, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise RuntimeError(describe())
        if time.monotonic() > deadline:
            raise TimeoutError(describe())
        time.sleep(interval)


class ApiServer(abc.ABC):
    """What a scenario needs from an API server. Start and stop it with `with`; `requests()` once stopped."""

    mode: str  # as --api names it
    title: str  # the server, as the report names it
    api_processes: tuple[str, ...]  # the keys of pids() whose CPU is the API server's
    admin_kubeconfig: Path  # the benchmark's own identity
    kubelet_kubeconfig: Path
    scheduler_kubeconfig: Path

    def __init__(self, workdir: Path):
        self.workdir = workdir

    @staticmethod
    def unavailable() -> str | None:
        """Why this server cannot run on this machine, or None."""
        return None

    @abc.abstractmethod
    def __enter__(self) -> ApiServer: ...

    @abc.abstractmethod
    def __exit__(self, *exc: object) -> None: ...

    @abc.abstractmethod
    def operator_kubeconfig(self, operator: str) -> Path:
        """The identity of the operator under test: "ours" (promptopt's) or "floor" (bench/floor_operator.py)."""

    @abc.abstractmethod
    def pids(self) -> dict[str, int]:
        """The server's processes while it runs, by name."""

    @abc.abstractmethod
    def requests(self) -> dict[str, dict[str, int]]:
        """Every request it served, client -> what -> count: read once it has stopped, when the count is whole."""

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "title": self.title, "api_processes": list(self.api_processes)}


class EmulatedApiServer(ApiServer):
    """The emulated API (bench/counting_emulator.py) in a process of its own; one kubeconfig for every client."""

    mode, title, api_processes = "emulator", "the emulated API", ("emulator",)

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.admin_kubeconfig = self.kubelet_kubeconfig = self.scheduler_kubeconfig = workdir / "kubeconfig"
        self._counts = workdir / "requests.json"  # written by the emulator as it stops
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> EmulatedApiServer:
        self._process = start("emulator", [sys.executable, str(BENCH_DIR / "counting_emulator.py"),
                                           "--counts", str(self._counts), "--kubeconfig", str(self.admin_kubeconfig)],
                              self.workdir,
                              lambda _: self.admin_kubeconfig.exists() and self.admin_kubeconfig.stat().st_size > 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_process(self._process, STOP_TIMEOUT_S)

    def operator_kubeconfig(self, operator: str) -> Path:
        return self.admin_kubeconfig

    def pids(self) -> dict[str, int]:
        assert self._process is not None
        return {"emulator": self._process.pid}

    def requests(self) -> dict[str, dict[str, int]]:
        return json.loads(self._counts.read_text()) if self._counts.exists() else {}


class RealApiServer(ApiServer):
    """A real control plane (promptopt_harness.realkube) with the chart's RBAC and the floor's; see the module."""

    mode, api_processes = "real", ("kube-apiserver", "etcd")

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.cluster = realkube.RealCluster(workdir / "kube")
        self.title = f"kube-apiserver v{self.cluster.version}"
        self.admin_kubeconfig = self.cluster.kubeconfig
        self.kubelet_kubeconfig = self.cluster.kubelet_kubeconfig
        self.scheduler_kubeconfig = self.cluster.scheduler_kubeconfig
        self._service_accounts = {"floor": FLOOR_SERVICE_ACCOUNT}  # and "ours", from the chart once rendered

    @staticmethod
    def unavailable() -> str | None:
        try:
            realkube.ensure_binaries()
        except realkube.RealKubeUnavailable as error:
            return str(error)
        return None

    def __enter__(self) -> RealApiServer:
        try:
            self.cluster.start()
            self.cluster.create_namespace(chart.RELEASE_NAMESPACE)
            with chart.loaded_chart(CHART) as loaded:
                rbac = [m for m in chart.render(loaded, {"jobNamespaces": [NAMESPACE]})
                        if m["kind"] in chart.RBAC_KINDS]
            (operator,) = [m["metadata"] for m in rbac if m["kind"] == "ServiceAccount"
                           and m["metadata"]["namespace"] == chart.RELEASE_NAMESPACE]
            self._service_accounts["ours"] = (operator["namespace"], operator["name"])
            for manifest in [*rbac, *yaml.safe_load_all(FLOOR_RBAC.read_text())]:
                self.cluster.apply(manifest)
            # The floor's Pods name no ServiceAccount: the API refuses them until the controller manager has
            # made the namespace's default one.
            self.cluster.wait_for("serviceaccounts", "default", lambda account: account is not None,
                                  namespace=NAMESPACE, timeout=30)
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()

    def operator_kubeconfig(self, operator: str) -> Path:
        namespace, name = self._service_accounts[operator]
        return self.cluster.service_account_kubeconfig(namespace, name, self.workdir / f"{operator}.kubeconfig",
                                                       NAMESPACE)

    def pids(self) -> dict[str, int]:
        return self.cluster.pids()

    def requests(self) -> dict[str, dict[str, int]]:
        # Read after the clients and the server stopped: a watch is logged when it ends, and the log is
        # written in batches (flushed as the server shuts down).
        operators = {realkube.service_account_user(*account) for account in self._service_accounts.values()}
        return by_client(collections.Counter((audit_client(event, operators), audit_what(event))
                                             for event in self.cluster.audit_events()))


def audit_client(event: dict[str, Any], operator_users: Iterable[str]) -> str:
    """Who made an audited request: the operator under test by User-Agent (kopf, kubernetes-client), as the
    emulator counts it; the kubelet and the scheduler it plays by user; the admin's requests as the
    benchmark's (its User-Agent) or the admin's (the controller manager, the cluster's set-up)."""
    user, agent = event["user"]["username"], event.get("userAgent", "")
    if user in operator_users:
        return client_of(agent)
    if user == realkube.ADMIN_USER:
        return "bench" if client_of(agent) == "bench" else f"admin: {agent.split('/')[0]}"
    return {realkube.KUBELET_USER: "kubelet", realkube.SCHEDULER_USER: "scheduler"}.get(user, user)


def audit_what(event: dict[str, Any]) -> str:
    """"verb resource[/subresource]" as the emulator counts it ("discovery" for the non-resource paths), with
    the code when it is an error."""
    ref = event.get("objectRef")
    what = "discovery" if ref is None else \
        f"{event['verb']} {ref['resource']}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    code = event.get("responseStatus", {}).get("code", 200)
    return what if code < 300 else f"{what} -> {code}"


SERVERS: dict[str, type[ApiServer]] = {server.mode: server for server in (EmulatedApiServer, RealApiServer)}
