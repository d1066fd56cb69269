"""LocalKubelet: the pure decisions directly, then Pods run against the real API server (`cluster`)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from promptopt_harness.kubelet import (
    DEADLINE_EXCEEDED_MESSAGE,
    ContainerConfigError,
    LocalKubelet,
    exit_code_of,
    expand_references,
    image_pull_policy,
    kubelet_conditions,
    merge_conditions,
    plan_launch,
    resolve_container_env,
    terminated_state,
    termination_message,
    translate_paths,
    unschedulable_message,
)

GENEROUS = {"cpu": Decimal(8), "memory": Decimal(32 * 2**30)}
NODE_LABELS = {"kubernetes.io/hostname": "local-kubelet", "kubernetes.io/os": "linux"}


def pod_manifest(name: str, command: list[str], *, namespace: str = "default", spec: dict | None = None, **container):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "example.com/worker:1", "command": command, **container}],
            **(spec or {}),
        },
    }


def with_requests(**requests: str) -> dict:
    return pod_manifest("p", ["true"], resources={"requests": requests})


# --- scheduling ------------------------------------------------------------------------------------


def test_a_pod_without_requests_fits():
    assert unschedulable_message(pod_manifest("p", ["true"]), NODE_LABELS, GENEROUS) is None


def test_requests_beyond_the_free_capacity_give_the_schedulers_message():
    assert unschedulable_message(with_requests(memory="64Gi"), NODE_LABELS, GENEROUS) == (
        "0/1 nodes are available: 1 Insufficient memory."
    )
    assert unschedulable_message(with_requests(memory="64Gi", cpu="9"), NODE_LABELS, GENEROUS) == (
        "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."
    )
    assert unschedulable_message(with_requests(cpu="500m", memory="1Gi"), NODE_LABELS, GENEROUS) is None


def test_a_limit_without_a_request_counts_as_the_request():
    pod = pod_manifest("p", ["true"], resources={"limits": {"memory": "64Gi"}})
    assert unschedulable_message(pod, NODE_LABELS, GENEROUS) == "0/1 nodes are available: 1 Insufficient memory."


def test_a_resource_the_node_does_not_have_is_insufficient():
    message = unschedulable_message(with_requests(**{"nvidia.com/gpu": "1"}), NODE_LABELS, GENEROUS)
    assert message == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


def test_a_node_selector_must_match_the_node_labels():
    matching = pod_manifest("p", ["true"], spec={"nodeSelector": {"kubernetes.io/os": "linux"}})
    other = pod_manifest("p", ["true"], spec={"nodeSelector": {"disktype": "ssd"}})
    assert unschedulable_message(matching, NODE_LABELS, GENEROUS) is None
    assert unschedulable_message(other, NODE_LABELS, GENEROUS) == (
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )


# --- environment -----------------------------------------------------------------------------------

SECRETS = {"llm-creds": {"api-key": "sk-secret", "org": "acme"}}
CONFIG_MAPS = {"settings": {"MODEL": "sim-task", "RETRIES": "3"}}


def resolve(container: dict) -> dict[str, str]:
    pod = pod_manifest("p", ["true"], spec={"nodeName": "local-kubelet"})
    pod["metadata"] |= {"uid": "uid-p", "labels": {"app": "promptopt"}}
    return resolve_container_env(
        pod, container, lambda ns, name: SECRETS.get(name), lambda ns, name: CONFIG_MAPS.get(name)
    )


def test_env_values_reference_earlier_variables():
    env = resolve(
        {
            "env": [
                {"name": "A", "value": "one"},
                {"name": "B", "value": "$(A)-$(UNKNOWN)-$$(A)"},
            ]
        }
    )
    assert env == {"A": "one", "B": "one-$(UNKNOWN)-$(A)"}


def test_env_from_secret_config_map_and_pod_fields():
    env = resolve(
        {
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}, {"secretRef": {"name": "llm-creds"}}],
            "env": [
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "llm-creds", "key": "api-key"}}},
                {"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODEL"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "org", "value": "overridden"},
            ],
        }
    )
    assert env == {
        "CFG_MODEL": "sim-task",
        "CFG_RETRIES": "3",
        "api-key": "sk-secret",
        "org": "overridden",
        "KEY": "sk-secret",
        "MODEL": "sim-task",
        "POD": "p",
        "NS": "default",
        "UID": "uid-p",
        "NODE": "local-kubelet",
        "APP": "promptopt",
    }


def test_optional_sources_and_keys_that_are_missing_leave_variables_unset():
    env = resolve(
        {
            "envFrom": [{"secretRef": {"name": "absent", "optional": True}}],
            "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": True}}},
            ],
        }
    )
    assert env == {}


@pytest.mark.parametrize(
    ("container", "message"),
    [
        (
            {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]},
            'secret "absent" not found',
        ),
        (
            {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "llm-creds", "key": "nope"}}}]},
            "couldn't find key nope in Secret default/llm-creds",
        ),
        (
            {"env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}}]},
            "couldn't find key nope in ConfigMap default/settings",
        ),
        ({"envFrom": [{"configMapRef": {"name": "absent"}}]}, 'configmap "absent" not found'),
        ({"envFrom": [{"secretRef": {"name": "absent"}}]}, 'secret "absent" not found'),
    ],
)
def test_missing_sources_give_the_kubelets_messages(container, message):
    with pytest.raises(ContainerConfigError) as error:
        resolve(container)
    assert str(error.value) == message


def test_reference_expansion_follows_the_kubelet():
    env = {"A": "x"}
    assert expand_references("$(A)/$(A)", env) == "x/x"
    assert expand_references("$$(A) $$ $(B) $(A", env) == "$(A) $ $(B) $(A"
    assert expand_references("cost: 5$", env) == "cost: 5$"


# --- launch plan -----------------------------------------------------------------------------------


def test_paths_are_translated_where_they_start_a_token():
    translations = {"/data": Path("/sandbox/data"), "/dev/termination-log": Path("/sandbox/msg")}
    assert translate_paths("/data", translations) == "/sandbox/data"
    assert translate_paths("/data/out.json", translations) == "/sandbox/data/out.json"
    assert translate_paths("--out=/data/x", translations) == "--out=/sandbox/data/x"
    assert translate_paths("echo ok > /dev/termination-log; cp a /data/", translations) == (
        "echo ok > /sandbox/msg; cp a /sandbox/data/"
    )
    for untouched in ("/database", "/srv/data", "http://host/data", "data"):
        assert translate_paths(untouched, translations) == untouched


def test_the_plan_maps_mounts_and_the_termination_file_into_the_sandbox(tmp_path):
    pod = pod_manifest(
        "p",
        ["sh", "-c", "cp $(INPUT) /data/copy > /var/log/msg"],
        args=["--out=/data/result", "/scratch"],
        spec={
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "scratch", "emptyDir": {"medium": "Memory"}},
                {"name": "creds", "secret": {"secretName": "llm-creds"}},
            ]
        },
        volumeMounts=[
            {"name": "data", "mountPath": "/data/"},
            {"name": "scratch", "mountPath": "/scratch", "subPath": "p1"},
            {"name": "creds", "mountPath": "/creds"},
        ],
        terminationMessagePath="/var/log/msg",
    )
    container = pod["spec"]["containers"][0]
    plan = plan_launch(pod, container, {"INPUT": "/data/in.txt", "PATH": "/opt/bin"}, tmp_path, {"PATH": "/base"})

    data, scratch = tmp_path / "volumes" / "data", tmp_path / "volumes" / "scratch" / "p1"
    assert plan.argv == [
        "sh",
        "-c",
        f"cp {data}/in.txt {data}/copy > {tmp_path}/termination-log",
        f"--out={data}/result",
        str(scratch),
    ]
    assert plan.termination_message_file == tmp_path / "termination-log"
    assert plan.env["INPUT"] == f"{data}/in.txt"
    assert plan.env["PATH"] == "/opt/bin"  # the container's env wins over the kubelet's
    assert plan.env["HOSTNAME"] == "p"
    assert plan.env["HOME"] == str(tmp_path / "home")
    assert plan.cwd == tmp_path / "workdir"
    assert {data, scratch, plan.cwd} <= set(plan.directories)
    assert plan.termination_message_file not in plan.directories


def test_the_working_directory_is_translated_or_created_in_the_sandbox(tmp_path):
    volumes = {"volumes": [{"name": "data", "emptyDir": {}}]}
    mounts = [{"name": "data", "mountPath": "/data"}]
    in_mount = pod_manifest("p", ["pwd"], spec=volumes, volumeMounts=mounts, workingDir="/data/run")
    in_image = pod_manifest("p", ["ls", "/app/config"], workingDir="/app")
    assert plan_launch(in_mount, in_mount["spec"]["containers"][0], {}, tmp_path, {}).cwd == (
        tmp_path / "volumes" / "data" / "run"
    )
    plan = plan_launch(in_image, in_image["spec"]["containers"][0], {}, tmp_path, {})
    assert plan.cwd == tmp_path / "rootfs" / "app"
    assert plan.argv == ["ls", f"{tmp_path}/rootfs/app/config"]


# --- termination -----------------------------------------------------------------------------------


def test_exit_codes_follow_the_container_runtime_convention():
    assert [exit_code_of(code) for code in (0, 3, -9, -15)] == [0, 3, 137, 143]


def test_the_termination_message_is_the_files_last_4_kib():
    assert termination_message(b"done\n", None, 0, b"log") == "done\n"
    assert termination_message(b"x" * 5000 + b"end", None, 1, b"") == ("x" * 4093 + "end")


def test_fallback_to_logs_on_error_uses_the_logs_tail_only_for_a_failure_without_message():
    log_output = b"".join(f"line {i}\n".encode() for i in range(100))
    fallback = termination_message(b"", "FallbackToLogsOnError", 2, log_output)
    assert fallback.splitlines() == [f"line {i}" for i in range(20, 100)]
    assert termination_message(b"", "FallbackToLogsOnError", 0, log_output) == ""
    assert termination_message(b"", "File", 2, log_output) == ""
    assert termination_message(b"why", "FallbackToLogsOnError", 2, log_output) == "why"
    long_lines = b"".join(b"y" * 100 + b"\n" for _ in range(50))
    assert len(termination_message(b"", "FallbackToLogsOnError", 1, long_lines)) == 2048


def test_terminated_state_reasons():
    times = {"started_at": "t0", "finished_at": "t1", "container_id": "local://1"}
    assert terminated_state(0, message="", **times) == {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": "t0",
        "finishedAt": "t1",
        "containerID": "local://1",
    }
    assert terminated_state(2, message="bad", **times)["reason"] == "Error"
    assert terminated_state(2, message="bad", **times)["message"] == "bad"


def test_conditions_keep_their_transition_time_while_their_status_holds():
    waiting = merge_conditions([], kubelet_conditions("waiting", "main"), "t0")
    running = merge_conditions(waiting, kubelet_conditions("running", "main"), "t1")
    times = {c["type"]: c["lastTransitionTime"] for c in running}
    assert times == {"PodScheduled": "t0", "Initialized": "t0", "ContainersReady": "t1", "Ready": "t1"}
    assert waiting[3]["message"] == "containers with unready status: [main]"
    done = {c["type"]: c for c in kubelet_conditions("terminated", "main")}
    assert done["Ready"] == {"type": "Ready", "status": "False", "reason": "PodCompleted"}


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("busybox", "Always"),
        ("busybox:latest", "Always"),
        ("localhost:5000/worker", "Always"),
        ("example.com/worker:1.2", "IfNotPresent"),
        ("worker@sha256:abc", "IfNotPresent"),
    ],
)
def test_the_default_image_pull_policy(image, policy):
    assert image_pull_policy({"image": image}) == policy
    assert image_pull_policy({"image": image, "imagePullPolicy": "Never"}) == "Never"


# --- against the real API server ----------------------------------------------------------------------


def create_pod(cluster, name: str, command: list[str], **fields) -> dict:
    return cluster.create(pod_manifest(name, command, namespace=cluster.namespace, **fields))


def wait_for_pod(cluster, name: str, predicate, timeout: float = 5.0) -> dict | None:
    return cluster.wait_for("pods", name, predicate, timeout=timeout)


def phase_is(phase: str):
    return lambda pod: pod is not None and pod["status"].get("phase") == phase


def waiting_reason_is(reason: str):
    def check(pod):
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting", {}).get("reason") == reason

    return check


def container_state(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]


def conditions(pod: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in pod["status"]["conditions"]}


def live_processes(container_id: str) -> list[int]:
    """Processes of the container's process group that are not zombies (init reaps those in its own time)."""
    group_id = int(container_id.removeprefix("local://"))
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, group = stat_file.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # ended meanwhile
            continue
        if int(group) == group_id and state != "Z":
            members.append(int(stat_file.parent.name))
    return members


def wait_until_no_process_left(container_id: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while live_processes(container_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live_processes(container_id) == []


def event_reasons(cluster, name: str) -> set[str]:
    return {e["reason"] for e in cluster.list("events") if e["involvedObject"]["name"] == name}


def test_a_pod_runs_to_success_with_its_termination_message(cluster, kubelet):
    create_pod(cluster, "hello", ["sh", "-c", "echo hi; echo done > /dev/termination-log; exit 0"])
    pod = wait_for_pod(cluster, "hello", phase_is("Succeeded"))

    terminated = container_state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (0, "Completed", "done\n")
    assert pod["spec"]["nodeName"] == "local-kubelet"
    assert conditions(pod) == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "False",
        "Ready": "False",
    }
    assert pod["status"]["startTime"] and pod["status"]["podIP"] == "127.0.0.1"
    assert kubelet.logs(cluster.namespace, "hello") == "hi\n"
    assert {"Scheduled", "Pulled", "Created", "Started"} <= event_reasons(cluster, "hello")


def test_a_running_pod_is_ready_and_reported_running(cluster, kubelet):
    create_pod(cluster, "busy", ["sleep", "30"])
    pod = wait_for_pod(cluster, "busy", phase_is("Running"))
    assert set(conditions(pod).values()) == {"True"}
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["started"] and status["state"]["running"]["startedAt"]
    assert kubelet.running_pods() == [(cluster.namespace, "busy")]


def test_a_failure_falls_back_to_the_logs_tail(cluster, kubelet):
    create_pod(
        cluster,
        "broken",
        ["python", "-c", "import sys; print('parsing config'); sys.exit('bad config')"],
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    pod = wait_for_pod(cluster, "broken", phase_is("Failed"))
    terminated = container_state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (1, "Error")
    assert terminated["message"] == "parsing config\nbad config\n"


def test_the_environment_comes_from_secrets_config_maps_and_pod_fields(cluster, kubelet):
    secret = base64.b64encode(b"sk-test").decode()
    cluster.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-creds"}, "data": {"api-key": secret}}
    )
    cluster.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"MODEL": "sim-task"}}
    )
    names = ["API_KEY", "CFG_MODEL", "POD_NAME", "POD_UID", "NODE", "KUBECONFIG", "PYTHONUNBUFFERED"]
    dump = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
    created = create_pod(
        cluster,
        "env",
        ["python", "-c", dump],
        env=[
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm-creds", "key": "api-key"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
    )
    wait_for_pod(cluster, "env", phase_is("Succeeded"))

    env = json.loads(kubelet.logs(cluster.namespace, "env"))
    kubeconfig = env.pop("KUBECONFIG")
    assert env == {
        "API_KEY": "sk-test",
        "CFG_MODEL": "sim-task",
        "POD_NAME": "env",
        "POD_UID": created["metadata"]["uid"],
        "NODE": "local-kubelet",
        "PYTHONUNBUFFERED": "1",
    }
    # The stand-in for the projected service-account volume: the Pod's own token, not the kubelet's identity.
    (volume,) = [v["name"] for v in created["spec"]["volumes"] if "projected" in v]
    assert kubeconfig.endswith(f"/volumes/{volume}/kubeconfig") and kubeconfig != str(kubelet.kubeconfig)


def test_a_pod_talks_to_the_api_as_its_service_account(cluster, kubelet):
    cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    who = "kubectl auth whoami -o jsonpath='{.status.userInfo.username}'; echo; kubectl get pods 2>&1 | tail -1"
    create_pod(cluster, "who", ["sh", "-c", who], spec={"serviceAccountName": "reader"})
    wait_for_pod(cluster, "who", phase_is("Succeeded"), timeout=15)

    username, denied = kubelet.logs(cluster.namespace, "who").splitlines()
    assert username == f"system:serviceaccount:{cluster.namespace}:reader"
    assert "forbidden" in denied  # RBAC grants the ServiceAccount nothing


def test_a_missing_secret_holds_the_container_until_it_exists(cluster, kubelet):
    create_pod(
        cluster,
        "needs-creds",
        ["sh", "-c", 'test "$API_KEY" = sk-late'],
        env=[
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm-creds", "key": "api-key"}}},
        ],
    )
    pod = wait_for_pod(cluster, "needs-creds", waiting_reason_is("CreateContainerConfigError"))
    assert container_state(pod)["waiting"]["message"] == 'secret "llm-creds" not found'
    assert pod["status"]["phase"] == "Pending"
    assert "Failed" in event_reasons(cluster, "needs-creds")

    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-creds"},
            "data": {"api-key": base64.b64encode(b"sk-late").decode()},
        }
    )
    wait_for_pod(cluster, "needs-creds", phase_is("Succeeded"))


def test_pods_that_do_not_fit_stay_pending_until_capacity_frees_up(cluster):
    with LocalKubelet(
        cluster.kubelet_kubeconfig, scheduler_kubeconfig=cluster.scheduler_kubeconfig, capacity={"memory": "1Gi"}
    ) as kubelet:
        create_pod(
            cluster,
            "big",
            ["sh", "-c", "trap 'exit 0' TERM; sleep 30 & wait"],
            resources={"requests": {"memory": "768Mi"}},
        )
        wait_for_pod(cluster, "big", phase_is("Running"))
        create_pod(cluster, "second", ["true"], resources={"requests": {"memory": "512Mi"}})
        pod = wait_for_pod(cluster, "second", lambda p: p["status"].get("conditions"))
        assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
        assert pod["status"]["conditions"][0] | {"lastTransitionTime": "t"} == {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "lastProbeTime": None,
            "lastTransitionTime": "t",
            "message": "0/1 nodes are available: 1 Insufficient memory.",
        }
        assert "FailedScheduling" in event_reasons(cluster, "second")

        cluster.delete("pods", "big")
        wait_for_pod(cluster, "second", phase_is("Succeeded"))
        assert kubelet.running_pods() == []


def test_a_node_selector_the_node_does_not_match_is_unschedulable(cluster, kubelet):
    create_pod(cluster, "ssd-only", ["true"], spec={"nodeSelector": {"disktype": "ssd"}})
    pod = wait_for_pod(cluster, "ssd-only", lambda p: p["status"].get("conditions"))
    assert pod["status"]["conditions"][0]["message"] == (
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )
    cluster.delete("pods", "ssd-only")  # never scheduled: gone at once
    wait_for_pod(cluster, "ssd-only", lambda p: p is None)


def test_the_active_deadline_fails_the_pod(cluster, kubelet):
    create_pod(cluster, "slow", ["sleep", "30"], spec={"activeDeadlineSeconds": 1, "terminationGracePeriodSeconds": 1})
    pod = wait_for_pod(cluster, "slow", phase_is("Failed"))
    assert (pod["status"]["reason"], pod["status"]["message"]) == ("DeadlineExceeded", DEADLINE_EXCEEDED_MESSAGE)
    # sleep has no SIGTERM handler: as a container's PID 1 it ignores SIGTERM and ends by SIGKILL.
    assert container_state(pod)["terminated"]["exitCode"] == 137
    assert {"DeadlineExceeded", "Killing"} <= event_reasons(cluster, "slow")


def test_sigterm_reaches_a_process_that_handles_it_and_its_exit_code_is_its_own(cluster, kubelet):
    script = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(7)); time.sleep(30)"
    create_pod(cluster, "handles-term", [sys.executable, "-c", script], spec={"activeDeadlineSeconds": 1})
    pod = wait_for_pod(cluster, "handles-term", phase_is("Failed"))
    assert container_state(pod)["terminated"]["exitCode"] == 7


def test_graceful_deletion_lets_the_process_finish_within_the_grace_period(cluster, kubelet):
    script = "trap 'sleep 0.5; echo stopped cleanly; exit 0' TERM; echo started; while true; do sleep 0.1; done"
    create_pod(cluster, "graceful", ["sh", "-c", script])
    pod = wait_for_pod(
        cluster, "graceful", lambda p: phase_is("Running")(p) and kubelet.logs(cluster.namespace, "graceful")
    )
    container_id = pod["status"]["containerStatuses"][0]["containerID"]

    deleting = cluster.delete("pods", "graceful", gracePeriodSeconds=10)
    assert deleting["metadata"]["deletionTimestamp"]  # scheduled and running: the kubelet finishes the deletion
    wait_for_pod(cluster, "graceful", lambda p: p is None)
    assert kubelet.logs(cluster.namespace, "graceful").endswith("stopped cleanly\n")  # sh may report the killed sleep
    wait_until_no_process_left(container_id)
    assert "Killing" in event_reasons(cluster, "graceful")


@pytest.mark.parametrize("grace_seconds", [30, 0])
def test_deleting_a_pod_leaves_no_process_behind(cluster, kubelet, grace_seconds):
    # The shell ends on SIGTERM (it handles it, as a container's PID 1 must); its background sleeps are the kubelet's.
    create_pod(cluster, "sleeper", ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & sleep 300 & wait"])
    pod = wait_for_pod(cluster, "sleeper", phase_is("Running"))
    container_id = pod["status"]["containerStatuses"][0]["containerID"]

    cluster.delete("pods", "sleeper", gracePeriodSeconds=grace_seconds)
    wait_for_pod(cluster, "sleeper", lambda p: p is None)
    wait_until_no_process_left(container_id)
    assert kubelet.running_pods() == []


def test_stopping_the_kubelet_kills_its_processes(cluster):
    with LocalKubelet(cluster.kubelet_kubeconfig, scheduler_kubeconfig=cluster.scheduler_kubeconfig) as kubelet:
        create_pod(cluster, "stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"])
        pod = wait_for_pod(cluster, "stubborn", phase_is("Running"))
    wait_until_no_process_left(pod["status"]["containerStatuses"][0]["containerID"])
    assert kubelet.running_pods() == []


def test_empty_dirs_working_dir_and_termination_path_are_translated(cluster, kubelet):
    script = "pwd > /data/where && cat /data/where > /var/run/result && mkdir $SCRATCH && ls /data"
    create_pod(
        cluster,
        "paths",
        ["sh", "-c", script],
        spec={"volumes": [{"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}]},
        volumeMounts=[{"name": "data", "mountPath": "/data"}, {"name": "scratch", "mountPath": "/scratch"}],
        env=[{"name": "SCRATCH", "value": "/scratch/cache"}],
        workingDir="/data/run",
        terminationMessagePath="/var/run/result",
    )
    pod = wait_for_pod(cluster, "paths", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"))
    terminated = container_state(pod)["terminated"]
    assert terminated["exitCode"] == 0, kubelet.logs(cluster.namespace, "paths")
    assert Path(terminated["message"].strip()).parts[-3:] == ("volumes", "data", "run")
    assert kubelet.logs(cluster.namespace, "paths").split() == ["run", "where"]


def test_a_kubelet_for_one_namespace_leaves_the_others_alone(cluster):
    team = f"{cluster.namespace}-a"
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team}})
    cluster.wait_for("serviceaccounts", "default", lambda account: account is not None, namespace=team, timeout=30)
    with LocalKubelet(cluster.kubelet_kubeconfig, scheduler_kubeconfig=cluster.scheduler_kubeconfig, namespace=team):
        cluster.create(pod_manifest("mine", ["true"], namespace=team))
        create_pod(cluster, "not-mine", ["true"])
        cluster.wait_for("pods", "mine", phase_is("Succeeded"), namespace=team)
        not_mine = cluster.get("pods", "not-mine")
        assert not_mine["status"]["phase"] == "Pending" and "nodeName" not in not_mine["spec"]


def test_a_command_that_cannot_start_is_a_start_error(cluster, kubelet):
    create_pod(cluster, "typo", ["promptopt-no-such-program", "worker"])
    pod = wait_for_pod(cluster, "typo", phase_is("Failed"))
    terminated = container_state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert 'exec: "promptopt-no-such-program": executable file not found in $PATH' in terminated["message"]


def test_the_command_line_runs_until_sigterm(cluster, tmp_path):
    kubelet_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "promptopt_harness.kubelet",
            "--kubeconfig",
            str(cluster.kubelet_kubeconfig),
            "--scheduler-kubeconfig",
            str(cluster.scheduler_kubeconfig),
            "--namespace",
            cluster.namespace,
            "--state-dir",
            str(tmp_path),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        create_pod(cluster, "from-cli", ["sh", "-c", "echo via cli"])
        wait_for_pod(cluster, "from-cli", phase_is("Succeeded"), timeout=10)
    finally:
        kubelet_process.send_signal(signal.SIGTERM)
        _, stderr = kubelet_process.communicate(timeout=10)
    assert kubelet_process.returncode == 0, stderr
    assert [log.read_text() for log in tmp_path.glob(f"{cluster.namespace}/from-cli/*/container.log")] == ["via cli\n"]


def test_a_command_override_runs_instead_of_the_containers_command(cluster):
    overrides = {"bench/instant:1": ["sh", "-c", "echo overridden $GREETING"]}
    with LocalKubelet(
        cluster.kubelet_kubeconfig, scheduler_kubeconfig=cluster.scheduler_kubeconfig, command_overrides=overrides
    ) as local_kubelet:
        create_pod(
            cluster,
            "swapped",
            ["promptopt", "worker"],
            image="bench/instant:1",
            args=["--ignored"],
            env=[{"name": "GREETING", "value": "hello"}],
        )
        create_pod(cluster, "as-written", ["sh", "-c", "echo own command"])
        pod = wait_for_pod(cluster, "swapped", phase_is("Succeeded"))
        wait_for_pod(cluster, "as-written", phase_is("Succeeded"))
        assert local_kubelet.logs(cluster.namespace, "swapped") == "overridden hello\n"
        assert local_kubelet.logs(cluster.namespace, "as-written") == "own command\n"
    assert pod["spec"]["containers"][0]["command"] == ["promptopt", "worker"]  # the Pod itself is unchanged


def test_the_command_line_takes_command_overrides(cluster, tmp_path):
    kubelet_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "promptopt_harness.kubelet",
            "--kubeconfig",
            str(cluster.kubelet_kubeconfig),
            "--scheduler-kubeconfig",
            str(cluster.scheduler_kubeconfig),
            "--state-dir",
            str(tmp_path),
            "--command-override",
            "bench/instant:1=sh -c 'echo from override'",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        create_pod(cluster, "cli-swapped", ["promptopt", "worker"], image="bench/instant:1")
        wait_for_pod(cluster, "cli-swapped", phase_is("Succeeded"), timeout=10)
    finally:
        kubelet_process.send_signal(signal.SIGTERM)
        _, stderr = kubelet_process.communicate(timeout=10)
    assert kubelet_process.returncode == 0, stderr
    log_files = tmp_path.glob(f"{cluster.namespace}/cli-swapped/*/container.log")
    assert [log.read_text() for log in log_files] == ["from override\n"]
