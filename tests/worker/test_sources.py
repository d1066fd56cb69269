"""Sources: prompts and datasets from inline values, ConfigMaps through the API, or local manifest files."""

import base64
import hashlib
import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client import CoreV1Api

from promptopt.api.v1alpha1 import ConfigMapInput
from promptopt.api.validation import parse_spec
from promptopt.prompt_contract import METAPROMPT_SYSTEM_MESSAGE, MetaPromptRequest, metaprompt_request
from promptopt.simulated_llm import REFLECT_MODEL
from promptopt_worker.llm import LLMClient
from promptopt_worker.problem import PromptTemplate
from promptopt_worker.sources import (
    InvalidInput,
    KubernetesConfigMaps,
    LocalConfigMaps,
    build_problem,
    read_manifests,
    reflection_model,
    resolve_prompts,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGMAP_EXAMPLE = EXAMPLES / "configmap-sources.yaml"


def example_documents():
    documents = read_manifests(CONFIGMAP_EXAMPLE)
    config_maps = [d for d in documents if d["kind"] == "ConfigMap"]
    job = next(d for d in documents if d["kind"] == "PromptOptimizationJob")
    return config_maps, parse_spec(job["spec"])


def gepa_spec(**dataset):
    return parse_spec(
        {
            "optimizer": {"type": "GEPA", "reflectionModel": "openai/sim-reflect"},
            "prompts": [
                {"name": "system", "role": "system", "template": "Label reviews."},
                {"name": "classify", "template": "Review: {{review}}"},
            ],
            "task": {"model": "openai/sim-task"},
            "dataset": dataset
            or {
                "records": [
                    {"inputs": {"review": f"review {i}"}, "expectations": {"expected_response": "positive"}}
                    for i in range(10)
                ],
                "validationFraction": 0.3,
            },
            "scorers": [{"name": "ExactMatch"}],
        }
    )


@pytest.fixture
def build(request):
    """build_problem with a fresh LLMClient; closes the evaluators afterwards."""
    problems = []

    def run(spec, configmaps, **options):
        problems.append(build_problem(spec, configmaps, LLMClient(), **options))
        return problems[-1]

    yield run
    for problem in problems:
        if problem.evaluator is not None:
            problem.evaluator.close()


def test_inline_prompts_and_records(build):
    problem = build(gepa_spec(), LocalConfigMaps())

    assert problem.prompts == [
        PromptTemplate("system", "system", "Label reviews."),
        PromptTemplate("classify", "user", "Review: {{review}}"),
    ]
    assert (len(problem.train), len(problem.validation)) == (7, 3)
    assert {e.index for e in [*problem.train, *problem.validation]} == set(range(10))
    assert problem.evaluator is not None and problem.settings.type == "GEPA"


def test_configmaps_through_the_kubernetes_api(cluster, build):
    config_maps, spec = example_documents()
    for config_map in config_maps:
        cluster.create(config_map)

    problem = build(spec, KubernetesConfigMaps(CoreV1Api(cluster.api_client()), cluster.namespace))

    assert problem.prompts[0].text == config_maps[0]["data"]["classify.txt"]
    assert len(problem.validation) == 8  # the CSV's rows
    assert problem.validation[2].inputs == {"review": "Oh great, it stopped working on day two. Just what I needed."}
    assert problem.validation[2].expectations == {"expected_response": "negative"}


def test_configmaps_from_local_files(tmp_path, build):
    config_maps, spec = example_documents()
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(config_maps[0]))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump_all([{"kind": "Secret"}, config_maps[1]]))

    problem = build(spec, LocalConfigMaps.from_files([tmp_path / "prompts.yaml", tmp_path / "data.yaml"]))

    assert problem.prompts[0].text.startswith("Classify the sentiment")
    assert len(problem.validation) == 8


def test_the_job_file_itself_may_hold_the_configmaps(build):
    _, spec = example_documents()
    assert len(build(spec, LocalConfigMaps.from_files([CONFIGMAP_EXAMPLE])).validation) == 8


def test_binary_data_is_decoded():
    text = "Classify: {{review}} ✓"
    configmaps = LocalConfigMaps(
        [
            {
                "kind": "ConfigMap",
                "metadata": {"name": "sentiment-prompts"},
                "binaryData": {"classify.txt": base64.b64encode(text.encode()).decode()},
            }
        ]
    )
    _, spec = example_documents()
    assert resolve_prompts(spec, configmaps)[0][0].text == text


def test_a_missing_configmap_names_the_field_the_map_and_where_it_was_looked_up(cluster, build):
    _, spec = example_documents()
    with pytest.raises(InvalidInput) as api_error:
        build(spec, KubernetesConfigMaps(CoreV1Api(cluster.api_client()), cluster.namespace))
    with pytest.raises(InvalidInput) as local_error:
        build(spec, LocalConfigMaps.from_files([EXAMPLES / "gepa-sentiment.yaml"]))

    assert str(api_error.value) == (
        f"spec.prompts[0].configMapKeyRef: ConfigMap 'sentiment-prompts' not found in namespace '{cluster.namespace}'"
    )
    assert (
        str(local_error.value).startswith(
            "spec.prompts[0].configMapKeyRef: ConfigMap 'sentiment-prompts' not found in "
        )
        and "gepa-sentiment.yaml" in str(local_error.value)
        and "-f" in str(local_error.value)
    )


def test_a_missing_key_names_the_field_the_map_the_key_and_the_keys_it_has(cluster, build):
    config_maps, spec = example_documents()
    config_maps[1]["data"] = {"reviews.json": "[]", "notes.txt": "-"}
    for config_map in config_maps:
        cluster.create(config_map)

    with pytest.raises(InvalidInput) as error:
        build(spec, KubernetesConfigMaps(CoreV1Api(cluster.api_client()), cluster.namespace))

    assert str(error.value) == (
        "spec.dataset.configMapKeyRef: ConfigMap 'sentiment-dataset' has no key 'reviews.csv' "
        "(its keys: 'notes.txt', 'reviews.json')"
    )


class CountingConfigMaps(LocalConfigMaps):
    """Local ConfigMaps that count how often each is read."""

    def __init__(self, manifests):
        super().__init__(manifests)
        self.reads: dict[str, int] = {}

    def data(self, name):
        self.reads[name] = self.reads.get(name, 0) + 1
        return super().data(name)


def sha16(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_each_configmap_is_read_once_and_every_key_used_gets_a_digest(build):
    config_maps, spec = example_documents()
    source = CountingConfigMaps(config_maps)

    problem = build(spec, source)

    assert problem.config_map_inputs == (
        ConfigMapInput(
            name="sentiment-prompts", key="classify.txt", digest=sha16(config_maps[0]["data"]["classify.txt"])
        ),
        ConfigMapInput(
            name="sentiment-dataset", key="reviews.csv", digest=sha16(config_maps[1]["data"]["reviews.csv"])
        ),
    )
    assert source.reads == {"sentiment-prompts": 1, "sentiment-dataset": 1}
    assert build(gepa_spec(), LocalConfigMaps()).config_map_inputs == ()  # inline inputs: the spec hash covers them


def test_a_configmap_key_changed_since_the_job_started_is_refused_naming_the_field_the_map_and_the_key(build):
    config_maps, spec = example_documents()
    started = build(spec, LocalConfigMaps(config_maps)).config_map_inputs
    assert build(spec, LocalConfigMaps(config_maps), started_with=started).config_map_inputs == started

    config_maps[1]["data"]["reviews.csv"] += '"One more review, a great one.",positive\n'
    with pytest.raises(InvalidInput) as changed:
        build(spec, LocalConfigMaps(config_maps), started_with=started)

    assert str(changed.value) == (
        "spec.dataset.configMapKeyRef: ConfigMap 'sentiment-dataset' key 'reviews.csv' changed since the job started "
        "(status.configMapInputs), and a job runs the inputs it started with: restore the text, or create a new job "
        "to run the new one"
    )


def test_records_that_do_not_fit_the_prompts_are_found_before_any_llm_call(build):
    """Records from a ConfigMap (inline ones the spec's own rule checks) are checked once read."""
    spec = gepa_spec(configMapKeyRef={"name": "records", "key": "records.jsonl"})
    record = {"inputs": {"text": "no review here"}, "expectations": {"expected_response": "x"}}
    config_map = {"kind": "ConfigMap", "metadata": {"name": "records"}, "data": {"records.jsonl": json.dumps(record)}}
    missing = r"prompt 'classify' uses \{\{review\}\}, but record 0 has no input 'review'"
    with pytest.raises(InvalidInput, match=missing):
        build(spec, LocalConfigMaps([config_map]))


def test_the_reflection_model_gets_the_system_message_and_the_prompt(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    spec = parse_spec(
        {
            **gepa_spec().model_dump(by_alias=True, exclude_none=True),
            "task": {"model": "openai/sim-task", "apiBase": llm.base_url},
        }
    )
    reflect = reflection_model(spec, LLMClient())

    system = METAPROMPT_SYSTEM_MESSAGE
    reflect(
        metaprompt_request(MetaPromptRequest({"p": "Label: {{review}}"}), {"p": "user"}, {"p": {"review"}}),
        system=system,
    )

    request = llm.last_request(model=REFLECT_MODEL)
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert request["messages"][0]["content"] == system
