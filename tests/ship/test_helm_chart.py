"""The Helm chart, rendered and linted by the real Helm engine (helm-python-sdk): valid Kubernetes objects, the
CRD of crds/, an operator configured as the values say, and bad values refused with a message naming them."""

import dataclasses
import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helm_python import chart as helm
from helm_python.errors import HelmError

from promptopt.api.crd import CRD_FILE_NAME
from promptopt.cli import build_parser
from promptopt_harness.chart import RELEASE_NAMESPACE
from promptopt_operator.pods import COMPONENT_LABELS
from promptopt_operator.settings import OperatorSettings, environment_variable, flag_settings, from_arguments

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "promptopt"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Kinds of other projects' CRDs, which kubernetes-validate has no schema for.
CUSTOM_KINDS = {"ServiceMonitor"}


def objects(manifests, kind):
    return [m for m in manifests if m["kind"] == kind]


def operator_deployment(manifests):
    (deployment,) = [
        d
        for d in objects(manifests, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    return deployment


def job_namespaces(merged_values, manifests):
    """Where the chart lets jobs run: where the worker's ServiceAccount and NetworkPolicy must be."""
    deployment = operator_deployment(manifests)
    return merged_values["jobNamespaces"] or merged_values["watchNamespaces"] or [deployment["metadata"]["namespace"]]


def operator_container(manifests):
    deployment = operator_deployment(manifests)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_chart_ships_the_generated_crd_byte_for_byte():
    # Exactly the API's CRD in both folders: a glob that finds nothing must not pass.
    assert sorted(p.name for p in (REPO / "crds").glob("*.yaml")) == [CRD_FILE_NAME]
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == [CRD_FILE_NAME]
    assert (CHART / "crds" / CRD_FILE_NAME).read_bytes() == (REPO / "crds" / CRD_FILE_NAME).read_bytes(), (
        f"deploy/helm/promptopt/crds/{CRD_FILE_NAME} differs from crds/{CRD_FILE_NAME}: "
        "run `promptopt crd -o crds -o deploy/helm/promptopt/crds`"
    )


def test_lint_strict_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSIONS[0]}")
    warnings_or_errors = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and warnings_or_errors == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(manifests, version):
    checked = [manifest for manifest in manifests if manifest["kind"] not in CUSTOM_KINDS]
    assert checked
    for manifest in checked:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_only_known_custom_kinds_are_rendered(manifests, values):
    kinds = {m["kind"] for m in manifests}
    assert kinds & CUSTOM_KINDS == ({"ServiceMonitor"} if values.get("serviceMonitor", {}).get("enabled") else set())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_crd_itself_is_valid_for_kubernetes(version):
    crd = yaml.safe_load((CHART / "crds" / CRD_FILE_NAME).read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    kubernetes_validate.validate(crd, version, strict=True)


def test_operator_replicas_elect_a_leader_roll_without_a_gap_and_have_probes_and_metrics(manifests, values):
    deployment = operator_deployment(manifests)
    replicas = values.get("operator", {}).get("replicas", 2)
    assert deployment["spec"]["replicas"] == replicas
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    budgets = [m for m in manifests if m["kind"] == "PodDisruptionBudget"]
    assert [b["spec"] for b in budgets] == (
        [{"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}] if replicas > 1 else []
    )
    container = operator_container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROMPTOPT_LEADER_ELECTION_NAMESPACE"] == deployment["metadata"]["namespace"]
    assert env["PROMPTOPT_LEADER_ELECTION_LEASE"] == deployment["metadata"]["name"]
    for probe in (container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]):
        assert probe["path"] == "/healthz" and ports[probe["port"]] == int(env["PROMPTOPT_LIVENESS_PORT"])
    metrics_enabled = values.get("metrics", {}).get("enabled", True)
    assert ("metrics" in ports) == metrics_enabled
    assert int(env["PROMPTOPT_METRICS_PORT"]) == (ports["metrics"] if metrics_enabled else 0)
    assert container["resources"]["requests"] and container["resources"]["limits"]


def settings_from_container(container, monkeypatch) -> OperatorSettings:
    """What `promptopt operator` makes of the container's environment and arguments."""
    for name in [n for n in os.environ if n.startswith("PROMPTOPT_")]:
        monkeypatch.delenv(name)
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    return from_arguments(build_parser().parse_args(["operator", *container.get("args", [])]))


def test_every_operator_setting_comes_from_the_chart():
    """The chart sets the PROMPTOPT_* variable of every operator flag, and no other."""
    read = {environment_variable(setting) for setting in flag_settings()}
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    set_by_chart = set(re.findall(r"name: (PROMPTOPT_[A-Z_]+)", deployment))
    assert read and set_by_chart == read


def test_default_values_configure_the_operator_defaults(render, monkeypatch):
    settings = settings_from_container(operator_container(render({})), monkeypatch)
    # Replicas elect a leader in the release namespace; `promptopt operator` run by hand acts alone.
    assert settings == dataclasses.replace(OperatorSettings(), leader_election_namespace=RELEASE_NAMESPACE)


def test_values_configure_the_operator(chart, manifests, values, monkeypatch):
    merged = chart.merge_values(values)
    settings = settings_from_container(operator_container(manifests), monkeypatch)
    worker_image = merged["worker"]["image"]
    expected_image = (
        f"{worker_image['repository']}@{worker_image['digest']}"
        if worker_image["digest"]
        else f"{worker_image['repository']}:{worker_image['tag'] or chart.metadata['appVersion']}"
    )
    assert settings.namespaces == tuple(merged["watchNamespaces"])
    assert settings.max_running_jobs == merged["maxRunningJobs"]
    assert settings.retry_base_delay_seconds == merged["retryBaseDelaySeconds"]
    assert settings.worker_image == expected_image
    assert settings.worker_image_pull_policy == worker_image["pullPolicy"]
    assert settings.worker_service_account == merged["worker"]["serviceAccount"]["name"]
    assert settings.worker_resources == merged["worker"]["resources"]
    assert settings.worker_grace_period_seconds == merged["worker"]["terminationGracePeriodSeconds"]


def test_worker_service_account_exists_where_jobs_run(chart, manifests, values):
    merged = chart.merge_values(values)
    expected = job_namespaces(merged, manifests)
    accounts = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in objects(manifests, "ServiceAccount")}
    worker_accounts = {(ns, name) for ns, name in accounts if name == merged["worker"]["serviceAccount"]["name"]}
    if merged["worker"]["serviceAccount"]["create"]:
        assert worker_accounts == {(ns, merged["worker"]["serviceAccount"]["name"]) for ns in expected}
    else:
        assert worker_accounts == set()


def test_network_policies_select_the_operator_and_the_worker_pods(chart, manifests, values):
    policies = objects(manifests, "NetworkPolicy")
    if not values.get("networkPolicy", {}).get("enabled"):
        assert policies == []
        return
    deployment = operator_deployment(manifests)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    operator_policies = [
        p
        for p in policies
        if p["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        and p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ]
    worker_policies = [p for p in policies if p["spec"]["podSelector"]["matchLabels"] == COMPONENT_LABELS]
    assert len(operator_policies) == 1 and len(operator_policies) + len(worker_policies) == len(policies)
    assert sorted(p["metadata"]["namespace"] for p in worker_policies) == sorted(
        job_namespaces(chart.merge_values(values), manifests)
    )
    for policy in worker_policies:
        assert "ingress" not in policy["spec"] and policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
        assert {53, 443} <= egress_ports  # DNS and HTTPS to the LLM endpoints
    egress_ports = {port["port"] for rule in operator_policies[0]["spec"]["egress"] for port in rule["ports"]}
    assert egress_ports == set(values["networkPolicy"]["apiServer"]["ports"])


def test_service_monitor_scrapes_the_metrics_service(manifests, values):
    monitors = objects(manifests, "ServiceMonitor")
    if not values.get("serviceMonitor", {}).get("enabled"):
        assert monitors == []
        return
    (monitor,) = monitors
    (service,) = [s for s in objects(manifests, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


@pytest.mark.parametrize(
    "bad_values, message",
    [
        ({"maxRunningJobs": 0}, "at '/maxRunningJobs': minimum: got 0, want 1"),
        ({"maxRunningJobs": "10"}, "at '/maxRunningJobs': got string, want integer"),
        ({"maxRunningJob": 3}, "additional properties 'maxRunningJob' not allowed"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        ({"worker": {"image": {"pullPolicy": "Sometimes"}}}, "at '/worker/image/pullPolicy': value must be one of"),
        ({"operator": {"image": {"digest": "latest"}}}, "at '/operator/image/digest'"),
        (
            {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": []}}},
            "at '/networkPolicy/apiServer/cidrs': minItems",
        ),
        (
            {"serviceMonitor": {"enabled": True}, "metrics": {"enabled": False}},
            "serviceMonitor.enabled needs metrics.enabled",
        ),
    ],
)
def test_bad_values_fail_with_a_message_naming_them(chart, bad_values, message):
    with pytest.raises(HelmError) as failure:
        chart.render(bad_values, name="promptopt", namespace="promptopt-system")
    assert message in str(failure.value)
