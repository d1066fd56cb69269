"""The simulated LLM (promptopt.simulated_llm, a test double) in a process of its own.

The benchmark's optimizers run in other processes, so the server's threads never compete with them for a
GIL. Line protocol on stdin/stdout: the first stdout line is the base URL; then each stdin line ``stats``
answers one JSON line with the counters, ``reset`` clears them (answers ``ok``); EOF stops the server.

    python bench/llm_server.py --latency 0.1
"""

from __future__ import annotations

import argparse
import json
import sys

from promptopt.simulated_llm import SimulatedLLM


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before every answer")
    args = parser.parse_args(argv)
    with SimulatedLLM(latency_s=args.latency, log_size=1) as llm:
        print(llm.base_url, flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                print(json.dumps(llm.stats()), flush=True)
            elif command == "reset":
                llm.reset()
                print("ok", flush=True)
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
