"""The operator's own configuration: command-line flags, with environment variables as defaults (Helm sets those).

Each setting is written once, as a field of `OperatorSettings`; `flag()` marks the ones `promptopt operator` takes,
and its flag, environment variable (PROMPTOPT_ and the field's name), help and parsing follow from the field.
Stdlib only: `promptopt --help` runs in the worker image, which has no kopf.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any, get_origin, get_type_hints

ENVIRONMENT_PREFIX = "PROMPTOPT_"
_FLAG = "flag"  # the metadata key of a field that has a flag


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]  # empty: --the-field-name
    help: str


def flag(default: Any, *names: str, help: str) -> Any:
    """A setting that `promptopt operator` takes as a flag (`names`, default --the-field-name) and from its
    environment variable, parsed by the field's type."""
    metadata = {_FLAG: Flag(names, help)}
    if isinstance(default, dict):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = flag(
        (), "--namespace", "-n", help="watch this namespace (repeatable, or comma-separated); default: all namespaces"
    )
    max_running_jobs: int = flag(10, help="jobs with a worker Pod at once; more wait Queued")
    worker_image: str = flag("ghcr.io/promptopt/worker:0.1.0", help="default worker image")
    worker_image_pull_policy: str = flag("IfNotPresent", help="default imagePullPolicy of worker Pods")
    worker_service_account: str = flag("promptopt-worker", help="default ServiceAccount of worker Pods")
    worker_resources: dict[str, Any] = flag(
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        help="default worker resources as JSON",
    )
    worker_uid: int = 65532
    worker_scratch_size: str = "1Gi"
    worker_grace_period_seconds: int = flag(
        60,
        "--worker-grace-period",
        help="seconds a worker has after SIGTERM to stop the optimizer and write its best result",
    )
    retry_base_delay_seconds: float = flag(
        10.0, "--retry-base-delay", help="delay before the first retry of a failed worker; doubles each time"
    )
    retry_max_delay_seconds: float = 360.0
    liveness_port: int = flag(8080, help="port of kopf's liveness endpoint /healthz (0: none)")
    metrics_port: int = flag(9090, help="port of the Prometheus metrics (0: none)")
    leader_election_namespace: str = flag(
        "",
        help="hold a Lease in this namespace so that, of several replicas, one acts at a time (the chart sets "
        "the operator's namespace); empty: no election, this process acts alone",
    )
    leader_election_lease: str = flag("promptopt", help="the name of the leader election Lease")
    # etcd's default request limit (1.5 MiB), which kubeadm, EKS, GKE and AKS keep: a job and its status must fit.
    max_object_bytes: int = flag(
        1536 * 1024, help="the API's object size limit (etcd's --max-request-bytes); larger jobs fail with JobTooLarge"
    )


def flag_settings() -> list[Field[Any]]:
    """The fields of OperatorSettings that `promptopt operator` takes as flags and environment variables."""
    return [setting for setting in fields(OperatorSettings) if _FLAG in setting.metadata]


def environment_variable(setting: Field[Any]) -> str:
    return ENVIRONMENT_PREFIX + setting.name.upper()


def json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {text}")
    return value


def comma_separated(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parser(kind: Any) -> Callable[[str], Any]:
    """How a value of this type is written in a flag or an environment variable (argparse names the function
    in its error messages)."""
    return {dict: json_object, tuple: comma_separated}.get(get_origin(kind), kind)  # else int, float, str


class _Extend(argparse.Action):
    """Each use of a repeatable flag adds its items; the first replaces the default (from the environment)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        so_far = getattr(namespace, self.dest)
        setattr(namespace, self.dest, (*(() if so_far is self.default else so_far), *values))


def add_arguments(parser: argparse.ArgumentParser, environment: Mapping[str, str] = os.environ) -> None:
    kinds, defaults = get_type_hints(OperatorSettings), OperatorSettings()
    for setting in flag_settings():
        option: Flag = setting.metadata[_FLAG]
        variable, kind = environment_variable(setting), kinds[setting.name]
        names: Sequence[str] = option.names or [f"--{setting.name.replace('_', '-')}"]
        # A default read from the environment is text, which argparse parses as it parses the flag's value.
        default = environment.get(variable, getattr(defaults, setting.name))
        parser.add_argument(
            *names,
            dest=setting.name,
            type=_parser(kind),
            default=default,
            action=_Extend if get_origin(kind) is tuple else "store",
            help=f"{option.help} (env {variable})",
        )


def from_arguments(args: argparse.Namespace) -> OperatorSettings:
    return OperatorSettings(**{setting.name: getattr(args, setting.name) for setting in flag_settings()})


def from_environment(environment: Mapping[str, str]) -> OperatorSettings:
    """The settings an operator with this environment (and no flags) runs with, e.g. as a Deployment sets them."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, environment)
    return from_arguments(parser.parse_args([]))
