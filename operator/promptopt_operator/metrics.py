"""Prometheus metrics of the operator, served on their own port."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from promptopt.api.v1alpha1 import Phase

PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]


class OperatorMetrics:
    def __init__(self, phases_of_jobs: Callable[[], Iterable[str | None]]):
        self.registry = CollectorRegistry()
        self._phases_of_jobs = phases_of_jobs
        self.registry.register(self)
        self.reconcile_seconds = Histogram(
            "promptopt_reconcile_seconds",
            "Time to reconcile one job (read, decide, act).",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.pod_launch_seconds = Histogram(
            "promptopt_pod_launch_seconds",
            "Time from a job's creation to its first worker Pod's creation.",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
        )
        self.pods_created = Counter("promptopt_worker_pods_created", "Worker Pods created.", registry=self.registry)
        self.pod_failures = Counter(
            "promptopt_worker_pod_failures", "Worker Pods that failed, by reason.", ["reason"], registry=self.registry
        )
        self.retries = Counter(
            "promptopt_worker_retries", "Worker Pods created to replace a failed one.", registry=self.registry
        )
        self.leader = Gauge(
            "promptopt_leader", "1 while this replica leads (acts on jobs), 0 while it follows.", registry=self.registry
        )
        self.reconcile_errors = Counter(
            "promptopt_reconcile_errors", "Reconciles that failed (and are retried).", registry=self.registry
        )
        self.workqueue_depth = Gauge(
            "promptopt_workqueue_depth", "Jobs waiting in the work queue for a reconcile.", registry=self.registry
        )
        self.workqueue_wait_seconds = Histogram(
            "promptopt_workqueue_wait_seconds",
            "Time a job waited in the work queue before a worker took it.",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def collect(self):
        """Jobs by phase, counted from the operator's in-memory index when scraped (never stale, never stored)."""
        gauge = GaugeMetricFamily("promptopt_jobs", "PromptOptimizationJobs by phase.", labels=["phase"])
        counts = collections.Counter(phase or "New" for phase in self._phases_of_jobs())
        for phase in ("New", *PHASES):
            gauge.add_metric([phase], counts.get(phase, 0))
        yield gauge

    def describe(self):
        return []

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
