"""What Argo CD and Flux make of a PromptOptimizationJob, in every phase: the Argo CD health check and cancel
action (Lua, run with lupa's Lua 5.1 as Argo CD's gopher-lua) and Flux's healthCheckExprs (CEL, with cel-python),
over status samples the operator's own lifecycle functions produce (promptopt_operator.lifecycle.decide)."""

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import celpy
import pytest
import yaml
from lupa.lua51 import LuaRuntime, lua_type

from promptopt.api.v1alpha1 import API_VERSION, KIND, TERMINAL_PHASES, Phase
from promptopt.api.merge_patch import apply_merge_patch
from promptopt_operator.lifecycle import Job, decide
from promptopt_operator.queue import Slot
from promptopt_operator.pods import WorkerPod, pod_name
from promptopt_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "deploy" / "gitops" / "argocd"
FLUX_KUSTOMIZATION = REPO / "deploy" / "gitops" / "flux" / "kustomization.yaml"
PHASES = set(Phase.__args__)

# --- status samples, made by the operator's lifecycle --------------------------------------------------------

NAME = "sentiment"
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = {
    "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/gpt-4.1"},
    "prompts": [{"name": "classify", "template": "Classify the sentiment: {{review}}"}],
    "task": {"model": "openai/gpt-4.1-mini"},
    "activeDeadlineSeconds": 3600,
    "backoffLimit": 1,
}


def new_job(spec=SPEC) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": NAME, "namespace": "ml", "generation": 1},
        "spec": copy.deepcopy(spec),
    }


def with_spec(job: dict, **changes) -> dict:
    """The job after an edit of its spec: the API server bumps the generation."""
    edited = copy.deepcopy(job)
    edited["spec"].update(changes)
    edited["metadata"]["generation"] += 1
    return edited


def reconciled(job: dict, pods=(), *, minutes=0.0, slot=Slot(may_start=True)) -> dict:
    """The job once the operator has decided on it (lifecycle.decide) and merge-patched its status."""
    decision = decide(Job.from_body(job), pods, START + timedelta(minutes=minutes), OperatorSettings(), slot)
    return {**job, "status": apply_merge_patch(job.get("status") or {}, decision.status)}


def pod(phase: str, attempt: int = 1, **details) -> WorkerPod:
    return WorkerPod(name=pod_name(NAME, attempt), attempt=attempt, phase=phase, deleting=False, **details)


def lifecycle_samples() -> dict[str, dict]:
    created = new_job()
    started = reconciled(created)
    running = reconciled(started, [pod("Running")], minutes=1)
    failed_once = reconciled(
        running, [pod("Failed", exit_code=1, reason="Error", finished_at="2026-01-01T12:02:00Z")], minutes=2
    )
    result = {"workerResult": {"reason": "Completed", "message": "the best prompt scores 0.92 (seed 0.50)"}}
    succeeded = reconciled(running, [pod("Succeeded", exit_code=0, termination_message=json.dumps(result))], minutes=5)
    return {
        "new": created,
        "queued": reconciled(created, slot=Slot(may_start=False, position=3)),
        "pending": started,
        "image pull back-off": reconciled(
            started, [pod("Pending", reason="ImagePullBackOff", message="Back-off pulling image")], minutes=1
        ),
        "running": running,
        "retrying after a failure": failed_once,
        "running a spec changed after the start": reconciled(
            with_spec(running, prompts=[{"name": "classify", "template": "Label it: {{review}}"}]),
            [pod("Running")],
            minutes=2,
        ),
        "succeeded": succeeded,
        "failed: invalid input": reconciled(running, [pod("Failed", exit_code=2, reason="Error")], minutes=2),
        "failed: backoff limit exceeded": reconciled(
            failed_once,
            [
                pod("Failed", exit_code=1, reason="Error", finished_at="2026-01-01T12:02:00Z"),
                pod("Failed", attempt=2, exit_code=1, reason="OOMKilled"),
            ],
            minutes=10,
        ),
        "failed: deadline exceeded": reconciled(running, [pod("Running")], minutes=61),
        "failed: invalid spec": reconciled(new_job({**SPEC, "optimizer": {"type": "Annealing"}})),
        "cancelled": reconciled(with_spec(running, cancel=True), [pod("Running")], minutes=3),
    }


SAMPLES = lifecycle_samples()

# The documented answers (docs/gitops.md): sample -> (Argo CD health, Flux health with our healthCheckExprs).
EXPECTED = {
    # No status yet: has(status.phase) is false here; Flux's cel-go may instead fail to evaluate it (Unknown)
    # until the operator writes the first status. Flux waits either way.
    "new": ("Progressing", "InProgress"),
    "queued": ("Progressing", "InProgress"),
    "pending": ("Progressing", "InProgress"),
    "image pull back-off": ("Progressing", "InProgress"),
    "running": ("Progressing", "InProgress"),
    "retrying after a failure": ("Progressing", "InProgress"),
    "running a spec changed after the start": ("Progressing", "InProgress"),
    "succeeded": ("Healthy", "Current"),
    "failed: invalid input": ("Degraded", "Failed"),
    "failed: backoff limit exceeded": ("Degraded", "Failed"),
    "failed: deadline exceeded": ("Degraded", "Failed"),
    "failed: invalid spec": ("Degraded", "Failed"),
    "cancelled": ("Suspended", "Current"),
}


def test_samples_are_what_their_names_say():
    phases = {name: (job.get("status") or {}).get("phase") for name, job in SAMPLES.items()}
    assert phases == {
        "new": None,
        "queued": "Queued",
        "pending": "Pending",
        "image pull back-off": "Pending",
        "running": "Running",
        "retrying after a failure": "Pending",
        "running a spec changed after the start": "Running",
        "succeeded": "Succeeded",
        "failed: invalid input": "Failed",
        "failed: backoff limit exceeded": "Failed",
        "failed: deadline exceeded": "Failed",
        "failed: invalid spec": "Failed",
        "cancelled": "Cancelled",
    }
    assert set(phases.values()) - {None} == PHASES  # every phase is covered
    assert set(EXPECTED) == set(SAMPLES)


# --- Argo CD: Lua ---------------------------------------------------------------------------------------------


def run_lua(script: Path, obj: dict):
    """Run an Argo CD script with `obj` set, as Argo CD does; no io/os/require, which Argo CD's sandbox lacks."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    for unavailable in ("io", "os", "require", "dofile", "loadfile", "load", "loadstring"):
        lua.globals()[unavailable] = None
    lua.globals().obj = lua.table_from(obj, recursive=True)
    return from_lua(lua.execute(script.read_text()))


def from_lua(value):
    if lua_type(value) != "table":
        return value
    items = {key: from_lua(item) for key, item in value.items()}
    if items and set(items) == set(range(1, len(items) + 1)):
        return [items[index] for index in range(1, len(items) + 1)]
    return items


@pytest.mark.parametrize("sample", SAMPLES)
def test_argocd_health(sample):
    job = SAMPLES[sample]
    health = run_lua(ARGOCD / "health.lua", job)
    assert health["status"] == EXPECTED[sample][0]
    status = job.get("status") or {}
    assert health["message"].startswith(status.get("message", "waiting for the operator"))


def test_argocd_health_says_when_the_spec_is_not_applied():
    health = run_lua(ARGOCD / "health.lua", SAMPLES["running a spec changed after the start"])
    assert "is not applied" in health["message"]


@pytest.mark.parametrize("sample", SAMPLES)
def test_argocd_offers_cancel_until_the_job_finishes(sample):
    job = SAMPLES[sample]
    actions = run_lua(ARGOCD / "actions" / "discovery.lua", job)
    finished = (job.get("status") or {}).get("phase") in TERMINAL_PHASES
    assert actions["cancel"]["disabled"] is (finished or job["spec"].get("cancel") is True)


def test_argocd_cancel_action_cancels_the_job():
    running = SAMPLES["running"]
    cancelled = run_lua(ARGOCD / "actions" / "cancel" / "action.lua", running)
    assert cancelled == {**running, "spec": {**running["spec"], "cancel": True}}
    # The action's object is what the operator then sees: the job ends Cancelled, its Pod deleted.
    after = reconciled(with_spec(running, cancel=True), [pod("Running")], minutes=3)
    assert after["status"]["phase"] == "Cancelled"
    assert run_lua(ARGOCD / "actions" / "discovery.lua", cancelled)["cancel"]["disabled"] is True


def test_argocd_cm_carries_the_same_scripts():
    settings = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    group_kind = f"{API_VERSION.split('/')[0]}_{KIND}"
    assert settings[f"resource.customizations.health.{group_kind}"] == (ARGOCD / "health.lua").read_text()
    actions = yaml.safe_load(settings[f"resource.customizations.actions.{group_kind}"])
    assert actions["discovery.lua"] == (ARGOCD / "actions" / "discovery.lua").read_text()
    assert actions["definitions"] == [
        {"name": "cancel", "action.lua": (ARGOCD / "actions" / "cancel" / "action.lua").read_text()}
    ]


# --- Flux: CEL --------------------------------------------------------------------------------------------------


def health_check_exprs() -> dict[str, str]:
    kustomization = yaml.safe_load(FLUX_KUSTOMIZATION.read_text())
    (exprs,) = [
        e for e in kustomization["spec"]["healthCheckExprs"] if (e["apiVersion"], e["kind"]) == (API_VERSION, KIND)
    ]
    return exprs


def flux_health(obj: dict, exprs: dict[str, str]) -> str:
    """Flux's status for a custom resource with healthCheckExprs (fluxcd/pkg runtime/cel StatusEvaluator): InProgress
    while status.observedGeneration lags metadata.generation, then the first of inProgress, failed, current that
    holds, else InProgress. The object's top-level fields are the CEL variables (there is no `self`, unlike in a
    CRD's rules). A failed evaluation leaves the resource's status Unknown."""
    observed = (obj.get("status") or {}).get("observedGeneration")
    if observed is not None and observed != obj["metadata"].get("generation"):
        return "InProgress"
    environment = celpy.Environment()
    variables = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for key, status in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key not in exprs:
            continue
        try:
            result = environment.program(environment.compile(exprs[key])).evaluate(variables)
        except celpy.CELEvalError:
            return "Unknown"
        if isinstance(result, celpy.CELEvalError):
            return "Unknown"
        if result:
            return status
    return "InProgress"


def test_flux_expressions_are_the_three_kinds():
    assert set(health_check_exprs()) == {"apiVersion", "kind", "inProgress", "failed", "current"}


@pytest.mark.parametrize("sample", SAMPLES)
def test_flux_health(sample):
    assert flux_health(SAMPLES[sample], health_check_exprs()) == EXPECTED[sample][1]


def test_a_finished_job_edited_in_git_stays_finished_for_both():
    """Flux waits while status.observedGeneration lags the generation: a finished job acknowledges every edit."""
    edited = reconciled(with_spec(SAMPLES["succeeded"], ttlSecondsAfterFinished=3600), minutes=6)
    assert run_lua(ARGOCD / "health.lua", edited)["status"] == "Healthy"
    assert flux_health(edited, health_check_exprs()) == "Current"
