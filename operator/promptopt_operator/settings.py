"""The operator's own configuration: command-line flags, with environment variables as defaults (Helm sets those)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WORKER_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"memory": "1Gi"},
}


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    max_running_jobs: int = 10  # jobs with a worker Pod at once; the rest wait Queued
    worker_image: str = "ghcr.io/promptopt/worker:0.1.0"
    worker_image_pull_policy: str = "IfNotPresent"
    worker_service_account: str = "promptopt-worker"
    worker_resources: dict[str, Any] = field(default_factory=lambda: DEFAULT_WORKER_RESOURCES)
    worker_uid: int = 65532
    worker_scratch_size: str = "1Gi"
    # Long enough for the worker to stop the optimizer and write its best result after SIGTERM.
    worker_grace_period_seconds: int = 60
    retry_base_delay_seconds: float = 10.0
    retry_max_delay_seconds: float = 360.0
    liveness_port: int = 8080
    metrics_port: int = 9090
    # etcd's default request limit (1.5 MiB), which kubeadm, EKS, GKE and AKS keep: a job and its status must fit.
    max_object_bytes: int = 1536 * 1024


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PROMPTOPT_{name}", default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = OperatorSettings()
    parser.add_argument(
        "--namespace", "-n", action="append", dest="namespaces",
        help="watch this namespace (repeatable); default: all namespaces (env PROMPTOPT_NAMESPACES, comma-separated)",
    )
    parser.add_argument("--max-running-jobs", type=int,
                        default=int(_env("MAX_RUNNING_JOBS", str(defaults.max_running_jobs))),
                        help="jobs running at once; more wait Queued (env PROMPTOPT_MAX_RUNNING_JOBS)")
    parser.add_argument("--worker-image", default=_env("WORKER_IMAGE", defaults.worker_image),
                        help="default worker image (env PROMPTOPT_WORKER_IMAGE)")
    parser.add_argument("--worker-image-pull-policy",
                        default=_env("WORKER_IMAGE_PULL_POLICY", defaults.worker_image_pull_policy))
    parser.add_argument("--worker-service-account",
                        default=_env("WORKER_SERVICE_ACCOUNT", defaults.worker_service_account),
                        help="default ServiceAccount of worker Pods (env PROMPTOPT_WORKER_SERVICE_ACCOUNT)")
    parser.add_argument("--worker-resources", type=json.loads,
                        default=json.loads(_env("WORKER_RESOURCES", json.dumps(defaults.worker_resources))),
                        help="default worker resources as JSON (env PROMPTOPT_WORKER_RESOURCES)")
    parser.add_argument("--worker-grace-period", type=int, dest="worker_grace_period_seconds",
                        default=int(_env("WORKER_GRACE_PERIOD_SECONDS", str(defaults.worker_grace_period_seconds))))
    parser.add_argument("--retry-base-delay", type=float, dest="retry_base_delay_seconds",
                        default=float(_env("RETRY_BASE_DELAY_SECONDS", str(defaults.retry_base_delay_seconds))),
                        help="delay before the first retry of a failed worker; doubles each time")
    parser.add_argument("--liveness-port", type=int, default=int(_env("LIVENESS_PORT", str(defaults.liveness_port))))
    parser.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", str(defaults.metrics_port))))
    parser.add_argument("--max-object-bytes", type=int,
                        default=int(_env("MAX_OBJECT_BYTES", str(defaults.max_object_bytes))),
                        help="the API's object size limit (etcd's --max-request-bytes); larger jobs fail with "
                        "JobTooLarge (env PROMPTOPT_MAX_OBJECT_BYTES)")


def from_arguments(args: argparse.Namespace) -> OperatorSettings:
    namespaces = args.namespaces or [n for n in _env("NAMESPACES", "").split(",") if n.strip()]
    return OperatorSettings(
        namespaces=tuple(n.strip() for n in namespaces),
        max_running_jobs=args.max_running_jobs,
        worker_image=args.worker_image,
        worker_image_pull_policy=args.worker_image_pull_policy,
        worker_service_account=args.worker_service_account,
        worker_resources=args.worker_resources,
        worker_grace_period_seconds=args.worker_grace_period_seconds,
        retry_base_delay_seconds=args.retry_base_delay_seconds,
        liveness_port=args.liveness_port,
        metrics_port=args.metrics_port,
        max_object_bytes=args.max_object_bytes,
    )
