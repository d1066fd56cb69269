"""What an ended job delivers, as pure decisions: spec.output, the optimized prompts written where applications read
them, and the PromptsRegistered condition, which says how the worker's registration in MLflow went.

The operator writes the ConfigMap, not the worker: it is the one that knows the job has ended (a Cancelled job's
worker may be gone before it could), it holds the final status whichever way it arrived (the worker's writes or the
termination message), and the workers' ServiceAccount keeps to reading its job and ConfigMaps.

The steps: `output_plan` says what to write (or why nothing), the reconciler creates the ConfigMap, and on a
conflict reads the one there: `foreign_owner` says whether it may be replaced; `output_status` records the outcome
(status.output and the OutputWritten condition). A ConfigMap is this job's when it carries the job's name
(JOB_NAME_ANNOTATION) and the operator's managed-by label: a job deleted and created again under the same name takes
its output over, a person's ConfigMap or another job's is never overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from promptopt.api.v1alpha1 import (
    API_VERSION,
    KIND,
    TERMINAL_PHASES,
    Condition,
    OutputStatus,
    PromptOptimizationJobStatus,
    status_patch,
)

from promptopt_operator.conditions import find_condition, set_condition
from promptopt_operator.lifecycle import Job
from promptopt_operator.pods import COMPONENT_LABELS, JOB_LABEL, JOB_NAME_ANNOTATION, label_value

OUTPUT_WRITTEN = "OutputWritten"
# The worker registers the optimized prompts in MLflow (spec.mlflow.registerOptimizedPrompts) and reports how it went
# in status.mlflow; the operator says it in this condition.
PROMPTS_REGISTERED = "PromptsRegistered"
MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_UID_ANNOTATION = "promptopt.dev/job-uid"
OUTCOME_ANNOTATION = "promptopt.dev/outcome"
INITIAL_SCORE_ANNOTATION = "promptopt.dev/initial-score"
FINAL_SCORE_ANNOTATION = "promptopt.dev/final-score"
BEST_SO_FAR_ANNOTATION = "promptopt.dev/best-so-far"
# Outcomes that stay: written, or nothing that another try could change. OutputWriteFailed (the API refused or
# failed) is tried again.
SETTLED_REASONS = frozenset(
    {"OutputWritten", "BestSoFarWritten", "NothingToWrite", "OutputConflict", "PromptsTruncated"}
)


@dataclass(frozen=True)
class DeliveryOutcome:
    written: bool
    reason: str
    message: str


@dataclass(frozen=True)
class OutputPlan:
    """A ConfigMap to write (`manifest`), or, when there is nothing to write, the outcome to record."""

    name: str
    manifest: dict[str, Any] | None
    outcome: DeliveryOutcome


def output_plan(job: Job, uid: str, worker_running: bool = False) -> OutputPlan | None:
    """What spec.output asks of an ended job; None when it asks nothing, the outcome is settled already, or a
    cancelled job's worker still runs: it reports its best prompts as it stops."""
    target = job.spec.output.config_map if job.spec and job.spec.output else None
    status = job.status
    if target is None or status.phase not in ("Succeeded", "Cancelled", "Failed"):
        return None
    if status.phase == "Cancelled" and worker_running and status.worker_result is None:
        return None
    written = find_condition(status.conditions, OUTPUT_WRITTEN)
    if written is not None and written.reason in SETTLED_REASONS:
        return None
    where = f"ConfigMap {target.name}"
    prompts = status.optimized_prompts or []
    if status.phase == "Failed" or not prompts:
        why = "the job failed" if status.phase == "Failed" else "the job ended without optimized prompts"
        return OutputPlan(
            target.name, None, DeliveryOutcome(False, "NothingToWrite", f"{why}: nothing is written to {where}")
        )
    if cut := [p.name for p in prompts if p.truncated]:
        return OutputPlan(
            target.name,
            None,
            DeliveryOutcome(
                False,
                "PromptsTruncated",
                f"not written to {where}: only the start of {', '.join(cut)} is known (recovered from the worker Pod's "
                "termination message); status.optimizedPrompts holds what there is",
            ),
        )
    best_so_far = status.phase == "Cancelled"
    annotations = {JOB_NAME_ANNOTATION: job.name, JOB_UID_ANNOTATION: uid, OUTCOME_ANNOTATION: status.phase}
    for annotation, scores in (
        (INITIAL_SCORE_ANNOTATION, status.initial_scores),
        (FINAL_SCORE_ANNOTATION, status.final_scores),
    ):
        if scores is not None and scores.aggregate is not None:
            annotations[annotation] = f"{scores.aggregate:.6g}"
    if best_so_far:
        annotations[BEST_SO_FAR_ANNOTATION] = "true"
    metadata: dict[str, Any] = {
        "name": target.name,
        "labels": {MANAGED_BY: COMPONENT_LABELS[MANAGED_BY], JOB_LABEL: label_value(job.name)},
        "annotations": annotations,
    }
    if target.owned_by_job:
        metadata["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": KIND, "name": job.name, "uid": uid, "blockOwnerDeletion": False}
        ]
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {p.name: p.template for p in prompts},
    }
    if best_so_far:
        outcome = DeliveryOutcome(True, "BestSoFarWritten", f"the best prompts found before the cancel are in {where}")
    else:
        outcome = DeliveryOutcome(True, "OutputWritten", f"the optimized prompts are in {where}")
    return OutputPlan(target.name, manifest, outcome)


def foreign_owner(existing: Mapping[str, Any], job_name: str) -> str | None:
    """Who a ConfigMap in the way belongs to, when not to this job."""
    metadata = existing.get("metadata") or {}
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    if labels.get(MANAGED_BY) == COMPONENT_LABELS[MANAGED_BY] and annotations.get(JOB_NAME_ANNOTATION) == job_name:
        return None
    if labels.get(MANAGED_BY) == COMPONENT_LABELS[MANAGED_BY] and annotations.get(JOB_NAME_ANNOTATION):
        return f"job {annotations[JOB_NAME_ANNOTATION]}"
    return "someone else (it is not labelled as promptopt's)"


def replacement(plan: OutputPlan, existing: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's ConfigMap in place of the job's own `existing` one, as it was read (optimistic concurrency: a
    change since then makes the replace fail, and it is tried again)."""
    assert plan.manifest is not None
    version = (existing.get("metadata") or {}).get("resourceVersion")
    return {**plan.manifest, "metadata": {**plan.manifest["metadata"], "resourceVersion": version}}


def conflict(plan: OutputPlan, owner: str) -> DeliveryOutcome:
    return DeliveryOutcome(
        False,
        "OutputConflict",
        f"ConfigMap {plan.name} exists and belongs to {owner}: it is not "
        "overwritten; delete it, or set spec.output.configMap.name to another name in a new job",
    )


def write_failed(plan: OutputPlan, error: str) -> DeliveryOutcome:
    return DeliveryOutcome(False, "OutputWriteFailed", f"writing ConfigMap {plan.name} failed, trying again: {error}")


def _with_condition(job: Job, kind: str, outcome: DeliveryOutcome, now: str) -> list[Condition]:
    return set_condition(
        job.status.conditions,
        kind,
        "True" if outcome.written else "False",
        outcome.reason,
        outcome.message,
        job.generation,
        now,
    )


def registration_outcome(job: Job) -> DeliveryOutcome | None:
    """What the PromptsRegistered condition of an ended job should say (spec.mlflow.registerOptimizedPrompts), once
    the worker has reported its registration; None when there is nothing (new) to say."""
    asked = job.spec is not None and job.spec.mlflow is not None and job.spec.mlflow.register_optimized_prompts
    reported = job.status.mlflow
    if (
        not asked
        or job.status.phase not in TERMINAL_PHASES
        or reported is None
        or (reported.optimized_prompts is None and reported.registration_error is None)
    ):
        return None
    if reported.registration_error:
        outcome = DeliveryOutcome(
            False,
            "RegistrationFailed",
            f"{reported.registration_error}; the optimized prompts are in status.optimizedPrompts",
        )
    else:
        versions = ", ".join(sorted((reported.optimized_prompts or {}).values()))
        outcome = DeliveryOutcome(True, "PromptsRegistered", f"registered in MLflow as {versions or 'nothing'}")
    current = find_condition(job.status.conditions, PROMPTS_REGISTERED)
    return None if current is not None and current.reason == outcome.reason else outcome


def registration_status(job: Job, outcome: DeliveryOutcome, now: str) -> dict[str, Any]:
    return status_patch(PromptOptimizationJobStatus(conditions=_with_condition(job, PROMPTS_REGISTERED, outcome, now)))


def output_status(job: Job, plan: OutputPlan, outcome: DeliveryOutcome, now: str) -> dict[str, Any]:
    """The status patch recording `outcome`: the OutputWritten condition beside the others, and status.output."""
    fields = PromptOptimizationJobStatus(conditions=_with_condition(job, OUTPUT_WRITTEN, outcome, now))
    if outcome.written:
        fields.output = OutputStatus(config_map=plan.name, written_time=now)
        if outcome.reason == "BestSoFarWritten":
            fields.output.best_so_far = True
    return status_patch(fields)
