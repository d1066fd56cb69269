"""A job's worker Pod as a real kubelet runs it: SIGTERM and grace periods, memory limits, deadlines, a missing
Secret or image, the termination message, and the chart's two operator replicas failing over under a running job
(the leader deleted, killed, rolled).

Each job is the README's (examples/gepa-sentiment.yaml with the simulated LLM's models), changed where the test
says so."""

import json
import time

import pytest

from promptopt.simulated_llm import REFLECT_MODEL
from promptopt_harness.jobs import condition, eventually, job_exists, status_of, wait_for_phase, worker_pods

pytestmark = pytest.mark.slow


@pytest.fixture
def readme_job(pods, node_llm, example):
    """``readme_job(name, **spec)``: the README's job under another name, its spec updated with `spec`, and the
    credentials Secret it names."""
    pods.cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-credentials"},
            "stringData": {"OPENAI_API_KEY": node_llm.api_key},
        }
    )

    def job(name, **spec):
        (document,) = example("gepa-sentiment")
        document["metadata"]["name"] = name
        document["spec"] |= spec
        return document

    return job


def set_budget(job, max_metric_calls):
    job["spec"]["optimizer"]["gepa"]["maxMetricCalls"] = max_metric_calls
    return job


def test_cancel_sends_sigterm_and_the_worker_reports_its_best_so_far_within_the_grace_period(
    pods, node_llm, readme_job, node_kubectl
):
    # The cancel finds the run in its first reflection, a call that would outlast the Pod's 60 s grace period.
    node_llm.set_latency(120, model=REFLECT_MODEL)
    pods.cluster.create(set_budget(readme_job("cancelled"), 2000))
    eventually(lambda: status_of(pods.cluster, "cancelled").get("initialScores"), 90, "the initial scores")

    cancelled_at = time.monotonic()
    node_kubectl("patch", "poj", "cancelled", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    status = wait_for_phase(pods.cluster, "cancelled", "Cancelled", timeout=30)
    assert condition(status, "Stalled")["reason"] == "Cancelled"
    eventually(lambda: not worker_pods(pods.cluster, "cancelled"), 60, "the worker Pod to go")
    # Gone well within the chart's 60 s grace period: the worker ended on SIGTERM, it was not SIGKILLed.
    assert time.monotonic() - cancelled_at < 30
    final = eventually(lambda: status_of(pods.cluster, "cancelled").get("workerResult"), 30, "the last report")
    assert final["reason"] == "Cancelled"
    status = status_of(pods.cluster, "cancelled")
    assert status["optimizedPrompts"] and status["progress"]["bestScore"] is not None

    node_kubectl("patch", "poj", "cancelled", "--type=merge", "-p", '{"spec":{"cancel":false}}')
    time.sleep(1)
    assert status_of(pods.cluster, "cancelled")["phase"] == "Cancelled" and not worker_pods(pods.cluster, "cancelled")


def test_deleting_a_running_job_deletes_its_pod(pods, node_llm, readme_job, node_kubectl):
    node_llm.set_latency(0.2)
    pods.cluster.create(set_budget(readme_job("doomed"), 2000))
    wait_for_phase(pods.cluster, "doomed", "Running", timeout=60)
    node_kubectl("delete", "poj", "doomed", "--timeout=60s")
    assert not job_exists(pods.cluster, "doomed")
    eventually(lambda: not worker_pods(pods.cluster, "doomed"), 60, "the garbage collector to delete the Pod")


def test_a_worker_pod_deleted_by_hand_is_replaced_and_the_job_succeeds(pods, node_llm, readme_job, node_kubectl):
    node_llm.set_latency(0.3)
    pods.cluster.create(set_budget(readme_job("survivor"), 40))
    wait_for_phase(pods.cluster, "survivor", "Running", timeout=60)
    node_kubectl("delete", "pod", "survivor-worker-1", "--wait=false")  # as an eviction or a drain would
    status = wait_for_phase(pods.cluster, "survivor", "Succeeded", timeout=120)
    assert status["attempts"] == 2 and status["podName"] == "survivor-worker-2"
    # The worker ended on SIGTERM, before it finished: the attempt counts as failed, and the retry is said.
    assert status["lastFailure"]["attempt"] == 1
    assert "BackoffRetry" in node_kubectl("describe", "poj", "survivor").stdout


def test_a_worker_over_its_memory_limit_is_oomkilled_retried_and_the_message_says_what_to_raise(
    pods, readme_job, node_kubectl
):
    # Python and the worker's imports need about 60 MiB: with 40 the kernel kills the container as it starts.
    memory = {"requests": {"memory": "40Mi"}, "limits": {"memory": "40Mi"}}
    pods.cluster.create(readme_job("oom", backoffLimit=1, worker={"resources": memory}))
    node_kubectl("wait", "--for=condition=Failed", "poj/oom", "--timeout=120s", timeout=130)  # as for a batch Job
    status = wait_for_phase(pods.cluster, "oom", "Failed", timeout=10)
    assert condition(status, "Ready")["reason"] == "BackoffLimitExceeded" and status["attempts"] == 2
    assert "OOMKilled (exit code 137)" in status["message"]
    assert "raise spec.worker.resources.limits.memory" in status["message"]
    oomkilled = worker_pods(pods.cluster, "oom")
    assert sorted(p["metadata"]["name"] for p in oomkilled) == ["oom-worker-1", "oom-worker-2"]
    for pod in oomkilled:
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


def test_the_deadline_fails_the_job_and_the_kubelet_stops_the_pod(pods, node_llm, readme_job):
    node_llm.set_latency(60)  # every LLM call hangs past the deadline
    pods.cluster.create(readme_job("slow", activeDeadlineSeconds=8))
    status = wait_for_phase(pods.cluster, "slow", "Failed", timeout=60)
    assert condition(status, "Ready")["reason"] == "DeadlineExceeded"
    eventually(
        lambda: all(p["status"]["phase"] == "Failed" for p in worker_pods(pods.cluster, "slow")),
        60,
        "the kubelet to end the Pod",
    )


MISSING_IMAGE = "docker.io/promptopt/worker:no-such-tag"


@pytest.mark.parametrize(
    "trouble,spec,reason,message",
    [
        (
            "a missing Secret",
            {"credentials": {"secretRef": {"name": "missing-secret"}}},
            "CreateContainerConfigError",
            'secret "missing-secret" not found',
        ),
        (
            "an image tag that is not on the node, never pulled",
            {"worker": {"image": MISSING_IMAGE, "imagePullPolicy": "Never"}},
            "ErrImageNeverPull",
            MISSING_IMAGE,
        ),
        # No registry is reachable from the node: the pull fails at once, as with a wrong tag or no credentials.
        (
            "an image that cannot be pulled",
            {"worker": {"image": MISSING_IMAGE}},
            "ErrImagePull|ImagePullBackOff",
            MISSING_IMAGE,
        ),
    ],
)
def test_pod_trouble_is_visible_within_seconds(pods, readme_job, trouble, spec, reason, message):
    import re

    pods.cluster.create(readme_job("stuck", **spec))

    def surfaced():
        status = status_of(pods.cluster, "stuck")
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        return status if re.fullmatch(reason, ready.get("reason") or "") else None

    status = eventually(surfaced, 20, f"{trouble} in the job's Ready condition")
    assert status["phase"] == "Pending" and message in condition(status, "Ready")["message"]
    assert condition(status, "Reconciling")["status"] == "True"  # still in progress, not failed


def test_a_worker_that_cannot_write_status_is_heard_through_its_termination_message(pods, readme_job):
    """A worker whose ServiceAccount may read its job but not write its status (an RBAC mistake): the kubelet
    puts its termination message in the Pod's status, and the operator takes the result from there."""
    cluster = pods.cluster
    cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "read-only-worker"}})
    cluster.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "read-only-worker"},
            "rules": [{"apiGroups": ["promptopt.dev"], "resources": ["promptoptimizationjobs"], "verbs": ["get"]}],
        }
    )
    cluster.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "read-only-worker"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-only-worker"},
            "subjects": [{"kind": "ServiceAccount", "name": "read-only-worker"}],
        }
    )
    cluster.create(set_budget(readme_job("mute", worker={"serviceAccountName": "read-only-worker"}), 24))
    status = wait_for_phase(cluster, "mute", "Succeeded", timeout=120)
    (pod,) = worker_pods(cluster, "mute")
    reported = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert status["workerResult"] == reported["workerResult"]
    assert status["finalScores"]["aggregate"] == reported["finalScores"]["aggregate"]
    assert [p["template"] for p in status["optimizedPrompts"]] == [p["template"] for p in reported["optimizedPrompts"]]


def leader_during_a_job(pods, readme_job, name):
    """The README job, running under the leading operator replica (returned) while a follower stands by."""
    pods.cluster.create(set_budget(readme_job(name), 40))
    wait_for_phase(pods.cluster, name, "Running", timeout=60)
    eventually(
        lambda: len([p for p in pods.operator_pods() if p["status"].get("phase") == "Running"]) == 2,
        90,
        "both operator replicas",
    )
    return eventually(pods.leader_pod, 30, "a leader")


def finished_once(pods, name):
    """The job succeeded on its first worker Pod: no status lost, no Pod started twice, whoever led."""
    status = wait_for_phase(pods.cluster, name, "Succeeded", timeout=120)
    assert status["attempts"] == 1
    assert [p["metadata"]["name"] for p in worker_pods(pods.cluster, name)] == [f"{name}-worker-1"]


def new_leader(pods, former):
    """The operator Pod that leads once the process `former` (a Lease holder identity) no longer does."""
    eventually(lambda: pods.lease_holder() not in ("", former), 60, "another operator process to lead")
    return eventually(pods.leader_pod, 30, "the new leader's Pod")


def test_the_leader_deleted_mid_job_hands_over_to_the_follower_and_the_deployment_replaces_it(
    pods, node_llm, readme_job, node_kubectl
):
    node_llm.set_latency(0.2)
    leader_during_a_job(pods, readme_job, "adopted")
    holder = pods.lease_holder()
    leader = pods.leader_pod()["metadata"]["name"]
    node_kubectl("delete", "pod", "-n", "promptopt-system", leader, "--wait=false")
    assert new_leader(pods, holder)["metadata"]["name"] != leader
    finished_once(pods, "adopted")
    eventually(
        lambda: (
            len(
                [
                    p
                    for p in pods.operator_pods()
                    if not p["metadata"].get("deletionTimestamp") and p["metadata"]["name"] != leader
                ]
            )
            == 2
        ),
        90,
        "the Deployment's replacement",
    )


def test_a_leader_killed_mid_job_is_replaced_by_the_follower_when_its_lease_runs_out(pods, node_llm, readme_job):
    node_llm.set_latency(0.2)
    leader = leader_during_a_job(pods, readme_job, "through-a-kill")
    holder = pods.lease_holder()
    (container,) = leader["status"]["containerStatuses"]
    # SIGKILL to the operator's process, as the kernel's OOM killer sends it: no hand-back of the Lease. The kubelet
    # restarts the container, which may win the Lease back as a new process once it runs out.
    pods.node.ctr("tasks", "kill", "--signal", "SIGKILL", container["containerID"].removeprefix("containerd://"))
    new_leader(pods, holder)
    finished_once(pods, "through-a-kill")
    eventually(
        lambda: (
            pods.cluster.get("pods", leader["metadata"]["name"], namespace="promptopt-system")["status"][
                "containerStatuses"
            ][0]["restartCount"]
            == 1
        ),
        60,
        "the kubelet to restart the killed operator",
    )


def test_a_rollout_restart_mid_job_loses_and_duplicates_nothing(pods, node_llm, readme_job, node_kubectl):
    node_llm.set_latency(0.2)
    before = {p["metadata"]["name"] for p in pods.operator_pods()}
    leader_during_a_job(pods, readme_job, "through-a-rollout")
    node_kubectl("rollout", "restart", "deployment/promptopt", "-n", "promptopt-system")
    node_kubectl("rollout", "status", "deployment/promptopt", "-n", "promptopt-system", "--timeout=120s", timeout=150)
    finished_once(pods, "through-a-rollout")
    assert eventually(pods.leader_pod, 60, "a leader")["metadata"]["name"] not in before
