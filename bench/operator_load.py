"""The operator benchmark: many jobs at once against a real kube-apiserver, the local kubelet, the real operator.

Processes (each its own, so no two share a GIL): the API server (a real control plane, bench/api_servers.py),
the local kubelet (`python -m promptopt_harness.kubelet`) whose `--command-override` turns every benchmark worker
Pod into a trivial process (a shell that sleeps until SIGTERM, or `true`), the operator under test (`promptopt
operator`, or kopf running bench/floor_operator.py), and this one, which creates and cancels jobs and watches jobs
and Pods. Every time is taken here, on one monotonic clock, when the request is sent or the watch event arrives:
the API's timestamps have one-second resolution.

Scenarios (each on a fresh cluster):
- latency: N jobs created at once, Pods that keep running; create → Pod created, create → job Running (our
  phase; the floor has none), then every job cancelled at once: cancel → Pod deleted; launch throughput
  (N / first create → last Pod); the operator's peak RSS (VmHWM). Run for ours and for the kopf floor.
- queue: M jobs with --max-running-jobs L, Pods that exit 0 at once: every job Succeeded, exactly one Pod
  per job, never more than L at once, Pods created in creation order; wall time, jobs/s, peak RSS.
- memory: the queue scenario with small jobs, then with jobs of about a MiB of inline records: the operator's
  peak RSS should not grow with what users put in specs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import urllib3
import yaml

from bench.api_servers import BENCH_DIR, NAMESPACE, STOP_TIMEOUT_S, KubeApiServer, client_of, start, wait_until
from promptopt.api.times import parse_time
from promptopt.api.v1alpha1 import PLURAL
from promptopt_harness import realkube
from promptopt_harness.operator_process import OperatorProcess, free_port
from promptopt_harness.processes import stop_process

JOBS_PATH = f"/apis/promptopt.dev/v1alpha1/namespaces/{NAMESPACE}/promptoptimizationjobs"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
SLEEP_IMAGE = "bench/sleep:1"  # a worker that runs until stopped, and stops on SIGTERM as the worker does
INSTANT_IMAGE = "bench/instant:1"  # the kubelet runs `true`: a worker that succeeds at once
# The kubelet signals only a main process that handles SIGTERM (a container's PID 1): a bare `sleep` would run on
# until the grace period's SIGKILL.
COMMAND_OVERRIDES = {SLEEP_IMAGE: "sh -c 'trap \"exit 0\" TERM; sleep 3600 & wait'", INSTANT_IMAGE: "true"}
TERMINAL_POD_PHASES = ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    jobs: int = 200
    queue_jobs: int = 1000
    queue_limit: int = 50
    large_queue_jobs: int = 5000  # the same scenario at another scale (0: not run)
    large_queue_limit: int = 200
    # Memory by job size: the queue scenario at --queue-limit with this many small jobs, then as many of about
    # memory_job_kib KiB of inline records each (0 jobs: not run).
    memory_jobs: int = 200
    memory_job_kib: int = 1024
    timeout_s: float = 600.0  # the latency scenarios' longest wait
    queue_timeout_s: float = 900.0  # the queue scenario reports what finished by then
    skip_latency: bool = False
    skip_queue: bool = False


# ------------------------------------------------------------------------------------------------
# The API, as this process sees it.


class Api:
    """Plain JSON over HTTPS to the API server as a kubeconfig's identity, its token over its CA (one pooled client
    for every thread here)."""

    def __init__(self, kubeconfig: Path):
        config = yaml.safe_load(kubeconfig.read_text())
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        self.base_url = cluster["server"].rstrip("/")
        self._headers = {"User-Agent": "promptopt-bench", "Authorization": f"Bearer {user['token']}"}
        self._pool = urllib3.PoolManager(
            maxsize=8,
            retries=False,
            timeout=urllib3.Timeout(connect=5, read=30),
            headers=self._headers,
            cert_reqs="CERT_REQUIRED",
            ca_certs=cluster["certificate-authority"],
        )

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        response = self._pool.request(
            method,
            self.base_url + path,
            body=data,
            headers={**self._headers, "Content-Type": content_type, "Accept": "application/json"},
        )
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {response.data[:300]!r}")
        return json.loads(response.data) if response.data else None

    def watch(
        self, path: str, on_event: Callable[[str, dict[str, Any]], None], stop: threading.Event
    ) -> threading.Thread:
        """Call on_event(type, object) for every change after now, in a thread, until `stop` is set."""
        ready = threading.Event()

        def run() -> None:
            version = self.request("GET", path)["metadata"]["resourceVersion"]
            ready.set()
            while not stop.is_set():
                response = self._pool.request(
                    "GET",
                    f"{self.base_url}{path}?watch=true&resourceVersion={version}&timeoutSeconds=5",
                    preload_content=False,
                    timeout=urllib3.Timeout(connect=5, read=60),
                    headers=self._headers,
                )
                try:
                    for line in response:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":  # e.g. 410 Gone: events were missed, figures would lie
                            raise RuntimeError(f"watch {path}: {obj.get('message', obj)}")
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            on_event(event["type"], obj)
                finally:
                    response.release_conn()

        thread = threading.Thread(target=run, name=f"watch {path}", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError(f"could not list {path}")
        return thread


# ------------------------------------------------------------------------------------------------
# A fresh cluster: an API server and the local kubelet, each in processes of their own.


class Cluster:
    """A real control plane (bench/api_servers.py) and the local kubelet, their files in `workdir`; `api` is this
    process's client, as the server's admin. `requests` holds what the server served, by client, once stopped."""

    def __init__(self, workdir: Path):
        self.server = KubeApiServer(workdir)
        self.workdir = workdir
        self.requests: dict[str, dict[str, int]] = {}  # client -> what -> count, once stopped
        self._kubelet: subprocess.Popen | None = None

    def cpu_seconds(self, operator: subprocess.Popen) -> dict[str, float]:
        """CPU seconds used so far by each process: the operator under test, the server's, the kubelet, and this
        one (the bench)."""
        assert self._kubelet is not None
        pids = {"operator": operator.pid, **self.server.pids(), "kubelet": self._kubelet.pid}
        return {**{name: cpu_seconds(pid) for name, pid in pids.items()}, "bench": time.process_time()}

    def __enter__(self) -> Cluster:
        self.server.__enter__()
        try:
            self.api = Api(self.server.admin_kubeconfig)
            overrides = [f"--command-override={image}={command}" for image, command in COMMAND_OVERRIDES.items()]
            self._kubelet = start(
                "kubelet",
                [
                    sys.executable,
                    "-m",
                    "promptopt_harness.kubelet",
                    "--kubeconfig",
                    str(self.server.kubelet_kubeconfig),
                    "--scheduler-kubeconfig",
                    str(self.server.scheduler_kubeconfig),
                    "--state-dir",
                    str(self.workdir / "node"),
                    *overrides,
                ],
                self.workdir,
                lambda log: "started" in log.read_text(),
            )
        except BaseException:
            self.server.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._kubelet is not None:
            stop_process(self._kubelet, STOP_TIMEOUT_S)
        self.server.__exit__()
        self.requests = self.server.requests()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM) so far, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


# ------------------------------------------------------------------------------------------------
# The operators under test.


@contextlib.contextmanager
def our_operator(cluster: Cluster, image: str, max_running_jobs: int) -> Iterator[subprocess.Popen]:
    kubeconfig = cluster.server.operator_kubeconfig("ours")
    operator = OperatorProcess(
        kubeconfig,
        "--max-running-jobs",
        str(max_running_jobs),
        "--worker-image",
        image,
        log_path=cluster.workdir / "operator.log",
    )
    operator.start(timeout=60)
    try:
        assert operator.process is not None
        yield operator.process
    finally:
        operator.stop(timeout=30)


@contextlib.contextmanager
def floor_operator(cluster: Cluster, image: str) -> Iterator[subprocess.Popen]:
    port = free_port()
    kopf = str(Path(sys.executable).with_name("kopf"))

    def live(_log: Path) -> bool:
        try:
            urllib3.request("GET", f"http://127.0.0.1:{port}/healthz", timeout=1, retries=False)
            return True
        except urllib3.exceptions.HTTPError:
            return False

    process = start(
        "floor",
        [
            kopf,
            "run",
            "--standalone",
            "--all-namespaces",
            f"--liveness=http://127.0.0.1:{port}/healthz",
            str(BENCH_DIR / "floor_operator.py"),
        ],
        cluster.workdir,
        live,
        timeout=60,
        env={"KUBECONFIG": str(cluster.server.operator_kubeconfig("floor")), "FLOOR_WORKER_IMAGE": image},
    )
    try:
        yield process
    finally:
        stop_process(process, timeout=30)


# ------------------------------------------------------------------------------------------------
# What this process sees happen.


class Observer:
    """Timestamps (time.monotonic) of what the watches report, per job."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.created: dict[str, float] = {}
        self.cancelled: dict[str, float] = {}
        self.pods: dict[str, set[str]] = {}  # job -> names of its Pods ever seen
        self.pod_created: dict[str, float] = {}  # job -> first Pod seen
        self.pod_order: list[str] = []  # jobs in the order their first Pod appeared
        self.pod_running: dict[str, float] = {}
        self.pod_done: set[str] = set()  # Pod names that ended
        self.pod_deleted: dict[str, float] = {}
        self.phases: dict[str, dict[str, float]] = {}  # job -> phase -> first seen
        self.start_times: dict[str, str] = {}
        self.live_pods = 0
        self.most_live_pods = 0

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        now = time.monotonic()
        owners = pod["metadata"].get("ownerReferences") or [{}]
        job, name = owners[0].get("name"), pod["metadata"]["name"]
        if not job:
            return
        phase = (pod.get("status") or {}).get("phase")
        with self.lock:
            if name not in self.pods.setdefault(job, set()):
                self.pods[job].add(name)
                self.live_pods += 1
                self.most_live_pods = max(self.most_live_pods, self.live_pods)
                if job not in self.pod_created:
                    self.pod_created[job] = now
                    self.pod_order.append(job)
            if phase == "Running":
                self.pod_running.setdefault(job, now)
            if (kind == "DELETED" or phase in TERMINAL_POD_PHASES) and name not in self.pod_done:
                self.pod_done.add(name)
                self.live_pods -= 1
            if kind == "DELETED":
                self.pod_deleted.setdefault(job, now)

    def on_job(self, kind: str, job: dict[str, Any]) -> None:
        now = time.monotonic()
        name, status = job["metadata"]["name"], job.get("status") or {}
        with self.lock:
            if status.get("phase"):
                self.phases.setdefault(name, {}).setdefault(status["phase"], now)
            if status.get("startTime"):
                self.start_times.setdefault(name, status["startTime"])

    def count(self, what: Callable[[], Any]) -> int:
        with self.lock:
            return len(what())

    def jobs_in(self, phase: str) -> int:
        with self.lock:
            return sum(1 for phases in self.phases.values() if phase in phases)


@contextlib.contextmanager
def observing(api: Api) -> Iterator[Observer]:
    observer, stop = Observer(), threading.Event()
    threads = [api.watch(PODS_PATH, observer.on_pod, stop), api.watch(JOBS_PATH, observer.on_job, stop)]
    try:
        yield observer
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def job_manifest(name: str, kib: int = 0) -> dict[str, Any]:
    """A small valid GEPA job; its worker never calls a model (the kubelet runs a trivial command). With `kib`, inline
    records make it about that many KiB, as a dataset pasted into the spec does."""
    records = [
        {"inputs": {"review": "I love it."}, "expectations": {"expected_response": "positive"}},
        {"inputs": {"review": "I hate it."}, "expectations": {"expected_response": "negative"}},
    ]
    if kib:
        record = {"inputs": {"review": "It is fine. " * 40}, "expectations": {"expected_response": "neutral"}}
        records = [record] * (kib * 1024 // len(json.dumps(record)))
    return {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": name},
        "spec": {
            "optimizer": {"type": "GEPA", "reflectionModel": "openai/sim-reflect", "gepa": {"maxMetricCalls": 10}},
            "prompts": [{"name": "classify", "template": "Classify the sentiment of this review.\n\n{{review}}"}],
            "task": {"model": "openai/sim-task", "apiBase": "http://127.0.0.1:9/v1"},
            "dataset": {"records": records},
            "scorers": [{"name": "ExactMatch"}],
        },
    }


def create_jobs(api: Api, observer: Observer, names: list[str], kib: int = 0) -> None:
    """Create every job as fast as one client can, in order (each one's clock starts as its request leaves)."""
    for name in names:
        observer.created[name] = time.monotonic()
        api.request("POST", JOBS_PATH, job_manifest(name, kib))


def cancel_jobs(api: Api, observer: Observer, names: list[str]) -> None:
    for name in names:
        observer.cancelled[name] = time.monotonic()
        api.request(
            "PATCH", f"{JOBS_PATH}/{name}", {"spec": {"cancel": True}}, content_type="application/merge-patch+json"
        )


def latencies_ms(start: dict[str, float], end: dict[str, float], names: list[str]) -> list[float]:
    return [(end[n] - start[n]) * 1000 for n in names if n in end and n in start]


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {"n": len(values), "p50": statistics.median(ordered), "p99": percentile(ordered, 99), "max": ordered[-1]}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def seconds_between(earlier: str, later: str) -> int:
    """Whole seconds from one status startTime to another."""
    start, end = parse_time(earlier), parse_time(later)
    assert start is not None and end is not None, "only jobs with a startTime are compared"
    return int((end - start).total_seconds())


def cancel_path(audit: Iterable[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Where a cancel's time goes, from the server's own clock (its audit log, microseconds): the cancel's write,
    then the operator (watch event → its decision → its Pod delete arriving), the delete's write, then the node (the
    kubelet sees the deletion, stops the container, and removes the Pod). Times in ms, as summary() gives them."""
    cancelled: dict[str, float] = {}  # job -> the cancel's write received
    cancel_written: dict[str, float] = {}  # job -> the cancel's write done
    delete_sent: dict[str, float] = {}  # job -> the operator's Pod delete received
    delete_done: dict[str, float] = {}
    removed: dict[str, float] = {}  # job -> the kubelet's final delete done
    for event in audit:
        ref, verb = event.get("objectRef") or {}, event["verb"]
        received, done = audit_time(event["requestReceivedTimestamp"]), audit_time(event["stageTimestamp"])
        name = ref.get("name") or ""
        if ref.get("resource") == PLURAL and verb == "patch" and not ref.get("subresource"):
            if client_of(event.get("userAgent", "")) == "bench":
                cancelled.setdefault(name, received)
                cancel_written.setdefault(name, done)
        elif ref.get("resource") == "pods" and verb == "delete" and not ref.get("subresource"):
            job = name.rsplit("-worker-", 1)[0]
            if event["user"]["username"] == realkube.KUBELET_USER:
                removed.setdefault(job, done)
            else:
                delete_sent.setdefault(job, received)
                delete_done.setdefault(job, done)
    names = list(cancelled)
    return {
        "cancel_write": summary(latencies_ms(cancelled, cancel_written, names)),
        "operator": summary(latencies_ms(cancel_written, delete_sent, names)),
        "delete_write": summary(latencies_ms(delete_sent, delete_done, names)),
        "node": summary(latencies_ms(delete_done, removed, names)),
    }


def audit_time(text: str) -> float:
    moment = parse_time(text)
    assert moment is not None, f"an audit entry without a time: {text!r}"
    return moment.timestamp()


def api_requests(counts: dict[str, dict[str, int]], jobs: int) -> dict[str, Any]:
    """Requests the API server served, per job: the operator's (kopf's own and its Kubernetes client's) and
    the node's (the kubelet and the scheduler it plays, a user of its own); the full breakdown by client and
    request kind too."""
    operator = sum(sum(counts.get(client, {}).values()) for client in ("kopf", "kubernetes-client"))
    kubelet = sum(sum(counts.get(client, {}).values()) for client in ("kubelet", "scheduler"))
    return {"operator_per_job": operator / jobs, "kubelet_per_job": kubelet / jobs, "by_client": counts}


# ------------------------------------------------------------------------------------------------
# Scenarios.


def latency_scenario(which: str, jobs: int, timeout: float) -> dict[str, Any]:
    """N jobs at once with long-running Pods, then all cancelled: ours (`which="ours"`) or the kopf floor."""
    names = [f"lat-{i:05d}" for i in range(jobs)]
    with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as tmp:
        cluster = Cluster(Path(tmp))
        with (
            cluster,
            (
                our_operator(cluster, SLEEP_IMAGE, max_running_jobs=jobs)
                if which == "ours"
                else floor_operator(cluster, SLEEP_IMAGE)
            ) as process,
            observing(cluster.api) as seen,
        ):
            cpu_before = cluster.cpu_seconds(process)
            create_jobs(cluster.api, seen, names)
            wait_until(
                lambda: (
                    seen.count(lambda: seen.pod_running) >= jobs
                    and (which != "ours" or seen.jobs_in("Running") >= jobs)
                ),
                timeout,
                lambda: (
                    f"{which}: {seen.count(lambda: seen.pod_created)} Pods created, "
                    f"{seen.count(lambda: seen.pod_running)} running, "
                    f"{seen.jobs_in('Running')} jobs Running of {jobs}"
                ),
                process=process,
            )
            cpu_at_cancel = cluster.cpu_seconds(process)
            cancel_jobs(cluster.api, seen, names)
            wait_until(
                lambda: seen.count(lambda: seen.pod_deleted) >= jobs,
                timeout,
                lambda: f"{which}: {seen.count(lambda: seen.pod_deleted)} of {jobs} Pods deleted after cancel",
                process=process,
            )
            cancel_seconds = time.monotonic() - min(seen.cancelled.values())
            rss = peak_rss_mib(process.pid)
            cpu_after = cluster.cpu_seconds(process)
        running = {n: p["Running"] for n, p in seen.phases.items() if "Running" in p}
        first_create, last_pod = min(seen.created.values()), max(seen.pod_created.values())
        return {
            "server": cluster.server.describe(),
            "jobs": jobs,
            "create_seconds": max(seen.created.values()) - first_create,
            "create_to_pod_ms": summary(latencies_ms(seen.created, seen.pod_created, names)),
            "create_to_running_ms": summary(latencies_ms(seen.created, running, names)) if which == "ours" else None,
            "cancel_to_pod_deleted_ms": summary(latencies_ms(seen.cancelled, seen.pod_deleted, names)),
            "cancel_path_ms": cancel_path(cluster.server.audit_events()),  # the stopped server's whole log
            "cancel_seconds": cancel_seconds,
            "cancel_cpu_seconds": {name: cpu_after[name] - cpu_at_cancel[name] for name in cpu_after},
            "launch_jobs_per_s": jobs / (last_pod - first_create),
            "pods_per_job_max": max(len(p) for p in seen.pods.values()),
            "peak_rss_mib": rss,
            "cpu_seconds": {name: cpu_after[name] - cpu_before[name] for name in cpu_after},
            "api_requests": api_requests(cluster.requests, jobs),
        }


def queue_scenario(
    jobs: int, limit: int, timeout: float, progress: Callable[[str], None] = lambda _: None, kib: int = 0
) -> dict[str, Any]:
    """M jobs at once, at most `limit` running, Pods that succeed at once: all finish, one Pod each, in order.
    `kib`: jobs of about that many KiB (job_manifest), else small ones.

    A run that outlasts `timeout` is a result too: what finished by then, and how fast, is reported.
    """
    names = [f"q-{i:05d}" for i in range(jobs)]
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        cluster = Cluster(Path(tmp))
        with (
            cluster,
            our_operator(cluster, INSTANT_IMAGE, max_running_jobs=limit) as process,
            observing(cluster.api) as seen,
        ):
            cpu_before = cluster.cpu_seconds(process)
            started = time.monotonic()
            create_jobs(cluster.api, seen, names, kib)
            finished = lambda: seen.jobs_in("Succeeded") + seen.jobs_in("Failed")  # noqa: E731
            deadline, next_note = started + timeout, started + 60
            while finished() < jobs and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.2)
                if time.monotonic() >= next_note:
                    progress(f"queue: {finished()} of {jobs} jobs finished after {time.monotonic() - started:.0f} s")
                    next_note = time.monotonic() + 60  # not +60 on the last: creating the jobs may outlast it
            timed_out = finished() < jobs
            done_at = sorted(p["Succeeded"] - started for p in seen.phases.values() if "Succeeded" in p)
            wall = done_at[-1] if done_at and not timed_out else time.monotonic() - started
            time.sleep(1)  # late duplicates would show up now
            pods = cluster.api.request("GET", PODS_PATH)["items"]
            rss = peak_rss_mib(process.pid)
            cpu_after = cluster.cpu_seconds(process)
        pods_per_job: dict[str, int] = {}
        for pod in pods:
            owner = (pod["metadata"].get("ownerReferences") or [{}])[0].get("name")
            pods_per_job[owner] = pods_per_job.get(owner, 0) + 1
        succeeded = [n for n in names if "Succeeded" in seen.phases.get(n, {})]
        failed = [n for n in names if "Failed" in seen.phases.get(n, {})]
        order = [names.index(n) for n in seen.pod_order]
        displacement = max((abs(position - index) for position, index in enumerate(order)), default=0)
        inversions = sum(1 for a, b in zip(order, order[1:], strict=False) if b < a)
        # Jobs that started must be the oldest ones (none skipped), with start times in creation order.
        started_jobs = [n for n in names if n in seen.start_times]
        first = names[: len(started_jobs)]
        start_times = [seen.start_times[n] for n in first if n in seen.start_times]
        in_order = started_jobs == first and start_times == sorted(start_times)
        # Where not: older jobs that started in a later second than a newer one (startTime has 1 s resolution).
        overtaken = []
        latest_newer: tuple[str, str] | None = None  # the earliest start among newer jobs, scanning backwards
        for name in reversed(started_jobs):
            if latest_newer is not None and seen.start_times[name] > latest_newer[1]:
                overtaken.append(
                    {
                        "older": name,
                        "started": seen.start_times[name],
                        "newer": latest_newer[0],
                        "newer_started": latest_newer[1],
                    }
                )
            if latest_newer is None or seen.start_times[name] < latest_newer[1]:
                latest_newer = (name, seen.start_times[name])
        skipped = [n for n in first if n not in seen.start_times]
        overtaken_by_s = max((seconds_between(o["newer_started"], o["started"]) for o in overtaken), default=0)
        return {
            "server": cluster.server.describe(),
            "jobs": jobs,
            "job_kib": len(json.dumps(job_manifest(names[0], kib))) / 1024,
            "limit": limit,
            "timeout_s": timeout,
            "timed_out": timed_out,
            "finished": finished(),
            "succeeded": len(succeeded),
            "failed": len(failed),
            "unfinished": jobs - finished(),
            "without_pod": sum(1 for n in succeeded if pods_per_job.get(n, 0) == 0),
            "duplicated": sum(1 for n in names if pods_per_job.get(n, 0) > 1),
            "pods_seen_per_job_max": max((len(p) for p in seen.pods.values()), default=0),
            "most_live_pods": seen.most_live_pods,
            "pod_order_adjacent_inversions": inversions,
            "pod_order_max_displacement": displacement,
            "started_in_creation_order": in_order,
            "overtaken": len(overtaken),  # older jobs started in a later second than some newer job
            "overtaken_by_s_max": overtaken_by_s,
            "overtaken_examples": overtaken[-3:],
            "skipped": skipped[:10],  # older jobs still waiting while as many newer ones had started
            "wall_s": wall,
            "jobs_per_s": len(succeeded) / wall if wall else None,
            # How the pace changes as the run goes on: jobs Succeeded by each minute.
            "succeeded_by_minute": [
                sum(1 for t in done_at if t <= minute * 60) for minute in range(1, int(wall // 60) + 2)
            ],
            "peak_rss_mib": rss,
            "cpu_seconds": {name: cpu_after[name] - cpu_before[name] for name in cpu_after},
            "api_requests": api_requests(cluster.requests, jobs),
        }


def run(config: OperatorConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every scenario of the config, each on a fresh cluster; or why the API server cannot run here
    ("unavailable")."""
    results: dict[str, Any] = {"config": dataclasses.asdict(config)}
    unavailable = KubeApiServer.unavailable()
    if unavailable:
        progress(f"operator: not run: {unavailable}")
        return {**results, "unavailable": unavailable}
    if not config.skip_latency:
        progress(f"operator: {config.jobs} jobs against the kopf floor")
        results["floor"] = latency_scenario("floor", config.jobs, config.timeout_s)
        progress(f"operator: {config.jobs} jobs against promptopt's operator")
        results["ours"] = latency_scenario("ours", config.jobs, config.timeout_s)
    if not config.skip_queue:
        progress(
            f"operator: {config.queue_jobs} jobs, at most {config.queue_limit} running (reported as it stands "
            f"after {config.queue_timeout_s:.0f} s at most)"
        )
        results["queue"] = queue_scenario(config.queue_jobs, config.queue_limit, config.queue_timeout_s, progress)
        if config.large_queue_jobs:
            progress(
                f"operator: {config.large_queue_jobs} jobs, at most {config.large_queue_limit} running "
                f"(reported as it stands after {config.queue_timeout_s:.0f} s at most)"
            )
            results["large_queue"] = queue_scenario(
                config.large_queue_jobs, config.large_queue_limit, config.queue_timeout_s, progress
            )
        for scenario, kib in (("memory_small", 0), ("memory_large", config.memory_job_kib)):
            if config.memory_jobs:
                progress(
                    f"operator: {config.memory_jobs} jobs of {'about ' + str(kib) if kib else 'a few'} KiB, "
                    f"at most {config.queue_limit} running"
                )
                results[scenario] = queue_scenario(
                    config.memory_jobs, config.queue_limit, config.queue_timeout_s, progress, kib
                )
    return results


def exit_on_sigterm() -> None:
    """SIGTERM ends the benchmark like ^C: the finally blocks stop every process it started."""

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":  # one scenario alone, for profiling:
    # python -m bench.operator_load ours|floor|queue N [L]
    exit_on_sigterm()
    which, size = sys.argv[1], int(sys.argv[2])
    if which == "queue":
        limit = int(sys.argv[3]) if len(sys.argv) > 3 else 50
        print(json.dumps(queue_scenario(size, limit, 1800, lambda m: print(m, file=sys.stderr)), indent=1))
    else:
        print(json.dumps(latency_scenario(which, size, 1800), indent=1))
