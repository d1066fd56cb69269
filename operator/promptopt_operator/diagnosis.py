"""Why a job is where it is, as `promptopt doctor` says it: above all for a job no operator has acted on.

The operator writes a phase at once to every job it watches, even one it cannot start (its Stalled condition then
says what to do); a job without a phase was never seen, and only the cluster around it can say why: no operator is
installed, none watches the job's namespace, or the one that does is not running. Pure functions over what
`promptopt doctor` reads (the jobs and the operators' Deployments, their settings read from their environment).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from promptopt_operator.settings import ENVIRONMENT_PREFIX, OperatorSettings, from_environment

# The chart's operator Deployment (promptopt.operatorLabels); its container is told apart by its environment.
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"


@dataclass(frozen=True)
class InstalledOperator:
    """An operator Deployment and the settings its environment gives it."""

    namespace: str
    name: str
    ready_replicas: int
    settings: OperatorSettings

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def watches(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces


@dataclass(frozen=True)
class SeenJob:
    namespace: str
    name: str
    phase: str | None
    ready_reason: str | None = None
    message: str | None = None

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"


def installed_operators(deployments: Iterable[Mapping[str, Any]]) -> list[InstalledOperator]:
    """The promptopt operators among Deployments (as JSON): those with a container the chart configures (its
    PROMPTOPT_NAMESPACES), with the settings their environment gives."""
    operators = []
    for deployment in deployments:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            environment = {variable["name"]: variable.get("value", "") for variable in container.get("env") or []}
            if f"{ENVIRONMENT_PREFIX}NAMESPACES" in environment:
                operators.append(
                    InstalledOperator(
                        deployment["metadata"]["namespace"],
                        deployment["metadata"]["name"],
                        (deployment.get("status") or {}).get("readyReplicas", 0),
                        from_environment(environment),
                    )
                )
    return operators


def seen_jobs(items: Iterable[Mapping[str, Any]]) -> list[SeenJob]:
    """Jobs (as JSON) as their status shows them."""
    jobs = []
    for item in items:
        status = item.get("status") or {}
        ready: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        jobs.append(
            SeenJob(
                item["metadata"]["namespace"],
                item["metadata"]["name"],
                status.get("phase"),
                ready.get("reason"),
                status.get("message"),
            )
        )
    return jobs


def diagnose(job: SeenJob, operators: Sequence[InstalledOperator]) -> str:
    """One sentence: the job's state as its status tells it, or, without a phase, why no operator acted on it and
    what to do."""
    if job.phase:
        reason = f" ({job.ready_reason})" if job.ready_reason and job.ready_reason != job.phase else ""
        return f"{job.phase}{reason}" + (f": {job.message}" if job.message else "")
    if not operators:
        return "no phase: no promptopt operator is installed: install the chart (docs/install.md)"
    watching = [operator for operator in operators if operator.watches(job.namespace)]
    if not watching:
        watched = sorted({namespace for operator in operators for namespace in operator.settings.namespaces})
        return (
            f"no phase: no operator watches namespace {job.namespace} (watched: {', '.join(watched)}): add it to "
            "the chart's watchNamespaces (and jobNamespaces), or apply the job in a watched namespace"
        )
    running = [operator for operator in watching if operator.ready_replicas > 0]
    if not running:
        operator = watching[0]
        return (
            f"no phase: the operator {operator.where} that watches namespace {job.namespace} is not running "
            f"(0 ready): kubectl describe deployment -n {operator.namespace} {operator.name}"
        )
    operator = running[0]
    return (
        f"no phase yet: the operator {operator.where} watches namespace {job.namespace} and runs; if this lasts, "
        f"read its log: kubectl logs -n {operator.namespace} deployment/{operator.name}"
    )


def describe_operator(operator: InstalledOperator) -> str:
    watched = ", ".join(operator.settings.namespaces) or "every namespace"
    return f"operator {operator.where}: {operator.ready_replicas} ready, watches {watched}"
