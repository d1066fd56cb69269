"""``python -m promptopt.simulated_llm``: the simulated LLM in the foreground (``--help`` for its options)."""
import sys

from promptopt.simulated_llm.server import main

if __name__ == "__main__":
    sys.exit(main())
