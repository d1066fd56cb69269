"""`promptopt worker` in a Pod, as the operator starts it: real API server, local kubelet, simulated LLM."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from promptopt.api.v1alpha1 import Cost
from promptopt.api.validation import parse_spec
from promptopt.simulated_llm import sentiment_dataset
from promptopt_worker.llm import Usage
from promptopt_worker.main import exit_code, remaining_deadline
from promptopt_worker.problem import Result

# What the operator owns in status; the worker must leave it as it is.
OPERATOR_STATUS = {"phase": "Running", "podName": "worker", "attempts": 1, "message": "the worker runs"}
# The chart's worker ServiceAccount: the worker runs with exactly the permissions the chart gives it.
WORKER_SERVICE_ACCOUNT = "promptopt-worker"


@pytest.fixture(autouse=True)
def worker_rbac(request):
    """The chart's RBAC in the test's namespace, for the tests that run a worker against the API."""
    if "cluster" in request.fixturenames:
        request.getfixturevalue("install_rbac")()


def create_job(cluster, llm, *, max_metric_calls, stop_at_perfect_score=True, **spec):
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-credentials"},
            "data": {"OPENAI_API_KEY": base64.b64encode(llm.api_key.encode()).decode()},
        }
    )
    cluster.create(
        {
            "apiVersion": "promptopt.dev/v1alpha1",
            "kind": "PromptOptimizationJob",
            "metadata": {"name": "sentiment"},
            "spec": {
                "optimizer": {
                    "type": "GEPA",
                    "reflectionModel": "openai/sim-reflect",
                    "gepa": {"maxMetricCalls": max_metric_calls, "stopAtPerfectScore": stop_at_perfect_score},
                },
                "prompts": [{"name": "classify", "template": "Classify the sentiment of this review.\n\n{{review}}"}],
                "task": {"model": "openai/sim-task", "apiBase": llm.base_url, "temperature": 0},
                "dataset": {"records": sentiment_dataset(10, seed=1), "validationFraction": 0.4},
                "scorers": [{"name": "ExactMatch", "weight": 2}, {"name": "Correctness", "model": "openai/sim-judge"}],
                "credentials": {"secretRef": {"name": "llm-credentials"}},
                **spec,
            },
        }
    )
    cluster.patch("poj", "sentiment", {"status": OPERATOR_STATUS}, subresource="status")


def create_worker_pod(cluster):
    """The Pod the operator creates for the job (the parts the worker depends on)."""
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "worker"},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": WORKER_SERVICE_ACCOUNT,
                "containers": [
                    {
                        "name": "worker",
                        "image": "promptopt:dev",
                        "command": ["promptopt", "worker"],
                        "env": [
                            {"name": "PROMPTOPT_JOB_NAME", "value": "sentiment"},
                            {
                                "name": "PROMPTOPT_JOB_NAMESPACE",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                            },
                            {"name": "PROMPTOPT_TERMINATION_MESSAGE_PATH", "value": "/dev/termination-log"},
                        ],
                        "envFrom": [{"secretRef": {"name": "llm-credentials"}}],
                        "terminationMessagePath": "/dev/termination-log",
                    }
                ],
            },
        }
    )


def job_status(cluster):
    return cluster.get("poj", "sentiment").get("status") or {}


def wait_for_status(cluster, predicate, timeout):
    """Polls the job's status until `predicate` holds; returns that status (fails when the worker ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(status := job_status(cluster)):
            return status
        if "workerResult" in status:
            raise AssertionError(f"the worker ended first: {status}")
        time.sleep(0.05)
    raise AssertionError(f"status never satisfied the condition: {status}")


def test_the_worker_reports_scores_early_and_its_result_at_the_end(cluster, kubelet, llm):
    llm.set_latency(0.02)  # long enough to see the run in progress
    llm.inject(503, times=2)  # a short outage, retried by the worker
    create_job(cluster, llm, max_metric_calls=40)
    create_worker_pod(cluster)

    early = wait_for_status(cluster, lambda s: "initialScores" in s, timeout=30)
    assert "workerResult" not in early and "finalScores" not in early
    assert set(early["initialScores"]["scorers"]) == {"ExactMatch", "Correctness"}

    pod = cluster.wait_for("pods", "worker", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), timeout=40)
    logs = kubelet.logs(cluster.namespace, "worker")
    assert pod["status"]["phase"] == "Succeeded", logs
    status = job_status(cluster)
    assert status["workerResult"]["reason"] == "PerfectScore" and status["workerResult"]["succeeded"] is True
    assert status["finalScores"]["aggregate"] > status["initialScores"]["aggregate"]
    assert status["optimizedPrompts"][0]["name"] == "classify"
    assert "{{review}}" in status["optimizedPrompts"][0]["template"]
    assert status["cost"]["llmCalls"] == sum(llm.calls.values())
    assert status["cost"]["retries"] == 2 and "2 retries of transient errors" in logs
    progress = status["progress"]
    assert progress["metricCalls"] < progress["maxMetricCalls"] == 40  # stopped at the perfect score, within budget
    assert progress["percent"] == progress["metricCalls"] * 100 // 40
    assert {key: status[key] for key in OPERATOR_STATUS} == OPERATOR_STATUS

    message = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert message["workerResult"] == status["workerResult"] and message["finalScores"] == status["finalScores"]
    assert "result: PerfectScore" in logs
    assert llm.api_key not in logs + json.dumps(status)


def test_sigterm_stops_the_run_and_the_best_result_so_far_is_reported(cluster, kubelet, llm):
    llm.set_latency(0.2)  # each evaluation takes a while: the pod is deleted mid-run
    create_job(cluster, llm, max_metric_calls=400)
    create_worker_pod(cluster)
    wait_for_status(cluster, lambda s: (s.get("progress") or {}).get("iteration", 0) >= 1, timeout=30)

    cluster.delete("pods", "worker", gracePeriodSeconds=20)
    status = wait_for_status(cluster, lambda s: "workerResult" in s, timeout=15)  # well within the grace period
    assert status["workerResult"]["reason"] == "Cancelled" and status["workerResult"]["succeeded"] is True
    assert "SIGTERM" in status["workerResult"]["message"]
    assert status["optimizedPrompts"] and status["finalScores"]["aggregate"] >= status["initialScores"]["aggregate"]
    assert status["progress"]["metricCalls"] < 400
    assert {key: status[key] for key in OPERATOR_STATUS} == OPERATOR_STATUS


def wait_for_pod_end(cluster, timeout=40):
    return cluster.wait_for(
        "pods", "worker", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), timeout=timeout
    )


def termination_message(pod):
    return json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])


def test_a_run_where_some_judge_answers_are_garbage_succeeds_and_reports_how_many_failed(cluster, kubelet, llm):
    llm.garble_judge_answers(0.7)  # most judge answers hold no verdict; a judge asked again may answer
    create_job(cluster, llm, max_metric_calls=40, exampleFailurePolicy={"maxFailedFraction": 0.5})
    create_worker_pod(cluster)

    pod = wait_for_pod_end(cluster)

    status = job_status(cluster)
    assert pod["status"]["phase"] == "Succeeded", status
    assert status["workerResult"]["reason"] == "Completed" and status["workerResult"]["succeeded"] is True
    failed = status["progress"]["failedExamples"]
    assert 0 < failed <= 0.5 * 40 and f"{failed} evaluations not scored" in status["workerResult"]["message"]
    assert llm.garbled_answers > failed  # most garbled answers were made good by asking again
    for scores in (status["initialScores"], status["finalScores"]):
        assert 0 <= scores["failedExamples"] < 4 and set(scores["scorers"]) == {"ExactMatch", "Correctness"}


def test_a_judge_that_never_keeps_the_format_stops_the_run_with_too_many_failed_examples(cluster, kubelet, llm):
    llm.garble_judge_answers(1.0)
    create_job(cluster, llm, max_metric_calls=40)  # the default limit: 0.1 x 40 failed evaluations
    create_worker_pod(cluster)

    pod = wait_for_pod_end(cluster)

    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    status = job_status(cluster)
    result = status["workerResult"]
    assert result["reason"] == "TooManyFailedExamples" and result["succeeded"] is False
    assert "spec.exampleFailurePolicy.maxFailedFraction 0.1 of the run's 40" in result["message"]
    # The seed's 4 validation records, then the first minibatch of 3: each judge asked 1 + 2 times.
    assert status["progress"]["failedExamples"] == 7 and llm.calls["judge"] == 7 * 3 == llm.garbled_answers
    assert termination_message(pod)["workerResult"] == result


def test_a_missing_configmap_ends_the_worker_with_invalid_input(cluster, kubelet, llm):
    create_job(
        cluster,
        llm,
        max_metric_calls=40,
        prompts=[{"name": "classify", "configMapKeyRef": {"name": "prompts", "key": "classify.txt"}}],
    )
    create_worker_pod(cluster)

    pod = wait_for_pod_end(cluster)

    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2
    expected = {
        "reason": "InvalidInput",
        "succeeded": False,
        "message": (
            f"spec.prompts[0].configMapKeyRef: ConfigMap 'prompts' not found in namespace '{cluster.namespace}'"
        ),
    }
    assert job_status(cluster)["workerResult"] == expected
    assert termination_message(pod)["workerResult"] == expected
    assert sum(llm.calls.values()) == 0


def test_the_deadline_counts_from_the_jobs_start(cluster, kubelet, llm):
    llm.set_latency(0.2)
    # Run on to the deadline: a candidate that scores 1 in the seconds left would stop the run first (PerfectScore).
    create_job(cluster, llm, max_metric_calls=400, stop_at_perfect_score=False, activeDeadlineSeconds=30)
    started = datetime.now(UTC) - timedelta(seconds=25)
    cluster.patch(
        "poj", "sentiment", {"status": {"startTime": started.strftime("%Y-%m-%dT%H:%M:%SZ")}}, subresource="status"
    )
    create_worker_pod(cluster)

    pod = wait_for_pod_end(cluster)

    result = job_status(cluster)["workerResult"]
    assert pod["status"]["phase"] == "Succeeded" and result["reason"] == "DeadlineReached", result
    assert result["succeeded"] is True and job_status(cluster)["progress"]["metricCalls"] < 400


def test_remaining_deadline_subtracts_the_time_since_the_start_and_a_reserve_for_reporting():
    spec = parse_spec(
        {
            "optimizer": {"type": "MetaPrompt", "reflectionModel": "m"},
            "prompts": [{"name": "p", "template": "t"}],
            "task": {"model": "m"},
            "activeDeadlineSeconds": 3600,
        }
    )
    now = datetime(2026, 1, 1, 1, 0, 0, tzinfo=UTC)

    assert remaining_deadline(spec, None, now) == 3600 - 60  # the reserve is capped at a minute
    assert remaining_deadline(spec, "2026-01-01T00:30:00Z", now) == 1800 - 60
    assert remaining_deadline(spec, "2026-01-01T00:01:00Z", now) == pytest.approx(60 * 0.9)  # a tenth of 60 s
    assert remaining_deadline(spec, "2025-12-31T00:00:00Z", now) == 0
    assert remaining_deadline(spec.model_copy(update={"active_deadline_seconds": None}), None, now) is None


def test_a_retried_worker_continues_the_usage_of_earlier_attempts():
    cost = Cost.model_validate({"promptTokens": 100, "completionTokens": 10, "usd": 0.5, "llmCalls": 12, "retries": 3})
    usage = Usage.from_cost(cost)
    assert usage == Usage(prompt_tokens=100, completion_tokens=10, usd=0.5, calls={"earlier attempts": 12}, retries=3)
    assert Usage.from_cost(None) == Usage()


@pytest.mark.parametrize(
    "reason, best, code",
    [
        ("Completed", {"p": "t"}, 0),
        ("Cancelled", {"p": "t"}, 0),
        ("DeadlineReached", {"p": "t"}, 0),
        ("BudgetExhausted", {"p": "t"}, 0),
        ("Cancelled", None, 1),
        ("LLMError", None, 1),
        ("Error", {"p": "t"}, 1),
        ("TooManyFailedExamples", {"p": "t"}, 1),
        ("InvalidInput", None, 2),
    ],
)
def test_exit_codes(reason, best, code):
    assert exit_code(Result(reason, "", best_candidate=best)) == code


def run_worker_process(cluster, tmp_path, **env):
    """`promptopt worker` for the job, here as the worker ServiceAccount (a retried Pod, without the kubelet)."""
    kubeconfig = cluster.service_account_kubeconfig(
        cluster.namespace, WORKER_SERVICE_ACCOUNT, tmp_path / "worker.kubeconfig"
    )
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PROMPTOPT_JOB_NAME": "sentiment",
        "PROMPTOPT_JOB_NAMESPACE": cluster.namespace,
        "PROMPTOPT_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log"),
        **env,
    }
    return subprocess.run(
        [str(Path(sys.executable).with_name("promptopt")), "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_refuses_a_spec_changed_since_the_job_started(cluster, llm, tmp_path):
    create_job(cluster, llm, max_metric_calls=10)
    worker = run_worker_process(cluster, tmp_path, PROMPTOPT_SPEC_HASH="not-the-started-spec")
    assert worker.returncode == 2
    result = job_status(cluster)["workerResult"]
    assert result["reason"] == "InvalidInput" and "changed after it started" in result["message"]
    assert llm.request_count == 0


def test_a_retried_worker_refuses_configmap_inputs_changed_since_the_job_started(cluster, llm, tmp_path):
    template = "Classify the sentiment of this review.\n\n{{review}}"
    cluster.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prompts"}, "data": {"classify.txt": template}}
    )
    create_job(
        cluster,
        llm,
        max_metric_calls=8,  # the seed's evaluation only: a short first attempt
        prompts=[{"name": "classify", "configMapKeyRef": {"name": "prompts", "key": "classify.txt"}}],
    )

    first = run_worker_process(cluster, tmp_path, OPENAI_API_KEY=llm.api_key)  # what the credentials Secret gives
    assert first.returncode == 0, first.stdout[-2000:]
    digest = hashlib.sha256(template.encode()).hexdigest()[:16]
    recorded = [{"name": "prompts", "key": "classify.txt", "digest": digest}]
    assert job_status(cluster)["configMapInputs"] == recorded

    cluster.patch("configmaps", "prompts", {"data": {"classify.txt": "Say positive.\n\n{{review}}"}})
    requests = llm.request_count
    second = run_worker_process(cluster, tmp_path, OPENAI_API_KEY=llm.api_key)

    assert second.returncode == 2
    status = job_status(cluster)
    assert status["workerResult"]["reason"] == "InvalidInput" and status["workerResult"]["message"] == (
        "spec.prompts[0].configMapKeyRef: ConfigMap 'prompts' key 'classify.txt' changed since the job started "
        "(status.configMapInputs), and a job runs the inputs it started with: restore the text, or create a new job "
        "to run the new one"
    )
    assert llm.request_count == requests and status["configMapInputs"] == recorded

    cluster.patch("configmaps", "prompts", {"data": {"classify.txt": template}})
    assert run_worker_process(cluster, tmp_path, OPENAI_API_KEY=llm.api_key).returncode == 0  # restored: it runs


def test_credentials_with_harmless_names_are_still_masked():
    from promptopt_worker.redaction import add_secrets, redact
    from promptopt_worker.main import credential_values

    spec = parse_spec(
        {
            "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/x"},
            "prompts": [{"name": "p", "template": "hi"}],
            "task": {"model": "openai/y"},
            "worker": {
                "env": [
                    {"name": "LOG_FORMAT", "value": "json-lines-please"},
                    {"name": "VENDOR_ACCESS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ]
            },
        }
    )
    environ = {
        "PATH": "/usr/local/bin:/usr/bin",
        "HOSTNAME": "job-worker-1",
        "PROMPTOPT_JOB_NAME": "job",
        "AZURE_ENDPOINT_CREDENTIAL": "opaque-credential-value",
        "VENDOR_ACCESS": "from-a-secret-key-ref",
        "LOG_FORMAT": "json-lines-please",
    }
    values = credential_values(environ, spec)
    assert sorted(values) == ["from-a-secret-key-ref", "opaque-credential-value"]
    add_secrets(values)
    assert "opaque-credential-value" not in redact("401: bad credential opaque-credential-value for job-worker-1")
    assert "job-worker-1" in redact("401: bad credential opaque-credential-value for job-worker-1")
