"""spec.mlflow against a real MLflow tracking server (SQLite, loopback) through MLflow's own client: prompts read
from the Prompt Registry by version, alias or latest, the version recorded and pinned, the optimized prompts
registered as new versions with their tags, model_config and alias; failures named before any LLM call (by the dry
run too), and a registration that fails loses nothing; the job's run as MLflow's own prompt optimization logs one."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from promptopt.api.v1alpha1 import MlflowStatus
from promptopt.api.validation import parse_spec
from promptopt.simulated_llm import SEED_INSTRUCTION, sentiment_dataset
from promptopt_worker import mlflow_store
from promptopt_worker.llm import LLMClient
from promptopt_worker.main import run_job, with_simulated_models
from promptopt_worker.problem import StopRequested
from promptopt_worker.reporting import Reporters, ResultFileReporter
from promptopt_worker.sources import LocalConfigMaps

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # mlflow imports litellm

PROMPTOPT = str(Path(sys.executable).with_name("promptopt"))
# A prompt version's model_config, as MLflow's server-side optimization needs it (provider and model_name).
MODEL_CONFIG = {"provider": "openai", "model_name": "gpt-4.1-mini", "temperature": 0.2}


@pytest.fixture
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


@pytest.fixture
def prompt(client):
    """A registry prompt of this test's own: version 1 (alias production) is the seed, with the model it was written
    for (MODEL_CONFIG), version 2 another one."""
    name = f"sentiment-{uuid.uuid4().hex[:8]}"
    client.register_prompt(name, SEED_INSTRUCTION, commit_message="the seed", model_config=MODEL_CONFIG)
    client.register_prompt(name, "Say something about: {{review}}", commit_message="a worse one")
    client.set_prompt_alias(name, "production", 1)
    return name


def job_spec(mlflow_server, uri, **mlflow):
    return {
        "optimizer": {"type": "GEPA", "reflectionModel": "openai/sim-reflect", "gepa": {"maxMetricCalls": 40}},
        "prompts": [{"name": "classify", "registryUri": uri}],
        "task": {"model": "openai/sim-task"},
        "dataset": {"records": sentiment_dataset(8, seed=2), "validationFraction": 0.5},
        "scorers": [{"name": "ExactMatch"}],
        "mlflow": {"trackingUri": mlflow_server.url, **mlflow},
    }


def run(spec, llm, tmp_path, identity=None):
    spec = with_simulated_models(parse_spec(spec), llm.base_url)
    out = tmp_path / "result.json"
    result = run_job(
        spec,
        LocalConfigMaps([]),
        LLMClient(),
        Reporters(ResultFileReporter(out)),
        StopRequested(),
        identity=identity or {"job": "sentiment", "namespace": "team-a", "job-uid": "uid-1"},
    )
    return result, json.loads(out.read_text())


def test_a_prompt_read_by_alias_is_optimized_and_registered_as_a_new_version(
    mlflow_server, client, prompt, llm, monkeypatch, tmp_path
):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = job_spec(mlflow_server, f"prompts:/{prompt}@production", registerOptimizedPrompts={"alias": "candidate"})
    result, status = run(spec, llm, tmp_path)

    assert result.succeeded, result.message
    assert status["mlflow"]["sourcePrompts"] == {"classify": f"prompts:/{prompt}/1"}  # the alias, resolved
    assert status["mlflow"]["optimizedPrompts"] == {"classify": f"prompts:/{prompt}/3"}
    assert "registrationError" not in status["mlflow"]
    registered = client.load_prompt(f"prompts:/{prompt}@candidate")
    assert registered.version == 3 and registered.template == status["optimizedPrompts"][0]["template"]
    assert (
        registered.tags
        | {
            "promptopt.dev/job": "sentiment",
            "promptopt.dev/namespace": "team-a",
            "promptopt.dev/job-uid": "uid-1",
            "promptopt.dev/source": f"prompts:/{prompt}/1",
            "promptopt.dev/initial-score": f"{status['initialScores']['aggregate']:.6g}",
            "promptopt.dev/final-score": f"{status['finalScores']['aggregate']:.6g}",
        }
        == registered.tags
    )
    assert "optimized by promptopt job team-a/sentiment (PerfectScore); aggregate" in registered.commit_message
    assert registered.model_config == MODEL_CONFIG  # copied from the source version, as MLflow copies it
    assert client.load_prompt(f"prompts:/{prompt}@production").version == 1  # the alias in use is left alone


@pytest.mark.parametrize("uri,version", [("prompts:/{}/2", 2), ("prompts:/{}@latest", 2)])
def test_a_version_or_the_latest_is_read_and_recorded_without_registering(
    mlflow_server, client, prompt, llm, monkeypatch, tmp_path, uri, version
):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    result, status = run(job_spec(mlflow_server, uri.format(prompt)), llm, tmp_path)
    assert result.succeeded
    assert status["mlflow"] == {"sourcePrompts": {"classify": f"prompts:/{prompt}/{version}"}}
    assert client.load_prompt(f"prompts:/{prompt}@latest").version == 2  # nothing registered


def test_a_prompt_from_elsewhere_is_registered_with_the_task_model_as_its_model_config(
    mlflow_server, client, llm, monkeypatch, tmp_path
):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    name = f"inline-{uuid.uuid4().hex[:8]}"
    spec = job_spec(mlflow_server, "prompts:/unused/1", registerOptimizedPrompts={})
    spec["prompts"] = [{"name": "classify", "template": SEED_INSTRUCTION, "registerAs": name}]
    spec["task"] |= {"temperature": 0.5, "maxTokens": 64}
    result, status = run(spec, llm, tmp_path)
    assert result.succeeded and status["mlflow"]["optimizedPrompts"] == {"classify": f"prompts:/{name}/1"}
    assert client.load_prompt(f"prompts:/{name}/1").model_config == {
        "provider": "openai",
        "model_name": "sim-task",
        "temperature": 0.5,
        "max_tokens": 64,
    }


@pytest.mark.parametrize(
    "uri,meaning",
    [
        ("prompts:/{}/9", "MLflow has no such prompt, version or dataset"),
        ("prompts:/{}@staging", "an alias that does not exist"),
        ("prompts:/missing-prompt-x/1", "MLflow has no such prompt, version or dataset"),
    ],
)
def test_a_missing_prompt_version_or_alias_fails_before_any_llm_call(
    mlflow_server, prompt, llm, monkeypatch, tmp_path, uri, meaning
):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    result, status = run(job_spec(mlflow_server, uri.format(prompt)), llm, tmp_path)
    assert result.reason == "InvalidInput" and llm.request_count == 0
    assert result.message.startswith(f"spec.prompts[0].registryUri: {uri.format(prompt)} could not be read")
    assert meaning in result.message


def test_an_unreachable_server_fails_fast_naming_the_tracking_uri(llm, monkeypatch, tmp_path):
    from promptopt_harness.realkube import free_port

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = job_spec(type("Gone", (), {"url": f"http://127.0.0.1:{free_port()}"}), "prompts:/sentiment/1")
    result, _ = run(spec, llm, tmp_path)
    assert result.reason == "InvalidInput" and llm.request_count == 0
    assert "the server could not be reached: check spec.mlflow.trackingUri" in result.message


def dry_run(spec, tmp_path):
    job = {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": "planned"},
        "spec": spec,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    return subprocess.run(
        [PROMPTOPT, "run", "--dry-run", "--simulated-llm", str(tmp_path / "job.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_dry_run_reaches_the_server_as_the_run_does(mlflow_server, client, prompt, dataset_id, tmp_path):
    from promptopt_harness.realkube import free_port

    gone = type("Gone", (), {"url": f"http://127.0.0.1:{free_port()}"})
    refused = dry_run(tracked_spec(gone, "nowhere"), tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert (
        f"spec.mlflow.experiment: MLflow at {gone.url}: the server could not be reached: check "
        "spec.mlflow.trackingUri" in refused.stderr
    )

    experiment = f"planned-{uuid.uuid4().hex[:8]}"
    planned = dry_run(job_spec(mlflow_server, f"prompts:/{prompt}@production", experiment=experiment), tmp_path)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert f"prompt classify reads prompts:/{prompt}/1 (prompts:/{prompt}@production now)" in planned.stdout
    assert f"experiment {experiment!r} does not exist: the run creates it" in planned.stdout
    assert client.get_experiment_by_name(experiment) is None  # a dry run creates nothing
    existing = client.create_experiment(experiment)
    spec = job_spec(mlflow_server, f"prompts:/{prompt}@latest", experiment=experiment)
    spec["dataset"] = dataset_spec(mlflow_server, dataset_id)["dataset"]
    planned = dry_run(spec, tmp_path)
    assert f"prompt classify reads prompts:/{prompt}/2 (prompts:/{prompt}@latest now)" in planned.stdout
    assert f"experiment {experiment!r} (id {existing}): the run goes there" in planned.stdout
    assert f"MLflow: dataset {dataset_id} reads digest {client.get_dataset(dataset_id).digest}" in planned.stdout


def test_a_registration_that_fails_keeps_the_result_and_says_why(
    mlflow_server, client, prompt, llm, monkeypatch, tmp_path
):
    """The optimized prompt goes to a name MLflow refuses for a prompt (a registered model's): every try fails."""
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    monkeypatch.setattr(mlflow_store, "REGISTRATION_DELAYS_S", (0.0, 0.0))
    taken = f"model-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(taken)
    spec = job_spec(mlflow_server, f"prompts:/{prompt}/1", registerOptimizedPrompts={})
    spec["prompts"][0]["registerAs"] = taken
    result, status = run(spec, llm, tmp_path)

    assert result.succeeded and status["workerResult"]["reason"] == "PerfectScore"
    assert status["optimizedPrompts"] and status["finalScores"]  # nothing of the result is lost
    error = status["mlflow"]["registrationError"]
    assert error.startswith(
        f"registering prompt 'classify' as '{taken}' in MLflow at {mlflow_server.url} failed 3 times"
    )
    assert status["mlflow"]["optimizedPrompts"] == {}


def test_promptopt_run_reads_and_registers_with_the_token_masked(mlflow_server, client, prompt, tmp_path):
    token = "mlflow-token-0c9a7e31d2"
    job = {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": "local"},
        "spec": job_spec(mlflow_server, f"prompts:/{prompt}@production", registerOptimizedPrompts={}),
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")} | {"MLFLOW_TRACKING_TOKEN": token}
    run = subprocess.run(
        [PROMPTOPT, "run", "--simulated-llm", str(tmp_path / "job.yaml"), "-o", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    status = json.loads((tmp_path / "out.json").read_text())
    assert status["mlflow"]["optimizedPrompts"] == {"classify": f"prompts:/{prompt}/3"}
    assert client.load_prompt(f"prompts:/{prompt}/3").tags["promptopt.dev/job"] == "local"
    assert token not in run.stdout + run.stderr + json.dumps(status)


# --- the job's MLflow run (spec.mlflow.experiment) ------------------------------------------------------------------


def tracked_spec(mlflow_server, experiment, **changes):
    spec = job_spec(mlflow_server, "prompts:/unused/1", experiment=experiment)
    spec["prompts"] = [{"name": "classify", "template": SEED_INSTRUCTION}]
    return spec | changes


def run_with(spec, llm, tmp_path, stop=None, run_id=None):
    spec = with_simulated_models(parse_spec(spec), llm.base_url)
    out = tmp_path / "result.json"
    result = run_job(
        spec,
        LocalConfigMaps([]),
        LLMClient(),
        Reporters(ResultFileReporter(out)),
        stop or StopRequested(),
        identity={"job": "tracked", "namespace": "team-a"},
        mlflow_started=MlflowStatus(run_id=run_id),
    )
    return result, json.loads(out.read_text())


def history(client, run_id, name):
    """A metric's points in step order."""
    return sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))


def test_a_job_logs_one_run_with_its_settings_progress_scores_and_candidates(
    mlflow_server, client, llm, monkeypatch, tmp_path
):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    experiment = f"optimization-{uuid.uuid4().hex[:8]}"
    spec = tracked_spec(mlflow_server, experiment)
    spec["dataset"]["testFraction"] = 0.25
    result, status = run_with(spec, llm, tmp_path)

    assert result.succeeded
    run = client.get_run(status["mlflow"]["runId"])
    assert (
        run.info.experiment_id
        == status["mlflow"]["experimentId"]
        == client.get_experiment_by_name(experiment).experiment_id
    )
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.tags["promptopt.dev/namespace"] == "team-a"
    assert (
        run.data.params | {"max_metric_calls": "40", "reflection_minibatch_size": "3", "candidate_selection": "pareto"}
        == run.data.params
    )
    # The scores under the names MLflow's optimization job reads back (and no others).
    metrics, final, initial = run.data.metrics, status["finalScores"], status["initialScores"]
    assert {
        name: value for name, value in metrics.items() if "_eval_score" in name or "_test_score" in name
    } == pytest.approx(
        {
            "initial_eval_score": initial["aggregate"],
            "final_eval_score": final["aggregate"],
            "initial_eval_score.ExactMatch": initial["scorers"]["ExactMatch"],
            "final_eval_score.ExactMatch": final["scorers"]["ExactMatch"],
            "initial_test_score": initial["test"]["aggregate"],
            "final_test_score": final["test"]["aggregate"],
            "initial_test_score.ExactMatch": initial["test"]["scorers"]["ExactMatch"],
            "final_test_score.ExactMatch": final["test"]["scorers"]["ExactMatch"],
        }
    )
    assert metrics["cost_llmCalls"] == sum(llm.calls.values())
    assert metrics["total_iterations"] == status["progress"]["iteration"]
    assert metrics["total_candidates"] == status["progress"]["candidates"]
    # Progress as gepa names it: one point per iteration, the last one the run's end.
    for name, last in (("best_score_on_valset", "bestScore"), ("total_metric_calls", "metricCalls")):
        points = history(client, run.info.run_id, name)
        assert len({m.step for m in points}) == len(points), f"{name}: two values at one step"
        assert points[-1].step == status["progress"]["iteration"] and points[-1].value == status["progress"][last]
    # Every candidate's validation scores, as MLflow's GEPA optimizer logs them (step: the candidate).
    candidates = json.loads(
        Path(client.download_artifacts(run.info.run_id, "candidates.json", str(tmp_path))).read_text()
    )["candidates"]
    assert len(candidates) == status["progress"]["candidates"] and all(c["prompts"] for c in candidates)
    found = sorted(candidates, key=lambda c: c["id"])  # the file ranks them by score
    for name, scores in (
        ("eval_score", [c["score"] for c in found]),
        ("eval_score.ExactMatch", [c["scorers"]["ExactMatch"] for c in found]),
    ):
        points = history(client, run.info.run_id, name)
        assert [m.step for m in points] == [c["id"] for c in found]
        assert [m.value for m in points] == pytest.approx(scores)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "optimized_prompts")
    }
    assert {"candidates.json", "optimized_prompts/classify.txt"} <= artifacts
    logged = client.download_artifacts(run.info.run_id, "optimized_prompts/classify.txt", str(tmp_path))
    assert Path(logged).read_text() == status["optimizedPrompts"][0]["template"]


def test_the_run_reads_as_an_mlflow_optimization_run(mlflow_server, client, prompt, llm, monkeypatch, tmp_path):
    """Params, tags and linked prompt versions as mlflow.genai.optimize_prompts and MLflow's optimization job write
    them, promptopt's beside them."""
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)

    def nameless():  # as in a worker Pod, whose uid has no passwd entry
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr("getpass.getuser", nameless)
    spec = job_spec(
        mlflow_server,
        f"prompts:/{prompt}@production",
        experiment=f"names-{uuid.uuid4().hex[:8]}",
        registerOptimizedPrompts={},
    )
    result, status = run(spec, llm, tmp_path)
    assert result.succeeded

    logged = client.get_run(status["mlflow"]["runId"])
    params = logged.data.params
    assert (
        params
        | {
            "optimizer": "GepaPromptOptimizer",
            "optimizer_type": "gepa",
            "source_prompt_uri": f"prompts:/{prompt}/1",
            "scorer_names": '["ExactMatch"]',
            "num_prompts": "1",
            "num_training_samples": "8",
            "trainset_size": "4",
            "valset_size": "4",
            "reflection_model": "openai/sim-reflect",
            "task": "openai/sim-task",
        }
        == params
    )
    assert "dataset_id" not in params  # the records are the job's own
    config = json.loads(params["optimizer_config_json"])
    assert config["reflection_model"] == "openai:/sim-reflect" and config["max_metric_calls"] == 40
    assert (
        config["gepa_kwargs"] | {"reflection_minibatch_size": 3, "candidate_selection_strategy": "pareto", "seed": 0}
        == config["gepa_kwargs"]
    )
    tags = logged.data.tags
    assert (tags["mlflow.source.type"], tags["mlflow.source.name"]) == ("JOB", "PromptOptimizationJob team-a/sentiment")
    assert logged.info.user_id == "unknown" and "mlflow.user" not in tags  # MLflow's word for no user
    # The version it started from and the one it registered, linked to the run as MLflow links them.
    assert json.loads(tags["mlflow.linkedPrompts"]) == [
        {"name": prompt, "version": "1"},
        {"name": prompt, "version": "3"},
    ]


def test_a_metaprompt_run_reads_as_mlflows_metaprompt_optimization(mlflow_server, client, llm, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = tracked_spec(mlflow_server, f"metaprompt-{uuid.uuid4().hex[:8]}")
    spec["optimizer"] = {
        "type": "MetaPrompt",
        "reflectionModel": "openai/sim-reflect",
        "metaPrompt": {"guidelines": "Answer with one word."},
        "options": {"temperature": 0.3},
    }
    result, status = run_with(spec, llm, tmp_path)
    assert result.succeeded

    logged = client.get_run(status["mlflow"]["runId"])
    params, metrics = logged.data.params, logged.data.metrics
    assert (params["optimizer"], params["optimizer_type"]) == ("MetaPromptOptimizer", "metaprompt")
    assert json.loads(params["optimizer_config_json"]) == {
        "reflection_model": "openai:/sim-reflect",
        "lm_kwargs": {"temperature": 0.3},
        "guidelines": "Answer with one word.",
    }
    assert metrics["total_metric_calls"] == status["progress"]["metricCalls"]
    assert metrics["final_eval_score"] == pytest.approx(status["finalScores"]["aggregate"])


def test_a_run_ends_killed_when_cancelled_and_failed_on_an_llm_error(mlflow_server, client, llm, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    experiment = f"endings-{uuid.uuid4().hex[:8]}"
    stop = StopRequested()
    stop.request("Cancelled", "stopped by the test")
    cancelled, status = run_with(tracked_spec(mlflow_server, experiment), llm, tmp_path, stop=stop)
    assert cancelled.reason == "Cancelled"
    assert client.get_run(status["mlflow"]["runId"]).info.status == "KILLED"

    broken = tracked_spec(mlflow_server, experiment)
    failed, status = run_with(broken, type("Gone", (), {"base_url": "http://127.0.0.1:9/v1", "api_key": "x"}), tmp_path)
    assert failed.reason == "LLMError"
    assert client.get_run(status["mlflow"]["runId"]).info.status == "FAILED"


def test_a_replaced_worker_logs_to_the_run_its_job_started(mlflow_server, client, llm, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = tracked_spec(mlflow_server, f"resumed-{uuid.uuid4().hex[:8]}")
    _, first = run_with(spec, llm, tmp_path)
    _, second = run_with(spec, llm, tmp_path, run_id=first["mlflow"]["runId"])
    assert second["mlflow"] == first["mlflow"]
    assert client.get_run(first["mlflow"]["runId"]).info.status == "FINISHED"
    assert len(client.search_runs([first["mlflow"]["experimentId"]])) == 1


def test_a_run_that_cannot_start_fails_the_job_before_any_llm_call(llm, monkeypatch, tmp_path):
    from promptopt_harness.realkube import free_port

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    gone = type("Gone", (), {"url": f"http://127.0.0.1:{free_port()}"})
    result, _ = run_with(tracked_spec(gone, "nowhere"), llm, tmp_path)
    assert result.reason == "InvalidInput" and llm.request_count == 0
    assert result.message.startswith(
        f"spec.mlflow.experiment: MLflow at {gone.url}: the job's run could not be "
        "started: the server could not be reached"
    )


# --- records from an MLflow evaluation dataset ----------------------------------------------------------------------


@pytest.fixture
def dataset_id(mlflow_server):
    import mlflow
    from mlflow.genai.datasets import create_dataset

    mlflow.set_tracking_uri(mlflow_server.url)
    dataset = create_dataset(name=f"reviews-{uuid.uuid4().hex[:8]}")
    dataset.merge_records(sentiment_dataset(8, seed=4))
    return dataset.dataset_id


def dataset_spec(mlflow_server, dataset_id):
    spec = tracked_spec(mlflow_server, None)
    spec["mlflow"] = {"trackingUri": mlflow_server.url}
    spec["dataset"] = {"mlflowDatasetId": dataset_id, "validationFraction": 0.5}
    return spec


def test_the_records_come_from_an_mlflow_evaluation_dataset(
    mlflow_server, client, dataset_id, llm, monkeypatch, tmp_path
):
    from promptopt_worker.sources import records_digest

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = dataset_spec(mlflow_server, dataset_id)
    spec["mlflow"]["experiment"] = f"datasets-{uuid.uuid4().hex[:8]}"
    result, status = run_with(spec, llm, tmp_path)
    assert result.succeeded and status["finalScores"]["aggregate"] > status["initialScores"]["aggregate"]
    records = [{"inputs": r["inputs"], "expectations": r["expectations"]} for r in sentiment_dataset(8, seed=4)]
    canonical = sorted(records, key=lambda r: json.dumps(r, sort_keys=True))  # MLflow keeps no order
    assert status["mlflow"]["datasetDigest"] == records_digest(canonical)  # MLflow gives back what it was given
    assert status["progress"]["metricCalls"] > 0

    # The dataset as MLflow knows it: its digest in the status, and an input of the run, as MLflow's job logs it.
    dataset = client.get_dataset(dataset_id)
    assert status["mlflow"]["mlflowDatasetDigest"] == dataset.digest
    run = client.get_run(status["mlflow"]["runId"])
    (logged,) = run.inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == (dataset.name, dataset.digest)
    assert {tag.key: tag.value for tag in logged.tags} == {"mlflow.data.context": "optimization"}
    assert run.data.params["dataset_id"] == dataset_id


def test_a_replaced_worker_refuses_records_that_changed_and_a_missing_dataset_is_named(
    mlflow_server, dataset_id, llm, monkeypatch, tmp_path
):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = with_simulated_models(parse_spec(dataset_spec(mlflow_server, dataset_id)), llm.base_url)
    changed = run_job(
        spec,
        LocalConfigMaps([]),
        LLMClient(),
        Reporters(),
        StopRequested(),
        mlflow_started=MlflowStatus(dataset_digest="0123456789abcdef"),
    )
    assert changed.reason == "InvalidInput" and llm.request_count == 0
    assert changed.message.startswith(
        f"spec.dataset.mlflowDatasetId: the records of MLflow dataset {dataset_id} "
        "changed since the job started (digest 0123456789abcdef, now "
    )

    missing = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"mlflow_dataset_id": "d-0000"})})
    gone = run_job(missing, LocalConfigMaps([]), LLMClient(), Reporters(), StopRequested())
    assert gone.reason == "InvalidInput" and llm.request_count == 0
    assert gone.message.startswith("spec.dataset.mlflowDatasetId: d-0000 could not be read from MLflow")
    assert "MLflow has no such prompt, version or dataset" in gone.message


# --- a server that wants a login -------------------------------------------------------------------------------------

ADMIN_PASSWORD = "Adm1n-passw0rd-for-tests"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """MLflow's basic-auth app: every request needs a user."""
    from promptopt_harness.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), admin_password=ADMIN_PASSWORD) as server:
        yield server


def test_a_refused_login_fails_before_any_llm_call_and_the_password_stays_secret(
    auth_server, llm, monkeypatch, tmp_path
):
    from mlflow import MlflowClient

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    admin = MlflowClient(tracking_uri=auth_server.url, registry_uri=auth_server.url)
    admin.register_prompt("guarded", SEED_INSTRUCTION)
    allowed, status = run(job_spec(auth_server, "prompts:/guarded/1", experiment="guarded"), llm, tmp_path)
    assert allowed.succeeded and status["mlflow"]["sourcePrompts"] == {"classify": "prompts:/guarded/1"}
    logged = admin.get_run(status["mlflow"]["runId"])  # made as the login, as mlflow.start_run makes it
    assert logged.info.user_id == logged.data.tags["mlflow.user"] == "admin"

    # A process of its own, as a worker Pod is: MLflow's client keeps a process's credentials and prompts.
    wrong = "Wr0ng-passw0rd-guess"
    job = {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": "guarded"},
        "spec": job_spec(auth_server, "prompts:/guarded/1"),
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")} | {"MLFLOW_TRACKING_PASSWORD": wrong}
    refused = subprocess.run(
        [PROMPTOPT, "run", "--simulated-llm", str(tmp_path / "job.yaml"), "-o", str(tmp_path / "refused.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    status = json.loads((tmp_path / "refused.json").read_text())
    assert status["workerResult"]["reason"] == "InvalidInput"
    assert (status.get("cost") or {}).get("llmCalls", 0) == 0  # before any LLM call
    assert (
        "the server refused the credentials: check MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD, in the job's credentials Secret" in status["workerResult"]["message"]
    )
    assert wrong not in refused.stdout + refused.stderr + json.dumps(status)


# --- scorers registered in the experiment (Registered) and spec.aggregation -----------------------------------------

# A judge the simulated judge scores as Correctness: its instructions speak of the expected answer.
JUDGE_INSTRUCTIONS = "Is {{ outputs }} the correct answer, the expected one in {{ expectations }}? Answer yes or no."


def registered(mlflow_server, experiment, what):
    """`what` (a scorer) registered in `experiment` (created), as MLflow users register one."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.url)
    found = mlflow.get_experiment_by_name(experiment)
    what.register(experiment_id=found.experiment_id if found else mlflow.create_experiment(experiment))


def test_a_registered_judge_is_asked_as_a_judge_and_the_aggregation_combines_the_scores(
    mlflow_server, client, llm, monkeypatch, tmp_path
):
    from mlflow.genai.judges import make_judge

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    experiment = f"registered-{uuid.uuid4().hex[:8]}"
    # Version 1 judges traces, which the worker refuses: the job reads the latest version, 2.
    registered(
        mlflow_server,
        experiment,
        make_judge(
            name="correct",
            instructions="Is {{ trace }} efficient?",
            model="openai:/gpt-4.1-mini",
            feedback_value_type=bool,
        ),
    )
    registered(
        mlflow_server,
        experiment,
        make_judge(
            name="correct", instructions=JUDGE_INSTRUCTIONS, model="openai:/gpt-4.1-mini", feedback_value_type=bool
        ),
    )
    spec = tracked_spec(
        mlflow_server,
        experiment,
        scorers=[
            {"name": "Regex", "label": "short", "params": {"pattern": r"^\w+$"}},
            {"name": "Registered", "registered": {"name": "correct"}},
        ],
    )
    spec["aggregation"] = "min(scores.short, scores.correct)"
    result, status = run_with(spec, llm, tmp_path)

    assert result.succeeded, result.message
    assert llm.calls["judge"] > 0  # asked of the (simulated) judge model, through promptopt's LLM client
    assert set(status["finalScores"]["scorers"]) == {"short", "correct"}
    run_id = status["mlflow"]["runId"]
    # Every validated candidate's folder, as MLflow's GEPA optimizer lays it out; each record's aggregate is the
    # expression's, not the weighted mean.
    folders = {a.path for a in client.list_artifacts(run_id, "prompt_candidates")}
    assert folders == {f"prompt_candidates/iteration_{c['id']}" for c in status["candidates"]}
    seed = Path(client.download_artifacts(run_id, "prompt_candidates/iteration_0", str(tmp_path)))
    assert (seed / "classify.txt").read_text() == SEED_INSTRUCTION
    scores = json.loads((seed / "scores.json").read_text())
    assert scores["aggregate"] == pytest.approx(status["initialScores"]["aggregate"]) and scores["parents"] == []
    table = json.loads((seed / "eval_results.json").read_text())
    assert table["columns"] == ["inputs", "output", "expectation", "aggregate_score", "correct", "short"]
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(rows) == 4 and all(row["short"] != row["correct"] for row in rows)  # where min and mean differ
    assert all(row["aggregate_score"] == min(row["short"], row["correct"]) for row in rows)
    assert status["initialScores"]["aggregate"] == pytest.approx(sum(r["aggregate_score"] for r in rows) / 4)


def test_a_registered_scorer_that_cannot_run_here_is_refused_before_any_llm_call(
    mlflow_server, llm, monkeypatch, tmp_path
):
    from mlflow.genai.judges import make_judge
    from mlflow.genai.scorers import Correctness

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    experiment = f"refused-{uuid.uuid4().hex[:8]}"
    registered(mlflow_server, experiment, Correctness(name="builtin", model="openai:/gpt-4.1-mini"))
    registered(
        mlflow_server,
        experiment,
        make_judge(name="of_traces", instructions="Is {{ trace }} efficient?", model="openai:/gpt-4.1-mini"),
    )
    refusals = {
        "builtin": "spec.scorers[1].registered.name: 'builtin' (version 1 in experiment {experiment!r}) is MLflow's "
        "built-in scorer Correctness: name it in spec.scorers as {{name: Correctness, model: ...}}",
        "of_traces": "spec.scorers[1].registered.name: 'of_traces' (version 1 in experiment {experiment!r}) cannot run "
        "as a judge of a prompt's outputs",
        "missing": "spec.scorers[1].registered.name: scorer 'missing' of experiment {experiment!r} could not be read "
        f"from MLflow at {mlflow_server.url}: the experiment has no scorer of that name or version",
    }
    for name, refusal in refusals.items():
        spec = tracked_spec(
            mlflow_server,
            experiment,
            scorers=[{"name": "ExactMatch"}, {"name": "Registered", "registered": {"name": name}}],
        )
        result, status = run_with(spec, llm, tmp_path)
        assert result.reason == "InvalidInput" and result.message.startswith(refusal.format(experiment=experiment)), (
            result.message
        )
        planned = dry_run(spec, tmp_path)  # the dry run reads it as the run does
        assert planned.returncode == 2 and refusal.format(experiment=experiment) in planned.stderr, planned.stderr
    assert not any(llm.calls.values())


def test_a_registered_scorer_function_is_refused_unrun():
    """A @scorer function (which MLflow's server registers only with MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS): its stored
    code is never run, the job is refused saying what to do."""
    from mlflow.genai.scorers import scorer

    from promptopt.api.v1alpha1 import ScorerSpec
    from promptopt_worker.mlflow_store import StoredScorer, registered_judge_spec
    from promptopt_worker.problem import InvalidInput

    @scorer
    def shouts(outputs) -> bool:
        return str(outputs).isupper()

    stored = StoredScorer("shouts", 3, "e", shouts.model_dump())  # as MLflow serializes it
    with pytest.raises(
        InvalidInput,
        match=r"^spec\.scorers\[0\]\.registered\.name: 'shouts' \(version 3 in "
        r"experiment 'e'\) is a @scorer Python function .*: register a judge made with "
        r"mlflow\.genai\.judges\.make_judge, or serve the function as a Webhook scorer$",
    ):
        registered_judge_spec(
            ScorerSpec(name="Registered", registered={"name": "shouts"}), stored, "spec.scorers[0].registered.name"
        )


def test_the_dry_run_says_which_registered_judge_it_reads(mlflow_server, tmp_path):
    from mlflow.genai.judges import make_judge

    experiment = f"planned-{uuid.uuid4().hex[:8]}"
    registered(
        mlflow_server,
        experiment,
        make_judge(name="correct", instructions=JUDGE_INSTRUCTIONS, model="openai:/gpt-4.1-mini"),
    )
    spec = tracked_spec(
        mlflow_server,
        experiment,
        scorers=[{"name": "Registered", "label": "judged", "registered": {"name": "correct", "version": 1}}],
    )
    planned = dry_run(spec, tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert f"scorer judged reads the judge correct version 1 registered in experiment {experiment!r}" in planned.stdout
    assert "judge judged" in planned.stdout  # its calls are bounded as a judge's


def test_only_the_seed_and_the_best_candidates_get_an_iteration_folder():
    """A run of hundreds of iterations logs a bounded number of folders."""
    from promptopt_worker.mlflow_tracking import ITERATION_ARTIFACTS, iteration_candidates
    from promptopt_worker.problem import CandidateRecord

    found = [
        CandidateRecord(
            id=i,
            parents=(max(i - 1, 0),),
            score=(i % 7) / 7,
            scorers=None,
            found_at_metric_calls=i,
            prompts={"classify": str(i)},
        )
        for i in range(300)
    ]
    chosen = iteration_candidates(found)
    assert (
        len(chosen) == ITERATION_ARTIFACTS
        and chosen[0].id == 0
        and [c.id for c in chosen] == sorted(c.id for c in chosen)
    )
    assert min(c.score for c in chosen[1:]) >= max(c.score for c in found if c not in chosen)
