"""``python -m promptopt.example_services rag|scorer``: one example service in the foreground; its URL is the first
line of stdout, and it serves until interrupted."""

from __future__ import annotations

import argparse
import os
import sys

from promptopt.example_services import toy_rag, webhook_scorer
from promptopt.simulated_llm.server import serve_until_interrupted

SERVICES = {"rag": toy_rag, "scorer": webhook_scorer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m promptopt.example_services",
        description="Run an example service (a test double): the toy RAG program (POST /answer) or the webhook "
        "scorer (POST /score). Prints its URL on the first line of stdout.",
    )
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--require-header",
        metavar="NAME",
        action="append",
        default=[],
        help="refuse requests (401) whose header NAME differs from the environment variable "
        "EXAMPLE_SERVICE_<NAME, upper case, - as _> (repeatable)",
    )
    args = parser.parse_args(argv)
    required = {}
    for name in args.require_header:
        variable = "EXAMPLE_SERVICE_" + name.upper().replace("-", "_")
        if variable not in os.environ:
            parser.error(f"--require-header {name}: set {variable} to the value to require")
        required[name] = os.environ[variable]
    service = SERVICES[args.service](host=args.host, port=args.port, required_headers=required).start()
    serve_until_interrupted(service.stop, lambda: print(service.url, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
