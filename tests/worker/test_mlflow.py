"""spec.mlflow against a real MLflow tracking server (SQLite, loopback) through MLflow's own client: prompts read
from the Prompt Registry by version, alias or latest, the version recorded and pinned, the optimized prompts
registered as new versions with their tags and alias; failures named before any LLM call, and a registration that
fails loses nothing."""
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


@pytest.fixture
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


@pytest.fixture
def prompt(client):
    """A registry prompt of this test's own: version 1 (alias production) is the seed, version 2 another one."""
    name = f"sentiment-{uuid.uuid4().hex[:8]}"
    client.register_prompt(name, SEED_INSTRUCTION, commit_message="the seed")
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
    result = run_job(spec, LocalConfigMaps([]), LLMClient(), Reporters(ResultFileReporter(out)), StopRequested(),
                     identity=identity or {"job": "sentiment", "namespace": "team-a", "job-uid": "uid-1"})
    return result, json.loads(out.read_text())


def test_a_prompt_read_by_alias_is_optimized_and_registered_as_a_new_version(mlflow_server, client, prompt, llm,
                                                                            monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = job_spec(mlflow_server, f"prompts:/{prompt}@production", registerOptimizedPrompts={"alias": "candidate"})
    result, status = run(spec, llm, tmp_path)

    assert result.succeeded, result.message
    assert status["mlflow"]["sourcePrompts"] == {"classify": f"prompts:/{prompt}/1"}  # the alias, resolved
    assert status["mlflow"]["optimizedPrompts"] == {"classify": f"prompts:/{prompt}/3"}
    assert "registrationError" not in status["mlflow"]
    registered = client.load_prompt(f"prompts:/{prompt}@candidate")
    assert registered.version == 3 and registered.template == status["optimizedPrompts"][0]["template"]
    assert registered.tags | {
        "promptopt.dev/job": "sentiment", "promptopt.dev/namespace": "team-a", "promptopt.dev/job-uid": "uid-1",
        "promptopt.dev/source": f"prompts:/{prompt}/1",
        "promptopt.dev/initial-score": f"{status['initialScores']['aggregate']:.6g}",
        "promptopt.dev/final-score": f"{status['finalScores']['aggregate']:.6g}",
    } == registered.tags
    assert "optimized by promptopt job team-a/sentiment (PerfectScore); aggregate" in registered.commit_message
    assert client.load_prompt(f"prompts:/{prompt}@production").version == 1  # the alias in use is left alone


@pytest.mark.parametrize("uri,version", [("prompts:/{}/2", 2), ("prompts:/{}@latest", 2)])
def test_a_version_or_the_latest_is_read_and_recorded_without_registering(mlflow_server, client, prompt, llm,
                                                                         monkeypatch, tmp_path, uri, version):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    result, status = run(job_spec(mlflow_server, uri.format(prompt)), llm, tmp_path)
    assert result.succeeded
    assert status["mlflow"] == {"sourcePrompts": {"classify": f"prompts:/{prompt}/{version}"}}
    assert client.load_prompt(f"prompts:/{prompt}@latest").version == 2  # nothing registered


@pytest.mark.parametrize("uri,meaning", [
    ("prompts:/{}/9", "MLflow has no such prompt, version or dataset"),
    ("prompts:/{}@staging", "an alias that does not exist"),
    ("prompts:/missing-prompt-x/1", "MLflow has no such prompt, version or dataset"),
])
def test_a_missing_prompt_version_or_alias_fails_before_any_llm_call(mlflow_server, prompt, llm, monkeypatch,
                                                                     tmp_path, uri, meaning):
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


def test_a_registration_that_fails_keeps_the_result_and_says_why(mlflow_server, client, prompt, llm, monkeypatch,
                                                                 tmp_path):
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
    assert error.startswith(f"registering prompt 'classify' as '{taken}' in MLflow at {mlflow_server.url} failed "
                            "3 times")
    assert status["mlflow"]["optimizedPrompts"] == {}


def test_promptopt_run_reads_and_registers_with_the_token_masked(mlflow_server, client, prompt, tmp_path):
    token = "mlflow-token-0c9a7e31d2"
    job = {"apiVersion": "promptopt.dev/v1alpha1", "kind": "PromptOptimizationJob", "metadata": {"name": "local"},
           "spec": job_spec(mlflow_server, f"prompts:/{prompt}@production", registerOptimizedPrompts={})}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")} | {"MLFLOW_TRACKING_TOKEN": token}
    run = subprocess.run([PROMPTOPT, "run", "--simulated-llm", str(tmp_path / "job.yaml"), "-o",
                          str(tmp_path / "out.json")], capture_output=True, text=True, env=env, timeout=180)
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
    result = run_job(spec, LocalConfigMaps([]), LLMClient(), Reporters(ResultFileReporter(out)),
                     stop or StopRequested(), identity={"job": "tracked", "namespace": "team-a"},
                     mlflow_started=MlflowStatus(run_id=run_id))
    return result, json.loads(out.read_text())


def test_a_job_logs_one_run_with_its_settings_progress_scores_and_candidates(mlflow_server, client, llm,
                                                                            monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    experiment = f"optimization-{uuid.uuid4().hex[:8]}"
    result, status = run_with(tracked_spec(mlflow_server, experiment), llm, tmp_path)

    assert result.succeeded
    run = client.get_run(status["mlflow"]["runId"])
    assert run.info.experiment_id == status["mlflow"]["experimentId"] == \
        client.get_experiment_by_name(experiment).experiment_id
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.tags["promptopt.dev/namespace"] == "team-a"
    assert run.data.params | {"optimizer": "GEPA", "max_metric_calls": "40", "reflection_minibatch_size": "3",
                              "scorers": "ExactMatch", "candidate_selection": "pareto"} == run.data.params
    best = client.get_metric_history(run.info.run_id, "best_score")
    assert [m.step for m in best] == sorted(m.step for m in best) and best[-1].value == status["progress"]["bestScore"]
    assert run.data.metrics["final_score.aggregate"] == pytest.approx(status["finalScores"]["aggregate"])
    initial = status["initialScores"]["scorers"]["ExactMatch"]
    assert run.data.metrics["initial_score.ExactMatch"] == pytest.approx(initial)
    assert run.data.metrics["cost_llmCalls"] == sum(llm.calls.values())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "optimized_prompts")}
    assert {"candidates.json", "optimized_prompts/classify.txt"} <= artifacts
    logged = client.download_artifacts(run.info.run_id, "optimized_prompts/classify.txt", str(tmp_path))
    assert Path(logged).read_text() == status["optimizedPrompts"][0]["template"]
    candidates = json.loads(Path(client.download_artifacts(run.info.run_id, "candidates.json", str(tmp_path)))
                            .read_text())["candidates"]
    assert len(candidates) == status["progress"]["candidates"] and all(c["prompts"] for c in candidates)


def test_a_run_ends_killed_when_cancelled_and_failed_on_an_llm_error(mlflow_server, client, llm, monkeypatch,
                                                                    tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    experiment = f"endings-{uuid.uuid4().hex[:8]}"
    stop = StopRequested()
    stop.request("Cancelled", "stopped by the test")
    cancelled, status = run_with(tracked_spec(mlflow_server, experiment), llm, tmp_path, stop=stop)
    assert cancelled.reason == "Cancelled"
    assert client.get_run(status["mlflow"]["runId"]).info.status == "KILLED"

    broken = tracked_spec(mlflow_server, experiment)
    failed, status = run_with(broken, type("Gone", (), {"base_url": "http://127.0.0.1:9/v1", "api_key": "x"}),
                              tmp_path)
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
    assert result.message.startswith(f"spec.mlflow.experiment: MLflow at {gone.url}: the job's run could not be "
                                     "started: the server could not be reached")


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


def test_the_records_come_from_an_mlflow_evaluation_dataset(mlflow_server, dataset_id, llm, monkeypatch, tmp_path):
    from promptopt_worker.sources import records_digest

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    result, status = run_with(dataset_spec(mlflow_server, dataset_id), llm, tmp_path)
    assert result.succeeded and status["finalScores"]["aggregate"] > status["initialScores"]["aggregate"]
    records = [{"inputs": r["inputs"], "expectations": r["expectations"]} for r in sentiment_dataset(8, seed=4)]
    canonical = sorted(records, key=lambda r: json.dumps(r, sort_keys=True))  # MLflow keeps no order
    assert status["mlflow"]["datasetDigest"] == records_digest(canonical)  # MLflow gives back what it was given
    assert status["progress"]["metricCalls"] > 0


def test_a_replaced_worker_refuses_records_that_changed_and_a_missing_dataset_is_named(mlflow_server, dataset_id, llm,
                                                                                      monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = with_simulated_models(parse_spec(dataset_spec(mlflow_server, dataset_id)), llm.base_url)
    changed = run_job(spec, LocalConfigMaps([]), LLMClient(), Reporters(), StopRequested(),
                      mlflow_started=MlflowStatus(dataset_digest="0123456789abcdef"))
    assert changed.reason == "InvalidInput" and llm.request_count == 0
    assert changed.message.startswith(f"spec.dataset.mlflowDatasetId: the records of MLflow dataset {dataset_id} "
                                      "changed since the job started (digest 0123456789abcdef, now ")

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


def test_a_refused_login_fails_before_any_llm_call_and_the_password_stays_secret(auth_server, llm, monkeypatch,
                                                                                  tmp_path):
    from mlflow import MlflowClient

    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    MlflowClient(tracking_uri=auth_server.url, registry_uri=auth_server.url).register_prompt(
        "guarded", SEED_INSTRUCTION)
    allowed, status = run(job_spec(auth_server, "prompts:/guarded/1"), llm, tmp_path)
    assert allowed.succeeded and status["mlflow"]["sourcePrompts"] == {"classify": "prompts:/guarded/1"}

    # A process of its own, as a worker Pod is: MLflow's client keeps a process's credentials and prompts.
    wrong = "Wr0ng-passw0rd-guess"
    job = {"apiVersion": "promptopt.dev/v1alpha1", "kind": "PromptOptimizationJob", "metadata": {"name": "guarded"},
           "spec": job_spec(auth_server, "prompts:/guarded/1")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")} | {"MLFLOW_TRACKING_PASSWORD": wrong}
    refused = subprocess.run([PROMPTOPT, "run", "--simulated-llm", str(tmp_path / "job.yaml"), "-o",
                              str(tmp_path / "refused.json")], capture_output=True, text=True, env=env, timeout=180)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    status = json.loads((tmp_path / "refused.json").read_text())
    assert status["workerResult"]["reason"] == "InvalidInput"
    assert (status.get("cost") or {}).get("llmCalls", 0) == 0  # before any LLM call
    assert "the server refused the credentials: check MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and " \
           "MLFLOW_TRACKING_PASSWORD, in the job's credentials Secret" in status["workerResult"]["message"]
    assert wrong not in refused.stdout + refused.stderr + json.dumps(status)
