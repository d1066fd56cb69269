"""Watching PromptOptimizationJobs as a user does, for tests: through the API only, polling for eventual state
(never one read), with a failure message that shows what was there instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from promptopt_harness.client import ApiError, ClusterApi

T = TypeVar("T")
JOB_LABEL = "promptopt.dev/job"


def eventually(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy value `predicate()` returns within `timeout` seconds; AssertionError naming `what` if none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def table_rows(listing: str) -> list[dict[str, str]]:
    """The rows of `kubectl get`'s table as {COLUMN: cell}: each cell is read under its header (kubectl left-aligns
    both), so an empty one (a field not set yet) stays empty instead of shifting the rest."""
    header, *rows = listing.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    return [
        {name: row[start:end].strip() for name, start, end in zip(names, starts, [*starts[1:], None], strict=True)}
        for row in rows
    ]


def job_exists(cluster: ClusterApi, name: str) -> bool:
    try:
        cluster.get("poj", name)
    except ApiError as error:
        if error.code == 404:
            return False
        raise
    return True


def status_of(cluster: ClusterApi, name: str) -> dict[str, Any]:
    return cluster.get("poj", name).get("status") or {}


def wait_for_phase(cluster: ClusterApi, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    """The job's status once its phase is `phase`."""

    def reached() -> dict[str, Any] | None:
        status = status_of(cluster, name)
        return status if status.get("phase") == phase else None

    try:
        return eventually(reached, timeout, f"{name} to be {phase}")
    except AssertionError:
        raise AssertionError(f"{name} never became {phase}; status: {status_of(cluster, name)}") from None


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status's condition of type `kind`, None while it has none (so `eventually` can wait for it)."""
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def worker_pods(cluster: ClusterApi, name: str) -> list[dict[str, Any]]:
    return cluster.list("pods", label_selector=f"{JOB_LABEL}={name}")
