"""The real API server's admission (the CRD's schema and CEL rules) and the pydantic models agree on every
document: both refuse the same invalid jobs naming the same field, and both accept the valid ones."""

import copy
from pathlib import Path

import pytest
import yaml

from promptopt.api.validation import InvalidSpec, parse_spec
from promptopt_harness.client import ApiError

VALID_SPEC = {
    "optimizer": {"type": "GEPA", "reflectionModel": "openai/gpt-4.1", "gepa": {"maxMetricCalls": 50}},
    "prompts": [{"name": "classify", "template": "Label this: {{text}}"}],
    "task": {"model": "openai/gpt-4.1-mini", "concurrency": 4},
    "dataset": {"records": [{"inputs": {"text": "hi"}, "expectations": {"expected_response": "greeting"}}]},
    "scorers": [{"name": "ExactMatch"}, {"name": "Correctness", "model": "openai/gpt-4.1-mini", "weight": 0.5}],
}


def job(spec):
    return {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": "j"},
        "spec": spec,
    }


def edited(change):
    spec = copy.deepcopy(VALID_SPEC)
    change(spec)
    return spec


def _set(path, value):
    def change(spec):
        *parents, last = path
        node = spec
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _delete(path):
    def change(spec):
        *parents, last = path
        node = spec
        for part in parents:
            node = node[part]
        del node[last]

    return change


# (id, spec, the field path both layers must name)
INVALID = [
    ("unknown optimizer", edited(_set(["optimizer", "type"], "Bayes")), "spec.optimizer.type"),
    ("empty inline dataset", edited(_set(["dataset", "records"], [])), "spec.dataset.records"),
    (
        "test and validation fractions leave nothing to train on",
        edited(
            _set(["dataset"], {"records": [{"inputs": {"text": "hi"}}], "validationFraction": 0.5, "testFraction": 0.5})
        ),
        "spec.dataset.testFraction",
    ),
    (
        "a test fraction of 1",
        edited(_set(["dataset"], {"records": [{"inputs": {"text": "hi"}}], "testFraction": 1})),
        "spec.dataset.testFraction",
    ),
    ("no reflection model", edited(_delete(["optimizer", "reflectionModel"])), "spec.optimizer.reflectionModel"),
    ("zero budget", edited(_set(["optimizer", "gepa", "maxMetricCalls"], 0)), "spec.optimizer.gepa.maxMetricCalls"),
    ("unknown budget preset", edited(_set(["optimizer", "gepa", "auto"], "huge")), "spec.optimizer.gepa.auto"),
    (
        "early stopping without a rule",
        edited(_set(["optimizer", "gepa", "earlyStopping"], {})),
        "spec.optimizer.gepa.earlyStopping",
    ),
    (
        "goal above 1",
        edited(_set(["optimizer", "gepa", "earlyStopping"], {"goal": 1.5})),
        "spec.optimizer.gepa.earlyStopping.goal",
    ),
    (
        "zero patience",
        edited(_set(["optimizer", "gepa", "earlyStopping"], {"patience": 0})),
        "spec.optimizer.gepa.earlyStopping.patience",
    ),
    ("gepa without dataset", edited(_delete(["dataset"])), "spec.dataset"),
    ("gepa settings on metaprompt", edited(_set(["optimizer", "type"], "MetaPrompt")), "spec.optimizer"),
    (
        "prompt with two sources",
        edited(_set(["prompts", 0, "configMapKeyRef"], {"name": "cm", "key": "k"})),
        "spec.prompts[0]",
    ),
    ("prompt with no source", edited(_delete(["prompts", 0, "template"])), "spec.prompts[0]"),
    ("no prompts", edited(_set(["prompts"], [])), "spec.prompts"),
    (
        "duplicate prompt names",
        edited(_set(["prompts"], [{"name": "a", "template": "x"}, {"name": "a", "template": "y"}])),
        "spec.prompts",
    ),
    (
        "dataset with two sources",
        edited(_set(["dataset", "configMapKeyRef"], {"name": "cm", "key": "d.csv"})),
        "spec.dataset",
    ),
    (
        "validation fraction of one",
        edited(_set(["dataset", "validationFraction"], 1)),
        "spec.dataset.validationFraction",
    ),
    ("unknown scorer", edited(_set(["scorers", 0, "name"], "Vibes")), "spec.scorers[0].name"),
    ("zero weight", edited(_set(["scorers", 0, "weight"], 0)), "spec.scorers[0].weight"),
    ("negative weight", edited(_set(["scorers", 0, "weight"], -1)), "spec.scorers[0].weight"),
    ("judge without model", edited(_delete(["scorers", 1, "model"])), "spec.scorers[1]"),
    ("model on a non-judge", edited(_set(["scorers", 0, "model"], "openai/x")), "spec.scorers[0]"),
    ("regex without pattern", edited(_set(["scorers", 0, "name"], "Regex")), "spec.scorers[0]"),
    ("guidelines without guidelines", edited(_set(["scorers", 1, "name"], "Guidelines")), "spec.scorers[1]"),
    ("duplicate scorer keys", edited(_set(["scorers", 1, "label"], "ExactMatch")), "spec.scorers"),
    ("dataset without scorers", edited(_set(["scorers"], [])), "spec.scorers"),
    ("concurrency zero", edited(_set(["task", "concurrency"], 0)), "spec.task.concurrency"),
    ("no task model", edited(_delete(["task", "model"])), "spec.task"),
    ("a task with a model and a service", edited(_set(["task", "http"], {"url": "http://rag:8080/"})), "spec.task"),
    (
        "model parameters on a service task",
        edited(lambda s: s.update(task={"http": {"url": "http://rag:8080/"}, "maxTokens": 10})),
        "spec.task.http",
    ),
    (
        "a service url that is no http url",
        edited(lambda s: s.update(task={"http": {"url": "rag:8080"}})),
        "spec.task.http.url",
    ),
    (
        "a header with a value and a credentials key",
        edited(
            lambda s: s.update(
                task={
                    "http": {
                        "url": "http://rag/",
                        "headers": [{"name": "Authorization", "value": "x", "credentialsKey": "K"}],
                    }
                }
            )
        ),
        "spec.task.http.headers[0]",
    ),
    (
        "a header name with a space",
        edited(
            lambda s: s.update(task={"http": {"url": "http://rag/", "headers": [{"name": "X Token", "value": "x"}]}})
        ),
        "spec.task.http.headers[0].name",
    ),
    ("safety without a model", edited(_set(["scorers", 1], {"name": "Safety"})), "spec.scorers[1]"),
    (
        "a registry prompt without mlflow",
        edited(lambda s: s["prompts"].__setitem__(0, {"name": "classify", "registryUri": "prompts:/sentiment/3"})),
        "spec.mlflow",
    ),
    (
        "a registry uri that is none",
        edited(
            lambda s: s.update(
                mlflow={"trackingUri": "http://mlflow:5000"}, prompts=[{"name": "p", "registryUri": "sentiment:3"}]
            )
        ),
        "spec.prompts[0].registryUri",
    ),
    (
        "a prompt from the registry and inline",
        edited(
            lambda s: (
                s.update(mlflow={"trackingUri": "http://mlflow:5000"})
                or s["prompts"][0].update(registryUri="prompts:/s@latest")
            )
        ),
        "spec.prompts[0]",
    ),
    ("an mlflow dataset without mlflow", edited(_set(["dataset"], {"mlflowDatasetId": "d-3f2a"})), "spec.mlflow"),
    ("webhook without http", edited(_set(["scorers", 0, "name"], "Webhook")), "spec.scorers[0].http"),
    ("http on a non-webhook", edited(_set(["scorers", 0, "http"], {"url": "http://s/"})), "spec.scorers[0].http"),
    ("judge without instructions", edited(_set(["scorers", 1, "name"], "Judge")), "spec.scorers[1]"),
    (
        "judge instructions without a variable",
        edited(
            lambda s: s["scorers"].__setitem__(
                1, {"name": "Judge", "model": "openai/x", "params": {"instructions": "Is it good? {{ output }}"}}
            )
        ),
        "spec.scorers[1]",
    ),
    (
        "a registered scorer without registered",
        edited(_set(["scorers", 0, "name"], "Registered")),
        "spec.scorers[0].registered",
    ),
    (
        "registered on another scorer",
        edited(_set(["scorers", 0, "registered"], {"name": "tone"})),
        "spec.scorers[0].registered",
    ),
    (
        "a registered scorer without an experiment",
        edited(
            lambda s: s.update(
                mlflow={"trackingUri": "http://mlflow:5000"},
                scorers=[{"name": "Registered", "registered": {"name": "t"}}],
            )
        ),
        "spec.mlflow",
    ),
    (
        "a registered scorer version of zero",
        edited(
            lambda s: s.update(
                mlflow={"trackingUri": "http://mlflow:5000", "experiment": "e"},
                scorers=[{"name": "Registered", "registered": {"name": "t", "version": 0}}],
            )
        ),
        "spec.scorers[0].registered.version",
    ),
    (
        "two registered scorers of one name",
        edited(
            lambda s: s.update(
                mlflow={"trackingUri": "http://mlflow:5000", "experiment": "e"},
                scorers=[
                    {"name": "Registered", "registered": {"name": "t"}},
                    {"name": "Registered", "registered": {"name": "t", "version": 1}},
                ],
            )
        ),
        "spec.scorers",
    ),
    (
        "an aggregation without scorers",
        {
            "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/x"},
            "prompts": VALID_SPEC["prompts"],
            "task": VALID_SPEC["task"],
            "aggregation": "1.0",
        },
        "spec.aggregation",
    ),
    (
        "an aggregation too long to be a formula",
        edited(_set(["aggregation"], "scores.ExactMatch" + " " * 1100)),
        "spec.aggregation",
    ),
    ("negative backoff", edited(_set(["backoffLimit"], -1)), "spec.backoffLimit"),
    ("zero deadline", edited(_set(["activeDeadlineSeconds"], 0)), "spec.activeDeadlineSeconds"),
    ("zero budget usd", edited(_set(["budget"], {"maxCostUSD": 0})), "spec.budget.maxCostUSD"),
    (
        "failed fraction above one",
        edited(_set(["exampleFailurePolicy"], {"maxFailedFraction": 1.5})),
        "spec.exampleFailurePolicy.maxFailedFraction",
    ),
    (
        "too many judge retries",
        edited(_set(["exampleFailurePolicy"], {"judgeRetries": 6})),
        "spec.exampleFailurePolicy.judgeRetries",
    ),
    (
        "bad secret name",
        edited(_set(["credentials"], {"secretRef": {"name": "Not_A_Name"}})),
        "spec.credentials.secretRef.name",
    ),
    (
        "bad quantity",
        edited(_set(["worker"], {"resources": {"limits": {"memory": "lots"}}})),
        "spec.worker.resources.limits.memory",
    ),
    (
        "env with value and valueFrom",
        edited(
            _set(
                ["worker"],
                {"env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            )
        ),
        "spec.worker.env[0]",
    ),
]

VALID = [
    ("the base document", VALID_SPEC),
    (
        "a held-out test set beside validation",
        edited(
            _set(
                ["dataset"],
                {"records": [{"inputs": {"text": t}} for t in "abcd"], "validationFraction": 0.25, "testFraction": 0.5},
            )
        ),
    ),
    (
        "a budget preset with early stopping",
        edited(_set(["optimizer", "gepa"], {"auto": "medium", "earlyStopping": {"goal": 0.9, "patience": 4}})),
    ),
    (
        "zero-shot metaprompt",
        {
            "optimizer": {
                "type": "MetaPrompt",
                "reflectionModel": "openai/gpt-4.1",
                "metaPrompt": {"guidelines": "be brief"},
            },
            "prompts": [{"name": "p", "role": "system", "configMapKeyRef": {"name": "prompts", "key": "p.txt"}}],
            "task": {"model": "openai/gpt-4.1-mini"},
        },
    ),
    (
        "regex and guidelines scorers with labels",
        edited(
            _set(
                ["scorers"],
                [
                    {"name": "Regex", "params": {"pattern": "^(positive|negative)$"}},
                    {"name": "Regex", "label": "short", "params": {"pattern": "^\\w+$"}},
                    {"name": "Guidelines", "model": "openai/x", "params": {"guidelines": ["lowercase"]}},
                ],
            )
        ),
    ),
    (
        "mlflow's other judges",
        edited(
            _set(
                ["scorers"],
                [
                    {"name": "Safety", "model": "openai/x"},
                    {"name": "RelevanceToQuery", "model": "openai/x"},
                    {"name": "ExpectationsGuidelines", "model": "openai/x"},
                ],
            )
        ),
    ),
    (
        "a program and a scorer as services, and a judge of one's own",
        edited(
            lambda s: s.update(
                task={
                    "http": {
                        "url": "https://rag.team.svc:8443/answer",
                        "headers": [
                            {"name": "Authorization", "credentialsKey": "RAG_AUTHORIZATION"},
                            {"name": "X-Team", "value": "ml"},
                        ],
                    },
                    "concurrency": 4,
                    "timeoutSeconds": 30,
                    "pricing": {"inputPerMillionTokens": 1, "outputPerMillionTokens": 2},
                },
                scorers=[
                    {"name": "Webhook", "label": "grounded", "http": {"url": "http://scorer/score"}},
                    {
                        "name": "Judge",
                        "label": "tone",
                        "model": "openai/gpt-4.1-mini",
                        "params": {"instructions": "Is {{ outputs }} polite, given {{inputs}} and {{ expectations }}?"},
                    },
                ],
            )
        ),
    ),
    (
        "prompts from and to mlflow's registry",
        edited(
            lambda s: s.update(
                mlflow={
                    "trackingUri": "https://mlflow.mlops.svc:5000",
                    "registerOptimizedPrompts": {"alias": "candidate"},
                },
                prompts=[
                    {"name": "classify", "registryUri": "prompts:/sentiment@production"},
                    {"name": "system", "role": "system", "template": "Be brief.", "registerAs": "sentiment-system"},
                    {"name": "extra", "registryUri": "prompts:/other/3"},
                    {"name": "last", "registryUri": "prompts:/x@latest"},
                ],
            )
        ),
    ),
    (
        "records from an mlflow evaluation dataset, and a run",
        edited(
            lambda s: s.update(
                mlflow={"trackingUri": "http://mlflow:5000", "experiment": "prompt-optimization"},
                dataset={"mlflowDatasetId": "d-3f2a9c", "validationFraction": 0.25},
            )
        ),
    ),
    (
        "a judge registered in mlflow and an aggregation",
        edited(
            lambda s: s.update(
                mlflow={"trackingUri": "http://mlflow:5000", "experiment": "prompt-optimization"},
                scorers=[
                    {"name": "ExactMatch", "label": "exact"},
                    {"name": "Registered", "registered": {"name": "tone-judge", "version": 2}},
                    {
                        "name": "Registered",
                        "label": "safety",
                        "model": "openai/gpt-4.1-mini",
                        "registered": {"name": "safety"},
                    },
                ],
                aggregation='min(scores.exact, scores["tone-judge"]) * 0.5 + scores.safety * 0.5',
            )
        ),
    ),
    (
        "every run control",
        edited(
            lambda s: s.update(
                {
                    "cancel": False,
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": 600,
                    "ttlSecondsAfterFinished": 0,
                    "budget": {"maxCostUSD": 1.5},
                    "credentials": {"secretRef": {"name": "llm-keys"}},
                    "exampleFailurePolicy": {"maxFailedFraction": 0, "judgeRetries": 0},
                    "worker": {
                        "image": "ghcr.io/x/worker:1",
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                        "nodeSelector": {"pool": "cpu"},
                        "tolerations": [{"key": "k", "operator": "Exists"}],
                        "serviceAccountName": "w",
                        "env": [{"name": "A", "value": "1"}],
                    },
                }
            )
        ),
    ),
]


@pytest.fixture(scope="module")
def admission(real_cluster):
    """admission(document, strict=True): the job as the real API server would store it (a dry run: nothing is
    kept), or ApiError. Strict, as kubectl asks: an unknown field is refused rather than pruned."""
    namespace = "api-validation"
    real_cluster.create_namespace(namespace)
    api = real_cluster.in_namespace(namespace)

    def admit(document, strict=True):
        return api.create(document, dryRun="All", fieldValidation="Strict" if strict else "Ignore")

    return admit


def refused_fields(error: ApiError) -> list[str]:
    """The fields a 422 names (one cause each) or a strict-decoding 400 names in its message."""
    causes = (error.body.get("details") or {}).get("causes") or []
    return [cause.get("field", "") for cause in causes] or [error.body["message"]]


@pytest.mark.parametrize("spec", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_documents_pass_both_layers(admission, spec):
    admitted = admission(job(spec))
    parse_spec(spec)
    parse_spec(admitted["spec"])  # the API server's defaults are acceptable to the models too


@pytest.mark.parametrize("spec,field", [(v[1], v[2]) for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid_documents_fail_both_layers_naming_the_field(admission, spec, field):
    with pytest.raises(ApiError) as refused:
        admission(job(spec))
    with pytest.raises(InvalidSpec) as models:
        parse_spec(spec)
    assert refused.value.code == 422
    assert any(f.startswith(field) for f in refused_fields(refused.value)), refused.value.body
    assert any(p.startswith(field) for p in models.value.problems), models.value.problems


def test_the_api_server_defaults_what_the_models_default(admission):
    admitted = admission(job(VALID_SPEC))
    assert admitted["spec"]["optimizer"]["gepa"]["candidateSelection"] == "pareto"
    assert admitted["spec"]["backoffLimit"] == 2
    assert admitted["spec"]["prompts"][0]["role"] == "user"


def test_a_misspelled_field_is_refused_by_strict_validation_and_by_the_models(admission):
    spec = edited(_set(["task", "temprature"], 0.2))
    with pytest.raises(ApiError) as refused:
        admission(job(spec))
    assert refused.value.code == 400 and 'unknown field "spec.task.temprature"' in refused.value.body["message"]
    assert "temprature" not in admission(job(spec), strict=False)["spec"]["task"]  # pruned when not strict
    with pytest.raises(InvalidSpec, match=r"spec\.task\.temprature: unknown field"):
        parse_spec(spec)


def test_regex_scorer_pattern_must_compile():
    spec = edited(_set(["scorers", 0], {"name": "Regex", "params": {"pattern": "("}}))
    with pytest.raises(InvalidSpec, match=r"spec\.scorers\[0\]: params\.pattern is not a valid regular expression"):
        parse_spec(spec)


def test_inline_records_must_fill_every_variable_of_the_inline_templates():
    """The models check what CEL cannot (records' inputs are free-form, untyped for CEL): the operator then fails
    the job before any Pod. Templates from elsewhere are the worker's to check, once read."""
    spec = edited(
        _set(
            ["prompts"],
            [
                {"name": "classify", "template": "{{text}} in {{language}}"},
                {"name": "hint", "configMapKeyRef": {"name": "p", "key": "hint"}},
            ],
        )
    )
    spec["dataset"]["records"] += [{"inputs": {"text": "yo", "language": "en"}}, {"inputs": {"text": "ciao"}}]
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(spec)
    assert refused.value.problems == [
        "spec.dataset.records: the records do not fit the prompts: prompt 'classify' "
        "uses {{language}}, but records 0, 2 have no input 'language'"
    ]
    spec["dataset"]["records"] = spec["dataset"]["records"][1:2]
    parse_spec(spec)


@pytest.mark.parametrize(
    "expression,problem",
    [
        ("min(scores.ExactMatch,", "spec.aggregation: is not a CEL expression"),
        (
            "scores.Exactmatch",
            "spec.aggregation: reads scores.Exactmatch: the job's scorers are Correctness, ExactMatch",
        ),
        ("scores[name]", 'spec.aggregation: write scores.<key> or scores["<key>"]'),
        ("scores.ExactMatch > 0.5", "spec.aggregation: gave true for the scores"),
        ("scores.ExactMatch + scores.Correctness", "spec.aggregation: gave 2.0 for the scores"),
        ("weights.ExactMatch", "spec.aggregation: failed for the scores"),
    ],
)
def test_the_aggregation_must_compile_read_the_scorers_and_give_a_score(expression, problem):
    """What CEL at admission cannot see (it cannot compile a string as CEL): the models refuse it, so the operator
    fails the job before any Pod and the dry run names the field."""
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(edited(_set(["aggregation"], expression)))
    assert refused.value.problems[0].startswith(problem), refused.value.problems


def test_missing_spec_is_named():
    with pytest.raises(InvalidSpec, match="spec: required"):
        parse_spec(None)


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(admission, path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    jobs = [d for d in documents if d["kind"] == "PromptOptimizationJob"]
    for document in jobs:
        admitted = admission(document)
        parse_spec(document["spec"])
        parse_spec(admitted["spec"])
    assert jobs or all(d["kind"] in ("Secret", "ConfigMap") for d in documents)


def test_examples_cover_the_documented_cases():
    specs = [
        d["spec"]
        for p in EXAMPLES
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == "PromptOptimizationJob"
    ]
    assert any(s["optimizer"]["type"] == "GEPA" and "records" in s["dataset"] for s in specs)
    assert any(s["optimizer"]["type"] == "MetaPrompt" and "dataset" not in s for s in specs)
    assert any("configMapKeyRef" in s.get("dataset", {}) and "configMapKeyRef" in s["prompts"][0] for s in specs)
    assert any("http" in s["task"] and {"Webhook", "Judge"} <= {c["name"] for c in s["scorers"]} for s in specs)
    assert any(
        "registryUri" in s["prompts"][0] and "registerOptimizedPrompts" in s["mlflow"] and "output" in s for s in specs
    )
