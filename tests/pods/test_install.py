"""The chart as a platform engineer runs it: `helm install` (done by the `real_pods` fixture), `helm upgrade` to a
new operator image while jobs run, and `helm uninstall`, with the helm CLI against a real node."""

import re
from pathlib import Path

import pytest

from promptopt_harness.client import ApiError
from promptopt_harness.jobs import eventually, status_of, table_rows, wait_for_phase, worker_pods

pytestmark = pytest.mark.slow

RELEASE_NAMESPACE = "promptopt-system"
CRD = "promptoptimizationjobs.promptopt.dev"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def readme_jobs(pods, node_llm, example):
    """``readme_jobs(*names, max_metric_calls=40)``: the README's job under each name, created, with its Secret."""
    pods.cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-credentials"},
            "stringData": {"OPENAI_API_KEY": node_llm.api_key},
        }
    )

    def create(*names, max_metric_calls=40):
        for name in names:
            (job,) = example("gepa-sentiment")
            job["metadata"]["name"] = name
            job["spec"]["optimizer"]["gepa"]["maxMetricCalls"] = max_metric_calls
            pods.cluster.create(job)

    return create


REPLICAS = 2  # the chart's default


def running_operators(pods, unlike=()):
    """The chart's operator replicas once that many run and none is being deleted (nor named in `unlike`)."""

    def replicas():
        found = pods.operator_pods()
        running = [p for p in found if p["status"].get("phase") == "Running" and p["metadata"]["name"] not in unlike]
        settled = len(found) == len(running) == REPLICAS and not any(
            p["metadata"].get("deletionTimestamp") for p in found
        )
        return running if settled else None

    return eventually(replicas, 120, f"{REPLICAS} running operator Pods")


def test_the_operator_runs_from_its_image_as_the_charts_deployment_under_pod_security_restricted(pods, node_kubectl):
    assert pods.helm.status()["info"]["status"] == "deployed"
    for operator in running_operators(pods):
        (container,) = operator["status"]["containerStatuses"]
        assert container["image"] == pods.images.operator.reference
        assert container["restartCount"] == 0, node_kubectl(
            "logs", "-n", RELEASE_NAMESPACE, operator["metadata"]["name"], "--previous", check=False
        ).stdout
    # Both are ready (a follower serves health as the leader does); one leads.
    eventually(
        lambda: all(c["ready"] for p in pods.operator_pods() for c in p["status"]["containerStatuses"]),
        60,
        "both replicas to be ready",
    )
    assert eventually(pods.leader_pod, 30, "a leader")
    namespace = pods.cluster.get("namespaces", RELEASE_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Admission enforces it here: a Pod that breaks the level is refused, so the operator's and the workers' pass it.
    with pytest.raises(ApiError, match='violates PodSecurity "restricted:latest"'):
        pods.cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "unconfined"},
                "spec": {"containers": [{"name": "c", "image": pods.images.worker.reference}]},
            }
        )
    logs = node_kubectl("logs", "-n", RELEASE_NAMESPACE, "deployment/promptopt").stdout
    assert "promptopt operator" in logs or "kopf" in logs.lower(), logs[-2000:]


def test_upgrading_to_a_new_operator_image_while_jobs_run_loses_and_duplicates_none(pods, node_llm, readme_jobs):
    node_llm.set_latency(0.2)
    names = [f"during-upgrade-{i}" for i in range(3)]
    readme_jobs(*names)
    for name in names:
        wait_for_phase(pods.cluster, name, "Running", timeout=90)
    before = {p["metadata"]["name"] for p in running_operators(pods)}
    revision = pods.helm.status()["version"]
    # A new image for the operator: the one built, under a tag of its own (what a release's new tag is to the node).
    new_tag = f"{pods.images.operator.tag}-next"
    pods.node.ctr(
        "images", "tag", "--force", pods.images.operator.reference, f"{pods.images.operator.repository}:{new_tag}"
    )
    values = pods.values()
    values["operator"]["image"]["tag"] = new_tag
    pods.helm.upgrade(pods.chart, values)
    try:
        # A rolling update: a new replica starts before an old one stops, and the old leader hands the Lease over.
        for after in running_operators(pods, unlike=before):
            assert after["spec"]["containers"][0]["image"].endswith(f":{new_tag}")
        for name in names:
            status = wait_for_phase(pods.cluster, name, "Succeeded", timeout=120)
            assert status["attempts"] == 1
            assert [p["metadata"]["name"] for p in worker_pods(pods.cluster, name)] == [f"{name}-worker-1"]
        assert pods.helm.status()["version"] == revision + 1
    finally:
        pods.helm.upgrade(pods.chart, pods.values())


def test_uninstall_leaves_the_crd_and_the_jobs_and_a_new_install_finishes_them(pods, node_llm, readme_jobs):
    """What `helm uninstall` leaves by design: the CRD (Helm never deletes what crds/ installed), so every job stays;
    a worker that runs on finishes its job, and the next install's operator takes its result."""
    node_llm.set_latency(0.3)
    readme_jobs("across-reinstall")
    wait_for_phase(pods.cluster, "across-reinstall", "Running", timeout=90)
    # The worker has read its job and inputs once it scores: uninstalled before that (RBAC gone), it could not
    # start the run, and the next operator would rightly count a second attempt.
    eventually(
        lambda: status_of(pods.cluster, "across-reinstall").get("progress", {}).get("metricCalls"),
        90,
        "the worker's first scores",
    )
    pods.helm.uninstall()
    try:
        eventually(lambda: not pods.operator_pods(), 90, "the operator Pods to go")
        assert pods.cluster.get("customresourcedefinitions", CRD)
        assert pods.cluster.get("poj", "across-reinstall")
        for resource, name in (("deployments", "promptopt"), ("serviceaccounts", "promptopt")):
            with pytest.raises(ApiError, match="404"):
                pods.cluster.get(resource, name, namespace=RELEASE_NAMESPACE)
    finally:
        pods.helm.install(pods.chart, pods.values())
    status = wait_for_phase(pods.cluster, "across-reinstall", "Succeeded", timeout=120)
    # Said in full if it fails (a tuple would be cut short).
    said = "\n".join(
        [
            f"attempts {status.get('attempts')}, last failure {status.get('lastFailure')}",
            *(
                f"{e.get('lastTimestamp') or e.get('eventTime')} {e['involvedObject']['kind']}/"
                f"{e['involvedObject']['name']} {e['reason']}: {e['message']} ({e.get('reportingInstance')})"
                for e in pods.cluster.list("events")
            ),
        ]
    )
    assert status["finalScores"]["aggregate"] is not None and status["attempts"] == 1, said


def test_the_readme_flow_without_a_key_helm_apply_wait_get_and_the_configmap(pods, node_kubectl):
    """Issue 21: a first cluster run with no API key. The chart deploys the simulated LLM as a demo, the example
    job (unchanged) reaches it by its Service's name through the cluster DNS, and `kubectl wait` sees it complete."""
    values = pods.values()
    values["demo"] = {"simulatedLLM": {"enabled": True}}
    pods.helm.upgrade(pods.chart, values)  # --wait: the demo LLM is Ready (readiness probe) when this returns
    try:
        node_kubectl("apply", "-f", str(EXAMPLES / "simulated-llm-demo.yaml"))
        waited = node_kubectl(
            "wait", "--for=condition=Complete", "poj/simulated-llm-demo", "--timeout=240s", timeout=260
        )
        assert "condition met" in waited.stdout
        (columns,) = table_rows(node_kubectl("get", "poj", "simulated-llm-demo").stdout)
        assert columns["PHASE"] == "Succeeded" and columns["PROGRESS%"].isdigit() and columns["DURATION"]
        assert re.fullmatch(r"\d\.\d{3}", columns["BEST"]) and columns["BEST"] >= columns["INITIAL"]
        prompts = node_kubectl("get", "configmap", "simulated-llm-demo-prompts", "-o", "jsonpath={.data.classify}")
        assert "{{review}}" in prompts.stdout
    finally:
        pods.helm.upgrade(pods.chart, pods.values())
    eventually(
        lambda: (
            not pods.cluster.in_namespace(RELEASE_NAMESPACE).list(
                "pods", label_selector="app.kubernetes.io/component=simulated-llm"
            )
        ),
        60,
        "the demo LLM to go with its value",
    )
