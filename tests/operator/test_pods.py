"""The worker Pod manifest and the reading of Pod status."""

import pytest

from promptopt.api.validation import parse_spec
from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV
from promptopt_operator.pods import (
    ATTEMPT_LABEL,
    JOB_LABEL,
    label_value,
    observe_pod,
    pod_name,
    worker_pod_manifest,
)
from promptopt_operator.settings import OperatorSettings

SPEC = {
    "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/x"},
    "prompts": [{"name": "p", "template": "hi"}],
    "task": {"model": "openai/y"},
    "credentials": {"secretRef": {"name": "llm-keys"}},
}


def manifest(spec=SPEC, attempt=1, deadline=None, settings=OperatorSettings()):
    return worker_pod_manifest("job-a", "uid-1", parse_spec(spec), attempt, settings, deadline, "abc123")


def test_pod_runs_the_worker_for_its_job_and_attempt():
    pod = manifest(attempt=2)
    (container,) = pod["spec"]["containers"]
    assert pod["metadata"]["name"] == "job-a-worker-2"
    assert pod["metadata"]["labels"][JOB_LABEL] == "job-a" and pod["metadata"]["labels"][ATTEMPT_LABEL] == "2"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert container["command"] == ["promptopt", "worker"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PROMPTOPT_JOB_NAME"]["value"] == "job-a"
    assert env["PROMPTOPT_JOB_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert {name: env[name]["value"] for name in LITELLM_BUNDLED_COST_MAP_ENV} == LITELLM_BUNDLED_COST_MAP_ENV
    assert env["PROMPTOPT_SPEC_HASH"]["value"] == "abc123"
    assert container["envFrom"] == [{"secretRef": {"name": "llm-keys"}}]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pod_follows_the_restricted_pod_security_standard():
    pod = manifest()
    (container,) = pod["spec"]["containers"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "scratch", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["spec"]["volumes"][0]["emptyDir"]


def test_defaults_come_from_the_operator_and_the_spec_overrides_them():
    settings = OperatorSettings(worker_image="reg/worker:1", worker_service_account="default-worker")
    plain = manifest(settings=settings)
    assert plain["spec"]["containers"][0]["image"] == "reg/worker:1"
    assert plain["spec"]["serviceAccountName"] == "default-worker"
    assert plain["spec"]["containers"][0]["resources"] == settings.worker_resources
    custom = manifest(
        {
            **SPEC,
            "worker": {
                "image": "mine:2",
                "serviceAccountName": "sa",
                "nodeSelector": {"pool": "cpu"},
                "tolerations": [{"key": "spot", "operator": "Exists"}],
                "resources": {"limits": {"memory": "4Gi"}},
                "env": [
                    {"name": "EXTRA", "value": "1"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ],
            },
        },
        deadline=120,
        settings=settings,
    )
    (container,) = custom["spec"]["containers"]
    assert container["image"] == "mine:2" and custom["spec"]["serviceAccountName"] == "sa"
    assert custom["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert custom["spec"]["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert container["resources"] == {"limits": {"memory": "4Gi"}}
    assert custom["spec"]["activeDeadlineSeconds"] == 120
    env = {e["name"]: e for e in container["env"]}
    assert env["EXTRA"]["value"] == "1" and env["TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "k"}


def test_long_job_names_give_valid_pod_names_and_labels():
    name = "a" * 250
    assert len(pod_name(name, 12)) <= 63 and pod_name(name, 12).endswith("-worker-12")
    assert pod_name(name, 1) != pod_name("a" * 249, 1)
    assert len(label_value(name)) <= 63 and label_value("short") == "short"


def status_of(**status):
    return {"metadata": {"name": "job-a-worker-1", "labels": {ATTEMPT_LABEL: "1"}}, "status": status}


def test_observe_a_running_pod():
    observed = observe_pod(
        status_of(
            phase="Running",
            containerStatuses=[{"name": "worker", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
        )
    )
    assert (observed.phase, observed.attempt, observed.finished, observed.stuck) == ("Running", 1, False, False)


@pytest.mark.parametrize(
    "waiting",
    [
        {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'},
        # The real kubelet's words for an image that is not on the node, with imagePullPolicy Never.
        {"reason": "ErrImageNeverPull", "message": 'Container image "x" is not present with pull policy of Never'},
    ],
)
def test_observe_an_image_that_cannot_be_had(waiting):
    observed = observe_pod(
        status_of(phase="Pending", containerStatuses=[{"name": "worker", "state": {"waiting": waiting}}])
    )
    assert observed.stuck and observed.reason == waiting["reason"] and observed.message == waiting["message"]


def test_observe_unschedulable():
    observed = observe_pod(
        status_of(
            phase="Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available",
                }
            ],
        )
    )
    assert observed.stuck and observed.reason == "Unschedulable"


def test_container_creating_is_not_stuck():
    observed = observe_pod(
        status_of(
            phase="Pending",
            containerStatuses=[{"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}],
        )
    )
    assert not observed.stuck and observed.reason is None


def test_observe_oom_killed_and_termination_message():
    observed = observe_pod(
        status_of(
            phase="Failed",
            containerStatuses=[
                {
                    "name": "worker",
                    "state": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "OOMKilled",
                            "message": "tail of log",
                            "finishedAt": "2026-01-01T00:01:00Z",
                        }
                    },
                }
            ],
        )
    )
    assert (observed.reason, observed.exit_code, observed.termination_message) == ("OOMKilled", 137, "tail of log")
    assert observed.finished_at == "2026-01-01T00:01:00Z"


def test_observe_deadline_exceeded_pod():
    observed = observe_pod(status_of(phase="Failed", reason="DeadlineExceeded", message="Pod was active too long"))
    assert observed.reason == "DeadlineExceeded" and observed.finished


def test_observe_a_terminating_pod():
    pod = status_of(phase="Running")
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert observe_pod(pod).deleting


def test_a_checkpoint_claim_is_mounted_with_a_folder_per_job_object():
    pod = manifest({**SPEC, "worker": {"checkpointClaimName": "gepa-state"}})
    (container,) = pod["spec"]["containers"]
    assert {"name": "checkpoint", "persistentVolumeClaim": {"claimName": "gepa-state"}} in pod["spec"]["volumes"]
    assert {"name": "checkpoint", "mountPath": "/var/lib/promptopt/checkpoints"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROMPTOPT_CHECKPOINT_DIR"] == "/var/lib/promptopt/checkpoints/job-a-uid-1"
    assert "PROMPTOPT_CHECKPOINT_DIR" not in {e["name"] for e in manifest()["spec"]["containers"][0]["env"]}
