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
