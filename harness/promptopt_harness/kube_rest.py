"""A rule of the Kubernetes REST API, as the API server applies it, for tests that read what was sent to it: the
resource a URL names (`parse_api_path`). The other rule they rely on, a JSON merge patch, is the operator's own
(promptopt.api.merge_patch)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API (/api/v1)
    version: str
    plural: str


@dataclasses.dataclass(frozen=True)
class ApiPath:
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None  # "status", "binding", "log", ...


def parse_api_path(path: str) -> ApiPath | None:
    """The resource a URL path names, or None for a discovery path (/api, /apis/GROUP/VERSION, /version, ...).
    ``/api/v1/namespaces/x`` is the namespace x, and ``/api/v1/namespaces/x/status`` its status."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    namespace_own_subresource = group == "" and len(rest) == 3 and rest[2] in {"status", "finalize"}
    if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_own_subresource:
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return ApiPath(Resource(group, version, rest[0]), namespace, name, subresource)
