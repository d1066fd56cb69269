"""The job's lifecycle decisions, as pure functions over plain data."""

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from promptopt.api.merge_patch import apply_merge_patch
from promptopt.api.times import format_time
from promptopt.api.v1alpha1 import read_status
from promptopt.api.validation import parse_spec
from promptopt_operator.lifecycle import (
    Event,
    Job,
    decide,
    pod_refused,
    retry_delay,
    slim_job,
    written_job,
    view_spec,
)
from promptopt_operator.queue import Slot
from promptopt_operator.pods import WorkerPod, worker_pod_manifest
from promptopt_operator.settings import OperatorSettings

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(retry_base_delay_seconds=10, retry_max_delay_seconds=360)
START = Slot(may_start=True)
SPEC = {
    "optimizer": {"type": "GEPA", "reflectionModel": "openai/x"},
    "prompts": [{"name": "p", "template": "{{q}}"}],
    "task": {"model": "openai/y"},
    "dataset": {"records": [{"inputs": {"q": "a"}, "expectations": {"expected_response": "b"}}]},
    "scorers": [{"name": "ExactMatch"}],
}


def job(status=None, generation=1, deleting=False, **spec_changes):
    view = view_spec({**SPEC, **spec_changes})
    return Job(
        name="j",
        generation=generation,
        deleting=deleting,
        spec=view.spec,
        spec_problems=view.problems,
        status=read_status(status),
        run_hash=view.run_hash,
        template_bytes=view.template_bytes,
    )


def pod(attempt=1, phase="Running", **kw):
    return WorkerPod(name=f"j-worker-{attempt}", attempt=attempt, phase=phase, deleting=kw.pop("deleting", False), **kw)


def ago(seconds):
    return format_time(NOW - timedelta(seconds=seconds))


def ready_condition(decision):
    return next(c for c in decision.status["conditions"] if c["type"] == "Ready")


def test_new_job_with_a_slot_creates_attempt_one():
    d = decide(job(), [], NOW, SETTINGS, START)
    assert d.create_attempt == 1
    assert d.status["phase"] == "Pending" and d.status["attempts"] == 1 and d.status["podName"] == "j-worker-1"
    assert d.status["startTime"] == format_time(NOW) and d.status["observedGeneration"] == 1
    assert [e.reason for e in d.events] == ["PodCreated"]


def test_a_new_pod_waiting_to_start_changes_nothing_and_running_posts_no_event():
    created = decide(job(), [], NOW, SETTINGS, START).status
    waiting = decide(job(created), [pod(phase="Pending")], NOW + timedelta(seconds=2), SETTINGS, START)
    assert waiting.status == {} and waiting.events == ()
    running = decide(job(created), [pod()], NOW + timedelta(seconds=3), SETTINGS, START)
    assert running.status["phase"] == "Running" and running.events == ()


def test_new_job_without_a_slot_is_queued_with_its_position():
    d = decide(job(), [], NOW, SETTINGS, Slot(may_start=False, position=3))
    assert d.create_attempt is None
    assert d.status["phase"] == "Queued" and d.status["queuePosition"] == 3


def test_conditions_follow_kstatus_for_every_phase():
    running = decide(job({"phase": "Pending", "attempts": 1, "startTime": ago(5)}), [pod()], NOW, SETTINGS, START)
    kinds = {c["type"]: c["status"] for c in running.status["conditions"]}
    assert kinds == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert all(c["observedGeneration"] == 1 and c["reason"] == "Running" for c in running.status["conditions"])


@pytest.mark.parametrize(
    "status,pods,ended",
    [
        (
            {"phase": "Running", "attempts": 1, "startTime": ago(60)},
            [{"phase": "Succeeded", "exit_code": 0}],
            ("Complete", "Completed"),
        ),
        (
            {"phase": "Running", "attempts": 1, "startTime": ago(60)},
            [{"phase": "Failed", "reason": "Error", "exit_code": 1}],
            ("Failed", "BackoffLimitExceeded"),
        ),
        ({"phase": "Pending", "attempts": 1, "startTime": ago(60)}, [{}], None),  # its Pod runs
    ],
)
def test_a_job_that_ends_says_complete_or_failed_as_a_batch_job_does(status, pods, ended):
    d = decide(job(status, backoffLimit=0), [pod(**p) for p in pods], NOW, SETTINGS, START)
    end_conditions = [
        (c["type"], c["reason"])
        for c in d.status.get("conditions", [])
        if c["type"] in ("Complete", "Failed") and c["status"] == "True"
    ]
    assert end_conditions == ([ended] if ended else [])


def test_a_cancelled_job_is_failed_for_kubectl_wait():
    d = decide(
        job({"phase": "Running", "attempts": 1, "startTime": ago(60)}, cancel=True), [pod()], NOW, SETTINGS, START
    )
    assert d.status["phase"] == "Cancelled"
    assert {c["type"]: (c["status"], c["reason"]) for c in d.status["conditions"]}["Failed"] == ("True", "Cancelled")


NO_SERVICE_ACCOUNT = (
    'pods "j-worker-1" is forbidden: error looking up service account team-b/promptopt-worker: '
    'serviceaccount "promptopt-worker" not found'
)


@pytest.mark.parametrize(
    "refusal,advice",
    [
        (
            NO_SERVICE_ACCOUNT,
            "namespace team-b has no worker ServiceAccount promptopt-worker: add team-b to the chart's jobNamespaces",
        ),
        (
            'pods "j-worker-1" is forbidden: error looking up service account team-b/mine: '
            'serviceaccount "mine" not found',
            "spec.worker.serviceAccountName names mine, which namespace team-b lacks",
        ),
        (
            'pods is forbidden: User "system:serviceaccount:promptopt-system:promptopt" cannot create resource "pods" '
            'in API group "" in the namespace "team-b"',
            "the operator may not create Pods in namespace team-b",
        ),
        (
            'pods "j-worker-1" is forbidden: exceeded quota: compute, requested: requests.memory=512Mi',
            "a ResourceQuota of namespace team-b is used up",
        ),
        ('Pod "j-worker-1" is invalid: spec.containers[0].image: Required value', ""),
    ],
)
def test_a_refused_worker_pod_stalls_the_job_saying_what_to_do_once(refusal, advice):
    waiting = job({"phase": "Queued"})
    d = pod_refused(waiting, "team-b", 1, refusal, NOW, SETTINGS, refusals_in_a_row=1)
    assert d.status["phase"] == "Pending" and d.create_attempt is None and "attempts" not in d.status
    assert d.status["message"].startswith(f"worker Pod j-worker-1 could not be created: {advice}")
    assert d.status["message"].endswith(refusal)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in d.status["conditions"]}
    assert conditions == {
        "Ready": ("False", "FailedCreate"),
        "Reconciling": ("True", "FailedCreate"),
        "Stalled": ("True", "FailedCreate"),
    }
    assert d.events == (Event("Warning", "FailedCreate", f"Error creating: {refusal}"),)
    assert d.recheck_after == 1
    # Refused again, the same way: nothing new to write or say, and the next try waits longer.
    again = pod_refused(job({"phase": "Queued", **d.status}), "team-b", 1, refusal, NOW, SETTINGS, 3)
    assert again.status == {} and again.events == () and again.recheck_after == 4


def test_last_transition_time_moves_only_on_status_change():
    first = decide(
        job({"phase": "Pending", "attempts": 1, "startTime": ago(5)}), [pod(phase="Pending")], NOW, SETTINGS, START
    )
    later = NOW + timedelta(seconds=30)
    status = {"phase": "Pending", "attempts": 1, "startTime": ago(5), "conditions": first.status["conditions"]}
    second = decide(job(status), [pod()], later, SETTINGS, START)
    assert ready_condition(second)["lastTransitionTime"] == format_time(NOW)  # Ready stayed False
    assert ready_condition(second)["reason"] == "Running"


def test_unchanged_state_patches_nothing():
    d = decide(job({"phase": "Pending", "attempts": 1, "startTime": ago(5)}), [pod()], NOW, SETTINGS, START)
    stored = {"phase": "Pending", "attempts": 1, "startTime": ago(5), **d.status}
    again = decide(job(stored), [pod()], NOW + timedelta(seconds=1), SETTINGS, START)
    assert again.status == {} and again.events == () and again.create_attempt is None


@pytest.mark.parametrize(
    "reason,message",
    [
        ("ImagePullBackOff", 'Back-off pulling image "nope"'),
        ("CreateContainerConfigError", 'secret "llm" not found'),
        ("Unschedulable", "0/1 nodes are available: 1 Insufficient memory."),
    ],
)
def test_stuck_pods_surface_their_reason_at_once(reason, message):
    d = decide(
        job({"phase": "Pending", "attempts": 1, "startTime": ago(5)}),
        [pod(phase="Pending", reason=reason, message=message)],
        NOW,
        SETTINGS,
        START,
    )
    assert "phase" not in d.status  # still Pending: only the reason changes
    assert ready_condition(d)["reason"] == reason and message in ready_condition(d)["message"]
    assert d.events[0].type == "Warning" and d.events[0].reason == reason


def test_success_takes_the_workers_result():
    status = {
        "phase": "Running",
        "attempts": 1,
        "startTime": ago(60),
        "workerResult": {"reason": "Completed", "message": "best 0.9", "succeeded": True},
    }
    d = decide(job(status), [pod(phase="Succeeded", exit_code=0)], NOW, SETTINGS, START)
    assert d.status["phase"] == "Succeeded" and d.status["completionTime"] == format_time(NOW)
    assert d.status["duration"] == "60s"  # kubectl get's DURATION column
    assert {c["type"]: c["status"] for c in d.status["conditions"]}["Ready"] == "True"


@pytest.mark.parametrize("reason", ["BudgetExhausted", "GoalReached", "NoImprovement"])
def test_an_early_stop_is_a_success_with_its_reason(reason):
    status = {
        "phase": "Running",
        "attempts": 1,
        "startTime": ago(60),
        "workerResult": {"reason": reason, "message": "stopped early", "succeeded": True},
    }
    d = decide(job(status), [pod(phase="Succeeded", exit_code=0)], NOW, SETTINGS, START)
    assert d.status["phase"] == "Succeeded" and ready_condition(d)["reason"] == reason
    assert d.events[0].reason == reason


def test_result_is_recovered_from_the_termination_message_when_status_lacks_it():
    summary = {
        "workerResult": {"reason": "Completed", "message": "done", "succeeded": True},
        "finalScores": {"aggregate": 0.9},
        "optimizedPrompts": [{"name": "p", "template": "better {{q}}"}],
    }
    status = {"phase": "Running", "attempts": 1, "startTime": ago(60), "finalScores": None}
    d = decide(
        job(status),
        [pod(phase="Succeeded", exit_code=0, termination_message=json.dumps(summary))],
        NOW,
        SETTINGS,
        START,
    )
    assert d.status["phase"] == "Succeeded"
    assert d.status["finalScores"] == {"aggregate": 0.9}
    assert d.status["optimizedPrompts"][0]["template"] == "better {{q}}"


def test_a_prompt_cut_to_fit_the_termination_message_stays_marked_in_status():
    summary = {
        "workerResult": {"reason": "Completed", "message": "done", "succeeded": True},
        "optimizedPrompts": [{"name": "p", "template": "better {{q}} and then…", "truncated": True}],
    }
    status = {"phase": "Running", "attempts": 1, "startTime": ago(60)}
    d = decide(
        job(status),
        [pod(phase="Succeeded", exit_code=0, termination_message=json.dumps(summary))],
        NOW,
        SETTINGS,
        START,
    )
    assert d.status["optimizedPrompts"] == [{"name": "p", "template": "better {{q}} and then…", "truncated": True}]


def test_failed_pod_is_retried_after_an_exponential_delay():
    status = {"phase": "Running", "attempts": 2, "startTime": ago(100)}
    failed = pod(attempt=2, phase="Failed", reason="OOMKilled", exit_code=137, finished_at=ago(5))
    waiting = decide(job(status), [pod(phase="Failed", reason="Error", exit_code=1), failed], NOW, SETTINGS, START)
    assert waiting.create_attempt is None and waiting.recheck_after == pytest.approx(15)  # 20 s after 2 failures
    assert ready_condition(waiting)["reason"] == "BackoffRetry" and "OOMKilled" in waiting.status["message"]
    later = decide(job({**status, **waiting.status}), [failed], NOW + timedelta(seconds=16), SETTINGS, START)
    assert later.create_attempt == 3 and later.status["attempts"] == 3 and later.status["podName"] == "j-worker-3"


def test_an_oomkilled_worker_is_told_to_get_more_memory():
    status = {"phase": "Running", "attempts": 1, "startTime": ago(100)}
    # What FallbackToLogsOnError leaves of a worker killed by the kernel: its last log line, of no help.
    oom = pod(
        phase="Failed",
        reason="OOMKilled",
        exit_code=137,
        finished_at=ago(5),
        termination_message="INFO promptopt_worker.main: optimizing job ns/j with GEPA",
    )
    d = decide(job(status, backoffLimit=0), [oom], NOW, SETTINGS, START)
    assert d.status["message"] == (
        "the worker failed 1 time(s), more than backoffLimit 0; last: worker Pod j-worker-1 failed: OOMKilled (exit "
        "code 137): the worker needed more memory than its limit; raise spec.worker.resources.limits.memory (or the "
        "chart's worker.resources for every job)"
    )


def test_retry_delay_doubles_and_is_capped():
    assert [retry_delay(n, SETTINGS) for n in (1, 2, 3, 10)] == [10, 20, 40, 360]


def test_backoff_limit_exceeded_fails_the_job():
    status = {"phase": "Running", "attempts": 3, "startTime": ago(100)}
    d = decide(
        job(status, backoffLimit=2),
        [
            pod(
                attempt=3,
                phase="Failed",
                reason="Error",
                exit_code=1,
                termination_message="Traceback...\nRuntimeError: boom",
            )
        ],
        NOW,
        SETTINGS,
        START,
    )
    assert d.status["phase"] == "Failed" and ready_condition(d)["reason"] == "BackoffLimitExceeded"
    assert "RuntimeError: boom" in d.status["message"]
    assert {c["type"]: c["status"] for c in d.status["conditions"]}["Stalled"] == "True"
    assert d.events[0].type == "Warning"


@pytest.mark.parametrize("exit_code,result_reason", [(2, None), (1, "LLMError"), (2, "InvalidInput")])
def test_permanent_worker_failures_are_not_retried(exit_code, result_reason):
    status = {"phase": "Running", "attempts": 1, "startTime": ago(10)}
    if result_reason:
        status["workerResult"] = {
            "reason": result_reason,
            "message": "401 for openai/x: check OPENAI_API_KEY",
            "succeeded": False,
        }
    d = decide(job(status), [pod(phase="Failed", reason="Error", exit_code=exit_code)], NOW, SETTINGS, START)
    assert d.status["phase"] == "Failed" and d.create_attempt is None
    assert ready_condition(d)["reason"] == (result_reason or "InvalidInput")


def test_a_vanished_pod_is_replaced_after_the_back_off_counted_from_when_it_was_missed():
    status = {"phase": "Running", "attempts": 1, "startTime": ago(100), "observedGeneration": 1}
    missed = decide(job(status), [], NOW, SETTINGS, START)
    assert missed.create_attempt is None and missed.recheck_after == pytest.approx(10)
    assert missed.status["lastFailure"] == {
        "attempt": 1,
        "time": format_time(NOW),
        "message": "worker Pod of attempt 1 disappeared",
    }
    stored = {**status, **missed.status}
    soon = decide(job(stored), [], NOW + timedelta(seconds=5), SETTINGS, START)
    assert soon.create_attempt is None and "lastFailure" not in soon.status  # still counting from the record
    due = decide(job(stored), [], NOW + timedelta(seconds=11), SETTINGS, START)
    assert due.create_attempt == 2 and "disappeared" in due.status["message"]


def test_an_earlier_attempts_failure_does_not_shorten_the_next_back_off():
    status = {
        "phase": "Running",
        "attempts": 2,
        "startTime": ago(500),
        "observedGeneration": 1,
        "lastFailure": {"attempt": 1, "time": ago(400)},
    }
    d = decide(job(status), [pod(attempt=1, phase="Failed", exit_code=1)], NOW, SETTINGS, START)
    assert d.create_attempt is None and d.status["lastFailure"]["attempt"] == 2
    assert d.recheck_after == pytest.approx(20)


def test_sigterm_without_cancel_is_retried_not_succeeded():
    status = {
        "phase": "Running",
        "attempts": 1,
        "startTime": ago(100),
        "workerResult": {"reason": "Cancelled", "message": "SIGTERM", "succeeded": True},
    }
    d = decide(job(status), [pod(phase="Succeeded", exit_code=0, finished_at=ago(60))], NOW, SETTINGS, START)
    assert d.create_attempt == 2


def test_cancel_deletes_the_pod_and_ends_cancelled():
    status = {"phase": "Running", "attempts": 1, "startTime": ago(100)}
    d = decide(job(status, cancel=True), [pod()], NOW, SETTINGS, START)
    assert d.status["phase"] == "Cancelled" and d.delete_pods == ("j-worker-1",)
    assert d.status["completionTime"] == format_time(NOW)


def test_cancelled_is_terminal_even_if_cancel_is_unset():
    status = {"phase": "Cancelled", "attempts": 1, "completionTime": ago(5), "observedGeneration": 1}
    d = decide(job(status, cancel=False), [], NOW, SETTINGS, START)
    assert d.status == {} and d.create_attempt is None


def test_deadline_fails_the_job_even_if_the_pod_hangs():
    status = {"phase": "Running", "attempts": 1, "startTime": ago(120)}
    d = decide(job(status, activeDeadlineSeconds=100), [pod()], NOW, SETTINGS, START)
    assert d.status["phase"] == "Failed" and ready_condition(d)["reason"] == "DeadlineExceeded"
    assert d.delete_pods == ("j-worker-1",)


def test_running_job_rechecks_at_its_deadline():
    status = {"phase": "Running", "attempts": 1, "startTime": ago(40)}
    d = decide(job(status, activeDeadlineSeconds=100), [pod()], NOW, SETTINGS, START)
    assert d.recheck_after == pytest.approx(60)


def test_new_pod_gets_the_remaining_deadline():
    status = {"phase": "Running", "attempts": 1, "startTime": ago(40)}
    d = decide(
        job(status, activeDeadlineSeconds=100),
        [pod(phase="Failed", exit_code=1, finished_at=ago(30))],
        NOW,
        SETTINGS,
        START,
    )
    assert d.create_attempt == 2 and d.pod_active_deadline == 60


def test_invalid_spec_fails_without_a_pod():
    bad = Job(
        name="j",
        generation=1,
        deleting=False,
        spec=None,
        spec_problems=("spec.task.model: Field required",),
        status=read_status({}),
    )
    d = decide(bad, [], NOW, SETTINGS, START)
    assert d.status["phase"] == "Failed" and ready_condition(d)["reason"] == "InvalidSpec"
    assert "spec.task.model" in d.status["message"] and d.create_attempt is None


def test_ttl_deletes_the_finished_job_when_due():
    finished = {"phase": "Succeeded", "completionTime": ago(50)}
    waiting = decide(job(finished, ttlSecondsAfterFinished=60), [], NOW, SETTINGS, START)
    assert not waiting.delete_job and waiting.recheck_after == pytest.approx(10)
    due = decide(job(finished, ttlSecondsAfterFinished=30), [], NOW, SETTINGS, START)
    assert due.delete_job


def test_finished_job_cleans_up_a_stray_pod():
    d = decide(
        job({"phase": "Failed", "completionTime": ago(1), "observedGeneration": 1}), [pod()], NOW, SETTINGS, START
    )
    assert d.delete_pods == ("j-worker-1",) and d.status == {}


def test_deleting_job_deletes_live_pods_only():
    d = decide(
        job({"phase": "Running"}, deleting=True), [pod(attempt=1, phase="Failed"), pod(attempt=2)], NOW, SETTINGS, START
    )
    assert d.delete_pods == ("j-worker-2",)


def test_pods_are_the_truth_after_an_operator_crash_between_create_and_record():
    # The operator created the Pod of attempt 1 and died before writing status: nothing is duplicated.
    d = decide(job({"phase": None}), [pod(phase="Running")], NOW, SETTINGS, START)
    assert d.create_attempt is None
    assert d.status["phase"] == "Running" and d.status["attempts"] == 1 and d.status["startTime"] == format_time(NOW)


def test_first_pod_records_the_spec_fingerprint():
    d = decide(job(), [], NOW, SETTINGS, START)
    assert d.status["specHash"] == parse_spec(SPEC).run_hash()
    assert {c["type"]: c["status"] for c in d.status["conditions"]}["SpecApplied"] == "True"


def test_spec_change_after_start_is_not_applied_and_said_once():
    original = job().run_hash
    status = {"phase": "Running", "attempts": 1, "startTime": ago(10), "specHash": original}
    changed = job(status, generation=2, task={"model": "openai/other"})
    d = decide(changed, [pod()], NOW, SETTINGS, START)
    applied = next(c for c in d.status["conditions"] if c["type"] == "SpecApplied")
    assert applied["status"] == "False" and applied["reason"] == "SpecChangedAfterStart"
    assert applied["observedGeneration"] == 2 and d.status["observedGeneration"] == 2
    assert "SpecChangedAfterStart" in [e.reason for e in d.events]
    again = decide(
        job({**status, **d.status}, generation=2, task={"model": "openai/other"}), [pod()], NOW, SETTINGS, START
    )
    assert again.events == ()


def test_cancel_and_ttl_changes_do_not_count_as_spec_changes():
    assert job(cancel=True, ttlSecondsAfterFinished=5).run_hash == job().run_hash


def test_a_finished_job_acknowledges_a_new_generation():
    conditions = [{"type": "Ready", "status": "True", "observedGeneration": 1, "reason": "Succeeded"}]
    status = {"phase": "Succeeded", "completionTime": ago(5), "observedGeneration": 1, "conditions": conditions}
    d = decide(job(status, generation=2, cancel=True), [], NOW, SETTINGS, START)
    assert d.status["observedGeneration"] == 2 and d.status["conditions"][0]["observedGeneration"] == 2
    assert d.status["conditions"][0]["status"] == "True" and d.create_attempt is None


def test_a_queued_job_keeps_its_stored_position_unless_refreshed():
    status = {"phase": "Queued", "queuePosition": 7, "observedGeneration": 1}
    kept = decide(job(status), [], NOW, SETTINGS, Slot(may_start=False))
    assert "queuePosition" not in kept.status
    refreshed = decide(job(status), [], NOW, SETTINGS, Slot(may_start=False, position=3))
    assert refreshed.status["queuePosition"] == 3


def test_finishing_schedules_the_ttl():
    status = {
        "phase": "Running",
        "attempts": 1,
        "startTime": ago(60),
        "workerResult": {"reason": "Completed", "message": "done", "succeeded": True},
    }
    d = decide(job(status, ttlSecondsAfterFinished=30), [pod(phase="Succeeded", exit_code=0)], NOW, SETTINGS, START)
    assert d.status["phase"] == "Succeeded" and d.recheck_after == 30


def test_a_pod_deleted_by_someone_else_is_waited_for_then_replaced():
    status = {"phase": "Running", "attempts": 1, "startTime": ago(60), "observedGeneration": 1}
    terminating = decide(job(status), [pod(deleting=True)], NOW, SETTINGS, START)
    assert ready_condition(terminating)["reason"] == "PodTerminating" and terminating.create_attempt is None
    gone = decide(job({**status, "lastFailure": {"attempt": 1, "time": ago(30)}}), [], NOW, SETTINGS, START)
    assert gone.create_attempt == 2


def test_a_job_whose_status_would_not_fit_fails_before_any_pod():
    roomy = job()
    assert decide(roomy, [], NOW, SETTINGS, START).create_attempt == 1
    crowded = Job(**{**vars(roomy), "size_bytes": SETTINGS.max_object_bytes - 1000})
    d = decide(crowded, [], NOW, SETTINGS, START)
    assert d.create_attempt is None and d.status["phase"] == "Failed"
    assert ready_condition(d)["reason"] == "JobTooLarge" and "spec.dataset.records" in d.status["message"]


def test_a_job_from_registry_prompts_is_labelled_with_them_for_search():
    registry = job(
        prompts=[
            {"name": "p", "registryUri": "prompts:/sentiment@production"},
            {"name": "q", "registryUri": "prompts:/support.triage/3"},
        ],
        mlflow={"trackingUri": "http://mlflow:5000"},
    )
    decision = decide(registry, [], NOW, SETTINGS, START)
    assert decision.labels == {
        "prompt.promptopt.dev/sentiment": "production",
        "prompt.promptopt.dev/support.triage": "3",
    }
    assert decision.create_attempt == 1  # the rest of the decision is as it would be
    labelled = dataclasses.replace(registry, labels=decision.labels)
    assert decide(labelled, [], NOW, SETTINGS, START).labels is None
    assert decide(job(), [], NOW, SETTINGS, START).labels is None


def large_body(records=2000, status=None, generation=1, **spec_changes):
    """A job as the watch delivers it, with about a MiB of inline records and a long template."""
    spec = {
        **SPEC,
        "prompts": [{"name": "p", "template": "Answer this question well. " * 400 + "{{q}}"}],
        "dataset": {
            "validationFraction": 0.25,
            "records": [
                {"inputs": {"q": f"question {i} " + "x" * 480}, "expectations": {"expected_response": str(i)}}
                for i in range(records)
            ],
        },
        "worker": {"image": "example/worker:1", "env": [{"name": "A", "value": "b"}]},
        "credentials": {"secretRef": {"name": "llm"}},
        **spec_changes,
    }
    return {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": "u1",
            "generation": generation,
            "resourceVersion": "7",
            "creationTimestamp": ago(100),
            "labels": {"team": "a"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": spec,
        "status": status or {},
    }


def as_read_whole(body):
    """The job as decisions saw it before bodies were slimmed: the whole spec parsed."""
    spec = parse_spec(body["spec"])
    return Job(
        name="j",
        generation=body["metadata"]["generation"],
        deleting=False,
        spec=spec,
        spec_problems=(),
        status=read_status(body["status"]),
        run_hash=spec.run_hash(),
        size_bytes=len(json.dumps(body, separators=(",", ":"))),
        template_bytes=sum(len(p.template.encode()) for p in spec.prompts),
        labels={"team": "a"},
    )


def test_a_kept_job_drops_its_records_templates_and_managed_fields_and_keeps_the_rest():
    body = large_body()
    # kubectl apply keeps the whole spec in an annotation
    body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(body)}
    assert len(json.dumps(body)) > 2 * 2**20
    kept = slim_job(body)
    assert "spec" not in kept.body
    assert kept.body["metadata"] == {
        k: v for k, v in body["metadata"].items() if k not in ("managedFields", "annotations")
    }
    assert kept.body["status"] is body["status"] and kept.body["kind"] == body["kind"]
    assert kept.spec.spec.dataset.records is None and kept.spec.spec.dataset.validation_fraction == 0.25
    assert [p.template for p in kept.spec.spec.prompts] == [None]
    # What decisions need of what was dropped, measured on the whole job.
    assert kept.spec.run_hash == parse_spec(body["spec"]).run_hash()
    assert kept.size_bytes == len(json.dumps(body, separators=(",", ":")))
    assert kept.spec.template_bytes == len(body["spec"]["prompts"][0]["template"])
    assert len(json.dumps(kept.body)) + len(kept.spec.spec.model_dump_json()) < 4096


@pytest.mark.parametrize(
    "status, pods, spec_changes",
    [
        (None, [], {}),  # new: the first Pod, with the spec's fingerprint
        ({"phase": "Queued", "queuePosition": 3}, [], {}),
        ({"phase": "Pending", "attempts": 1, "startTime": ago(5), "specHash": "0" * 16}, [pod()], {}),  # spec changed
        ({"phase": "Running", "attempts": 1, "startTime": ago(5)}, [pod()], {"cancel": True}),
        ({"phase": "Running", "attempts": 1, "startTime": ago(50)}, [pod(phase="Failed", exit_code=1)], {}),
        ({"phase": "Running", "attempts": 1, "startTime": ago(50)}, [pod()], {"activeDeadlineSeconds": 10}),
    ],
)
def test_decisions_on_a_kept_job_are_those_on_the_whole_one(status, pods, spec_changes):
    body = large_body(status=status, **spec_changes)
    if status and "specHash" not in status:
        status["specHash"] = parse_spec(body["spec"]).run_hash()
    whole, kept = as_read_whole(body), Job.from_slim(slim_job(body))
    assert decide(kept, pods, NOW, SETTINGS, START) == decide(whole, pods, NOW, SETTINGS, START)
    assert worker_pod_manifest("j", "u1", kept.spec, 2, SETTINGS, 60, kept.run_hash) == worker_pod_manifest(
        "j", "u1", whole.spec, 2, SETTINGS, 60, whole.run_hash
    )


def test_a_kept_job_too_large_for_its_status_fails_as_the_whole_one_does():
    body = large_body(records=2900)
    whole, kept = as_read_whole(body), Job.from_slim(slim_job(body))
    decision = decide(kept, [], NOW, SETTINGS, START)
    assert ready_condition(decision)["reason"] == "JobTooLarge"
    assert decision == decide(whole, [], NOW, SETTINGS, START)


def test_a_spec_is_parsed_once_per_generation_and_an_invalid_one_keeps_its_problems():
    first = slim_job(large_body(records=3))
    written = slim_job(large_body(records=3, status={"phase": "Pending"}), previous=first)
    assert written.spec is first.spec and written.body["status"] == {"phase": "Pending"}
    changed = slim_job(large_body(records=3, generation=2, cancel=True), previous=written)
    assert changed.spec is not first.spec and changed.spec.spec.cancel
    invalid = large_body(records=3, task={})
    kept = Job.from_slim(slim_job(invalid))
    assert kept.spec is None and kept.run_hash is None and kept.spec_problems
    assert decide(kept, [], NOW, SETTINGS, START).status["phase"] == "Failed"


def test_a_job_after_our_status_write_is_the_job_the_api_server_would_return():
    """A status write answers with the job's metadata only (PartialObjectMetadata): the kept status with the write's
    patch applied is the whole response, slimmed, as the write was made at the kept job's resourceVersion."""
    before = large_body(status={"phase": "Pending", "attempts": 1, "message": "starting", "progress": {"percent": 0}})
    patch = {"phase": "Running", "message": None, "progress": {"percent": 5}, "startTime": ago(1)}
    after = copy.deepcopy(before)
    after["status"] = apply_merge_patch(after["status"], patch)
    after["metadata"]["resourceVersion"] = "8"
    after["metadata"]["managedFields"].append({"manager": "promptopt", "subresource": "status"})
    kept = slim_job(before)
    written = written_job(kept, after["metadata"], patch)
    assert written == slim_job(after, kept) and written.spec is kept.spec
    assert kept.body["status"]["phase"] == "Pending"  # what was kept is not changed under its readers
    labelled = copy.deepcopy(after)
    labelled["metadata"]["labels"]["prompt.promptopt.dev/p"] = "3"
    labelled["metadata"]["resourceVersion"] = "9"
    assert written_job(written, labelled["metadata"], None) == slim_job(labelled, written)
