"""Fixtures for the shipping tests: the value sets the chart (rendered by tests/conftest.py's `render`) is
checked with."""

import pytest

# The value sets every chart test runs with: the defaults, and the non-default paths through the templates.
VALUE_SETS = {
    "defaults": {},
    "namespaced": {
        "watchNamespaces": ["team-a", "team-b"],
        "jobNamespaces": ["team-a", "team-b", "team-c"],
        "maxRunningJobs": 3,
    },
    "everything-on": {
        "operator": {
            "image": {"repository": "registry.example/promptopt-operator", "digest": "sha256:" + "a" * 64},
            "verbose": True,
            "podAnnotations": {"example.com/team": "ml"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
        },
        "worker": {
            "image": {"repository": "registry.example/promptopt-worker", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            "imagePullSecrets": [{"name": "registry-credentials"}],
        },
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "retryBaseDelaySeconds": 2.5,
        "networkPolicy": {
            "enabled": True,
            "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
            "llmEndpoints": {"cidrs": ["203.0.113.0/24"], "ports": [443]},
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "workerExtraEgress": [
                {
                    "to": [{"podSelector": {"matchLabels": {"app": "vllm"}}}],
                    "ports": [{"protocol": "TCP", "port": 8000}],
                }
            ],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "demo": {"simulatedLLM": {"enabled": True}},
    },
    "minimal": {
        "operator": {"replicas": 1},
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing-operator"},
        "worker": {"serviceAccount": {"create": False, "name": "existing-worker"}},
        "metrics": {"enabled": False},
    },
}


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def values_name(request) -> str:
    """The name of one of VALUE_SETS: a test using it (or `values`, `manifests`) runs once per value set."""
    return request.param


@pytest.fixture(scope="session")
def values(values_name) -> dict:
    return VALUE_SETS[values_name]


@pytest.fixture(scope="session")
def manifests(render, values) -> list[dict]:
    return render(values)
