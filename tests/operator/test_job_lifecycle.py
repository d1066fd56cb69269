"""The whole job lifecycle: the real operator and worker, a real API server, the local kubelet, the simulated LLM.

Every test drives the system only through the API (or kubectl) and watches the job's status, like a user.
"""
import base64
import json
import re
import time
import uuid

import pytest
import yaml

from promptopt_harness.client import ApiError
from promptopt_harness.operator_process import OperatorProcess
from promptopt.example_services import QUESTIONS, toy_rag, webhook_scorer
from promptopt.simulated_llm import REFLECT_MODEL, sentiment_dataset

pytestmark = pytest.mark.slow

FAST_RETRY = ("--retry-base-delay", "0.3")


@pytest.fixture(autouse=True)
def restricted_namespace(cluster):
    """Jobs run where Pod Security admission enforces "restricted", so every worker Pod is checked by it."""
    cluster.patch("namespaces", cluster.namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})


@pytest.fixture
def start_operator(cluster, install_rbac, tmp_path):
    """start_operator(*flags, rbac={chart values}) runs `promptopt operator` as the chart's operator
    ServiceAccount, with only the permissions the chart renders; every one is stopped at the end."""
    started = []

    def start(*flags, rbac=None):
        kubeconfig = install_rbac(**(rbac or {}))
        operator = OperatorProcess(kubeconfig, *FAST_RETRY, *flags,
                                   log_path=tmp_path / f"operator-{len(started)}.log").start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


@pytest.fixture
def credentials(cluster, llm):
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-credentials"},
                    "data": {"OPENAI_API_KEY": base64.b64encode(llm.api_key.encode()).decode()}})
    return "llm-credentials"


def gepa_job(name, llm, *, max_metric_calls=24, records=8, **spec):
    return {
        "apiVersion": "promptopt.dev/v1alpha1", "kind": "PromptOptimizationJob", "metadata": {"name": name},
        "spec": {
            "optimizer": {"type": "GEPA", "reflectionModel": "openai/sim-reflect",
                          "gepa": {"maxMetricCalls": max_metric_calls}},
            "prompts": [{"name": "classify", "template": "Classify the sentiment of this review.\n\n{{review}}"}],
            "task": {"model": "openai/sim-task", "apiBase": llm.base_url, "temperature": 0},
            "dataset": {"records": sentiment_dataset(records, seed=3)},
            "scorers": [{"name": "ExactMatch"}],
            "credentials": {"secretRef": {"name": "llm-credentials"}},
            **spec,
        },
    }


def job_exists(cluster, name):
    try:
        cluster.get("poj", name)
    except ApiError as error:
        if error.code == 404:
            return False
        raise
    return True


def status_of(cluster, name):
    return cluster.get("poj", name).get("status") or {}


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_phase(cluster, name, phase, timeout=60):
    def reached():
        status = status_of(cluster, name)
        return status if status.get("phase") == phase else None
    try:
        return wait_for(reached, timeout, f"{name} to be {phase}")
    except AssertionError:
        raise AssertionError(f"{name} never became {phase}; status: {status_of(cluster, name)}") from None


def condition(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


def worker_pods(cluster, name):
    return cluster.list("pods", label_selector=f"promptopt.dev/job={name}")


def test_gepa_job_runs_to_success_with_scores_in_status(cluster, kubelet, llm, credentials, kubectl, start_operator):
    start_operator()
    cluster.create(gepa_job("sentiment", llm))
    status = wait_for_phase(cluster, "sentiment", "Succeeded")

    assert status["finalScores"]["aggregate"] > status["initialScores"]["aggregate"]
    assert set(status["finalScores"]["scorers"]) == {"ExactMatch"}
    assert "{{review}}" in status["optimizedPrompts"][0]["template"]
    assert status["workerResult"]["reason"] == "Completed" and status["attempts"] == 1
    assert status["completionTime"] >= status["startTime"]
    assert condition(status, "Ready")["status"] == "True" and condition(status, "Stalled")["status"] == "False"
    assert status["observedGeneration"] == 1 and status["cost"]["llmCalls"] > 0

    listing = kubectl("get", "poj", "sentiment").stdout.splitlines()
    assert listing[0].split()[:6] == ["NAME", "PHASE", "OPTIMIZER", "PROGRESS%", "INITIAL", "BEST"]
    progress = status["progress"]
    assert progress["metricCalls"] <= progress["maxMetricCalls"]  # the budget is never overshot
    percent = str(progress["metricCalls"] * 100 // progress["maxMetricCalls"])
    assert listing[1].split()[:4] == ["sentiment", "Succeeded", "GEPA", percent]
    header, row = kubectl("get", "poj", "sentiment", "-o", "wide").stdout.splitlines()
    wide = dict(zip(header.split(), row.split(), strict=True))
    assert (wide["REASON"], wide["POD"]) == ("Succeeded", "sentiment-worker-1")
    kubectl("wait", "--for=condition=Ready", "poj/sentiment", "--timeout=10s")
    described = kubectl("describe", "poj", "sentiment").stdout
    assert "PodCreated" in described and "Succeeded" in described  # the Events of its transitions
    explained = kubectl("explain", "poj.spec.optimizer").stdout
    assert "reflectionModel" in explained and "The optimizer and its settings." in explained
    (pod,) = worker_pods(cluster, "sentiment")
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True
    assert pod["status"]["phase"] == "Succeeded"


def test_cancel_stops_the_pod_and_keeps_the_best_so_far(cluster, kubelet, llm, credentials, kubectl, start_operator):
    llm.set_latency(0.05)
    # The first reflection takes 5 s, so the cancel finds the run going (once its prompt scores 1, gepa spends
    # the rest of its budget on cached evaluations in seconds).
    llm.set_latency(5, model=REFLECT_MODEL)
    start_operator()
    cluster.create(gepa_job("long", llm, max_metric_calls=2000, records=10))
    wait_for(lambda: status_of(cluster, "long").get("initialScores"), 60, "the initial scores")

    kubectl("patch", "poj", "long", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    status = wait_for_phase(cluster, "long", "Cancelled", timeout=30)
    assert condition(status, "Stalled")["reason"] == "Cancelled"
    wait_for(lambda: not worker_pods(cluster, "long"), 60, "the worker Pod to go")
    final = wait_for(lambda: status_of(cluster, "long").get("workerResult") and status_of(cluster, "long"),
                     30, "the worker's last report")
    assert final["workerResult"]["reason"] == "Cancelled"
    assert final["optimizedPrompts"] and final["progress"]["bestScore"] is not None

    kubectl("patch", "poj", "long", "--type=merge", "-p", '{"spec":{"cancel":false}}')
    time.sleep(1)
    assert status_of(cluster, "long")["phase"] == "Cancelled" and not worker_pods(cluster, "long")


def test_deleting_a_running_job_deletes_its_pod(cluster, kubelet, llm, credentials, kubectl, start_operator):
    llm.set_latency(0.05)
    start_operator()
    cluster.create(gepa_job("doomed", llm, max_metric_calls=2000))
    wait_for_phase(cluster, "doomed", "Running")
    kubectl("delete", "poj", "doomed", "--timeout=30s")
    assert not job_exists(cluster, "doomed")
    wait_for(lambda: not worker_pods(cluster, "doomed") and not kubelet.running_pods(), 60, "no worker left")


def test_a_worker_pod_deleted_under_a_running_job_is_replaced_and_the_job_succeeds(
        cluster, kubelet, llm, credentials, kubectl, start_operator):
    llm.set_latency(0.3)  # the first worker must still be running when its Pod is deleted: it starts in under 1 s
    start_operator()
    cluster.create(gepa_job("survivor", llm, max_metric_calls=30))
    wait_for_phase(cluster, "survivor", "Running")
    kubectl("delete", "pod", "survivor-worker-1", "--wait=false")  # by hand, as an eviction or a lost node would

    status = wait_for_phase(cluster, "survivor", "Succeeded", timeout=90)
    assert status["attempts"] == 2 and status["podName"] == "survivor-worker-2"
    assert status["lastFailure"]["attempt"] == 1 and "disappeared" in status["lastFailure"]["message"]
    described = kubectl("describe", "poj", "survivor").stdout
    assert "BackoffRetry" in described  # the retry was waited for and said


def test_failing_pods_are_retried_then_backoff_limit_exceeded(cluster, kubelet, llm, credentials, start_operator):
    kubelet.set_image_behaviour("worker:oom", "OOMKilled")
    start_operator()
    cluster.create(gepa_job("oom", llm, backoffLimit=1, worker={"image": "worker:oom"}))
    status = wait_for_phase(cluster, "oom", "Failed")
    assert condition(status, "Ready")["reason"] == "BackoffLimitExceeded"
    assert "OOMKilled" in status["message"] and status["attempts"] == 2
    assert sorted(p["metadata"]["name"] for p in worker_pods(cluster, "oom")) == ["oom-worker-1", "oom-worker-2"]


def test_deadline_fails_the_job_even_if_the_worker_hangs(cluster, kubelet, llm, credentials, start_operator):
    llm.set_latency(30)  # every LLM call hangs past the deadline
    start_operator()
    cluster.create(gepa_job("slow", llm, activeDeadlineSeconds=3))
    status = wait_for_phase(cluster, "slow", "Failed", timeout=30)
    assert condition(status, "Ready")["reason"] == "DeadlineExceeded"
    wait_for(lambda: all(p["status"]["phase"] in ("Failed", "Succeeded") for p in worker_pods(cluster, "slow"))
             or not worker_pods(cluster, "slow"), 60, "the worker to stop")


@pytest.mark.parametrize("trouble,expected_reason,expected_message", [
    ("image", "ImagePullBackOff|ErrImagePull", "pull"),
    ("secret", "CreateContainerConfigError", 'secret "missing-secret" not found'),
])
def test_pod_trouble_is_visible_within_seconds(cluster, kubelet, llm, credentials, start_operator,
                                               trouble, expected_reason, expected_message):
    kubelet.set_image_behaviour("worker:missing", "ImagePullBackOff")
    start_operator()
    spec = ({"worker": {"image": "worker:missing"}} if trouble == "image"
            else {"credentials": {"secretRef": {"name": "missing-secret"}}})
    cluster.create(gepa_job("stuck", llm, **spec))

    def surfaced():
        status = status_of(cluster, "stuck")
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        return status if re.fullmatch(expected_reason, ready.get("reason") or "") else None

    status = wait_for(surfaced, 15, f"the {trouble} trouble in the job's conditions")
    assert status["phase"] == "Pending" and expected_message in condition(status, "Ready")["message"]
    assert condition(status, "Reconciling")["status"] == "True"  # still in progress, not failed


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
    assert started_order == names  # first come, first started


def test_queue_positions_move_when_a_job_ahead_leaves_the_line(cluster, kubelet, llm, credentials, kubectl,
                                                              start_operator):
    # Every LLM call hangs: the job ahead holds the one slot for the whole test, however fast the worker is (with
    # 0.2 s a call it could finish before the cancel, and the last job then starts instead of moving up).
    llm.set_latency(30)
    start_operator("--max-running-jobs", "1")
    for name in ("ahead", "next", "last"):
        cluster.create(gepa_job(name, llm, max_metric_calls=2000))
        time.sleep(1.05)  # distinct creationTimestamps
    wait_for(lambda: status_of(cluster, "last").get("queuePosition") == 2, 30, "last to be second in line")
    kubectl("patch", "poj", "next", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    # Moved by the change itself, not by the 30-second refresh timer that catches what a watch missed.
    wait_for(lambda: status_of(cluster, "last").get("queuePosition") == 1, 10, "last to move up")


def test_operator_restarted_mid_job_adopts_it_without_duplicates(cluster, kubelet, llm, credentials, start_operator):
    llm.set_latency(0.03)
    first = start_operator()
    cluster.create(gepa_job("survivor", llm, max_metric_calls=40))
    wait_for_phase(cluster, "survivor", "Running")
    first.kill()
    start_operator()
    status = wait_for_phase(cluster, "survivor", "Succeeded", timeout=90)
    assert status["attempts"] == 1
    assert [p["metadata"]["name"] for p in worker_pods(cluster, "survivor")] == ["survivor-worker-1"]


def test_a_spec_the_models_reject_fails_without_a_pod(cluster, kubelet, llm, credentials, start_operator):
    start_operator()
    job = gepa_job("bad-regex", llm)
    job["spec"]["scorers"] = [{"name": "Regex", "params": {"pattern": "(unclosed"}}]  # passes CEL, not the models
    cluster.create(job)
    status = wait_for_phase(cluster, "bad-regex", "Failed", timeout=15)
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert "spec.scorers[0]" in status["message"] and "regular expression" in status["message"]
    assert not worker_pods(cluster, "bad-regex")


def test_metrics_count_jobs_and_pods(cluster, kubelet, llm, credentials, start_operator):
    operator = start_operator()
    cluster.create(gepa_job("measured", llm, max_metric_calls=8, records=4))
    wait_for_phase(cluster, "measured", "Succeeded")
    metrics = operator.scrape()
    assert re.search(r'^promptopt_jobs\{phase="Succeeded"\} 1\.0$', metrics, re.M), metrics
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
    header, row = kubectl("get", "poj", "goal", "-o", "wide").stdout.splitlines()
    assert dict(zip(header.split(), row.split(), strict=True))["REASON"] == "GoalReached"


def test_a_job_whose_program_and_scorer_are_services_succeeds(cluster, kubelet, llm, kubectl, start_operator):
    """Issue 12's target: the program is the example RAG service (which requires a header the job takes from its
    credentials Secret), the main scorer the example webhook, beside a judge of the job's own instructions. The
    worker Pod runs as a local process, so the services listen on loopback."""
    token = "Bearer rag-token-51c0e9d2"
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rag-credentials"}, "stringData": {
        "OPENAI_API_KEY": llm.api_key, "RAG_AUTHORIZATION": token}})
    start_operator()
    with toy_rag(required_headers={"Authorization": token}) as rag, webhook_scorer() as scorer:
        cluster.create({
            "apiVersion": "promptopt.dev/v1alpha1", "kind": "PromptOptimizationJob", "metadata": {"name": "rag"},
            "spec": {
                "optimizer": {"type": "GEPA", "reflectionModel": "openai/sim-reflect",
                              "reflectionApiBase": llm.base_url, "gepa": {"maxMetricCalls": 60}},
                "prompts": [{"name": "answer", "template": "Answer from the product documentation.\n\n{{question}}"}],
                "task": {"http": {"url": rag.url, "headers": [
                    {"name": "Authorization", "credentialsKey": "RAG_AUTHORIZATION"}]}, "concurrency": 4},
                "dataset": {"records": [{"inputs": {"question": q}, "expectations": {"expected_response": a}}
                                        for q, a in QUESTIONS]},
                "scorers": [
                    {"name": "Webhook", "label": "answer", "weight": 2, "http": {"url": scorer.url}},
                    {"name": "Judge", "label": "concise", "model": "openai/sim-judge", "apiBase": llm.base_url,
                     "params": {"instructions": "Is {{ outputs }} a single word, in lowercase?"}},
                ],
                "credentials": {"secretRef": {"name": "rag-credentials"}},
            },
        })
        status = wait_for_phase(cluster, "rag", "Succeeded")
        assert rag.counts["unauthorized"] == 0 and rag.counts["answered"] > 0

    assert status["workerResult"]["reason"] == "Completed"
    assert status["initialScores"]["scorers"] == {"answer": 0.5, "concise": 0.0}
    assert status["finalScores"]["scorers"] == {"answer": 1.0, "concise": 1.0}
    assert status["cost"]["llmCalls"] >= rag.counts["answered"] + scorer.counts["answered"]
    events = kubectl("get", "events", "--field-selector", "involvedObject.name=rag").stdout
    logs = kubelet.logs(cluster.namespace, "rag-worker-1")
    assert token.split()[1] not in json.dumps(status) + events + logs


def test_a_job_starts_from_mlflows_registry_and_delivers_to_mlflow_and_a_configmap(cluster, kubelet, llm, credentials,
                                                                                   kubectl, mlflow_server,
                                                                                   start_operator, tmp_path):
    """The flow of examples/mlflow-registry.yaml, applied with kubectl: the worker Pod reads the prompt by its alias,
    logs its run, registers the optimized prompt as the next version (tagged with the job's namespace and uid, with
    the alias candidate), and the operator writes it to a ConfigMap; all read back through MLflow's client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    prompt = f"cluster-sentiment-{uuid.uuid4().hex[:8]}"
    client.register_prompt(prompt, "Classify the sentiment of this review.\n\n{{review}}")
    client.set_prompt_alias(prompt, "production", 1)
    start_operator()
    job = gepa_job("registry", llm)
    job["spec"]["prompts"] = [{"name": "classify", "registryUri": f"prompts:/{prompt}@production"}]
    job["spec"]["mlflow"] = {"trackingUri": mlflow_server.url, "experiment": f"cluster-{prompt}",
                             "registerOptimizedPrompts": {"alias": "candidate"}}
    job["spec"]["output"] = {"configMap": {"name": "registry-prompts"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    kubectl("apply", "-f", str(tmp_path / "job.yaml"))
    status = wait_for_phase(cluster, "registry", "Succeeded", timeout=120)

    assert status["mlflow"]["sourcePrompts"] == {"classify": f"prompts:/{prompt}/1"}
    assert status["mlflow"]["optimizedPrompts"] == {"classify": f"prompts:/{prompt}/2"}
    registered = client.load_prompt(f"prompts:/{prompt}@candidate")
    assert registered.template == status["optimizedPrompts"][0]["template"]
    assert registered.tags["promptopt.dev/namespace"] == cluster.namespace
    assert registered.tags["promptopt.dev/job-uid"] == cluster.get("poj", "registry")["metadata"]["uid"]
    said = wait_for(lambda: next((c for c in status_of(cluster, "registry")["conditions"]
                                  if c["type"] == "PromptsRegistered"), None), 15, "the PromptsRegistered condition")
    assert (said["status"], said["message"]) == ("True", f"registered in MLflow as prompts:/{prompt}/2")

    # Searched by source prompt, as MLflow's job search filters by it: the operator labels the job with it.
    assert kubectl("get", "poj", "-l", f"prompt.promptopt.dev/{prompt}=production", "-o", "name").stdout.split() == [
        "promptoptimizationjob.promptopt.dev/registry"]
    run = client.get_run(status["mlflow"]["runId"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == status["mlflow"]["experimentId"]
    assert run.data.tags["promptopt.dev/job"] == "registry" and run.data.params["optimizer"] == "GEPA"
    assert run.data.metrics["final_score.aggregate"] == pytest.approx(status["finalScores"]["aggregate"])
    assert "candidates.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    output_condition(cluster, "registry")
    assert cluster.get("configmaps", "registry-prompts")["data"] == {"classify": registered.template}


# --- spec.output: the optimized prompts in a ConfigMap ----------------------------------------------------------


def output_condition(cluster, name):
    return wait_for(lambda: next((c for c in status_of(cluster, name).get("conditions", [])
                                  if c["type"] == "OutputWritten"), None), 15, f"{name}'s OutputWritten condition")


def job_events(kubectl, name):
    return kubectl("get", "events", "--field-selector", f"involvedObject.name={name}",
                   "-o", "jsonpath={range .items[*]}{.type} {.reason}: {.message}{'\\n'}{end}").stdout


def test_the_optimized_prompts_reach_a_configmap_that_outlives_the_job(cluster, kubelet, llm, credentials, kubectl,
                                                                      start_operator):
    start_operator()
    cluster.create(gepa_job("delivered", llm, output={"configMap": {"name": "sentiment-prompts"}}))
    wait_for_phase(cluster, "delivered", "Succeeded")
    assert output_condition(cluster, "delivered") | {"status": "True", "reason": "OutputWritten"} == \
        output_condition(cluster, "delivered")
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
        kubectl, "delivered")

    cluster.delete("poj", "delivered")
    wait_for(lambda: not job_exists(cluster, "delivered"), 15, "the job to go")
    assert cluster.get("configmaps", "sentiment-prompts")["data"] == written["data"]  # not the job's: it stays


def test_a_configmap_that_is_not_the_jobs_is_never_overwritten(cluster, kubelet, llm, credentials, kubectl,
                                                              start_operator):
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "taken"},
                    "data": {"classify": "a person's prompt"}})
    start_operator()
    cluster.create(gepa_job("intruder", llm, max_metric_calls=8, records=4, output={"configMap": {"name": "taken"}}))
    wait_for_phase(cluster, "intruder", "Succeeded")
    refused = output_condition(cluster, "intruder")
    assert (refused["status"], refused["reason"]) == ("False", "OutputConflict")
    assert "ConfigMap taken exists and belongs to someone else" in refused["message"]
    assert cluster.get("configmaps", "taken")["data"] == {"classify": "a person's prompt"}
    assert "Warning OutputConflict" in job_events(kubectl, "intruder")
    assert "output" not in status_of(cluster, "intruder")


def test_a_cancelled_job_writes_its_best_so_far_and_an_owned_configmap_goes_with_it(cluster, kubelet, llm,
                                                                                    credentials, kubectl,
                                                                                    start_operator):
    llm.set_latency(5, model=REFLECT_MODEL)  # the cancel finds the run in its first reflection
    start_operator()
    cluster.create(gepa_job("stopped", llm, max_metric_calls=400, records=10,
                            output={"configMap": {"name": "stopped-prompts", "ownedByJob": True}}))
    wait_for(lambda: status_of(cluster, "stopped").get("initialScores"), 60, "the initial scores")
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
    wait_for(lambda: not [c for c in cluster.list("configmaps") if c["metadata"]["name"] == "stopped-prompts"], 30,
             "the garbage collector to delete the job's ConfigMap")


def test_a_failed_job_writes_nothing_and_says_so(cluster, kubelet, llm, credentials, start_operator):
    start_operator()
    failing = gepa_job("broken", llm, output={"configMap": {"name": "broken-prompts"}})
    failing["spec"]["prompts"][0]["template"] = "Classify: {{text}}"  # the records have no input "text"
    cluster.create(failing)
    wait_for_phase(cluster, "broken", "Failed")
    written = output_condition(cluster, "broken")
    assert (written["status"], written["reason"]) == ("False", "NothingToWrite")
    assert not [c for c in cluster.list("configmaps") if c["metadata"]["name"] == "broken-prompts"]


def test_ttl_deletes_the_finished_job(cluster, kubelet, llm, credentials, start_operator):
    start_operator()
    cluster.create(gepa_job("ephemeral", llm, max_metric_calls=8, records=4, ttlSecondsAfterFinished=1))
    wait_for_phase(cluster, "ephemeral", "Succeeded")
    wait_for(lambda: not job_exists(cluster, "ephemeral"), 15, "the TTL to delete the job")



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
        "records": [{"inputs": {"review": f"{filler}review {i}: {'good' if i % 2 else 'awful'}."},
                     "expectations": {"expected_response": "positive" if i % 2 else "negative"}}
                    for i in range(records)],
        "validationFraction": 0.001,
    }
    return job


def test_a_job_near_the_size_limit_runs_is_cancelled_and_deleted(cluster, kubelet, llm, credentials, kubectl,
                                                                  start_operator):
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
    wait_for(lambda: not worker_pods(cluster, "big-done") and not worker_pods(cluster, "big-cancelled"), 60,
             "the worker Pods to go")


def test_a_job_over_the_size_limit_is_refused_at_apply(cluster, llm, kubectl):
    import json

    too_big = json.dumps(large_job("too-big", llm, 5000))
    assert len(too_big) > ETCD_REQUEST_LIMIT
    refused = kubectl("apply", "--server-side", "-f", "-", input=too_big, check=False)
    assert refused.returncode != 0 and "request is too large" in refused.stderr
    client_side = kubectl("apply", "-f", "-", input=json.dumps(large_job("too-big", llm, 1000)), check=False)
    assert client_side.returncode != 0 and "metadata.annotations: Too long" in client_side.stderr
    assert not job_exists(cluster, "too-big")
