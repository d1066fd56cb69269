"""`promptopt doctor` on a real API server: why a job has no phase (issue 21: a job in a namespace no operator
watches sat with an empty PHASE and nothing anywhere said why), read from the operator Deployment the chart renders."""

import os
import subprocess
import sys
from pathlib import Path

from promptopt_operator.diagnosis import InstalledOperator, SeenJob, diagnose
from promptopt_operator.settings import OperatorSettings

PROMPTOPT = str(Path(sys.executable).with_name("promptopt"))
MINIMAL_SPEC = {
    "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/gpt-4.1"},
    "prompts": [{"name": "p", "template": "Say hi to {{name}}"}],
    "task": {"model": "openai/gpt-4.1-mini"},
}


def job(name, namespace):
    return {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": MINIMAL_SPEC,
    }


def doctor(cluster):
    result = subprocess.run(
        [PROMPTOPT, "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "COLUMNS": "80"},
    )
    lines = result.stdout.splitlines()
    assert all(len(line) < 80 for line in lines), result.stdout
    return result.returncode, result.stdout.replace("\n    ", " ")  # each finding on one line again


def test_doctor_says_why_no_operator_acted_on_a_job(cluster, real_cluster, render):
    watched, elsewhere = cluster.namespace, f"{cluster.namespace}-b"
    real_cluster.create_namespace(elsewhere)
    (deployment,) = [m for m in render({"watchNamespaces": [watched]}, namespace=watched) if m["kind"] == "Deployment"]
    operator = deployment["metadata"]["name"]
    cluster.create(deployment)  # no controller runs it here: 0 ready until the test says otherwise
    try:
        for name, namespace in (("running", watched), ("unseen", watched), ("lost", elsewhere)):
            cluster.create(job(name, namespace))
        cluster.patch(
            "poj", "running", {"status": {"phase": "Running", "message": "iteration 3"}}, subresource="status"
        )

        code, said = doctor(cluster)
        assert code == 1
        assert f"operator {watched}/{operator}: 0 ready, watches {watched}" in said
        assert f"{watched}/running: Running: iteration 3" in said
        assert (
            f"{watched}/unseen: no phase: the operator {watched}/{operator} that watches namespace {watched} is "
            f"not running (0 ready): kubectl describe deployment -n {watched} {operator}"
        ) in said
        assert (
            f"{elsewhere}/lost: no phase: no operator watches namespace {elsewhere} (watched: {watched}): add it "
            "to the chart's watchNamespaces (and jobNamespaces), or apply the job in a watched namespace"
        ) in said

        cluster.patch("deployments", operator, {"status": {"replicas": 1, "readyReplicas": 1}}, subresource="status")
        code, said = doctor(cluster)
        assert (
            f"{watched}/unseen: no phase yet: the operator {watched}/{operator} watches namespace {watched} and "
            f"runs; if this lasts, read its log: kubectl logs -n {watched} deployment/{operator}" in said
        )
    finally:
        cluster.delete("deployments", operator)
        real_cluster.in_namespace(elsewhere).delete("poj", "lost")


def test_without_an_operator_the_doctor_says_to_install_the_chart():
    assert diagnose(SeenJob("ml", "j", None), []) == (
        "no phase: no promptopt operator is installed: install the chart (docs/install.md)"
    )


def test_an_operator_of_every_namespace_watches_the_jobs_namespace_and_a_phase_is_told_with_its_reason():
    everywhere = InstalledOperator("promptopt-system", "promptopt", 1, OperatorSettings())
    assert diagnose(SeenJob("ml", "j", None), [everywhere]).startswith("no phase yet: the operator")
    assert diagnose(SeenJob("ml", "j", "Pending", "FailedCreate", "add ml to jobNamespaces"), [everywhere]) == (
        "Pending (FailedCreate): add ml to jobNamespaces"
    )
    assert diagnose(SeenJob("ml", "j", "Succeeded", "Succeeded"), [everywhere]) == "Succeeded"
