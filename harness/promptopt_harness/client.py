"""A small HTTP client for tests and scripts: any Kubernetes API server, JSON in and out, resources found through
discovery as kubectl finds them.

`ClusterApi.create/get/list/patch/delete/apply/wait_for` raise `ApiError` with the server's code and Status
body; nothing is retried, so a test sees exactly what the server answered.
"""

from __future__ import annotations

import copy
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REQUEST_TIMEOUT_SECONDS = 30
FIELD_MANAGER = "promptopt-tests"


class ApiError(Exception):
    """The API server answered with an error: `code` is the HTTP status, `body` its Status (or text)."""

    def __init__(self, code: int, body: Any):
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{code}: {message}")
        self.code = code
        self.body = body


@dataclass(frozen=True)
class Resource:
    """One resource as discovery lists it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()

    @property
    def api_prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


class ClusterApi:
    """Requests to one API server as one identity, in a default namespace."""

    def __init__(
        self, url: str, *, token: str | None = None, ca_file: str | Path | None = None, namespace: str = "default"
    ):
        self.url = url.rstrip("/")
        self.token = token
        self.ca_file = Path(ca_file) if ca_file else None
        self.namespace = namespace
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._resources: list[Resource] | None = None

    def in_namespace(self, namespace: str) -> ClusterApi:
        """The same server and identity with another default namespace (discovery is shared)."""
        view = copy.copy(self)
        view.namespace = namespace
        return view

    def as_user(self, token: str) -> ClusterApi:
        view = copy.copy(self)
        view.token = token
        return view

    # --- kubeconfig -------------------------------------------------------------------------------

    def kubeconfig_dict(self, namespace: str | None = None) -> dict[str, Any]:
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_file:
            cluster["certificate-authority"] = str(self.ca_file)
        user = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "preferences": {},
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "test", "user": user}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "test", "namespace": namespace or self.namespace},
                }
            ],
        }

    def write_kubeconfig(self, path: Path, namespace: str | None = None) -> Path:
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(namespace)))
        path.chmod(0o600)
        return path

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient as this identity."""
        import kubernetes.client

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        if self.ca_file:
            configuration.ssl_ca_cert = str(self.ca_file)
        if self.token:
            configuration.api_key = {"authorization": f"Bearer {self.token}"}
        return kubernetes.client.ApiClient(configuration)

    # --- requests ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        raw: bytes | None = None,
    ) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path + query, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS, context=self._ssl) as response:
                content = response.read()
                if response.headers.get_content_type() != "application/json":
                    return content.decode()  # /readyz, /healthz, ... answer in plain text
                return json.loads(content or b"null")
        except urllib.error.HTTPError as error:
            text = error.read()
            raise ApiError(error.code, json.loads(text) if text.startswith(b"{") else text.decode()) from None

    def resources(self, refresh: bool = False) -> list[Resource]:
        """Every served resource (top-level ones; subresources are reached by path)."""
        if self._resources is None or refresh:
            found = []
            for prefix, group_version in self._group_versions():
                for item in self.request("GET", f"{prefix}/{group_version}")["resources"]:
                    if "/" in item["name"]:
                        continue
                    group, _, version = group_version.rpartition("/")
                    found.append(
                        Resource(
                            group,
                            version,
                            item["name"],
                            item["kind"],
                            item["namespaced"],
                            item.get("singularName") or "",
                            tuple(item.get("shortNames") or ()),
                        )
                    )
            self._resources = found
        return self._resources

    def _group_versions(self) -> list[tuple[str, str]]:
        versions = [("/api", version) for version in self.request("GET", "/api")["versions"]]
        for group in self.request("GET", "/apis")["groups"]:
            versions.append(("/apis", group["preferredVersion"]["groupVersion"]))
        return versions

    def resource(self, name: str) -> Resource:
        """A plural, singular, kind or short name, optionally `.group`-qualified (as kubectl takes them)."""
        short, _, group = name.lower().partition(".")
        for refresh in (False, True):  # a CRD created since the last look
            candidates = [
                r
                for r in self.resources(refresh)
                if (not group or r.group == group) and short in {r.plural, r.singular, r.kind.lower(), *r.short_names}
            ]
            if candidates:
                return min(candidates, key=lambda r: (r.group != "", r.group))  # the core group first
        raise KeyError(f"no such resource: {name}")

    def resource_of(self, obj: Mapping[str, Any]) -> Resource:
        group, _, version = obj["apiVersion"].rpartition("/")
        for refresh in (False, True):
            for resource in self.resources(refresh):
                if (resource.group, resource.version, resource.kind) == (group, version, obj["kind"]):
                    return resource
        raise KeyError(f"no resource serves {obj['apiVersion']} {obj['kind']}")

    def path(
        self,
        resource: str | Resource,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path of a collection or an object (in the default namespace unless told)."""
        res = resource if isinstance(resource, Resource) else self.resource(resource)
        scope = f"/namespaces/{namespace or self.namespace}" if res.namespaced else ""
        return "/".join(filter(None, [res.api_prefix + scope, res.plural, name, subresource]))

    def create(self, obj: Mapping[str, Any], **params: Any) -> dict[str, Any]:
        resource = self.resource_of(obj)
        return self.request(
            "POST", self.path(resource, namespace=obj.get("metadata", {}).get("namespace")), obj, params=params or None
        )

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, taking over every field (what `kubectl apply --server-side --force-conflicts` does)."""
        resource = self.resource_of(obj)
        path = self.path(resource, obj["metadata"]["name"], obj["metadata"].get("namespace"))
        return self.request(
            "PATCH",
            path,
            obj,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def get(
        self, resource: str, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> dict[str, Any]:
        return self.request("GET", self.path(resource, name, namespace, subresource))

    def list(
        self, resource: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        return self.request("GET", self.path(resource, namespace=namespace), params=params)["items"]

    def patch(
        self, resource: str, name: str, patch: Any, namespace: str | None = None, subresource: str | None = None
    ) -> dict[str, Any]:
        content_type = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        return self.request(
            "PATCH", self.path(resource, name, namespace, subresource), patch, content_type=content_type
        )

    def delete(self, resource: str, name: str, namespace: str | None = None, **options: Any) -> dict[str, Any]:
        return self.request("DELETE", self.path(resource, name, namespace), options or None)

    def exists(self, resource: str, name: str, namespace: str | None = None) -> bool:
        try:
            self.get(resource, name, namespace)
        except ApiError as error:
            if error.code == 404:
                return False
            raise
        return True

    def wait_for(
        self,
        resource: str,
        name: str,
        predicate: Callable[[dict[str, Any] | None], bool],
        *,
        namespace: str | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any] | None:
        """Poll until `predicate(obj)` holds (obj is None while absent); return that obj."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj: dict[str, Any] | None = self.get(resource, name, namespace)
            except ApiError as error:
                if error.code != 404:
                    raise
                obj = None
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{resource}/{name} did not satisfy the condition within {timeout}s: {obj}")
            time.sleep(0.02)
