"""`python -m promptopt_harness.emulator`, unchanged, plus a count of the requests it served, by client.

    python bench/counting_emulator.py --kubeconfig PATH --counts COUNTS.json

Each request is counted under (client, what): the client from its User-Agent (kopf's own requests, the
official Kubernetes client the operators call, the local kubelet, this benchmark), what from the URL
(resource[/subresource] and verb: get, list, watch, create, patch, delete), with the status code when it
is an error ("patch pods -> 404"). The counts are written when
the server stops (SIGTERM), so the benchmark can say how many API requests each operator needs per job.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import aiohttp.web

from promptopt_harness import emulator

COUNTS: collections.Counter[tuple[str, str]] = collections.Counter()
VERBS = {"FETCH": "get", "LIST": "list", "WATCH": "watch", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete"}


def client_of(user_agent: str) -> str:
    if user_agent.startswith("kopf/"):
        return "kopf"
    if user_agent.startswith("OpenAPI-Generator/"):
        return "kubernetes-client"
    if user_agent.startswith("python-urllib3/"):
        return "kubelet"
    if user_agent.startswith("promptopt-bench"):
        return "bench"
    return "other"


def what_of(method: str, path: str, query: dict[str, str]) -> str:
    api_path = emulator.parse_api_path(path)
    if api_path is None:
        return "discovery"
    action = emulator.guess_action(method, api_path, query)
    resource = str(api_path.resource.plural) + (f"/{api_path.subresource}" if api_path.subresource else "")
    return f"{VERBS.get(action.name, action.name.lower()) if action else method.lower()} {resource}"


def by_client(counts: collections.Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{(client, what): count} as client -> what -> count, sorted: the shape the benchmark reports."""
    found: dict[str, dict[str, int]] = {}
    for (client, what), count in sorted(counts.items()):
        found.setdefault(client, {})[what] = count
    return found


_served = emulator.KubernetesEmulator.__call__


async def _counted(
    self: emulator.KubernetesEmulator, raw_request: aiohttp.web.BaseRequest,
) -> aiohttp.web.StreamResponse:
    client = client_of(raw_request.headers.get("User-Agent", ""))
    what = what_of(raw_request.method, raw_request.path, dict(raw_request.query))
    response = await _served(self, raw_request)
    status = getattr(response, "status", 200)
    COUNTS[client, what if status < 300 else f"{what} -> {status}"] += 1
    return response


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=Path, required=True, help="where to write the counts at exit")
    args, rest = parser.parse_known_args(argv)
    emulator.KubernetesEmulator.__call__ = _counted  # type: ignore[method-assign]
    try:
        emulator.main(rest)
    finally:
        args.counts.write_text(json.dumps(by_client(COUNTS), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
