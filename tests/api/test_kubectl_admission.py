"""The job API as a user meets it through kubectl on a real API server: examples apply, invalid jobs (misspelled
fields too) are refused naming the field."""

from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_apply_and_list_with_their_columns(kubectl):
    for example in sorted(EXAMPLES.glob("*.yaml")):
        kubectl("apply", "-f", str(example))
    listing = kubectl("get", "poj").stdout
    header = listing.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "OPTIMIZER", "PROGRESS%", "INITIAL", "BEST", "DURATION", "AGE"]
    assert {line.split()[0] for line in listing.splitlines()[1:]} == {
        "gepa-sentiment",
        "metaprompt-zero-shot",
        "configmap-sources",
        "http-rag",
        "mlflow-sentiment",
        "simulated-llm-demo",
    }
    wide = kubectl("get", "poj", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-6:] == ["REASON", "TEST", "COST", "STARTED", "POD", "AGE"]


def test_api_server_defaults_are_visible(kubectl):
    kubectl("apply", "-f", str(EXAMPLES / "metaprompt-zero-shot.yaml"))
    stored = yaml.safe_load(kubectl("get", "poj", "metaprompt-zero-shot", "-o", "yaml").stdout)
    assert stored["spec"]["backoffLimit"] == 2 and stored["spec"]["task"]["concurrency"] == 8


def test_invalid_jobs_are_refused_naming_the_field(kubectl):
    job = yaml.safe_load((EXAMPLES / "metaprompt-zero-shot.yaml").read_text())
    job["spec"]["optimizer"]["type"] = "GEPA"  # GEPA needs a dataset
    del job["spec"]["optimizer"]["metaPrompt"]
    job["spec"]["task"]["concurrency"] = 0
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert result.returncode != 0
    assert "spec.task.concurrency" in result.stderr
    job["spec"]["task"]["concurrency"] = 4
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert "spec.dataset" in result.stderr and "the GEPA optimizer needs a dataset" in result.stderr
    assert "metaprompt-zero-shot" not in kubectl("get", "poj").stdout


def test_explain_shows_field_descriptions(kubectl):
    explained = kubectl("explain", "poj.spec.optimizer.gepa").stdout
    assert "maxMetricCalls" in explained and "candidateSelection" in explained


def test_a_misspelled_field_is_refused_by_kubectl_apply(kubectl):
    job = yaml.safe_load((EXAMPLES / "gepa-sentiment.yaml").read_text())
    job["spec"]["optimizer"]["gepa"]["maxMetricCall"] = job["spec"]["optimizer"]["gepa"].pop("maxMetricCalls")
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert result.returncode != 0
    assert 'strict decoding error: unknown field "spec.optimizer.gepa.maxMetricCall"' in result.stderr
    assert "gepa-sentiment" not in kubectl("get", "poj").stdout  # nothing half-applied


def test_jobs_are_searched_by_phase_optimizer_and_outcome_with_field_selectors(kubectl, cluster):
    """As MLflow's job search filters by state: the CRD's selectableFields (Kubernetes 1.31 and later)."""
    for example in ("gepa-sentiment", "metaprompt-zero-shot", "configmap-sources"):
        kubectl("apply", "-f", str(EXAMPLES / f"{example}.yaml"))
    for name, status in (
        (
            "gepa-sentiment",
            {
                "phase": "Succeeded",
                "workerResult": {"reason": "GoalReached", "message": "at the goal", "succeeded": True},
            },
        ),
        ("metaprompt-zero-shot", {"phase": "Failed"}),
        ("configmap-sources", {"phase": "Running"}),
    ):
        cluster.patch("poj", name, {"status": status}, subresource="status")

    def names(*selector):
        return sorted(kubectl("get", "poj", "--field-selector", ",".join(selector), "-o", "name").stdout.split())

    assert names("status.phase=Succeeded") == ["promptoptimizationjob.promptopt.dev/gepa-sentiment"]
    assert names("status.phase!=Succeeded") == [
        "promptoptimizationjob.promptopt.dev/configmap-sources",
        "promptoptimizationjob.promptopt.dev/metaprompt-zero-shot",
    ]
    assert names("spec.optimizer.type=MetaPrompt", "status.phase=Running") == [
        "promptoptimizationjob.promptopt.dev/configmap-sources"
    ]
    assert names("status.workerResult.reason=GoalReached") == ["promptoptimizationjob.promptopt.dev/gepa-sentiment"]
