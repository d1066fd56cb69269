"""The Helm chart rendered as `helm template` renders it, by the real Helm engine (helm-python-sdk): these
machines have no helm binary. Like `helm template`, it takes the chart's folder (deploy/helm/promptopt).

    python -m promptopt_harness.chart deploy/helm/promptopt --values '{"jobNamespaces": ["default"]}' --kind Role \
        | kubectl apply -f -

prints the rendered objects as one YAML stream (CRDs excluded: Helm installs crds/ as they are).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
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
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


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
