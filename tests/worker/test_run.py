"""`promptopt run`: the examples end to end against the simulated LLM, as a user runs them."""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PROMPTOPT = str(Path(sys.executable).with_name("promptopt"))
SIMULATED_NOTICE = "simulated LLM, a deterministic test double"


def promptopt_run(*args, cwd=REPO):
    """Runs `promptopt run ...` without any LLM key in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return subprocess.run(
        [PROMPTOPT, "run", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_gepa_example_improves_the_prompt(tmp_path):
    out = tmp_path / "out.json"
    run = promptopt_run("--simulated-llm", EXAMPLES / "gepa-sentiment.yaml", "-o", out)

    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert SIMULATED_NOTICE in lines[0] and SIMULATED_NOTICE in lines[-1]  # said at the start and at the end
    result = json.loads(out.read_text())
    # The simulated LLM's best candidate scores 1.000: the run stops there instead of spending the budget.
    assert result["workerResult"] == {
        "reason": "PerfectScore",
        "message": result["workerResult"]["message"],
        "succeeded": True,
    }
    initial, final = result["initialScores"], result["finalScores"]
    assert final["aggregate"] > initial["aggregate"]
    assert set(initial["scorers"]) == set(final["scorers"]) == {"ExactMatch", "Correctness"}
    assert final["scorers"]["ExactMatch"] > initial["scorers"]["ExactMatch"]
    [prompt] = result["optimizedPrompts"]
    assert prompt["name"] == "classify" and "{{review}}" in prompt["template"]
    assert final["aggregate"] == 1.0 and result["progress"]["metricCalls"] < result["progress"]["maxMetricCalls"]
    assert result["cost"]["llmCalls"] > 0 and result["cost"]["promptTokens"] > 0
    assert "ExactMatch" in run.stdout and prompt["template"] in run.stdout  # the console's table and prompts
    # Without a terminal, progress comes as a timestamped line.
    progress = [line for line in lines if " progress: " in line]
    assert progress and all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d progress: \d+/150 metric calls, ", line) for line in progress
    )
    # What produced the result (the example sets no namespace).
    run_info = result["run"]
    assert {key: run_info[key] for key in ("job", "optimizer", "models", "promptoptVersion", "simulatedLlm")} == {
        "job": "gepa-sentiment",
        "optimizer": "GEPA",
        "promptoptVersion": "0.1.0",
        "simulatedLlm": True,
        "models": {
            "task": "openai/sim-task",
            "judges": {"Correctness": "openai/sim-judge"},
            "reflection": "openai/sim-reflect",
        },
    }
    assert "namespace" not in run_info
    assert run_info["optimizerSettings"]["maxMetricCalls"] == 150
    assert run_info["optimizerSettings"]["candidateSelection"] == "pareto"
    started, finished = (datetime.fromisoformat(run_info[key]) for key in ("startedAt", "finishedAt"))
    assert started <= finished <= datetime.now(UTC)


def test_zero_shot_metaprompt_rewrites_every_prompt_without_scores(tmp_path):
    out = tmp_path / "out.json"
    run = promptopt_run("--simulated-llm", EXAMPLES / "metaprompt-zero-shot.yaml", "-o", out)

    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["workerResult"]["reason"] == "Completed"
    assert "initialScores" not in result and "finalScores" not in result
    prompts = {p["name"]: p["template"] for p in result["optimizedPrompts"]}
    assert set(prompts) == {"system", "classify"} and "{{review}}" in prompts["classify"]
    assert "lowercase" in prompts["system"] + prompts["classify"]  # the job's guidelines were followed


def test_configmaps_come_from_the_job_file_or_from_f_files(tmp_path):
    documents = list(yaml.safe_load_all((EXAMPLES / "configmap-sources.yaml").read_text()))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(documents[-1]))
    (tmp_path / "configmaps.yaml").write_text(yaml.safe_dump_all(documents[:-1]))

    with ThreadPoolExecutor() as pool:  # three processes at once: most of their time is start-up
        same_file, with_f, without_f = pool.map(
            lambda args: promptopt_run(*args, cwd=tmp_path),
            [
                ("--simulated-llm", EXAMPLES / "configmap-sources.yaml", "-o", "a.json"),
                ("--simulated-llm", "job.yaml", "-f", "configmaps.yaml", "-o", "b.json"),
                ("--simulated-llm", "job.yaml"),
            ],
        )

    assert same_file.returncode == 0 and with_f.returncode == 0, same_file.stderr + with_f.stderr
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert a["finalScores"] == b["finalScores"] and a["finalScores"]["aggregate"] > a["initialScores"]["aggregate"]
    assert without_f.returncode == 2
    assert "spec.prompts[0].configMapKeyRef: ConfigMap 'sentiment-prompts' not found in job.yaml" in without_f.stdout


def test_without_a_key_or_the_simulated_llm_it_fails_fast_and_says_what_to_do(tmp_path):
    run = promptopt_run(EXAMPLES / "gepa-sentiment.yaml")

    assert run.returncode == 2 and run.stdout == ""
    assert "OPENAI_API_KEY" in run.stderr and "--simulated-llm" in run.stderr


def test_an_invalid_job_is_rejected_with_the_field_named(tmp_path):
    job = yaml.safe_load((EXAMPLES / "gepa-sentiment.yaml").read_text())
    job["spec"]["scorers"][0]["weight"] = -1
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))

    run = promptopt_run("--simulated-llm", tmp_path / "job.yaml")

    assert run.returncode == 2 and "spec.scorers[0].weight" in run.stderr


def test_malformed_yaml_is_one_line_naming_the_place(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "apiVersion: promptopt.dev/v1alpha1\nkind: PromptOptimizationJob\nspec:\n  prompts: [unclosed\n  task: {}\n"
    )
    run = promptopt_run("--simulated-llm", tmp_path / "job.yaml")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        f"promptopt run: {tmp_path / 'job.yaml'}:5:7: not valid YAML: expected ',' or ']', but got ':'"
    ]


def test_a_file_with_another_kind_or_api_version_says_what_it_found(tmp_path):
    job = yaml.safe_load((EXAMPLES / "gepa-sentiment.yaml").read_text())
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment"}))
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**job, "apiVersion": "promptopt.dev/v1"}))

    other_kind = promptopt_run("--simulated-llm", tmp_path / "deployment.yaml")
    assert other_kind.returncode == 2 and (
        "must hold exactly one promptopt.dev/v1alpha1 PromptOptimizationJob; it holds 0 (found: apps/v1/Deployment)"
        in other_kind.stderr
    )
    wrong_version = promptopt_run("--simulated-llm", tmp_path / "old.yaml")
    assert wrong_version.returncode == 2 and (
        "apiVersion is 'promptopt.dev/v1'; a PromptOptimizationJob is promptopt.dev/v1alpha1" in wrong_version.stderr
    )


def test_version():
    shown = subprocess.run([PROMPTOPT, "--version"], capture_output=True, text=True, check=True).stdout
    assert shown == "promptopt 0.1.0\n"


def test_the_http_example_optimizes_a_rag_service_scored_by_a_webhook(tmp_path, monkeypatch):
    """examples/http-rag.yaml with its two services on loopback instead of in the cluster: the toy RAG (which requires
    the Authorization header the job takes from its credentials) and the webhook scorer."""
    from promptopt.example_services import toy_rag, webhook_scorer

    token = "Bearer rag-token-8d1e55c0"
    documents = list(yaml.safe_load_all((EXAMPLES / "http-rag.yaml").read_text()))
    job = next(d for d in documents if d["kind"] == "PromptOptimizationJob")
    with toy_rag(required_headers={"Authorization": token}) as rag, webhook_scorer() as scorer:
        job["spec"]["task"]["http"]["url"] = rag.url
        job["spec"]["scorers"][0]["http"]["url"] = scorer.url
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
        monkeypatch.setenv("RAG_AUTHORIZATION", token)  # the credentials Secret's key, as promptopt run reads it
        run = promptopt_run("--simulated-llm", tmp_path / "job.yaml", "-o", tmp_path / "result.json")
        assert rag.counts["unauthorized"] == 0 and rag.counts["answered"] == scorer.counts["answered"] > 0

    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["workerResult"]["reason"] == "GoalReached"
    assert result["initialScores"]["scorers"] == {"answer": 0.5, "concise": 0.0}
    assert result["finalScores"] == {"aggregate": 1.0, "scorers": {"answer": 1.0, "concise": 1.0}, "failedExamples": 0}
    assert "one lowercase word" in result["optimizedPrompts"][0]["template"]
    assert result["cost"]["llmCalls"] > rag.counts["answered"]  # the service calls, and the judge's and reflection's
    assert token.split()[1] not in run.stdout + run.stderr + json.dumps(result)
