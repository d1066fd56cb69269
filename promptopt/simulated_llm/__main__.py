"""``python -m promptopt.simulated_llm``: the simulated LLM in the foreground; its base URL is the first line of
stdout, and it serves until interrupted."""

from __future__ import annotations

import argparse
import sys

from promptopt.simulated_llm.models import KNOWN_MODELS
from promptopt.simulated_llm.server import SimulatedLLM, serve_until_interrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m promptopt.simulated_llm",
        description="Run the simulated OpenAI-compatible LLM (a deterministic test double) in the foreground. "
        "Prints its base URL on the first line of stdout.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--api-key", default=None, help="require this bearer token (default: accept any)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before every answer")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    args = parser.parse_args(argv)
    llm = SimulatedLLM(
        api_key=args.api_key, latency_s=args.latency, host=args.host, port=args.port, verbose=args.verbose
    )
    llm.start()

    def announce() -> None:
        print(llm.base_url, flush=True)
        print(
            f"simulated LLM (test double) serving {', '.join(KNOWN_MODELS)}; litellm model 'openai/<name>', "
            f"api_base={llm.base_url}. Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )

    serve_until_interrupted(llm.stop, announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
