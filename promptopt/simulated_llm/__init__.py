"""The simulated LLM: a deterministic OpenAI-compatible TEST DOUBLE, part of the product because the offline
quickstart (`promptopt run --simulated-llm`) and the end-to-end test on a real cluster run it from the installed
package (the worker image). Standard library only. See `server` for its models and contracts."""
from promptopt.simulated_llm.server import *  # noqa: F403
from promptopt.simulated_llm.server import __all__  # noqa: F401
