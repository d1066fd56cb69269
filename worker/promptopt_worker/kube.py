"""The worker's adapter to the Kubernetes API: its client, the job, and retries of transient API errors.

The API server may be restarting or overloaded while a job runs: calls that may fail that way go through
`retry_api_call`, which retries them with the given delays and lets every other error through.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from promptopt.api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

READ_JOB_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)


def is_transient_api_error(error: Exception) -> bool:
    """Worth retrying: the API server is overloaded, restarting or unreachable (not: forbidden, not found)."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(error, ApiException):
        return error.status in (0, 408, 429, 500, 502, 503, 504)
    return isinstance(error, OSError) or type(error).__module__.startswith("urllib3")


def retry_api_call(
    call: Callable[[], Any],
    delays_s: Sequence[float],
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_error: Callable[[Exception], None] = lambda error: None,
) -> Any:
    """`call()`, retried after each of `delays_s` while it fails with a transient Kubernetes API error."""
    for delay in (*delays_s, None):
        try:
            return call()
        except Exception as error:
            on_error(error)
            if delay is None or not is_transient_api_error(error):
                raise
            sleep(delay)


def kubernetes_api_client() -> Any:
    """A client for the kubeconfig in KUBECONFIG when set, else for the Pod's service account."""
    import kubernetes

    if os.environ.get("KUBECONFIG"):
        kubernetes.config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    else:
        kubernetes.config.load_incluster_config()
    return kubernetes.client.ApiClient()


def read_job(custom: Any, name: str, namespace: str) -> dict[str, Any]:
    """The job object; transient API errors are retried (the API server may be restarting)."""
    return retry_api_call(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        READ_JOB_RETRY_DELAYS_S,
        on_error=lambda error: log.warning("reading the job failed: %s", error),
    )
