"""The chart as a platform engineer runs it: `helm install` (done by the `real_pods` fixture), `helm upgrade` to a
new operator image while jobs run, and `helm uninstall`, with the helm CLI against a real node."""
import pytest

from promptopt_harness.client import ApiError
from promptopt_harness.jobs import eventually, wait_for_phase, worker_pods

pytestmark = pytest.mark.slow

RELEASE_NAMESPACE = "promptopt-system"
CRD = "promptoptimizationjobs.promptopt.dev"


@pytest.fixture
def readme_jobs(pods, node_llm, example):
    """``readme_jobs(*names, max_metric_calls=40)``: the README's job under each name, created, with its Secret."""
    pods.cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-credentials"},
                         "stringData": {"OPENAI_API_KEY": node_llm.api_key}})

    def create(*names, max_metric_calls=40):
        for name in names:
            (job,) = example("gepa-sentiment")
            job["metadata"]["name"] = name
            job["spec"]["optimizer"]["gepa"]["maxMetricCalls"] = max_metric_calls
            pods.cluster.create(job)

    return create


def running_operator(pods):
    """The one operator Pod that runs and is not being deleted."""
    return eventually(lambda: [p for p in pods.operator_pods() if not p["metadata"].get("deletionTimestamp")
                               and p["status"].get("phase") == "Running"], 90, "a running operator Pod")


def test_the_operator_runs_from_its_image_as_the_charts_deployment_under_pod_security_restricted(pods, node_kubectl):
    assert pods.helm.status()["info"]["status"] == "deployed"
    (operator,) = running_operator(pods)
    (container,) = operator["status"]["containerStatuses"]
    assert container["image"] == pods.images.operator.reference and container["ready"]
    assert container["restartCount"] == 0, node_kubectl("logs", "-n", RELEASE_NAMESPACE, operator["metadata"]["name"],
                                                        "--previous", check=False).stdout
    namespace = pods.cluster.get("namespaces", RELEASE_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Admission enforces it here: a Pod that breaks the level is refused, so the operator's and the workers' pass it.
    with pytest.raises(ApiError, match="violates PodSecurity \"restricted:latest\""):
        pods.cluster.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unconfined"},
                             "spec": {"containers": [{"name": "c", "image": pods.images.worker.reference}]}})
    logs = node_kubectl("logs", "-n", RELEASE_NAMESPACE, "deployment/promptopt").stdout
    assert "promptopt operator" in logs or "kopf" in logs.lower(), logs[-2000:]


def test_upgrading_to_a_new_operator_image_while_jobs_run_loses_and_duplicates_none(pods, node_llm, readme_jobs):
    node_llm.set_latency(0.2)
    names = [f"during-upgrade-{i}" for i in range(3)]
    readme_jobs(*names)
    for name in names:
        wait_for_phase(pods.cluster, name, "Running", timeout=90)
    (before,) = running_operator(pods)
    revision = pods.helm.status()["version"]
    # A new image for the operator: the one built, under a tag of its own (what a release's new tag is to the node).
    new_tag = f"{pods.images.operator.tag}-next"
    pods.node.ctr("images", "tag", "--force", pods.images.operator.reference,
                  f"{pods.images.operator.repository}:{new_tag}")
    values = pods.values()
    values["operator"]["image"]["tag"] = new_tag
    pods.helm.upgrade(pods.chart, values)
    try:
        (after,) = running_operator(pods)
        assert after["metadata"]["name"] != before["metadata"]["name"]
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
    pods.helm.uninstall()
    try:
        eventually(lambda: not pods.operator_pods(), 90, "the operator Pod to go")
        assert pods.cluster.get("customresourcedefinitions", CRD)
        assert pods.cluster.get("poj", "across-reinstall")
        for resource, name in (("deployments", "promptopt"), ("serviceaccounts", "promptopt")):
            with pytest.raises(ApiError, match="404"):
                pods.cluster.get(resource, name, namespace=RELEASE_NAMESPACE)
    finally:
        pods.helm.install(pods.chart, pods.values())
    status = wait_for_phase(pods.cluster, "across-reinstall", "Succeeded", timeout=120)
    assert status["finalScores"]["aggregate"] is not None and status["attempts"] == 1
