"""Shared fixtures: the emulated Kubernetes API, the local kubelet and the simulated LLM."""
import os

# litellm downloads its model-cost map at import unless told not to; these machines have no network.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
