"""The operator's Kubernetes API calls, and nothing else: every call the operator makes is listed here
(the Helm chart's RBAC is checked against this list).

The official client is synchronous; calls run in a thread pool of their own so that a slow API server never
blocks kopf's event loop. Responses are read as JSON (`_preload_content=False`) rather than turned into the
client's model objects: the decisions work on plain dicts, and deserializing V1Pod models costs more CPU than
the whole decision.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from promptopt.api.v1alpha1 import GROUP, PLURAL, VERSION


# (API group, resource, verb) for every call below: the operator's RBAC needs exactly these (plus kopf's own:
# it lists and watches the jobs and the worker Pods, whose state the operator reads from its watch events and kopf's
# index, so it never reads a job or a Pod itself).
API_CALLS = (
    (GROUP, PLURAL, "delete"),
    (GROUP, PLURAL, "patch"),  # the labels of a job's source prompts
    (GROUP, f"{PLURAL}/status", "patch"),
    ("", "pods", "create"),
    ("", "pods", "delete"),
    # spec.output: create the ConfigMap, and when one is in the way, read it and replace it if it is the job's.
    ("", "configmaps", "create"),
    ("", "configmaps", "get"),
    ("", "configmaps", "update"),
    # Leader election: the Lease in the operator's own namespace (leadership.py).
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
)


# Writes of a job ask for its metadata only in the response (the API server's PartialObjectMetadata transformation):
# the whole job can hold a 1 MiB dataset, and the operator knows the status it wrote (lifecycle.written_job).
METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"}


class StaleJob(Exception):
    """The job changed since the version a decision was taken on."""


class PodRefused(Exception):
    """The API server refused the worker Pod for good (RBAC, a missing ServiceAccount, a quota, admission, an invalid
    Pod): retrying the same request gets the same answer until someone changes something. The message is the
    server's."""


def _status_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"


class Refused(Exception):
    """The API server refused or failed a call: its status code and reason, for a message."""

    def __init__(self, error: ApiException):
        super().__init__(f"{error.status} {error.reason}")


class KubeClient:
    def __init__(
        self, api_client: kubernetes.client.ApiClient | None = None, threads: int = 16, pod_delete_threads: int = 4
    ):
        if api_client is None:
            kubernetes.config.load_config()
            configuration = kubernetes.client.Configuration.get_default_copy()
            # One connection per thread: the default pool (10) is smaller than the thread pools, and every
            # connection beyond it is opened and thrown away per request.
            configuration.connection_pool_maxsize = threads + pod_delete_threads
            api_client = kubernetes.client.ApiClient(configuration)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._coordination = kubernetes.client.CoordinationV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")
        # Pod deletes (a cancel, a deadline, a deleted job's Pod) have threads of their own: in a burst of cancels
        # they waited behind the status writes queued before them, most of a cancel's p99 on a loaded machine.
        self._pod_delete_pool = ThreadPoolExecutor(max_workers=pod_delete_threads, thread_name_prefix="kube-delete")

    async def _call(self, function, *args, **kwargs) -> bytes:
        return await self._call_in(self._pool, function, *args, **kwargs)

    async def _call_in(self, pool: ThreadPoolExecutor, function, *args, **kwargs) -> bytes:
        """The call's response body, read in a thread of `pool`. Reading it whole is also what returns the
        connection to the pool: a response left unread keeps its connection, and the next call would open a new one
        (a TLS handshake, a tenth of the operator's CPU at 200 jobs)."""
        request = partial(function, *args, _preload_content=False, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: request().data)

    async def patch_job_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str
    ) -> dict[str, Any] | None:
        """Patch the status of the job as it was at `resource_version`, and return the job's metadata as written (None
        if it is gone); StaleJob if it has changed since (the API server's optimistic concurrency: a 409 rather than a
        write over news)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": patch}
        try:
            response = await self._call(
                self._custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body,
                _headers=METADATA_ONLY,
            )
        except ApiException as error:
            if error.status == 409:
                raise StaleJob(f"{namespace}/{name} changed since resourceVersion {resource_version}") from error
            if error.status == 404:
                return None
            raise
        return json.loads(response)["metadata"]

    async def label_job(self, namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any] | None:
        """Merge `labels` into the job's; the job's metadata as written (None if it is gone)."""
        try:
            response = await self._call(
                self._custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": {"labels": labels}},
                _headers=METADATA_ONLY,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return json.loads(response)["metadata"]

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await self._call(
                self._custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create the Pod; False if it already exists (it is then adopted, never duplicated). PodRefused when the
        server refuses it (4xx); other errors (5xx, timeouts, 429) as they come, to be retried."""
        try:
            await self._call(self._core.create_namespaced_pod, namespace, manifest)
        except ApiException as error:
            if error.status == 409:
                return False
            if 400 <= error.status < 500 and error.status != 429:
                raise PodRefused(_status_message(error)) from error
            raise
        return True

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        try:
            await self._call_in(
                self._pod_delete_pool,
                self._core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=grace_seconds,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def create_config_map(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create the ConfigMap; False if one of that name exists. Refused for any other error."""
        try:
            await self._call(self._core.create_namespaced_config_map, namespace, manifest)
        except ApiException as error:
            if error.status == 409:
                return False
            raise Refused(error) from error
        return True

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(await self._call(self._core.read_namespaced_config_map, name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise Refused(error) from error

    async def replace_config_map(self, namespace: str, name: str, manifest: dict[str, Any]) -> None:
        """Replace the ConfigMap as it was at manifest's metadata.resourceVersion (Refused with 409 if it changed)."""
        try:
            await self._call(self._core.replace_namespaced_config_map, name, namespace, manifest)
        except ApiException as error:
            raise Refused(error) from error

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(await self._call(self._coordination.read_namespaced_lease, name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise Refused(error) from error

    async def create_lease(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The Lease as created; None if one of that name exists (another replica created it first)."""
        try:
            return json.loads(await self._call(self._coordination.create_namespaced_lease, namespace, manifest))
        except ApiException as error:
            if error.status == 409:
                return None
            raise Refused(error) from error

    async def replace_lease(self, namespace: str, name: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The Lease as written; None if it changed since manifest's resourceVersion (another replica wrote it)."""
        try:
            return json.loads(await self._call(self._coordination.replace_namespaced_lease, name, namespace, manifest))
        except ApiException as error:
            if error.status == 409:
                return None
            raise Refused(error) from error
