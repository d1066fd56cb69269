"""Shared fixtures: the emulated Kubernetes API, the local kubelet and the simulated LLM."""
import os

# litellm downloads its model-cost map at import unless told not to; these machines have no network.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


# --- Simulated LLM: a deterministic OpenAI-compatible test double (promptopt.testing.simulated_llm) ---
import pytest  # noqa: E402

SIMULATED_LLM_API_KEY = "sk-simulated-test-key"


@pytest.fixture
def llm():
    """A started SimulatedLLM (test double) that requires SIMULATED_LLM_API_KEY.

    Reach it through litellm with ``litellm.completion(**llm.litellm_kwargs("sim-task"), messages=...)``
    (model "openai/<name>", api_base=llm.base_url, api_key=llm.api_key). Stopped after the test.
    """
    from promptopt.testing.simulated_llm import SimulatedLLM

    with SimulatedLLM(api_key=SIMULATED_LLM_API_KEY) as server:
        yield server


# --- Emulated Kubernetes API (promptopt.testing.emulator) ---
import subprocess  # noqa: E402


@pytest.fixture
def cluster():
    """A fresh EmulatedCluster: serves the repo's crds/ and has the `default` namespace (made via the API).

    ``cluster.url``, ``cluster.kubeconfig``, ``cluster.api_client()``, ``cluster.create/get/list/patch/delete``,
    ``cluster.wait_for(...)``; ``cluster.emulator`` is the kmock-based server (its ``.objects`` keep history).
    """
    from promptopt.testing.admission import admit
    from promptopt.testing.emulator import EmulatedCluster

    # Admission as the real API server does it (CRD schema, defaults, CEL), so invalid jobs are refused.
    with EmulatedCluster(admission=admit) as emulated:
        yield emulated


@pytest.fixture
def kubectl(cluster, tmp_path_factory):
    """``kubectl(*args, check=True, input=None, timeout=30)`` runs /usr/bin/kubectl against `cluster`.

    Returns the CompletedProcess (text); fails with kubectl's stderr unless ``check=False``.
    """
    cache_dir = tmp_path_factory.mktemp("kubectl-cache")  # own discovery cache: ports get reused

    def run(*args, check=True, input=None, timeout=30):
        command = ["/usr/bin/kubectl", "--kubeconfig", str(cluster.kubeconfig), "--cache-dir", str(cache_dir), *args]
        result = subprocess.run(command, capture_output=True, text=True, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    return run


# --- Local kubelet: runs the emulated cluster's Pods as local processes (promptopt.testing.kubelet) ---
@pytest.fixture
def kubelet(cluster):
    """A started LocalKubelet on `cluster` (all namespaces, node "local-kubelet"); stopped after the test,
    which kills every process it started. ``kubelet.logs(ns, name)``, ``kubelet.running_pods()``,
    ``kubelet.set_image_behaviour(image, "ImagePullBackOff" | "OOMKilled" | None)``.
    """
    from promptopt.testing.kubelet import LocalKubelet

    # The containers' environment is clean, so pass on what any litellm-importing process here needs.
    with LocalKubelet(cluster.kubeconfig, extra_env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"}) as local_kubelet:
        yield local_kubelet
