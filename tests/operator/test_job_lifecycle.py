"""The operator's decisions over a job's whole life: the real operator and worker, a real API server, the local
(process) kubelet, the simulated LLM. What depends on a container (SIGTERM and grace periods, memory limits,
deadlines, missing Secrets and images, the termination message, the examples, the operator as the chart's
Deployment) runs on the real node: tests/pods/.

Every test drives the system only through the API (or kubectl) and watches the job's status, like a user.
"""

import base64
import re
import socket
import threading
import time

import pytest

from promptopt_harness.chart import RELEASE_NAMESPACE
from promptopt_harness.client import ApiError
from promptopt_harness.jobs import (
    condition,
    eventually,
    job_exists,
    status_of,
    table_rows,
    wait_for_phase,
    worker_pods,
)
from promptopt_harness.operator_process import OperatorProcess
from promptopt.simulated_llm import REFLECT_MODEL, sentiment_dataset
from promptopt.worker_contract import SUCCEEDED_OUTCOMES

pytestmark = pytest.mark.slow

FAST_RETRY = ("--retry-base-delay", "0.3")


@pytest.fixture(autouse=True)
def restricted_namespace(cluster):
    """Jobs run where Pod Security admission enforces "restricted", so every worker Pod is checked by it."""
    cluster.patch(
        "namespaces",
        cluster.namespace,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )


@pytest.fixture
def start_operator(cluster, install_rbac, tmp_path):
    """start_operator(*flags, rbac={chart values}) runs `promptopt operator` as the chart's operator
    ServiceAccount, with only the permissions the chart renders; every one is stopped at the end."""
    started = []

    def start(*flags, rbac=None):
        kubeconfig = install_rbac(**(rbac or {}))
        operator = OperatorProcess(
            kubeconfig, *FAST_RETRY, *flags, log_path=tmp_path / f"operator-{len(started)}.log"
        ).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


@pytest.fixture
def credentials(cluster, llm):
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-credentials"},
            "data": {"OPENAI_API_KEY": base64.b64encode(llm.api_key.encode()).decode()},
        }
    )
    return "llm-credentials"


def gepa_job(name, llm, *, max_metric_calls=24, records=8, **spec):
    return {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": name},
        "spec": {
            "optimizer": {
                "type": "GEPA",
                "reflectionModel": "openai/sim-reflect",
                "gepa": {"maxMetricCalls": max_metric_calls},
            },
            "prompts": [{"name": "classify", "template": "Classify the sentiment of this review.\n\n{{review}}"}],
            "task": {"model": "openai/sim-task", "apiBase": llm.base_url, "temperature": 0},
            "dataset": {"records": sentiment_dataset(records, seed=3)},
            "scorers": [{"name": "ExactMatch"}],
            "credentials": {"secretRef": {"name": "llm-credentials"}},
            **spec,
        },
    }


def test_queue_runs_two_at_a_time_in_creation_order(cluster, kubelet, llm, credentials, start_operator):
    llm.set_latency(0.03)
    # Created in the reverse of name order, a second apart (creationTimestamp has one-second resolution), all
    # before the operator starts, so that every start is the queue's choice: one that went by name would start
    # them backwards.
    names = [f"job-{i}" for i in reversed(range(5))]
    for name in names:
        cluster.create(gepa_job(name, llm, max_metric_calls=16, records=6))
        time.sleep(1.05)
    start_operator("--max-running-jobs", "2")
    started_order, most_running = [], 0
    while True:
        # One list is one consistent snapshot; a read per job could see a finished job and its successor both run.
        statuses = {job["metadata"]["name"]: job.get("status") or {} for job in cluster.list("poj")}
        phases = {name: status.get("phase") for name, status in statuses.items()}
        started_order += [n for n in names if phases[n] not in (None, "Queued") and n not in started_order]
        if all(p == "Succeeded" for p in phases.values()):
            break
        assert "Failed" not in phases.values(), statuses
        most_running = max(most_running, sum(p in ("Pending", "Running") for p in phases.values()))
        assert all(s.get("queuePosition") for s in statuses.values() if s.get("phase") == "Queued"), statuses
        time.sleep(0.05)
    assert most_running <= 2
    # First come, first started, two at a time: jobs that take the two slots at once are written concurrently, so
    # within each pair the order seen is the API's, not the queue's.
    started_in_pairs = [set(started_order[i : i + 2]) for i in range(0, len(names), 2)]
    assert started_in_pairs == [set(names[i : i + 2]) for i in range(0, len(names), 2)], started_order


def test_queue_positions_move_when_a_job_ahead_leaves_the_line(
    cluster, kubelet, llm, credentials, kubectl, start_operator
):
    # Every LLM call hangs: the job ahead holds the one slot for the whole test, however fast the worker is (with
    # 0.2 s a call it could finish before the cancel, and the last job then starts instead of moving up).
    llm.set_latency(30)
    start_operator("--max-running-jobs", "1")
    for name in ("ahead", "next", "last"):
        cluster.create(gepa_job(name, llm, max_metric_calls=2000))
        time.sleep(1.05)  # distinct creationTimestamps
    eventually(lambda: status_of(cluster, "last").get("queuePosition") == 2, 30, "last to be second in line")
    kubectl("patch", "poj", "next", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    # Moved by the change itself, not by the 30-second refresh timer that catches what a watch missed.
    eventually(lambda: status_of(cluster, "last").get("queuePosition") == 1, 10, "last to move up")


def test_a_spec_the_models_reject_fails_without_a_pod(cluster, kubelet, llm, credentials, start_operator):
    """Rules the API server cannot check (a regex's syntax; inside records' free-form inputs, which CEL gives no
    type) fail the job at once, naming the field, before any Pod."""
    start_operator()
    job = gepa_job("bad-regex", llm)
    job["spec"]["scorers"] = [{"name": "Regex", "params": {"pattern": "(unclosed"}}]  # passes CEL, not the models
    cluster.create(job)
    unfit = gepa_job("unfit-records", llm, records=3)
    unfit["spec"]["prompts"][0]["template"] += " ({{language}})"  # no record has that input
    cluster.create(unfit)
    status = wait_for_phase(cluster, "bad-regex", "Failed", timeout=15)
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert "spec.scorers[0]" in status["message"] and "regular expression" in status["message"]
    status = wait_for_phase(cluster, "unfit-records", "Failed", timeout=15)
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert (
        "spec.dataset.records: the records do not fit the prompts: prompt 'classify' uses {{language}}, but "
        "records 0, 1, 2 have no input 'language'"
    ) in status["message"]
    assert not worker_pods(cluster, "bad-regex") and not worker_pods(cluster, "unfit-records")


def test_a_job_where_the_chart_made_no_worker_service_account_says_so_and_starts_once_it_exists(
    cluster, kubelet, llm, credentials, kubectl, install_rbac, start_operator
):
    """Issue 21: a job in a namespace outside the chart's jobNamespaces (the operator watches every namespace) used to
    sit with no phase, the 403 only in the operator's log."""
    team_b = f"{cluster.namespace}-b"
    cluster.create_namespace(team_b)
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-credentials", "namespace": team_b},
            "stringData": {"OPENAI_API_KEY": llm.api_key},
        }
    )
    start_operator()
    job = gepa_job("elsewhere", llm, max_metric_calls=8, records=4)
    job["metadata"]["namespace"] = team_b
    cluster.create(job)

    def stalled():
        status = cluster.get("poj", "elsewhere", namespace=team_b).get("status") or {}
        return status if (condition(status, "Stalled") or {}).get("status") == "True" else None

    status = eventually(stalled, 15, "the refused Pod in the job's Stalled condition")
    assert status["phase"] == "Pending" and condition(status, "Stalled")["reason"] == "FailedCreate"
    assert (
        f"namespace {team_b} has no worker ServiceAccount promptopt-worker: add {team_b} to the chart's jobNamespaces"
    ) in status["message"]
    events = kubectl(
        "get",
        "events",
        "-n",
        team_b,
        "--field-selector",
        "involvedObject.name=elsewhere",
        "-o",
        "jsonpath={range .items[*]}{.type} {.reason}: {.message}{'\\n'}{end}",
    ).stdout
    assert 'Warning FailedCreate: Error creating: pods "elsewhere-worker-1" is forbidden' in events
    assert not cluster.list("pods", namespace=team_b)

    install_rbac(jobNamespaces=[cluster.namespace, team_b])  # helm upgrade --set 'jobNamespaces={..., team-b}'
    eventually(
        lambda: (cluster.get("poj", "elsewhere", namespace=team_b).get("status") or {}).get("phase") == "Succeeded",
        60,
        "the job to start and succeed once the ServiceAccount exists",
    )
    # Its job would count in the next test's cluster-wide operator: gone before the test ends.
    cluster.delete("namespaces", team_b)
    eventually(lambda: not cluster.list("poj", namespace=team_b), 60, "the namespace's job to go")


def test_metrics_count_jobs_and_pods(cluster, kubelet, llm, credentials, start_operator):
    operator = start_operator()
    cluster.create(gepa_job("measured", llm, max_metric_calls=8, records=4))
    wait_for_phase(cluster, "measured", "Succeeded")
    # The gauge follows the operator's watch, which may deliver the Succeeded job a moment after the API has it.
    succeeded = re.compile(r'^promptopt_jobs\{phase="Succeeded"\} 1\.0$', re.M)
    metrics = eventually(
        lambda: next((m for m in [operator.scrape()] if succeeded.search(m)), None),
        10,
        "the jobs gauge to count the Succeeded job",
    )
    assert re.search(r"^promptopt_worker_pods_created_total 1\.0$", metrics, re.M)
    assert re.search(r"^promptopt_pod_launch_seconds_count 1\.0$", metrics, re.M)
    assert re.search(r"^promptopt_reconcile_seconds_count [1-9]", metrics, re.M)


def test_a_job_stops_at_its_goal_and_succeeds_saying_so(cluster, kubelet, llm, credentials, kubectl, start_operator):
    """The simulated task model labels every review once the prompt asks for one lowercase word: the first
    candidate that does reaches the goal, and the run ends there with most of its budget unspent."""
    start_operator()
    job = gepa_job("goal", llm, max_metric_calls=400)
    job["spec"]["optimizer"]["gepa"]["earlyStopping"] = {"goal": 1.0}
    cluster.create(job)
    status = wait_for_phase(cluster, "goal", "Succeeded")

    assert status["workerResult"]["reason"] == "GoalReached", status["workerResult"]
    assert status["finalScores"]["aggregate"] == 1.0 > status["initialScores"]["aggregate"]
    assert status["progress"]["metricCalls"] < 400 // 2
    assert condition(status, "Ready") | {"status": "True", "reason": "GoalReached"} == condition(status, "Ready")
    (columns,) = table_rows(kubectl("get", "poj", "goal", "-o", "wide").stdout)
    assert columns["REASON"] == "GoalReached"
    # Rounded as people read scores (the printer would show every digit), and how long it ran, as a Job's DURATION.
    assert columns["BEST"] == "1.000" and columns["INITIAL"] == f"{status['initialScores']['aggregate']:.3f}"
    assert columns["DURATION"] == status["duration"] and re.fullmatch(r"\d+s", columns["DURATION"])


# --- spec.output: the optimized prompts in a ConfigMap ----------------------------------------------------------


def output_condition(cluster, name):
    return eventually(
        lambda: next((c for c in status_of(cluster, name).get("conditions", []) if c["type"] == "OutputWritten"), None),
        15,
        f"{name}'s OutputWritten condition",
    )


def job_events(kubectl, name):
    return kubectl(
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "jsonpath={range .items[*]}{.type} {.reason}: {.message}{'\\n'}{end}",
    ).stdout


def test_the_optimized_prompts_reach_a_configmap_that_outlives_the_job(
    cluster, kubelet, llm, credentials, kubectl, start_operator
):
    start_operator()
    cluster.create(gepa_job("delivered", llm, output={"configMap": {"name": "sentiment-prompts"}}))
    wait_for_phase(cluster, "delivered", "Succeeded")
    assert output_condition(cluster, "delivered") | {"status": "True", "reason": "OutputWritten"} == output_condition(
        cluster, "delivered"
    )
    status, uid = status_of(cluster, "delivered"), cluster.get("poj", "delivered")["metadata"]["uid"]

    written = cluster.get("configmaps", "sentiment-prompts")
    assert written["data"] == {p["name"]: p["template"] for p in status["optimizedPrompts"]}
    assert written["metadata"]["labels"]["promptopt.dev/job"] == "delivered"
    annotations = written["metadata"]["annotations"]
    assert annotations["promptopt.dev/job-uid"] == uid and annotations["promptopt.dev/outcome"] == "Succeeded"
    assert float(annotations["promptopt.dev/final-score"]) == pytest.approx(status["finalScores"]["aggregate"])
    assert float(annotations["promptopt.dev/initial-score"]) == pytest.approx(status["initialScores"]["aggregate"])
    assert status["output"]["configMap"] == "sentiment-prompts" and "bestSoFar" not in status["output"]
    assert "Normal OutputWritten: the optimized prompts are in ConfigMap sentiment-prompts" in job_events(
        kubectl, "delivered"
    )

    cluster.delete("poj", "delivered")
    eventually(lambda: not job_exists(cluster, "delivered"), 15, "the job to go")
    assert cluster.get("configmaps", "sentiment-prompts")["data"] == written["data"]  # not the job's: it stays


def test_a_configmap_that_is_not_the_jobs_is_never_overwritten(
    cluster, kubelet, llm, credentials, kubectl, start_operator
):
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "taken"},
            "data": {"classify": "a person's prompt"},
        }
    )
    start_operator()
    cluster.create(gepa_job("intruder", llm, max_metric_calls=8, records=4, output={"configMap": {"name": "taken"}}))
    wait_for_phase(cluster, "intruder", "Succeeded")
    refused = output_condition(cluster, "intruder")
    assert (refused["status"], refused["reason"]) == ("False", "OutputConflict")
    assert "ConfigMap taken exists and belongs to someone else" in refused["message"]
    assert cluster.get("configmaps", "taken")["data"] == {"classify": "a person's prompt"}
    assert "Warning OutputConflict" in job_events(kubectl, "intruder")
    assert "output" not in status_of(cluster, "intruder")


def test_a_cancelled_job_writes_its_best_so_far_and_an_owned_configmap_goes_with_it(
    cluster, kubelet, llm, credentials, kubectl, start_operator
):
    llm.set_latency(5, model=REFLECT_MODEL)  # the cancel finds the run in its first reflection
    start_operator()
    cluster.create(
        gepa_job(
            "stopped",
            llm,
            max_metric_calls=400,
            records=10,
            output={"configMap": {"name": "stopped-prompts", "ownedByJob": True}},
        )
    )
    eventually(lambda: status_of(cluster, "stopped").get("initialScores"), 60, "the initial scores")
    kubectl("patch", "poj", "stopped", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    wait_for_phase(cluster, "stopped", "Cancelled", timeout=30)
    assert output_condition(cluster, "stopped")["reason"] == "BestSoFarWritten"
    status = status_of(cluster, "stopped")
    assert status["workerResult"]["reason"] == "Cancelled"  # written once the worker had said its last word
    written = cluster.get("configmaps", "stopped-prompts")
    assert written["metadata"]["annotations"]["promptopt.dev/best-so-far"] == "true"
    assert written["data"] == {p["name"]: p["template"] for p in status["optimizedPrompts"]}
    assert status["output"]["bestSoFar"] is True

    cluster.delete("poj", "stopped")
    eventually(
        lambda: not [c for c in cluster.list("configmaps") if c["metadata"]["name"] == "stopped-prompts"],
        30,
        "the garbage collector to delete the job's ConfigMap",
    )


def test_a_failed_job_writes_nothing_and_says_so(cluster, kubelet, llm, credentials, start_operator):
    start_operator()
    failing = gepa_job("broken", llm, output={"configMap": {"name": "broken-prompts"}})
    failing["spec"]["task"]["model"] = "openai/sim-retired"  # the LLM answers 404: a permanent LLMError
    cluster.create(failing)
    assert wait_for_phase(cluster, "broken", "Failed")["workerResult"]["reason"] == "LLMError"
    written = output_condition(cluster, "broken")
    assert (written["status"], written["reason"]) == ("False", "NothingToWrite")
    assert not [c for c in cluster.list("configmaps") if c["metadata"]["name"] == "broken-prompts"]


def test_ttl_deletes_the_finished_job(cluster, kubelet, llm, credentials, kubectl, start_operator):
    start_operator()
    cluster.create(gepa_job("ephemeral", llm, max_metric_calls=8, records=4, ttlSecondsAfterFinished=1))
    # A one-second TTL can delete the job before a poll sees it Succeeded: its end Event outlives it.
    eventually(lambda: not job_exists(cluster, "ephemeral"), 60, "the TTL to delete the job")
    ends = [line.split(":")[0].split() for line in job_events(kubectl, "ephemeral").splitlines()]
    assert any(kind == "Normal" and reason in SUCCEEDED_OUTCOMES for kind, reason in ends), ends
    assert not any(kind == "Warning" for kind, _ in ends), ends


def test_an_operator_for_one_namespace_leaves_the_others_alone(cluster, kubelet, llm, credentials, start_operator):
    elsewhere = f"{cluster.namespace}-elsewhere"
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere}})
    start_operator("--namespace", cluster.namespace, rbac={"watchNamespaces": [cluster.namespace]})
    outside = gepa_job("outside", llm, max_metric_calls=8, records=4)
    outside["metadata"]["namespace"] = elsewhere
    cluster.create(outside)
    cluster.create(gepa_job("inside", llm, max_metric_calls=8, records=4))
    wait_for_phase(cluster, "inside", "Succeeded")
    assert not cluster.get("poj", "outside", namespace=elsewhere).get("status")
    cluster.patch("poj", "outside", {"metadata": {"finalizers": None}}, namespace=elsewhere)
    cluster.delete("poj", "outside", namespace=elsewhere)


# --- jobs near the API's size limit ------------------------------------------------------------------------------

# etcd refuses a request over 1.5 MiB (its default --max-request-bytes, kept by kubeadm, EKS, GKE, ...): a job's
# whole object, spec and status, must fit in it.
ETCD_REQUEST_LIMIT = 1536 * 1024


def large_job(name, llm, records, **spec):
    """A GEPA job whose inline dataset makes it about `records` × 360 bytes, validated on a handful of records."""
    job = gepa_job(name, llm, max_metric_calls=40, **spec)
    filler = "It arrived on time and does what it says; " * 7
    job["spec"]["dataset"] = {
        "records": [
            {
                "inputs": {"review": f"{filler}review {i}: {'good' if i % 2 else 'awful'}."},
                "expectations": {"expected_response": "positive" if i % 2 else "negative"},
            }
            for i in range(records)
        ],
        "validationFraction": 0.001,
    }
    return job


def test_a_job_near_the_size_limit_runs_is_cancelled_and_deleted(
    cluster, kubelet, llm, credentials, kubectl, start_operator
):
    import json

    start_operator()
    done, cancelled = large_job("big-done", llm, 3900), large_job("big-cancelled", llm, 3900)
    assert 1.3 * 2**20 < len(json.dumps(done)) < ETCD_REQUEST_LIMIT
    # Server-side apply: client-side apply would copy the whole job into an annotation, over its 256 KiB limit.
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(done))
    status = wait_for_phase(cluster, "big-done", "Succeeded", timeout=120)
    assert status["finalScores"]["aggregate"] is not None

    llm.set_latency(0.05)
    llm.set_latency(5, model=REFLECT_MODEL)  # its first reflection holds the run until the cancel comes
    kubectl("create", "-f", "-", input=json.dumps(cancelled))
    wait_for_phase(cluster, "big-cancelled", "Running", timeout=60)
    kubectl("patch", "poj", "big-cancelled", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    wait_for_phase(cluster, "big-cancelled", "Cancelled", timeout=30)

    # kopf's bookkeeping stays small whatever the spec's size, so the finalizer comes off and delete returns.
    for name in ("big-done", "big-cancelled"):
        annotations = cluster.get("poj", name)["metadata"].get("annotations") or {}
        assert sum(len(key) + len(value) for key, value in annotations.items()) < 4096, annotations
        kubectl("delete", "poj", name, "--timeout=60s", timeout=90)
        assert not job_exists(cluster, name)
    eventually(
        lambda: not worker_pods(cluster, "big-done") and not worker_pods(cluster, "big-cancelled"),
        60,
        "the worker Pods to go",
    )


# --- two replicas electing a leader -----------------------------------------------------------------------------

PHASE_ORDER = {None: 0, "Queued": 1, "Pending": 2, "Running": 3, "Succeeded": 4, "Failed": 4}


class StatusRecorder(threading.Thread):
    """Every (phase, attempts) a job shows, polled until stopped: a status that goes back is a regression."""

    def __init__(self, cluster, name):
        super().__init__(daemon=True)
        self.cluster, self.name, self.seen, self.done = cluster, name, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            if job_exists(self.cluster, self.name):
                status = status_of(self.cluster, self.name)
                step = (status.get("phase"), status.get("attempts") or 0)
                if not self.seen or self.seen[-1] != step:
                    self.seen.append(step)
            time.sleep(0.05)

    def regressions(self):
        return [
            (a, b)
            for a, b in zip(self.seen, self.seen[1:], strict=False)
            if PHASE_ORDER[b[0]] < PHASE_ORDER[a[0]] or b[1] < a[1]
        ]


@pytest.fixture
def elect(cluster, start_operator):
    """elect(): start an operator replica that campaigns for the chart's leader Lease (none is held at first)."""
    try:
        cluster.delete("leases", LEASE, namespace=RELEASE_NAMESPACE)
    except ApiError as error:
        assert error.code == 404

    def start():
        return start_operator("--leader-election-namespace", RELEASE_NAMESPACE, "--leader-election-lease", LEASE)

    return start


LEASE = "promptopt"  # the chart's name for it, which its Role lets the operator read and write


def lease_holder(cluster):
    return cluster.get("leases", LEASE, namespace=RELEASE_NAMESPACE)["spec"].get("holderIdentity")


def metric(operator, name):
    (value,) = [float(line.split()[1]) for line in operator.scrape().splitlines() if line.startswith(f"{name} ")]
    return value


def leader_gauge(operator):
    return metric(operator, "promptopt_leader")


def test_a_follower_acts_on_nothing_and_finishes_the_job_of_a_leader_killed_mid_job(
    cluster, kubelet, llm, credentials, elect
):
    llm.set_latency(0.05)
    leader = elect()
    eventually(lambda: leader_gauge(leader) == 1, 15, "the first replica to lead")
    follower = elect()
    assert leader_gauge(follower) == 0
    cluster.create(gepa_job("through-failover", llm, max_metric_calls=40))
    recorder = StatusRecorder(cluster, "through-failover")
    recorder.start()
    wait_for_phase(cluster, "through-failover", "Running")
    assert metric(follower, "promptopt_reconcile_seconds_count") == 0  # it saw the job, and left it to the leader
    leader.kill()  # SIGKILL: no hand-back, the Lease runs out
    status = wait_for_phase(cluster, "through-failover", "Succeeded", timeout=90)
    recorder.done.set()
    recorder.join()
    assert status["attempts"] == 1 and recorder.regressions() == [], recorder.seen
    assert [p["metadata"]["name"] for p in worker_pods(cluster, "through-failover")] == ["through-failover-worker-1"]
    assert leader_gauge(follower) == 1 and lease_holder(cluster).startswith(socket.gethostname())
    # The new leader acts on new jobs too.
    cluster.create(gepa_job("after-failover", llm, max_metric_calls=8, records=4))
    wait_for_phase(cluster, "after-failover", "Succeeded")


def test_a_leader_stopped_gracefully_hands_the_lease_to_a_follower_which_finishes_the_job(
    cluster, kubelet, llm, credentials, elect
):
    llm.set_latency(0.05)
    first = elect()
    eventually(lambda: leader_gauge(first) == 1, 15, "the first replica to lead")
    second = elect()
    cluster.create(gepa_job("handed-over", llm, max_metric_calls=40))
    wait_for_phase(cluster, "handed-over", "Running")
    held_by_first = lease_holder(cluster)
    first.stop()  # SIGTERM, as a rolling update sends
    assert first.process.returncode == 0
    assert "handed the leader Lease" in first.log() and held_by_first in first.log()
    eventually(lambda: lease_holder(cluster) not in (None, held_by_first), 15, "the follower to take the Lease")
    status = wait_for_phase(cluster, "handed-over", "Succeeded", timeout=90)
    assert status["attempts"] == 1
    assert [p["metadata"]["name"] for p in worker_pods(cluster, "handed-over")] == ["handed-over-worker-1"]
    assert leader_gauge(second) == 1


def test_a_leader_that_loses_its_lease_exits_to_restart_as_a_follower(cluster, elect):
    leader = elect()
    eventually(lambda: leader_gauge(leader) == 1, 15, "the replica to lead")
    cluster.patch("leases", LEASE, {"spec": {"holderIdentity": "another-replica"}}, namespace=RELEASE_NAMESPACE)
    assert eventually(lambda: leader.process.poll(), 30, "the replica to exit") == 1
    assert "lost the leader Lease" in leader.log()
