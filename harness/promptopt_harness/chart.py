"""The Helm chart rendered as `helm template` renders it, by the real Helm engine (helm-python-sdk), and installed
by the real helm CLI (`HelmCli`, built by promptopt_harness.build_kube from Helm's Go module: these machines have no
helm package). Like `helm template`, it takes the chart's folder (deploy/helm/promptopt).

    python -m promptopt_harness.chart deploy/helm/promptopt --values '{"jobNamespaces": ["default"]}' --kind Role \
        | kubectl apply -f -

prints the rendered objects as one YAML stream (CRDs excluded: Helm installs crds/ as they are).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

RELEASE = "promptopt"
RELEASE_NAMESPACE = "promptopt-system"
# What an operator and its workers need from the chart to run with its permissions.
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@contextlib.contextmanager
def loaded_chart(folder: str | Path) -> Iterator[Any]:
    """The chart in `folder`, loaded by the Helm engine."""
    from helm_python.chart import Chart

    with Chart.load(folder) as chart:
        yield chart


def render(chart: Any, values: dict[str, Any], namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart renders with `values`, parsed, in file order."""
    rendered = chart.render(values, name=RELEASE, namespace=namespace)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


class HelmCli:
    """The helm CLI against one cluster: what a user runs. Each call fails with helm's own message."""

    def __init__(self, helm: Path, kubeconfig: Path, namespace: str = RELEASE_NAMESPACE):
        self.helm, self.kubeconfig, self.namespace = helm, kubeconfig, namespace

    def run(self, *args: str, timeout: float = 180) -> str:
        command = [str(self.helm), "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def _with_values(self, verb: str, chart: Path, values: dict[str, Any]) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="values-") as file:
            json.dump(values, file)  # JSON is YAML: a values file, as users pass them
            file.flush()
            return self.run(verb, RELEASE, str(chart), "--values", file.name, "--wait", "--timeout", "120s")

    def install(self, chart: Path, values: dict[str, Any]) -> str:
        return self._with_values("install", chart, values)

    def upgrade(self, chart: Path, values: dict[str, Any]) -> str:
        return self._with_values("upgrade", chart, values)

    def uninstall(self) -> str:
        return self.run("uninstall", RELEASE, "--wait", "--timeout", "120s")

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", RELEASE, "--output", "json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the promptopt Helm chart like `helm template`.")
    parser.add_argument("chart", type=Path, help="the chart's folder (deploy/helm/promptopt)")
    parser.add_argument("--values", default="{}", help="chart values as a JSON object")
    parser.add_argument("--namespace", default=RELEASE_NAMESPACE, help="the release namespace")
    parser.add_argument("--kind", action="append", default=[], help="only objects of this kind (repeatable)")
    parser.add_argument("--rbac", action="store_true", help=f"only {', '.join(RBAC_KINDS)}")
    args = parser.parse_args(argv)
    kinds = [*args.kind, *(RBAC_KINDS if args.rbac else ())]
    with loaded_chart(args.chart) as chart:
        documents = render(chart, json.loads(args.values), args.namespace)
    yaml.safe_dump_all([d for d in documents if not kinds or d["kind"] in kinds], sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
