"""`promptopt run --dry-run`: the bounds it prints hold for the runs that follow (each job below is run for real
against the simulated LLM and the example services, and every count compared), it calls nothing, and it refuses
what a run would refuse, naming the field."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptopt.api.validation import parse_spec
from promptopt.example_services import toy_rag, webhook_scorer
from promptopt.simulated_llm import sentiment_dataset
from promptopt_worker.dry_run import plan_dry_run, render_dry_run, unknown_models
from promptopt_worker.llm import LLMClient
from promptopt_worker.main import NoCalls, run_job, with_simulated_models
from promptopt_worker.problem import StopRequested
from promptopt_worker.reporting import Reporters
from promptopt_worker.sources import LocalConfigMaps, build_problem

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EXAMPLE_JOBS = sorted(
    path.name for path in EXAMPLES.glob("*.yaml") if "kind: PromptOptimizationJob" in path.read_text()
)
OPENAI_BASE_URL_ENV = ("OPENAI_BASE_URL", "OPENAI_API_BASE")  # as litellm and the openai SDK read it
PROMPTOPT = str(Path(sys.executable).with_name("promptopt"))


def example(name):
    documents = list(yaml.safe_load_all((EXAMPLES / name).read_text()))
    return next(d for d in documents if d["kind"] == "PromptOptimizationJob")["spec"]


def plan_of(spec, configmaps):
    problem = build_problem(spec, configmaps, NoCalls())
    try:
        return plan_dry_run(spec, problem)
    finally:
        if problem.evaluator is not None:
            problem.evaluator.close()


def bounds_by_role(plan):
    found = {}
    for bound in plan.calls:
        found[bound.role] = found.get(bound.role, 0) + bound.calls
    return found


def run_for_real(spec, configmaps):
    return run_job(spec, configmaps, LLMClient(), Reporters(), StopRequested())


def gepa_spec(**gepa):
    return {
        "optimizer": {"type": "GEPA", "reflectionModel": "openai/sim-reflect", "gepa": gepa},
        "prompts": [{"name": "classify", "template": "Classify the sentiment of this review.\n\n{{review}}"}],
        "task": {"model": "openai/sim-task"},
        "dataset": {"records": sentiment_dataset(12, seed=5), "validationFraction": 0.25},
        "scorers": [{"name": "ExactMatch"}, {"name": "Correctness", "model": "openai/sim-judge"}],
    }


JOBS = {
    "the README's GEPA example": (example("gepa-sentiment.yaml"), None),
    "a GEPA job with minibatches of one": (gepa_spec(maxMetricCalls=60, reflectionMinibatchSize=1), None),
    "a GEPA job whose judge answers need asking again": (gepa_spec(maxMetricCalls=40), 0.5),
    "a GEPA job with merges": (gepa_spec(maxMetricCalls=80, useMerge=True), None),
    "few-shot MetaPrompt from ConfigMaps": (example("configmap-sources.yaml"), None),
    "zero-shot MetaPrompt": (example("metaprompt-zero-shot.yaml"), None),
}


@pytest.mark.parametrize("spec,garbled", JOBS.values(), ids=JOBS.keys())
def test_the_bounds_hold_for_the_run_that_follows(llm, monkeypatch, spec, garbled):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = with_simulated_models(parse_spec(spec), llm.base_url)
    configmaps = LocalConfigMaps.from_files([EXAMPLES / "configmap-sources.yaml"])
    plan = plan_of(spec, configmaps)
    assert llm.request_count == 0  # the plan called nothing

    if garbled:
        llm.garble_judge_answers(garbled)
    result = run_for_real(spec, configmaps)
    assert result.succeeded, result.message
    made, bound = llm.calls, bounds_by_role(plan)
    assert made["task"] <= bound.get("task", 0) and made["judge"] <= bound.get("judge", 0)
    assert 0 < made["reflection"] + made["metaprompt"] <= bound["reflection"]
    if garbled:
        assert made["judge"] > made["task"]  # judges were asked again, within the bound
    if spec.optimizer.type == "GEPA":  # the budget is the evaluations, and each made at most one task call
        assert plan.evaluations == spec.optimizer.gepa_settings.max_metric_calls


def test_the_bounds_hold_for_services(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    monkeypatch.setenv("RAG_AUTHORIZATION", "Bearer dry-run-token")
    spec = example("http-rag.yaml")
    spec["optimizer"]["gepa"] = {"maxMetricCalls": 60}  # no early stop: spend the budget
    with toy_rag() as rag, webhook_scorer() as scorer:
        spec["task"]["http"]["url"], spec["scorers"][0]["http"]["url"] = rag.url, scorer.url
        spec = with_simulated_models(parse_spec(spec), llm.base_url)
        plan = plan_of(spec, LocalConfigMaps({}))
        assert rag.received == [] and scorer.received == [] and llm.request_count == 0
        assert run_for_real(spec, LocalConfigMaps({})).succeeded
        bound = bounds_by_role(plan)
        assert 0 < rag.counts["answered"] <= bound["task"] and scorer.counts["answered"] <= bound["webhook"]
        assert llm.calls["judge"] <= bound["judge"] and llm.calls["reflection"] <= bound["reflection"]


def test_the_cost_is_capped_by_the_budget_and_estimated_from_the_prices():
    spec = parse_spec(example("gepa-sentiment.yaml"))  # openai/gpt-4.1 models: litellm knows their prices
    plan = plan_of(spec, LocalConfigMaps({}))
    doubled = parse_spec(example("gepa-sentiment.yaml") | {"budget": None})
    doubled.optimizer.gepa_settings.max_metric_calls = 300
    twice = plan_of(doubled, LocalConfigMaps({}))

    task = {b.role: b for b in plan.calls}["task"]
    assert task.usd_estimate == pytest.approx({b.role: b for b in twice.calls}["task"].usd_estimate / 2)
    # The bound: each of the 150 task calls fills gpt-4.1-mini's window of 1,047,576 prompt tokens and answers the
    # task's maxTokens of 32, at litellm's $0.40 and $1.60 per million.
    assert task.usd_bound == pytest.approx(150 * (1_047_576 * 0.4 + 32 * 1.6) / 1e6)
    assert plan.usd_estimate < plan.usd_bound == pytest.approx(sum(b.usd_bound for b in plan.calls))
    text, uncapped = render_dry_run(plan, "job.yaml"), render_dry_run(twice, "job.yaml")
    assert f"USD: at most ${plan.usd_bound:,.2f} if every call fills its model's context window" in text
    assert "USD: at most $2 (spec.budget.maxCostUSD) plus the calls in flight when it is reached (up to 9)" in text
    assert f"USD estimate (not a bound): ${plan.usd_estimate:.4f}" in text and plan.usd_estimate > 0
    assert "maxCostUSD" not in uncapped and f"USD: at most ${twice.usd_bound:,.2f}" in uncapped


def test_a_model_without_a_price_gets_no_estimate():
    spec = gepa_spec(maxMetricCalls=30)
    spec["task"]["apiBase"] = "http://127.0.0.1:9/v1"
    plan = plan_of(parse_spec(spec), LocalConfigMaps({}))
    assert plan.usd_estimate is None and plan.usd_bound is None
    text = render_dry_run(plan, "job.yaml")
    assert "USD estimate: none, for openai/sim-judge (no price known: set its pricing in the spec)" in text
    assert (
        "USD: no upper bound: no context window and price known for openai/sim-judge, openai/sim-reflect, "
        "openai/sim-task"
    ) in text


def test_models_priced_at_zero_are_bounded_at_zero_whatever_their_window():
    """The keyless demo's models (the chart's simulated LLM) are free: no window is needed to bound them."""
    plan = plan_of(parse_spec(example("simulated-llm-demo.yaml")), LocalConfigMaps({}))
    assert plan.usd_bound == 0 and all(b.usd_bound == 0 for b in plan.calls)
    assert "USD: at most $0.00" in render_dry_run(plan, "job.yaml")


def promptopt_dry_run(*args):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and k not in ("RAG_AUTHORIZATION", *OPENAI_BASE_URL_ENV)
    }
    return subprocess.run(
        [PROMPTOPT, "run", "--dry-run", *map(str, args)], capture_output=True, text=True, env=env, timeout=120, cwd=REPO
    )


def test_the_command_prints_the_plan_and_writes_it_as_json_calling_nothing(llm, tmp_path):
    spec = gepa_spec(maxMetricCalls=50)
    spec["task"]["apiBase"] = llm.base_url  # a real endpoint: had anything called it, the test double would know
    job = {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": "j"},
        "spec": spec,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))

    run = promptopt_dry_run(tmp_path / "job.yaml", "-o", tmp_path / "plan.json")
    assert run.returncode == 0, run.stderr
    assert llm.request_count == 0
    assert (
        "the job is valid. GEPA, 1 prompt(s), 9 training and 3 validation records; at most 50 evaluations" in run.stdout
    )
    assert "Nothing was called." in run.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [(c["role"], c["calls"]) for c in plan["calls"]] == [("task", 50), ("judge", 150), ("reflection", 15)]
    assert plan["totalCalls"] == 215


def test_the_http_example_is_planned_without_its_credentials(tmp_path):
    run = promptopt_dry_run(EXAMPLES / "http-rag.yaml")
    assert run.returncode == 0, run.stderr
    assert "http://toy-rag:8080/answer" in run.stdout and "webhook answer" in run.stdout
    assert "RAG_AUTHORIZATION" in run.stdout and "(the service reports its own usage)" in run.stdout
    assert "warning" not in run.stdout


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s["prompts"][0].update(template="{{text}}"), "prompt 'classify' uses {{text}}, but records"),
        (
            lambda s: s["optimizer"].update(options={"max_metric_cals": 5}),
            "spec.optimizer.options.max_metric_cals: gepa.optimize (gepa 0.1.4) has no such parameter (did you mean "
            "max_metric_calls?)",
        ),
        (
            lambda s: s["optimizer"]["gepa"].update(maxMetricCalls=2),
            "spec.optimizer.gepa.maxMetricCalls: 2 metric calls do not cover GEPA's first step",
        ),
    ],
)
def test_what_a_run_would_refuse_is_refused_naming_it(tmp_path, change, message):
    spec = gepa_spec(maxMetricCalls=50)
    change(spec)
    job = {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": "j"},
        "spec": spec,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run = promptopt_dry_run(tmp_path / "job.yaml")
    assert run.returncode == 2 and message in run.stderr, run.stderr


# --- the models a job names ------------------------------------------------------------------

TYPO = "openai/gpt-4.1-mni"  # issue 21: this passed as "the job is valid"


def write_job(tmp_path, spec):
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "promptopt.dev/v1alpha1",
                "kind": "PromptOptimizationJob",
                "metadata": {"name": "j"},
                "spec": spec,
            }
        )
    )
    return path


def test_a_model_id_typo_is_a_warning_naming_its_field_and_the_closest_listed_id(tmp_path):
    spec = example("gepa-sentiment.yaml")
    spec["task"]["model"] = TYPO
    run = promptopt_dry_run(write_job(tmp_path, spec), "-o", tmp_path / "plan.json")
    assert run.returncode == 0, run.stderr
    warning = "unknown model openai/gpt-4.1-mni (spec.task.model): did you mean openai/gpt-4.1-mini?"
    assert (
        f"the job is valid. GEPA, 1 prompt(s), 9 training and 3 validation records; at most 150 evaluations "
        f"(spec.optimizer.gepa.maxMetricCalls).\nwarning: {warning}\n" in run.stdout
    )
    assert json.loads((tmp_path / "plan.json").read_text())["warnings"] == [warning]


def test_strict_fails_the_dry_run_on_a_warning(tmp_path):
    spec = example("gepa-sentiment.yaml")
    spec["task"]["model"] = TYPO
    run = promptopt_dry_run(write_job(tmp_path, spec), "--strict")
    assert run.returncode == 2
    assert (
        "the job cannot run: unknown model openai/gpt-4.1-mni (spec.task.model): did you mean "
        "openai/gpt-4.1-mini? (--strict)"
    ) in run.stderr
    assert promptopt_dry_run(EXAMPLES / "gepa-sentiment.yaml", "--strict").returncode == 0


def test_every_model_the_job_names_is_looked_up_with_the_fields_naming_it(monkeypatch):
    for name in OPENAI_BASE_URL_ENV:
        monkeypatch.delenv(name, raising=False)
    spec = example("gepa-sentiment.yaml")
    spec["task"]["model"] = spec["scorers"][1]["model"] = TYPO
    spec["optimizer"]["reflectionModel"] = "opnai/gpt-4.1"
    assert unknown_models(parse_spec(spec)) == (
        "unknown model openai/gpt-4.1-mni (spec.task.model, spec.scorers[1].model): did you mean openai/gpt-4.1-mini?",
        "unknown model opnai/gpt-4.1 (spec.optimizer.reflectionModel): litellm knows no provider of it; did you mean "
        "openai/gpt-4.1?",
    )


SERVER = "http://vllm.ml.svc:8000/v1"


@pytest.mark.parametrize(
    "task,environment",
    [
        ({"model": "openai/gpt-4.1-mini"}, {}),
        ({"model": "anthropic/claude-haiku-4-5"}, {}),
        ({"model": "openai/my-finetune", "apiBase": SERVER}, {}),  # the judge and the reflection model use it too
        ({"model": "hosted_vllm/Qwen/Qwen3-8B", "apiBase": SERVER}, {}),
        ({"model": "ollama/my-pulled-model"}, {}),  # Ollama serves whatever was pulled, on localhost by default
        ({"model": "openai/sim-task"}, {"OPENAI_BASE_URL": SERVER}),  # the worker sends openai/ models there
    ],
    ids=["listed", "listed, another provider", "apiBase", "vLLM", "Ollama", "OPENAI_BASE_URL"],
)
def test_listed_models_and_models_on_a_server_of_the_users_do_not_warn(monkeypatch, task, environment):
    for name in OPENAI_BASE_URL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    spec = example("gepa-sentiment.yaml")
    spec["task"] |= task
    if "apiBase" in task or environment:
        spec["scorers"][1]["model"] = spec["optimizer"]["reflectionModel"] = task["model"]
    assert unknown_models(parse_spec(spec)) == ()


@pytest.mark.parametrize("name", EXAMPLE_JOBS)
def test_the_examples_name_no_unknown_model(monkeypatch, name):
    for variable in OPENAI_BASE_URL_ENV:
        monkeypatch.delenv(variable, raising=False)
    assert unknown_models(parse_spec(example(name))) == ()
