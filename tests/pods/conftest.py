"""The real Pods tier: a real kubelet on containerd runs the product's images, the operator is the chart's
Deployment installed with helm, the jobs' namespace enforces Pod Security "restricted" (the `real_pods` fixture of
tests/conftest.py). Everything Pods call (the simulated LLM, MLflow, the example services) listens on the node's
address, inside the node's network namespace."""

from pathlib import Path

import pytest
import yaml

from promptopt.api.validation import parse_spec
from promptopt_harness.client import ApiError
from promptopt_harness.jobs import eventually

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SIMULATED_LLM_API_KEY = "sk-simulated-node-key"
# What the chart and the cluster put in the jobs' namespace: never cleared between tests.
KEPT = {
    "serviceaccounts": {"default", "promptopt-worker"},
    "configmaps": {"kube-root-ca.crt"},
    "roles": {"promptopt-worker"},
    "rolebindings": {"promptopt-worker"},
}
CLEARED = (
    "promptoptimizationjobs",
    "pods",
    "deployments",
    "services",
    "secrets",
    "configmaps",
    "serviceaccounts",
    "roles",
    "rolebindings",
)

pytestmark = pytest.mark.slow


@pytest.fixture
def pods(real_pods):
    """The real Pods tier (see tests/conftest.py), with the jobs' namespace cleared after the test: every job,
    Deployment, Secret and the like the test made, and, waited for, every Pod (a real kubelet ends them gracefully)."""
    yield real_pods
    cluster = real_pods.cluster
    for resource in CLEARED:
        for item in cluster.list(resource):
            name = item["metadata"]["name"]
            if name not in KEPT.get(resource, ()):
                try:
                    cluster.delete(resource, name)
                except ApiError as error:
                    if error.code != 404:
                        raise
    try:
        eventually(lambda: not cluster.list("pods"), 120, "every Pod of the test to be gone")
    except AssertionError:
        left = {p["metadata"]["name"]: p.get("status") for p in cluster.list("pods")}
        raise AssertionError(f"Pods left after the test: {left}") from None


@pytest.fixture
def node_kubectl(real_pods, kubectl_for, tmp_path):
    """``node_kubectl(*args, check=True, input=None, timeout=60)``: kubectl against the real node, in the jobs'
    namespace, as the admin."""
    return kubectl_for(real_pods.cluster.write_kubeconfig(tmp_path / "kubeconfig", real_pods.cluster.namespace))


@pytest.fixture
def node_llm(real_pods):
    """The simulated LLM (a test double) on the node's address, where worker Pods reach it."""
    from promptopt.simulated_llm import SimulatedLLM

    with real_pods.node.inside():
        server = SimulatedLLM(api_key=SIMULATED_LLM_API_KEY, host=real_pods.node.address).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node_mlflow(real_pods, tmp_path_factory):
    """A real MLflow server on the node's address (Pods reach `url`); ``client_url`` reaches it from the test."""
    from promptopt_harness.mlflow_server import MlflowServer

    server = MlflowServer(
        tmp_path_factory.mktemp("node-mlflow"), host=real_pods.node.address, network=real_pods.node.network
    ).start()
    server.client_url = f"http://127.0.0.1:{real_pods.node.expose(server.port)}"
    yield server
    server.stop()


@pytest.fixture
def example(real_pods, node_llm):
    """``example(name, urls={})``: examples/<name>.yaml as a user on this cluster would apply it: the models swapped
    for the simulated LLM's as `promptopt run --simulated-llm` swaps them, API keys for its key, the example
    services' image for the worker image as built, and the addresses in `urls` (a Service's, an MLflow server's)
    for ones reachable here (no cluster DNS, no kube-proxy on this node)."""
    from promptopt_worker.main import with_simulated_models

    def adapted(name, urls=None):
        text = (EXAMPLES / f"{name}.yaml").read_text()
        for old, new in (urls or {}).items():
            text = text.replace(old, new)
        documents = [document for document in yaml.safe_load_all(text) if document]
        for document in documents:
            if document["kind"] == "PromptOptimizationJob":
                spec = with_simulated_models(parse_spec(document["spec"]), node_llm.base_url)
                document["spec"] = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
            elif document["kind"] == "Secret" and "OPENAI_API_KEY" in document.get("stringData", {}):
                document["stringData"]["OPENAI_API_KEY"] = node_llm.api_key
            elif document["kind"] == "Deployment":
                for container in document["spec"]["template"]["spec"]["containers"]:
                    container["image"] = real_pods.images.worker.reference
        return documents

    return adapted
