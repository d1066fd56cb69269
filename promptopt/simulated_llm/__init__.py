"""The simulated LLM: a deterministic OpenAI-compatible TEST DOUBLE, not a language model.

Tests, benchmarks, the offline quickstart (``promptopt run --simulated-llm``) and the end-to-end test on a cluster
point litellm at it instead of a real provider. Every answer is a pure function of the request, so prompt
optimization against it is reproducible. It ships in the product, as kopf ships ``kopf.testing``, because the
quickstart and the end-to-end test run it from the installed package (the worker image); so it imports only the
standard library and promptopt.prompt_contract, the definition of the requests it reads, which the worker renders.

Usage::

    with SimulatedLLM(api_key="sk-sim") as llm:
        litellm.completion(model="openai/sim-task", api_base=llm.base_url, api_key="sk-sim",
                           messages=[{"role": "user", "content": "..."}])
        assert llm.calls["task"] == 1

    python -m promptopt.simulated_llm --port 8765   # prints the base URL, serves until ^C

One concern per module:

- ``world``: the sentiment-classification world where a better instruction truly scores higher, the rules that
  make one better, and what the judge counts as correct;
- ``models``: the models (``sim-task``, ``sim-judge``, ``sim-reflect`` and two that break template variables),
  which request each recognises and its answer;
- ``requests``: the worker's requests parsed back (the judge, MetaPrompt and gepa reflection requests);
- ``datasets``: records of the world (``sentiment_dataset``);
- ``server``: the HTTP server (``SimulatedLLM``), with fault injection, latency and counters;
- ``__main__``: the command line.
"""

from promptopt.simulated_llm.datasets import sentiment_dataset
from promptopt.simulated_llm.models import (
    JUDGE_MODEL,
    KINDS,
    KNOWN_MODELS,
    REFLECT_DROPS_VARIABLE_MODEL,
    REFLECT_INVENTS_VARIABLE_MODEL,
    REFLECT_MODEL,
    TASK_MODEL,
    respond,
)
from promptopt.simulated_llm.server import GARBLED_JUDGE_ANSWER, SimulatedLLM, estimate_tokens
from promptopt.simulated_llm.world import (
    NEGATIVE_WORDS,
    OPTIMAL_INSTRUCTION,
    POSITIVE_WORDS,
    RULE_LOWERCASE,
    RULE_ONE_LOWERCASE_WORD,
    RULE_SARCASM,
    RULE_SINGLE_WORD,
    SARCASM_MARKERS,
    SEED_INSTRUCTION,
    classify,
    has_sarcasm_marker,
    true_label,
)

__all__ = [
    "GARBLED_JUDGE_ANSWER",
    "JUDGE_MODEL",
    "KINDS",
    "KNOWN_MODELS",
    "NEGATIVE_WORDS",
    "OPTIMAL_INSTRUCTION",
    "POSITIVE_WORDS",
    "REFLECT_DROPS_VARIABLE_MODEL",
    "REFLECT_INVENTS_VARIABLE_MODEL",
    "REFLECT_MODEL",
    "RULE_LOWERCASE",
    "RULE_ONE_LOWERCASE_WORD",
    "RULE_SARCASM",
    "RULE_SINGLE_WORD",
    "SARCASM_MARKERS",
    "SEED_INSTRUCTION",
    "TASK_MODEL",
    "SimulatedLLM",
    "classify",
    "estimate_tokens",
    "has_sarcasm_marker",
    "respond",
    "sentiment_dataset",
    "true_label",
]
