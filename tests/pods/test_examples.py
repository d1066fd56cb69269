"""Every example of examples/ through the chart's operator, each worker a real Pod from the worker image under
Pod Security "restricted": what `kubectl apply -f examples/<name>.yaml` does on a user's cluster, with the
simulated LLM's models (as `promptopt run --simulated-llm` swaps them) and this node's addresses."""

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from promptopt_harness.jobs import condition, eventually, status_of, table_rows, wait_for_phase, worker_pods

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def apply(node_kubectl, documents):
    return node_kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


def credentials(pods, llm):
    pods.cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-credentials"},
            "stringData": {"OPENAI_API_KEY": llm.api_key},
        }
    )


def test_every_example_is_run_here():
    """A new example needs its test below (the Secret template is the others' companion; the keyless demo's test is
    the README's flow in test_install.py)."""
    assert sorted(path.stem for path in EXAMPLES.glob("*.yaml")) == [
        "configmap-sources",
        "gepa-sentiment",
        "http-rag",
        "llm-credentials-secret",
        "metaprompt-zero-shot",
        "mlflow-registry",
        "simulated-llm-demo",
    ]


def assert_succeeded_in_a_real_pod(pods, node_kubectl, name, timeout=120):
    status = wait_for_phase(pods.cluster, name, "Succeeded", timeout=timeout)
    assert condition(status, "Ready")["status"] == "True" and status["attempts"] == 1
    for ready in ("Complete", "Ready"):  # a batch user's wait and a GitOps tool's
        node_kubectl("wait", f"--for=condition={ready}", f"poj/{name}", "--timeout=10s")
    (pod,) = worker_pods(pods.cluster, name)
    container = pod["status"]["containerStatuses"][0]
    # The worker image as built, run by containerd; it ended by itself, and said so in its termination message.
    assert container["image"] == pods.images.worker.reference
    assert container["containerID"].startswith("containerd://")
    terminated = container["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert json.loads(terminated["message"])["workerResult"]["reason"] == status["workerResult"]["reason"]
    return status


def test_the_readme_job(pods, node_llm, node_kubectl, example):
    credentials(pods, node_llm)
    apply(node_kubectl, example("gepa-sentiment"))
    status = assert_succeeded_in_a_real_pod(pods, node_kubectl, "gepa-sentiment")
    assert status["finalScores"]["aggregate"] > status["initialScores"]["aggregate"]
    assert set(status["finalScores"]["scorers"]) == {"ExactMatch", "Correctness"}  # the example's two
    assert "{{review}}" in status["optimizedPrompts"][0]["template"]
    # The simulated LLM's answers let a candidate score 1.000: the run stops there (PerfectScore).
    assert status["workerResult"]["reason"] == "PerfectScore" and status["completionTime"] >= status["startTime"]
    assert condition(status, "Stalled")["status"] == "False" and status["observedGeneration"] == 1
    assert status["cost"]["llmCalls"] > 0

    listing = node_kubectl("get", "poj", "gepa-sentiment").stdout.splitlines()
    assert listing[0].split()[:6] == ["NAME", "PHASE", "OPTIMIZER", "PROGRESS%", "INITIAL", "BEST"]
    progress = status["progress"]
    assert progress["metricCalls"] <= progress["maxMetricCalls"]  # the budget is never overshot
    percent = str(progress["metricCalls"] * 100 // progress["maxMetricCalls"])
    assert listing[1].split()[:4] == ["gepa-sentiment", "Succeeded", "GEPA", percent]
    (wide,) = table_rows(node_kubectl("get", "poj", "gepa-sentiment", "-o", "wide").stdout)
    assert (wide["REASON"], wide["POD"]) == ("PerfectScore", "gepa-sentiment-worker-1")  # the worker's reason
    described = node_kubectl("describe", "poj", "gepa-sentiment").stdout
    # The Events of its transitions, from the operator by name.
    assert re.search(r"Normal\s+PodCreated\s+\S+\s+promptopt-operator\s+worker Pod 1 created", described), described
    assert re.search(r"Normal\s+PerfectScore\s+\S+\s+promptopt-operator\s", described), described
    explained = node_kubectl("explain", "poj.spec.optimizer").stdout
    assert "reflectionModel" in explained and "The optimizer and its settings." in explained
    (pod,) = worker_pods(pods.cluster, "gepa-sentiment")
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True
    logs = node_kubectl("logs", "gepa-sentiment-worker-1").stdout  # through the kubelet, as users read them
    assert "optimizing job promptopt-jobs/gepa-sentiment with GEPA" in logs
    assert node_llm.api_key not in logs + json.dumps(status)


def test_configmap_sources(pods, node_llm, node_kubectl, example):
    credentials(pods, node_llm)
    apply(node_kubectl, example("configmap-sources"))
    status = assert_succeeded_in_a_real_pod(pods, node_kubectl, "configmap-sources")
    read = {(i["name"], i["key"]) for i in status["configMapInputs"]}
    assert read == {("sentiment-prompts", "classify.txt"), ("sentiment-dataset", "reviews.csv")}


def test_metaprompt_zero_shot(pods, node_llm, node_kubectl, example):
    credentials(pods, node_llm)
    apply(node_kubectl, example("metaprompt-zero-shot"))
    status = assert_succeeded_in_a_real_pod(pods, node_kubectl, "metaprompt-zero-shot")
    assert status["optimizedPrompts"]


def test_http_rag_runs_the_example_services_as_pods(pods, node_llm, node_kubectl, example):
    """The example's two services run as the Deployments it declares, from the worker image; the job reaches them
    by Pod address (no cluster DNS or kube-proxy here), with the header its credentials Secret holds."""
    documents = example("http-rag")
    apply(node_kubectl, [d for d in documents if d["kind"] in ("Secret", "Deployment")])
    urls = {}
    for name in ("toy-rag", "webhook-scorer"):
        node_kubectl("rollout", "status", f"deployment/{name}", "--timeout=90s", timeout=100)
        (pod,) = pods.cluster.list("pods", label_selector=f"app.kubernetes.io/name={name}")
        urls[f"http://{name}:8080"] = f"http://{pod['status']['podIP']}:8080"
    documents = example("http-rag", urls=urls)
    apply(node_kubectl, [d for d in documents if d["kind"] == "PromptOptimizationJob"])
    status = assert_succeeded_in_a_real_pod(pods, node_kubectl, "http-rag")
    assert status["workerResult"]["reason"] == "GoalReached"
    assert status["initialScores"]["scorers"] == {"answer": 0.5, "concise": 0.0}
    assert status["finalScores"]["scorers"] == {"answer": 1.0, "concise": 1.0}
    rag_logs = node_kubectl("logs", "deployment/toy-rag").stdout
    assert "401" not in rag_logs  # every request carried the header from the Secret
    events = node_kubectl("get", "events", "--field-selector", "involvedObject.name=http-rag").stdout
    worker_logs = node_kubectl("logs", "http-rag-worker-1").stdout
    assert "replace-me" not in json.dumps(status) + events + worker_logs  # the header's value is masked


def test_mlflow_registry(pods, node_llm, node_kubectl, example, node_mlflow):
    """The prompt comes from MLflow's registry by its alias, the optimized one goes back as the next version
    (alias candidate) and into a ConfigMap; MLflow runs on the node's address, read back through MLflow's client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=node_mlflow.client_url, registry_uri=node_mlflow.client_url)
    prompt = f"sentiment-{uuid.uuid4().hex[:8]}"
    client.register_prompt(prompt, "Classify the sentiment of this review.\n\n{{review}}")
    client.set_prompt_alias(prompt, "production", 1)
    documents = example(
        "mlflow-registry",
        urls={"http://mlflow.mlops.svc:5000": node_mlflow.url, "prompts:/sentiment@": f"prompts:/{prompt}@"},
    )
    for document in documents:
        if document["kind"] == "Secret":  # no token: this MLflow server has no auth
            document["stringData"].pop("MLFLOW_TRACKING_TOKEN")
    apply(node_kubectl, documents)
    status = assert_succeeded_in_a_real_pod(pods, node_kubectl, "mlflow-sentiment", timeout=180)
    assert status["mlflow"]["sourcePrompts"] == {"classify": f"prompts:/{prompt}/1"}
    assert status["mlflow"]["optimizedPrompts"] == {"classify": f"prompts:/{prompt}/2"}
    registered = client.load_prompt(f"prompts:/{prompt}@candidate")
    assert registered.template == status["optimizedPrompts"][0]["template"]
    assert registered.tags["promptopt.dev/namespace"] == pods.cluster.namespace
    assert registered.tags["promptopt.dev/job-uid"] == pods.cluster.get("poj", "mlflow-sentiment")["metadata"]["uid"]
    registered_condition = eventually(
        lambda: condition(status_of(pods.cluster, "mlflow-sentiment"), "PromptsRegistered"),
        30,
        "the PromptsRegistered condition",
    )
    assert registered_condition["message"] == f"registered in MLflow as prompts:/{prompt}/2"
    # Searched by source prompt, as MLflow's job search filters by it: the operator labels the job with it.
    assert node_kubectl(
        "get", "poj", "-l", f"prompt.promptopt.dev/{prompt}=production", "-o", "name"
    ).stdout.split() == ["promptoptimizationjob.promptopt.dev/mlflow-sentiment"]
    run = client.get_run(status["mlflow"]["runId"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == status["mlflow"]["experimentId"]
    assert run.data.tags["promptopt.dev/job"] == "mlflow-sentiment" and run.data.params["optimizer_type"] == "gepa"
    assert run.data.metrics["final_eval_score"] == pytest.approx(status["finalScores"]["aggregate"])
    assert "candidates.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    written = eventually(
        lambda: condition(status_of(pods.cluster, "mlflow-sentiment"), "OutputWritten"),
        30,
        "the OutputWritten condition",
    )
    assert written["status"] == "True"
    assert pods.cluster.get("configmaps", "sentiment-prompt")["data"] == {"classify": registered.template}
