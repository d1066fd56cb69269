"""spec.output's decisions, as pure functions: what an ended job writes to its ConfigMap, whose ConfigMap may be
replaced, and how the outcome is recorded."""

import pytest

from promptopt.api.v1alpha1 import read_status
from promptopt.api.validation import parse_spec
from promptopt_operator.lifecycle import Job
from promptopt_operator.output import (
    OUTPUT_WRITTEN,
    PROMPTS_REGISTERED,
    conflict,
    foreign_owner,
    output_plan,
    output_status,
    registration_outcome,
    registration_status,
    replacement,
    write_failed,
)

SPEC = {
    "optimizer": {"type": "GEPA", "reflectionModel": "openai/x"},
    "prompts": [{"name": "system", "template": "Be brief."}, {"name": "ask", "template": "{{q}}"}],
    "task": {"model": "openai/y"},
    "dataset": {"records": [{"inputs": {"q": "a"}, "expectations": {"expected_response": "b"}}]},
    "scorers": [{"name": "ExactMatch"}],
    "output": {"configMap": {"name": "prompts"}},
}
PROMPTS = [{"name": "system", "template": "Be brief. Answer in one word."}, {"name": "ask", "template": "Q: {{q}}"}]
ENDED = {
    "phase": "Succeeded",
    "optimizedPrompts": PROMPTS,
    "initialScores": {"aggregate": 0.25},
    "finalScores": {"aggregate": 0.875},
    "workerResult": {"reason": "Completed", "message": "done", "succeeded": True},
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Succeeded",
            "message": "done",
            "lastTransitionTime": "2026-12-01T10:00:00Z",
        }
    ],
}
UID = "6a1f0c2e-0000-4000-8000-000000000001"


def job(status, **spec):
    return Job(
        name="sentiment",
        generation=3,
        deleting=False,
        spec=parse_spec({**SPEC, **spec}),
        spec_problems=(),
        status=read_status(status),
    )


def test_a_succeeded_job_writes_one_key_per_prompt_labelled_and_annotated():
    plan = output_plan(job(ENDED), UID)
    assert plan.outcome.written and plan.outcome.reason == "OutputWritten"
    manifest = plan.manifest
    assert manifest["data"] == {"system": "Be brief. Answer in one word.", "ask": "Q: {{q}}"}
    assert manifest["metadata"]["name"] == "prompts" and "ownerReferences" not in manifest["metadata"]
    assert manifest["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "promptopt-operator",
        "promptopt.dev/job": "sentiment",
    }
    assert manifest["metadata"]["annotations"] == {
        "promptopt.dev/job-name": "sentiment",
        "promptopt.dev/job-uid": UID,
        "promptopt.dev/outcome": "Succeeded",
        "promptopt.dev/initial-score": "0.25",
        "promptopt.dev/final-score": "0.875",
    }


def test_an_owned_configmap_goes_with_its_job():
    plan = output_plan(job(ENDED, output={"configMap": {"name": "prompts", "ownedByJob": True}}), UID)
    assert plan.manifest["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "promptopt.dev/v1alpha1",
            "kind": "PromptOptimizationJob",
            "name": "sentiment",
            "uid": UID,
            "blockOwnerDeletion": False,
        }
    ]


def test_a_cancelled_job_writes_its_best_so_far_marked_as_such():
    cancelled = {
        **ENDED,
        "phase": "Cancelled",
        "workerResult": {"reason": "Cancelled", "message": "stopped", "succeeded": True},
    }
    plan = output_plan(job(cancelled), UID)
    assert plan.outcome.reason == "BestSoFarWritten" and plan.outcome.written
    assert plan.manifest["metadata"]["annotations"]["promptopt.dev/best-so-far"] == "true"
    assert plan.manifest["metadata"]["annotations"]["promptopt.dev/outcome"] == "Cancelled"


@pytest.mark.parametrize(
    "status,why",
    [
        ({**ENDED, "phase": "Failed"}, "the job failed: nothing is written to ConfigMap prompts"),
        ({"phase": "Cancelled"}, "the job ended without optimized prompts"),
        (
            {
                "phase": "Cancelled",
                "workerResult": {"reason": "Cancelled", "message": "before a score", "succeeded": False},
            },
            "the job ended without optimized prompts",
        ),
    ],
)
def test_a_failed_job_or_one_without_a_result_writes_nothing_and_says_so(status, why):
    plan = output_plan(job(status), UID)
    assert plan.manifest is None and plan.outcome.reason == "NothingToWrite" and why in plan.outcome.message


def test_a_cancelled_job_waits_for_its_workers_last_report():
    reported = {**ENDED, "phase": "Cancelled"}
    del reported["workerResult"]
    assert output_plan(job(reported), UID, worker_running=True) is None
    assert output_plan(job(reported), UID, worker_running=False).outcome.reason == "BestSoFarWritten"


def test_prompts_known_only_in_part_are_not_written():
    cut = {**ENDED, "optimizedPrompts": [PROMPTS[0], {**PROMPTS[1], "truncated": True}]}
    plan = output_plan(job(cut), UID)
    assert plan.manifest is None and plan.outcome.reason == "PromptsTruncated" and "ask" in plan.outcome.message


def test_nothing_is_planned_before_the_end_without_output_or_once_settled():
    assert output_plan(job({**ENDED, "phase": "Running"}), UID) is None
    assert output_plan(job(ENDED, output=None), UID) is None
    plan = output_plan(job(ENDED), UID)
    settled = output_status(job(ENDED), plan, plan.outcome, "2026-12-01T10:00:05Z")
    assert output_plan(job({**ENDED, **settled}), UID) is None
    failed = output_status(job(ENDED), plan, write_failed(plan, "500 Internal Server Error"), "2026-12-01T10:00:05Z")
    assert output_plan(job({**ENDED, **failed}), UID) == plan  # a failed write is tried again


def test_the_outcome_is_a_condition_beside_the_others_and_status_output():
    plan = output_plan(job(ENDED), UID)
    patch = output_status(job(ENDED), plan, plan.outcome, "2026-12-01T10:00:05Z")
    assert [c["type"] for c in patch["conditions"]] == ["Ready", OUTPUT_WRITTEN]
    assert (
        patch["conditions"][1] | {"status": "True", "reason": "OutputWritten", "observedGeneration": 3}
        == patch["conditions"][1]
    )
    assert patch["output"] == {"configMap": "prompts", "writtenTime": "2026-12-01T10:00:05Z"}
    refused = output_status(job(ENDED), plan, conflict(plan, "someone else"), "2026-12-01T10:00:05Z")
    assert "output" not in refused and refused["conditions"][1]["status"] == "False"
    assert "exists and belongs to someone else: it is not overwritten" in refused["conditions"][1]["message"]


def test_only_the_jobs_own_configmap_may_be_replaced():
    ours = {
        "metadata": {
            "labels": {"app.kubernetes.io/managed-by": "promptopt-operator"},
            "annotations": {"promptopt.dev/job-name": "sentiment"},
            "resourceVersion": "41",
        }
    }
    assert foreign_owner(ours, "sentiment") is None
    assert foreign_owner(ours, "other") == "job sentiment"
    assert (
        foreign_owner({"metadata": {"annotations": {"promptopt.dev/job-name": "sentiment"}}}, "sentiment")
        == "someone else (it is not labelled as promptopt's)"
    )
    assert foreign_owner({"data": {"k": "v"}}, "sentiment").startswith("someone else")
    plan = output_plan(job(ENDED), UID)
    assert replacement(plan, ours)["metadata"]["resourceVersion"] == "41"


REGISTERING = {
    **SPEC,
    "output": None,
    "mlflow": {"trackingUri": "http://mlflow:5000", "registerOptimizedPrompts": {}},
    "prompts": [{"name": "ask", "registryUri": "prompts:/ask@production"}],
}


def registering_job(status):
    return Job(
        name="sentiment",
        generation=3,
        deleting=False,
        spec=parse_spec(REGISTERING),
        spec_problems=(),
        status=read_status(status),
    )


def test_the_registration_the_worker_reported_becomes_a_condition_once():
    registered = {
        **ENDED,
        "mlflow": {"sourcePrompts": {"ask": "prompts:/ask/2"}, "optimizedPrompts": {"ask": "prompts:/ask/3"}},
    }
    outcome = registration_outcome(registering_job(registered))
    assert (outcome.written, outcome.reason) == (True, "PromptsRegistered")
    assert outcome.message == "registered in MLflow as prompts:/ask/3"
    patch = registration_status(registering_job(registered), outcome, "2026-12-01T10:00:05Z")
    assert patch["conditions"][-1]["type"] == PROMPTS_REGISTERED and patch["conditions"][0]["type"] == "Ready"
    assert registration_outcome(registering_job({**registered, **patch})) is None  # said once


def test_a_failed_registration_says_why_and_where_the_prompts_are():
    failed = {**ENDED, "mlflow": {"optimizedPrompts": {}, "registrationError": "registering prompt 'ask' failed"}}
    outcome = registration_outcome(registering_job(failed))
    assert (outcome.written, outcome.reason) == (False, "RegistrationFailed")
    assert outcome.message == "registering prompt 'ask' failed; the optimized prompts are in status.optimizedPrompts"


def test_no_registration_condition_before_the_end_before_the_report_or_when_not_asked():
    reported = {"mlflow": {"optimizedPrompts": {"ask": "prompts:/ask/3"}}}
    assert registration_outcome(registering_job({**ENDED, **reported, "phase": "Running"})) is None
    assert registration_outcome(registering_job({**ENDED, "mlflow": {"sourcePrompts": {"ask": "x"}}})) is None
    assert registration_outcome(job({**ENDED, **reported})) is None
