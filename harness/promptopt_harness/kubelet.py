"""A local node for tests: a scheduler and a kubelet that run Pods as local processes.

The fast tiers' node: where a test needs a container (an image, memory limits, isolation, the product's images
under Pod Security), it runs on the real node (promptopt_harness.node), and what both report for the same Pods is
compared by tests/pods/test_kubelet_differential.py.

`LocalKubelet` watches Pods through the Kubernetes API server a kubeconfig points at and does for each one what
the default scheduler and the kubelet of a one-node cluster would do, with the status a real cluster reports:

- scheduling: a Pod fits when its `nodeSelector` matches the node's labels and its containers' resource
  requests fit in the node's capacity minus the requests of the Pods already running here. A Pod that
  fits is bound (`spec.nodeName`) and gets PodScheduled=True; one that does not stays Pending with
  PodScheduled=False, reason Unschedulable and the scheduler's message, and is retried when capacity
  frees up;
- the first container's `command` + `args` run as a local process in a session of its own, with the
  container's environment (`env`, `envFrom`, Secrets, ConfigMaps, `fieldRef`, `$(VAR)` references);
  its output goes to a per-pod log (`LocalKubelet.logs`);
- status goes through `pods/NAME/status` (merge patch): waiting reasons (CreateContainerConfigError),
  running, terminated (Completed, Error, StartError) with the termination message, phase, and the Pod
  conditions; Events as a node posts them;
- `activeDeadlineSeconds` (phase Failed, reason DeadlineExceeded) and graceful deletion (SIGTERM to the
  main process if it handles it, as a container's PID 1 only gets signals it handles; SIGKILL to the process
  group after the grace period; then the final DELETE with gracePeriodSeconds=0).

Containers without containers: there is no image, so nothing is isolated; the kubelet translates the
paths a container would see instead of mounting them. Each Pod gets a private directory (the sandbox)
with one directory per `emptyDir` volume, a working directory, a home, a tmp and the termination-message
file. In env values, command/args elements and `workingDir`, every path that is, or is under, the
`mountPath` of an emptyDir volume mount or the container's `terminationMessagePath` (default
/dev/termination-log) is rewritten to its local stand-in wherever it starts a token: `/data/x`,
`--out=/data/x` and `echo done > /dev/termination-log` are all translated. A `workingDir` outside every
mount (a directory of the image) is created inside the sandbox and translated likewise; without one,
the process runs in the sandbox's working directory. HOME, TMPDIR and HOSTNAME are set as in a
container; KUBECONFIG points at a kubeconfig over the Pod's service-account token (the stand-in for the
service-account mount; the kubelet's own kubeconfig for a Pod that mounts no token),
PATH starts with this Python's scripts directory (so `promptopt` resolves), PYTHONUNBUFFERED=1. Nothing
else from the caller's environment leaks in; `extra_env` adds variables to every container.

A waiting container (missing Secret/ConfigMap/key) is retried every second, so creating the Secret later
starts it.

Commands by image (exact match): `command_overrides` maps an image to the argv that containers of that
image run instead of their `command` + `args` (CLI: `--command-override IMAGE=COMMAND`). Everything else
about the Pod (environment, mounts, status, Events, deletion) stays as described above. Benchmarks use it
to give an operator's worker Pods a trivial process (`true`, `sleep 3600`) without changing the operator.

Limitations, on purpose: no images (nothing is pulled, so no pull failure), no memory limits (no OOMKilled);
only `spec.containers[0]` runs (init containers and other containers are
ignored); the container runs once whatever its restartPolicy (OnFailure/Always pods end Succeeded or
Failed like Never ones); there is no image ENTRYPOINT, so a container must set `command` (or `args`
whose first element is the program); only emptyDir volumes exist (secret, configMap and other volumes
are not materialised); no probes (a started container is Ready at once), no `resourceFieldRef`, no
taints, tolerations or affinity, no Node object, no `pods/log` (read `LocalKubelet.logs`).
`LocalKubelet.stop` kills every process it started; Pods stay as last reported, as when a node goes away.

Run it in the foreground (for shell-driven end-to-end tests) until SIGTERM or SIGINT:
    python -m promptopt_harness.kubelet --kubeconfig PATH [--namespace NS]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import urllib3
from kubernetes.utils import parse_quantity

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = {"cpu": "256", "memory": "1Ti", "ephemeral-storage": "1Ti"}
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEADLINE_EXCEEDED_MESSAGE = "Pod was active on the node longer than the specified deadline"
LOCAL_IP = "127.0.0.1"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

# The kubelet's own limits for a container's termination message.
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
# The kubelet always gives a container at least this long between SIGTERM and SIGKILL.
MINIMUM_GRACE_SECONDS = 2
DEFAULT_GRACE_SECONDS = 30

# How often a waiting container (config error, image pull) is retried: about the real kubelet's pace
# for config errors, much faster than its image back-off (10 s doubling) so tests stay short.
RETRY_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 10
# Requests in flight to the API server at once; more threads wait for a connection (block=True).
API_CONNECTIONS = 32
WATCH_SECONDS = 300
STOP_TIMEOUT_SECONDS = 10
SCHEDULER = "default-scheduler"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what images usually set


# ---------------------------------------------------------------------------------------------------
# Pure decisions: scheduling, container environment, launch plan, termination.
# ---------------------------------------------------------------------------------------------------


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """The Pod's resource requests; a limit without a request counts as the request (API defaulting)."""
    totals: dict[str, Decimal] = {}
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        amounts = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for resource, quantity in amounts.items():
            totals[resource] = totals.get(resource, Decimal(0)) + parse_quantity(quantity)
    return totals


def unschedulable_message(
    pod: Mapping[str, Any], node_labels: Mapping[str, str], free: Mapping[str, Decimal]
) -> str | None:
    """The default scheduler's FailedScheduling message for a one-node cluster, or None if the Pod fits."""
    selector = pod["spec"].get("nodeSelector") or {}
    if any(node_labels.get(key) != value for key, value in selector.items()):
        reasons = ["node(s) didn't match Pod's node affinity/selector"]
    else:
        reasons = sorted(
            f"Insufficient {resource}"
            for resource, amount in pod_requests(pod).items()
            if amount > free.get(resource, Decimal(0))
        )
    if not reasons:
        return None
    return "0/1 nodes are available: " + ", ".join(f"1 {reason}" for reason in reasons) + "."


class ContainerConfigError(Exception):
    """The container's configuration cannot be built yet (waiting reason CreateContainerConfigError)."""


class ContainerStartError(Exception):
    """The container's process cannot be started (terminated reason StartError)."""


# (namespace, name) -> the object's data, or None when it does not exist.
DataReader = Callable[[str, str], "Mapping[str, str] | None"]

_REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(NAME)` like the kubelet: unknown names stay as written, `$$` escapes a `$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        return env.get(match.group(2), match.group(0))

    return _REFERENCE.sub(substitute, text)


def resolve_container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    read_secret: DataReader,
    read_config_map: DataReader,
) -> dict[str, str]:
    """The container's environment from `envFrom` then `env`, with the kubelet's error messages."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            reference, read, kind = source["secretRef"], read_secret, "secret"
        else:
            reference, read, kind = source["configMapRef"], read_config_map, "configmap"
        data = read(namespace, reference["name"])
        if data is None:
            if reference.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{reference["name"]}" not found')
        prefix = source.get("prefix", "")
        env.update({prefix + key: value for key, value in data.items()})
    for variable in container.get("env") or []:
        if "valueFrom" in variable:
            value = _env_value_from(pod, variable["valueFrom"], read_secret, read_config_map)
            if value is None:  # an optional source or key is missing: the variable is left unset
                continue
        else:
            value = expand_references(variable.get("value", ""), env)
        env[variable["name"]] = value
    return env


def _env_value_from(
    pod: Mapping[str, Any], value_from: Mapping[str, Any], read_secret: DataReader, read_config_map: DataReader
) -> str | None:
    if "fieldRef" in value_from:
        return _pod_field(pod, value_from["fieldRef"]["fieldPath"])
    namespace = pod["metadata"]["namespace"]
    for field, read, kind, kind_title in (
        ("secretKeyRef", read_secret, "secret", "Secret"),
        ("configMapKeyRef", read_config_map, "configmap", "ConfigMap"),
    ):
        reference = value_from.get(field)
        if reference is None:
            continue
        optional = bool(reference.get("optional"))
        data = read(namespace, reference["name"])
        if data is None:
            if optional:
                return None
            raise ContainerConfigError(f'{kind} "{reference["name"]}" not found')
        if reference["key"] not in data:
            if optional:
                return None
            raise ContainerConfigError(
                f"couldn't find key {reference['key']} in {kind_title} {namespace}/{reference['name']}"
            )
        return data[reference["key"]]
    raise ContainerConfigError(f"unsupported valueFrom source: {', '.join(sorted(value_from))}")


_LABEL_OR_ANNOTATION_FIELD = re.compile(r"metadata\.(labels|annotations)\['(.*)'\]")


def _pod_field(pod: Mapping[str, Any], field_path: str) -> str:
    metadata, spec = pod["metadata"], pod["spec"]
    fields = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata["namespace"],
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": LOCAL_IP,
        "status.podIP": LOCAL_IP,
    }
    if field_path in fields:
        return fields[field_path]
    keyed = _LABEL_OR_ANNOTATION_FIELD.fullmatch(field_path)
    if keyed:
        return (metadata.get(keyed.group(1)) or {}).get(keyed.group(2), "")
    raise ContainerConfigError(f"unsupported fieldPath: {field_path}")


def translate_paths(text: str, translations: Mapping[str, Path]) -> str:
    """`text` with each container path in `translations` replaced by its local stand-in.

    A path counts where it starts a token (text start, whitespace, quote, `=`, `:`, `>` ...) and ends
    at a path boundary: "/data" matches in "/data", "/data/x", "--out=/data", "cat > /data/x", not in
    "/database" or "/srv/data".
    """
    paths = sorted((path for path in translations if path), key=len, reverse=True)  # longest match first
    if not paths:
        return text
    alternatives = "|".join(re.escape(path) for path in paths)
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?![\w.-])")
    return pattern.sub(lambda match: str(translations[match.group(1)]), text)


@dataclass(frozen=True)
class LaunchPlan:
    """How to start a container's process: what the container would run, translated to this machine."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_message_file: Path
    directories: tuple[Path, ...]  # to create before the start: emptyDir volumes, working dir, home, tmp


def plan_launch(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    container_env: Mapping[str, str],
    sandbox: Path,
    base_env: Mapping[str, str],
) -> LaunchPlan:
    """The process for `container`, with the paths it would see mapped into the Pod's `sandbox`."""
    volume_dirs = {
        volume["name"]: sandbox / "volumes" / volume["name"]
        for volume in pod["spec"].get("volumes") or []
        if "emptyDir" in volume
    }
    translations: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] in volume_dirs:
            local = volume_dirs[mount["name"]] / mount.get("subPath", "")
            translations[mount["mountPath"].rstrip("/")] = local
    termination_message_file = sandbox / "termination-log"
    container_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    translations[container_path] = termination_message_file

    working_dir = container.get("workingDir")
    if not working_dir:
        cwd = sandbox / "workdir"
    elif translate_paths(working_dir, translations) != working_dir:
        cwd = Path(translate_paths(working_dir, translations))
    else:  # a directory of the image's filesystem: the runtime creates it, here inside the sandbox
        cwd = sandbox / "rootfs" / working_dir.strip("/")
        translations[working_dir.rstrip("/")] = cwd
    home, tmp = sandbox / "home", sandbox / "tmp"
    env = {
        **base_env,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "HOSTNAME": pod["metadata"]["name"],
        **{name: translate_paths(value, translations) for name, value in container_env.items()},
    }
    argv = [
        translate_paths(expand_references(element, container_env), translations)
        for element in [*(container.get("command") or []), *(container.get("args") or [])]
    ]
    directories = (*volume_dirs.values(), *translations.values(), cwd, home, tmp)
    return LaunchPlan(
        argv=argv,
        env=env,
        cwd=cwd,
        termination_message_file=termination_message_file,
        directories=tuple(path for path in directories if path != termination_message_file),
    )


def service_account_volume(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    """The projected volume the ServiceAccount admission plugin adds for the Pod's token: (name, token lifetime
    in seconds), or None (`automountServiceAccountToken: false`; then the kubelet's own kubeconfig stands in)."""
    for volume in pod["spec"].get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                return volume["name"], int(source["serviceAccountToken"].get("expirationSeconds") or 3600)
    return None


def exit_code_of(returncode: int) -> int:
    """Container runtimes report a death by signal N as exit code 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def termination_message(message_file: bytes, policy: str | None, exit_code: int, log_output: bytes) -> str:
    """The terminated state's message: the file's last 4 KiB, or with FallbackToLogsOnError the log's tail."""
    message = message_file[-MAX_TERMINATION_MESSAGE_BYTES:]
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        tail_lines = log_output.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
        message = b"".join(tail_lines)[-FALLBACK_LOG_BYTES:]
    return message.decode("utf-8", errors="replace")


def terminated_state(
    exit_code: int, *, message: str, started_at: str, finished_at: str, container_id: str
) -> dict[str, Any]:
    """A container status's `state.terminated` for a process that ended with `exit_code`."""
    reason = "Completed" if exit_code == 0 else "Error"
    state = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": started_at,
        "finishedAt": finished_at,
        "containerID": container_id,
    }
    if message:
        state["message"] = message
    return state


def kubelet_conditions(stage: str, container_name: str) -> list[dict[str, Any]]:
    """Pod conditions (without times) once on the node; stage is "waiting", "running" or "terminated"."""
    if stage == "running":
        ready = {"status": "True"}
    elif stage == "terminated":
        ready = {"status": "False", "reason": "PodCompleted"}
    else:
        ready = {
            "status": "False",
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: [{container_name}]",
        }
    initialized = {"status": "True", **({"reason": "PodCompleted"} if stage == "terminated" else {})}
    return [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", **initialized},
        {"type": "ContainersReady", **ready},
        {"type": "Ready", **ready},
    ]


def merge_conditions(previous: list[dict[str, Any]], desired: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """`desired` with times: lastTransitionTime moves only for conditions whose status changed."""
    before = {condition["type"]: condition for condition in previous}
    merged = []
    for condition in desired:
        old = before.get(condition["type"])
        if old is not None and old["status"] == condition["status"]:
            transition_time = old["lastTransitionTime"]
        else:
            transition_time = now
        merged.append({**condition, "lastProbeTime": None, "lastTransitionTime": transition_time})
    return merged


def node_manifest(name: str, labels: Mapping[str, str], capacity: Mapping[str, str]) -> dict[str, Any]:
    """The Node as a kubelet registers it: labels, capacity (all allocatable), Ready, its address."""
    now = _now()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels)},
        "status": {
            "capacity": dict(capacity),
            "allocatable": dict(capacity),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "the local kubelet runs Pods as processes",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [{"type": "InternalIP", "address": LOCAL_IP}, {"type": "Hostname", "address": name}],
        },
    }


def image_pull_policy(container: Mapping[str, Any]) -> str:
    """The API server's default: Always for `:latest` or untagged images, else IfNotPresent."""
    if container.get("imagePullPolicy"):
        return container["imagePullPolicy"]
    image = container.get("image", "")
    if "@" in image:
        return "IfNotPresent"
    last_part = image.rsplit("/", 1)[-1]
    tag = last_part.split(":", 1)[1] if ":" in last_part else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _start_error_message(program: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError) and error.filename in (program, None):
        cause = f'exec: "{program}": executable file not found in $PATH'
    else:
        cause = f"{error.strerror or error}: {error.filename or program}"
    return (
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
        f"runc create failed: unable to start container process: {cause}: unknown"
    )


# ---------------------------------------------------------------------------------------------------
# The Kubernetes API, as raw JSON over HTTP (no model classes: cheap enough for hundreds of Pods).
# ---------------------------------------------------------------------------------------------------


class NotFound(Exception):
    """The API answered 404."""


class ApiError(Exception):
    """The API answered with an error other than 404 (`status`), or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class _WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class _ApiServer:
    def __init__(self, kubeconfig: Path):
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=os.fspath(kubeconfig), client_configuration=configuration)
        self._base_url = configuration.host.rstrip("/")
        self._headers = {"Accept": "application/json"}
        bearer = configuration.auth_settings().get("BearerToken")  # the client's only auth setting (a token)
        if bearer is not None and bearer["value"] is not None:
            self._headers[bearer["key"]] = bearer["value"]
        tls: dict[str, Any] = {}
        if self._base_url.startswith("https:"):
            tls = {
                "cert_reqs": "CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
                "ca_certs": configuration.ssl_ca_cert,
                "cert_file": configuration.cert_file,
                "key_file": configuration.key_file,
            }
        self._pool = urllib3.PoolManager(
            maxsize=API_CONNECTIONS,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=5, read=REQUEST_TIMEOUT_SECONDS),
            **tls,
        )
        self._ca_file = configuration.ssl_ca_cert if self._base_url.startswith("https:") else None
        self._watch_response: urllib3.BaseHTTPResponse | None = None
        self.closing = False

    def _url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        return self._base_url + path + ("?" + urlencode(query) if query else "")

    def _request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", query=None
    ) -> dict[str, Any]:
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        # Retried: a lost status write would leave a Pod Running forever for whoever waits on it.
        for retry_delay in (0.1, 0.3, 1.0, 2.0, None):
            try:
                response = self._pool.request(method, self._url(path, query), body=data, headers=headers)
            except urllib3.exceptions.HTTPError as error:
                failure = ApiError(f"{method} {path}: {error}")
            else:
                if response.status == 404:
                    raise NotFound(f"{method} {path}")
                if response.status < 300:
                    return json.loads(response.data) if response.data else {}
                failure = ApiError(f"{method} {path}: HTTP {response.status}: {response.data[:500]!r}", response.status)
                if response.status != 429 and response.status < 500:
                    raise failure
            if retry_delay is None or self.closing:
                raise failure
            time.sleep(retry_delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _pods_path(namespace: str | None) -> str:
        return f"/api/v1/namespaces/{quote(namespace)}/pods" if namespace else "/api/v1/pods"

    def list_pods(self, namespace: str | None) -> tuple[list[dict[str, Any]], str | None]:
        pod_list = self._request("GET", self._pods_path(namespace))
        return pod_list.get("items") or [], (pod_list.get("metadata") or {}).get("resourceVersion")

    def watch_pods(self, namespace: str | None, resource_version: str | None) -> Iterator[dict[str, Any]]:
        """Watch events from `resource_version` until the server ends the stream."""
        query = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": WATCH_SECONDS}
        if resource_version:
            query["resourceVersion"] = resource_version
        response = self._pool.request(
            "GET",
            self._url(self._pods_path(namespace), query),
            headers=self._headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=5, read=WATCH_SECONDS + 30),
        )
        self._watch_response = response
        try:
            if response.status == 410:
                raise _WatchExpired()
            if response.status >= 300:
                raise ApiError(f"watch pods: HTTP {response.status}: {response.read()[:500]!r}")
            for line in response:
                if line.strip():
                    yield json.loads(line)
        finally:
            self._watch_response = None
            # Closed before going back to the pool: a half-read stream must never be reused.
            response.close()
            response.release_conn()

    def interrupt_watch(self) -> None:
        response = self._watch_response
        if response is not None:
            with contextlib.suppress(ValueError, RuntimeError, OSError):  # already closed or released
                response.shutdown()

    def bind_pod(self, namespace: str, name: str, uid: str, node_name: str) -> None:
        """Bind through the binding subresource, as the scheduler does (a Pod's spec cannot be patched)."""
        self._request(
            "POST",
            f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
            },
        )

    def register_node(self, node: Mapping[str, Any]) -> None:
        """Create the Node, or take over one left by an earlier run; then report its status."""
        name = node["metadata"]["name"]
        try:
            self._request("POST", "/api/v1/nodes", {k: v for k, v in node.items() if k != "status"})
        except ApiError as error:
            if error.status != 409:
                raise
        self._request(
            "PATCH",
            f"/api/v1/nodes/{quote(name)}/status",
            {"status": node["status"]},
            content_type="application/merge-patch+json",
        )

    def service_account_token(self, pod: Mapping[str, Any], audience_seconds: int) -> str:
        """A token of the Pod's ServiceAccount bound to the Pod, from the TokenRequest API, as a kubelet gets it
        for the projected service-account volume."""
        metadata = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        review = self._request(
            "POST",
            f"/api/v1/namespaces/{quote(metadata['namespace'])}/serviceaccounts/{quote(account)}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": audience_seconds,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": metadata["name"],
                        "uid": metadata.get("uid", ""),
                    },
                },
            },
        )
        return review["status"]["token"]

    def kubeconfig_for_token(self, token_file: Path, namespace: str) -> dict[str, Any]:
        """A kubeconfig for this API server that authenticates with the token in `token_file`."""
        cluster: dict[str, Any] = {"server": self._base_url}
        if self._ca_file:
            cluster["certificate-authority"] = self._ca_file
        elif self._base_url.startswith("https:"):
            cluster["insecure-skip-tls-verify"] = True
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "pod",
            "clusters": [{"name": "pod", "cluster": cluster}],
            "users": [{"name": "pod", "user": {"tokenFile": str(token_file)}}],
            "contexts": [{"name": "pod", "context": {"cluster": "pod", "user": "pod", "namespace": namespace}}],
        }

    def patch_pod_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._request(
            "PATCH",
            f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's final delete; the uid precondition spares a new Pod of the same name."""
        options = {"gracePeriodSeconds": 0, **({"preconditions": {"uid": uid}} if uid else {})}
        try:
            self._request("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}", options)
        except ApiError as error:
            if error.status != 409:
                raise

    def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self._read_for_pod("secrets", "secret", namespace, name)
        if secret is None:
            return None
        # surrogateescape: binary values reach the process's environment byte for byte.
        return {
            key: base64.b64decode(value).decode("utf-8", errors="surrogateescape")
            for key, value in (secret.get("data") or {}).items()
        }

    def read_config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        config_map = self._read_for_pod("configmaps", "configmap", namespace, name)
        return None if config_map is None else dict(config_map.get("data") or {})

    def _read_for_pod(self, plural: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap a Pod uses, None if it does not exist."""
        path = f"/api/v1/namespaces/{quote(namespace)}/{plural}/{quote(name)}"
        try:
            found: dict[str, Any] = self._request("GET", path)
        except NotFound:
            return None
        except ApiError as error:
            if error.status != 403:
                raise
            # The Node authorizer lets a kubelet read only what its Pods use, learnt from its own watch of the
            # bindings: a moment after binding it may not know yet. The kubelet retries, as a real one does.
            raise ContainerConfigError(f'{kind} "{name}" is forbidden to node: {error}') from None
        return found

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self._request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", event)

    def close(self) -> None:
        self.closing = True
        self._pool.clear()


# ---------------------------------------------------------------------------------------------------
# Processes and Pods.
# ---------------------------------------------------------------------------------------------------


class _ContainerProcess:
    """A container's main process, in a session of its own so that signals reach all it started."""

    def __init__(self, popen: subprocess.Popen):
        self._popen = popen
        self.pid = popen.pid
        self._lock = threading.Lock()  # no signal may race with the reaping of the process
        self.exit_code: int | None = None

    @classmethod
    def start(cls, plan: LaunchPlan, log_file: Path) -> _ContainerProcess:
        if not plan.argv:
            raise ContainerStartError(
                "no command specified (LocalKubelet has no image ENTRYPOINT: set the container's command)"
            )
        with open(log_file, "ab") as log_output:
            try:
                popen = subprocess.Popen(
                    plan.argv,
                    cwd=plan.cwd,
                    env=plan.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise ContainerStartError(_start_error_message(plan.argv[0], error)) from error
        return cls(popen)

    def signal(self, signum: int) -> None:
        with self._lock:
            if self.exit_code is None:
                _signal_group(self.pid, signum)

    def terminate(self) -> None:
        """SIGTERM as a container's PID 1 gets it: the kernel delivers a signal to a namespace's init only if it
        handles it, so a process without a SIGTERM handler (a shell, a plain `python -m http.server`) runs on
        until SIGKILL, as in a real Pod."""
        with self._lock:
            if self.exit_code is None and _catches(self.pid, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)

    def wait_in_background(self, on_exit: Callable[[], None]) -> None:
        threading.Thread(target=self._wait, args=(on_exit,), name=f"wait-{self.pid}", daemon=True).start()

    def _wait(self, on_exit: Callable[[], None]) -> None:
        # Wait without reaping: while the exited leader is a zombie its pid, which is the group's id,
        # cannot be reused, so killing what is left of the group cannot hit anyone else.
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            _signal_group(self.pid, signal.SIGKILL)  # like a container, everything ends with the main process
            self.exit_code = exit_code_of(self._popen.wait())
        on_exit()


def _signal_group(group_id: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group_id, signum)


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signum - 1) & 1)


class _PodGone(Exception):
    """The Pod object no longer exists."""


class NodeResources:
    """The node's allocatable resources and what its Pods hold of them, as the scheduler counts them. A Pod that
    does not fit waits; every waiting Pod is woken when another releases what it held."""

    def __init__(self, capacity: Mapping[str, Decimal], labels: Mapping[str, str]):
        self._capacity = dict(capacity)
        self._labels = labels
        self._allocated: dict[str, Decimal] = {}
        self._holders: set[_PodWorker] = set()
        self._waiting: set[_PodWorker] = set()
        self._lock = threading.Lock()

    def allocate(self, worker: _PodWorker, check_fit: bool) -> str | None:
        """Reserve the Pod's requests on the node; the scheduler's message when they do not fit."""
        with self._lock:
            if check_fit:
                free = {
                    resource: total - self._allocated.get(resource, 0) for resource, total in self._capacity.items()
                }
                message = unschedulable_message(worker.pod, self._labels, free)
                if message is not None:
                    self._waiting.add(worker)
                    return message
            self._waiting.discard(worker)
            for resource, amount in worker.requests.items():
                self._allocated[resource] = self._allocated.get(resource, Decimal(0)) + amount
            self._holders.add(worker)
            return None

    def release(self, worker: _PodWorker) -> None:
        with self._lock:
            self._waiting.discard(worker)
            if worker not in self._holders:
                return
            self._holders.discard(worker)
            for resource, amount in worker.requests.items():
                self._allocated[resource] -= amount
            waiting = list(self._waiting)
        for pending in waiting:
            pending.wake()


@dataclass(frozen=True)
class Node:
    """The node as its Pod workers see it: all that a worker needs of the kubelet that runs it."""

    name: str
    api: _ApiServer  # as the node: its Pods' status, their Secrets, ConfigMaps and tokens, Events
    scheduler_api: _ApiServer  # as the scheduler: binding, and the status of Pods it cannot place
    base_env: Mapping[str, str]  # every container's environment, before the Pod's own
    resources: NodeResources
    stopping: threading.Event  # set when the kubelet stops: its workers end and write nothing more
    command_override: Callable[[str], list[str] | None]  # the argv that containers of an image run instead


class _PodWorker:
    """One Pod from scheduling to its end, in a thread of its own: all writes for the Pod happen here.

    The watch thread only updates `pod` and sets flags (deletion, removal), then wakes the worker.
    """

    def __init__(self, node: Node, pod: dict[str, Any], sandbox: Path):
        self._node = node
        self._api = node.api
        self._scheduler = node.scheduler_api
        self.pod = pod
        metadata = pod["metadata"]
        self.namespace = metadata.get("namespace", "default")
        self.name = metadata["name"]
        self.uid = metadata.get("uid", "")
        self.container = pod["spec"]["containers"][0]
        self.requests = pod_requests(pod)
        self.sandbox = sandbox
        self.log_file = sandbox / "container.log"
        self.process: _ContainerProcess | None = None
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True)
        self._wakeup = threading.Event()
        self._deletion_requested = bool(metadata.get("deletionTimestamp"))
        self._removed = False
        self._conditions: list[dict[str, Any]] = []
        self._posted_events: set[tuple[str, str]] = set()
        self._container_status = self._container_status_with({"waiting": {"reason": "ContainerCreating"}})
        self._start_time = ""
        self._deadline: float | None = None  # time.monotonic() after which activeDeadlineSeconds is exceeded
        self._deadline_exceeded = False

    # --- called from other threads -----------------------------------------------------------------

    def on_update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self._deletion_requested:
            self._deletion_requested = True
            self.wake()

    def on_removed(self, last_seen: dict[str, Any] | None = None) -> None:
        if last_seen is not None:  # its deletionGracePeriodSeconds, if any, sets the grace period
            self.pod = last_seen
        self._removed = True
        self.wake()

    def wake(self) -> None:
        self._wakeup.set()

    def kill(self) -> None:
        if self.process is not None:
            self.process.signal(signal.SIGKILL)
        self.wake()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.exit_code is None

    # --- the worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._schedule():
                self._run_on_node()
        except (_PodGone, NotFound):
            log.debug("pod %s/%s is gone", self.namespace, self.name)
        except Exception:
            log.exception("pod %s/%s: kubelet failure", self.namespace, self.name)
        finally:
            if self.process is not None:
                self.process.signal(signal.SIGKILL)  # whatever happened, no process outlives its worker
            self._node.resources.release(self)

    def _interrupted(self) -> bool:
        return self._removed or self._deletion_requested or self._node.stopping.is_set()

    def _schedule(self) -> bool:
        """Wait until the Pod fits, then bind it; False when it went away first."""
        if self.pod["spec"].get("nodeName") == self._node.name:
            self._node.resources.allocate(self, check_fit=False)
            return True
        reported = None
        while True:
            self._wakeup.clear()
            if self._interrupted():
                self._end_without_container()
                return False
            message = self._node.resources.allocate(self, check_fit=True)
            if message is None:
                break
            if message != reported:
                self._write_status(
                    as_scheduler=True,
                    status={
                        "phase": "Pending",
                        "conditions": self._merge_conditions(
                            [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]
                        ),
                    },
                )
                self._post_event("FailedScheduling", message, warning=True, component=SCHEDULER)
                reported = message
            self._wakeup.wait()  # woken when capacity frees up, or on deletion or stop
        self._scheduler.bind_pod(self.namespace, self.name, self.uid, self._node.name)
        if not self._wait_until_bound():
            self._end_without_container()
            return False
        self._write_status({"conditions": self._merge_conditions([{"type": "PodScheduled", "status": "True"}])})
        self._post_event(
            "Scheduled",
            f"Successfully assigned {self.namespace}/{self.name} to {self._node.name}",
            component=SCHEDULER,
        )
        return True

    def _wait_until_bound(self) -> bool:
        """Until this node's watch shows the binding, as a kubelet only runs the Pods its watch says are its own
        (the Node authorizer learns them the same way); False when the Pod went away first."""
        while self.pod["spec"].get("nodeName") != self._node.name:
            self._wakeup.clear()
            if self._interrupted():
                return False
            self._wakeup.wait(0.1)
        return True

    def _run_on_node(self) -> None:
        self._start_time = _now()
        active_deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if active_deadline is not None:
            self._deadline = time.monotonic() + active_deadline
        plan = self._prepare_container()
        if plan is not None:
            self._run_container(plan)

    def _prepare_container(self) -> LaunchPlan | None:
        """Pull the image and build the configuration, retrying; None when the Pod ended meanwhile."""
        pulled = False
        while True:
            self._wakeup.clear()
            if self._interrupted():
                self._end_without_container()
                return None
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._fail_deadline_exceeded()
                return None
            if not pulled:
                self._post_pull_events()
                pulled = True
            try:
                return self._plan_launch()
            except ContainerConfigError as error:
                self._report_waiting("CreateContainerConfigError", str(error))
                self._post_event("Failed", f"Error: {error}", warning=True)
            self._sleep(RETRY_SECONDS)

    def _plan_launch(self) -> LaunchPlan:
        # The stored Pod may predate the binding; the container sees itself on this node.
        pod = {**self.pod, "spec": {**self.pod["spec"], "nodeName": self._node.name}}
        env = resolve_container_env(pod, self.container, self._api.read_secret_data, self._api.read_config_map_data)
        container = self.container
        override = self._node.command_override(container["image"])
        if override is not None:
            container = {**container, "command": override, "args": []}
        base_env = dict(self._node.base_env)
        account_volume = service_account_volume(pod)
        if account_volume is not None:
            base_env["KUBECONFIG"] = str(self._materialise_service_account(*account_volume))
        return plan_launch(pod, container, env, self.sandbox, base_env)

    def _materialise_service_account(self, volume: str, seconds: int) -> Path:
        """The projected service-account volume: the Pod's own token (TokenRequest, bound to the Pod), the CA
        and the namespace; and, since in-cluster clients read fixed paths no process here can have, a
        kubeconfig over the same token for KUBECONFIG."""
        directory = self.sandbox / "volumes" / volume
        directory.mkdir(parents=True, exist_ok=True)
        token_file = directory / "token"
        try:
            token_file.write_text(self._api.service_account_token(self.pod, seconds))
        except NotFound as error:
            raise ContainerConfigError(f"service account of the Pod not found: {error}") from None
        except ApiError as error:
            if error.status != 403:
                raise
            raise ContainerConfigError(f"the Pod's token is forbidden to node (retried): {error}") from None
        (directory / "namespace").write_text(self.namespace)
        kubeconfig = directory / "kubeconfig"
        kubeconfig.write_text(json.dumps(self._api.kubeconfig_for_token(token_file, self.namespace)))
        return kubeconfig

    def _run_container(self, plan: LaunchPlan) -> None:
        for directory in plan.directories:
            directory.mkdir(parents=True, exist_ok=True)
        plan.termination_message_file.touch()
        self._post_event("Created", f"Created container: {self.container['name']}")
        try:
            self.process = _ContainerProcess.start(plan, self.log_file)
        except ContainerStartError as error:
            self._post_event("Failed", f"Error: {error}", warning=True)
            now = _now()
            self._write_kubelet_status(
                "Failed",
                "terminated",
                {
                    "terminated": {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": str(error),
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            )
            self._end_without_container()
            return
        log.debug("pod %s/%s: started pid %d", self.namespace, self.name, self.process.pid)
        started_at = _now()
        container_id = f"local://{self.process.pid}"
        self._post_event("Started", f"Started container {self.container['name']}")
        self._write_kubelet_status(
            "Running", "running", {"running": {"startedAt": started_at}}, ready=True, container_id=container_id
        )
        self.process.wait_in_background(on_exit=self.wake)
        exit_code = self._supervise(self.process)
        if self._removed or self._node.stopping.is_set():
            return
        message = termination_message(
            plan.termination_message_file.read_bytes(),
            self.container.get("terminationMessagePolicy"),
            exit_code,
            self.log_file.read_bytes(),
        )
        state = terminated_state(
            exit_code,
            message=message,
            started_at=started_at,
            finished_at=_now(),
            container_id=container_id,
        )
        phase = "Succeeded" if exit_code == 0 and not self._deadline_exceeded else "Failed"
        pod_reason: dict[str, Any] = {"reason": "DeadlineExceeded", "message": DEADLINE_EXCEEDED_MESSAGE}
        self._write_kubelet_status(
            phase,
            "terminated",
            {"terminated": state},
            container_id=container_id,
            **(pod_reason if self._deadline_exceeded else {}),
        )
        if self._deletion_requested:
            self._api.delete_pod_now(self.namespace, self.name, self.uid)

    def _supervise(self, process: _ContainerProcess) -> int:
        """Signal the process as deletion, the deadline or stop require; its exit code."""
        terminating = False
        kill_at = None  # when SIGKILL follows the SIGTERM already sent
        while process.exit_code is None:
            now = time.monotonic()
            if self._node.stopping.is_set() or (kill_at is not None and now >= kill_at):
                process.signal(signal.SIGKILL)
                kill_at = None
            elif not terminating and self._must_stop(now):
                terminating = True
                self._post_event("Killing", f"Stopping container {self.container['name']}")
                process.terminate()
                kill_at = now + self._grace_seconds()
            due = [kill_at] if kill_at is not None else []
            if not terminating and self._deadline is not None:
                due.append(self._deadline)
            self._wakeup.wait(max(0.0, min(due) - now) if due else None)
            self._wakeup.clear()
        return process.exit_code

    def _must_stop(self, now: float) -> bool:
        if self._deletion_requested or self._removed:
            return True
        if self._deadline is not None and now >= self._deadline:
            self._deadline_exceeded = True
            self._post_event("DeadlineExceeded", DEADLINE_EXCEEDED_MESSAGE)
            return True
        return False

    def _grace_seconds(self) -> float:
        grace = None
        if self._deletion_requested or self._removed:
            grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        return max(grace, MINIMUM_GRACE_SECONDS)

    def _sleep(self, seconds: float) -> None:
        if self._deadline is not None:
            seconds = max(0.0, min(seconds, self._deadline - time.monotonic()))
        self._wakeup.wait(seconds)

    def _end_without_container(self) -> None:
        """The Pod ends with no process running: a deleting Pod is removed for good."""
        if self._deletion_requested and not self._removed and not self._node.stopping.is_set():
            self._api.delete_pod_now(self.namespace, self.name, self.uid)

    def _fail_deadline_exceeded(self) -> None:
        self._post_event("DeadlineExceeded", DEADLINE_EXCEEDED_MESSAGE)
        self._write_kubelet_status(
            "Failed",
            "terminated",
            self._container_status["state"],
            reason="DeadlineExceeded",
            message=DEADLINE_EXCEEDED_MESSAGE,
        )

    def _report_waiting(self, reason: str, message: str) -> None:
        waiting = {"waiting": {"reason": reason, "message": message}}
        if self._container_status["state"] != waiting:
            self._write_kubelet_status("Pending", "waiting", waiting)

    def _post_pull_events(self) -> None:
        image = self.container["image"]
        if image_pull_policy(self.container) == "Always":
            self._post_event("Pulling", f'Pulling image "{image}"')
            self._post_event("Pulled", f'Successfully pulled image "{image}" in 0s (0s including waiting)')
        else:
            self._post_event("Pulled", f'Container image "{image}" already present on machine')

    # --- writes ------------------------------------------------------------------------------------

    def _merge_conditions(self, desired: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._conditions = merge_conditions(self._conditions, desired, _now())
        return self._conditions

    def _container_status_with(
        self, state: dict[str, Any], ready: bool = False, container_id: str = ""
    ) -> dict[str, Any]:
        status = {
            "name": self.container["name"],
            "image": self.container["image"],
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
            "lastState": {},
        }
        if container_id:
            status["containerID"] = container_id
        return status

    def _write_kubelet_status(
        self,
        phase: str,
        stage: str,
        state: dict[str, Any],
        *,
        ready: bool = False,
        container_id: str = "",
        **fields: Any,
    ) -> None:
        self._container_status = self._container_status_with(state, ready, container_id)
        self._write_status(
            {
                "phase": phase,
                "conditions": self._merge_conditions(kubelet_conditions(stage, self.container["name"])),
                "hostIP": LOCAL_IP,
                "hostIPs": [{"ip": LOCAL_IP}],
                "podIP": LOCAL_IP,
                "podIPs": [{"ip": LOCAL_IP}],
                "startTime": self._start_time,
                "containerStatuses": [self._container_status],
                **fields,
            }
        )

    def _write_status(self, status: dict[str, Any], *, as_scheduler: bool = False) -> None:
        # NodeRestriction: a node writes the status of its own Pods only; the scheduler, of Pods it cannot place.
        api = self._scheduler if as_scheduler else self._api
        try:
            api.patch_pod_status(self.namespace, self.name, status)
        except NotFound:
            raise _PodGone() from None

    def _post_event(self, reason: str, message: str, *, warning: bool = False, component: str = "kubelet") -> None:
        """Post an Event about the Pod once per reason and message; Events are best effort."""
        if (reason, message) in self._posted_events:
            return
        self._posted_events.add((reason, message))
        now = _now()
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": self.namespace, "name": self.name, "uid": self.uid}
        if component == "kubelet":
            involved["fieldPath"] = f"spec.containers{{{self.container['name']}}}"
        host = self._node.name if component == "kubelet" else ""
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{self.name}.{secrets.token_hex(8)}", "namespace": self.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": component, **({"host": host} if host else {})},
            "reportingComponent": component,
            "reportingInstance": host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            (self._scheduler if component == SCHEDULER else self._api).create_event(self.namespace, event)
        except (ApiError, NotFound) as error:
            log.debug("pod %s/%s: event %s not posted: %s", self.namespace, self.name, reason, error)


# ---------------------------------------------------------------------------------------------------
# The node.
# ---------------------------------------------------------------------------------------------------


class LocalKubelet:
    """Schedules and runs the Pods of a cluster as local processes; see the module docstring.

    Use as a context manager, or call start() and stop(). `capacity` and `node_labels` are added to the
    defaults; `command_overrides`
    maps an image to the argv its containers run instead of their own command; `state_dir` keeps
    the per-pod sandboxes and logs there (default: a temporary directory removed by stop()).
    """

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str],
        namespace: str | None = None,
        node_name: str = "local-kubelet",
        capacity: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        node_labels: Mapping[str, str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        command_overrides: Mapping[str, Sequence[str]] | None = None,
        scheduler_kubeconfig: str | os.PathLike[str] | None = None,
    ):
        self.kubeconfig = Path(kubeconfig).resolve()
        # The scheduler watches every Pod and binds them; a node may do neither (the Node authorizer and
        # NodeRestriction hold it to its own Pods), so against a real API the two identities differ.
        self.scheduler_kubeconfig = Path(scheduler_kubeconfig).resolve() if scheduler_kubeconfig else self.kubeconfig
        self.namespace = namespace
        self.node_name = node_name
        self.node_labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            **(node_labels or {}),
        }
        self._capacity_text = {**DEFAULT_CAPACITY, **(capacity or {})}
        self._resources = NodeResources(
            {resource: parse_quantity(quantity) for resource, quantity in self._capacity_text.items()}, self.node_labels
        )
        self._command_overrides = {image: list(argv) for image, argv in (command_overrides or {}).items()}
        self._base_env = {
            "PATH": os.pathsep.join([sysconfig.get_path("scripts"), CONTAINER_PATH]),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self._given_state_dir = Path(state_dir) if state_dir is not None else None
        self._state_dir: Path | None = None
        self._node: Node | None = None  # once started
        self._workers: dict[str, _PodWorker] = {}  # by Pod uid, kept until stop()
        self._latest_by_name: dict[tuple[str, str], _PodWorker] = {}
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._watch_error: Exception | None = None
        self._watch_thread: threading.Thread | None = None

    # --- public API --------------------------------------------------------------------------------

    def start(self, timeout: float = 10) -> LocalKubelet:
        """Start watching; returns once the first list of Pods went through (else RuntimeError)."""
        api = _ApiServer(self.kubeconfig)
        scheduler_api = _ApiServer(self.scheduler_kubeconfig) if self.scheduler_kubeconfig != self.kubeconfig else api
        self._node = Node(
            name=self.node_name,
            api=api,
            scheduler_api=scheduler_api,
            base_env=self._base_env,
            resources=self._resources,
            stopping=self._stopping,
            command_override=self.command_override,
        )
        api.register_node(node_manifest(self.node_name, self.node_labels, self._capacity_text))
        if self._given_state_dir is not None:
            self._given_state_dir.mkdir(parents=True, exist_ok=True)
            self._state_dir = self._given_state_dir
        else:
            self._state_dir = Path(tempfile.mkdtemp(prefix="local-kubelet-"))
        self._watch_thread = threading.Thread(target=self._watch_pods, name="kubelet-watch", daemon=True)
        self._watch_thread.start()
        if not self._synced.wait(timeout):
            self.stop()
            raise RuntimeError(f"LocalKubelet could not list Pods: {self._watch_error}")
        log.info("local kubelet %s started (namespace: %s)", self.node_name, self.namespace or "all")
        return self

    def stop(self) -> None:
        """Kill every process this kubelet started and stop watching."""
        if self._node is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._node.scheduler_api.interrupt_watch()
        with self._workers_lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill()
        give_up_at = time.monotonic() + STOP_TIMEOUT_SECONDS
        for thread in [self._watch_thread, *(worker.thread for worker in workers)]:
            if thread is not None and thread.ident is not None:
                thread.join(max(0.0, give_up_at - time.monotonic()))
        self._node.api.close()
        self._node.scheduler_api.close()
        if self._given_state_dir is None and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
        log.info("local kubelet %s stopped", self.node_name)

    def __enter__(self) -> LocalKubelet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def command_override(self, image: str) -> list[str] | None:
        """The argv that containers of `image` run instead of their command, if one was given."""
        override = self._command_overrides.get(image)
        return list(override) if override is not None else None

    def logs(self, namespace: str, name: str) -> str:
        """The output (stdout and stderr) of the Pod's container so far; KeyError for unknown Pods."""
        with self._workers_lock:
            worker = self._latest_by_name.get((namespace, name))
        if worker is None:
            raise KeyError(f"no pod {namespace}/{name} on node {self.node_name}")
        try:
            return worker.log_file.read_text(errors="replace")
        except FileNotFoundError:  # not started
            return ""

    def running_pods(self) -> list[tuple[str, str]]:
        """(namespace, name) of the Pods whose process is running now."""
        with self._workers_lock:
            return sorted((worker.namespace, worker.name) for worker in self._workers.values() if worker.running)

    # --- watching ----------------------------------------------------------------------------------

    @property
    def _started_node(self) -> Node:
        assert self._node is not None, "start() sets the node before it starts the watch"
        return self._node

    def _watch_pods(self) -> None:
        resource_version = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                    self._synced.set()
                for event in self._started_node.scheduler_api.watch_pods(self.namespace, resource_version):
                    resource_version = self._on_watch_event(event) or resource_version
            except _WatchExpired:
                resource_version = None
            except (ApiError, NotFound, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
                if self._stopping.is_set():
                    return
                self._watch_error = error
                log.warning("watching pods failed (%s); listing again in %s s", error, RETRY_SECONDS)
                resource_version = None
                self._stopping.wait(RETRY_SECONDS)

    def _relist(self) -> str | None:
        pods, resource_version = self._started_node.scheduler_api.list_pods(self.namespace)
        listed = set()
        for pod in pods:
            listed.add(_pod_key(pod))
            self._on_pod(pod)
        with self._workers_lock:
            vanished = [worker for key, worker in self._workers.items() if key not in listed]
        for worker in vanished:
            worker.on_removed()
        return resource_version

    def _on_watch_event(self, event: Mapping[str, Any]) -> str | None:
        """Dispatch one watch event; the resourceVersion to resume from."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _WatchExpired()
            raise ApiError(f"watch error: {obj.get('message')}")
        if kind == "DELETED":
            with self._workers_lock:
                worker = self._workers.get(_pod_key(obj))
            if worker is not None:
                worker.on_removed(obj)
        elif kind in ("ADDED", "MODIFIED"):
            self._on_pod(obj)
        return (obj.get("metadata") or {}).get("resourceVersion")

    def _on_pod(self, pod: dict[str, Any]) -> None:
        key = _pod_key(pod)
        with self._workers_lock:
            worker = self._workers.get(key)
            if worker is not None:
                worker.on_update(pod)
                return
            if self._stopping.is_set() or not self._may_run(pod):
                return
            metadata = pod["metadata"]
            namespace = metadata.get("namespace", "default")
            assert self._state_dir is not None, "start() sets the state directory before it starts the watch"
            sandbox = self._state_dir / namespace / metadata["name"] / (metadata.get("uid") or "pod")
            sandbox.mkdir(parents=True, exist_ok=True)
            worker = _PodWorker(self._started_node, pod, sandbox)
            self._workers[key] = worker
            self._latest_by_name[(namespace, metadata["name"])] = worker
            if len(pod["spec"]["containers"]) > 1 or pod["spec"].get("initContainers"):
                log.warning("pod %s/%s: only its first container runs here", namespace, metadata["name"])
            worker.thread.start()

    def _may_run(self, pod: Mapping[str, Any]) -> bool:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        return (
            spec.get("nodeName") in (None, "", self.node_name)
            and bool(spec.get("containers"))
            and status.get("phase") not in TERMINAL_PHASES
            # A deleting Pod bound here but unknown (a kubelet restart) still needs its final delete.
            and (not pod["metadata"].get("deletionTimestamp") or spec.get("nodeName") == self.node_name)
        )


def _pod_key(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    return metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m promptopt_harness.kubelet",
        description="Run the Pods of a Kubernetes API server as local processes until SIGTERM/SIGINT.",
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--scheduler-kubeconfig", help="bind Pods as this identity (default: --kubeconfig)")
    parser.add_argument("--namespace", help="only this namespace (default: all)")
    parser.add_argument("--node-name", default="local-kubelet")
    parser.add_argument("--state-dir", help="keep per-pod sandboxes and logs here (default: a temporary directory)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="add to every container")
    parser.add_argument(
        "--command-override",
        action="append",
        default=[],
        metavar="IMAGE=COMMAND",
        help="containers of IMAGE run COMMAND (split like a shell) instead of their own command",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    extra_env = dict(item.split("=", 1) for item in args.env)
    command_overrides = {}
    for item in args.command_override:
        image, separator, command = item.partition("=")
        if not separator or not shlex.split(command):
            parser.error(f"--command-override needs IMAGE=COMMAND, got {item!r}")
        command_overrides[image] = shlex.split(command)

    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    with LocalKubelet(
        args.kubeconfig,
        namespace=args.namespace,
        node_name=args.node_name,
        extra_env=extra_env,
        state_dir=args.state_dir,
        command_overrides=command_overrides,
        scheduler_kubeconfig=args.scheduler_kubeconfig,
    ):
        stop_requested.wait()


if __name__ == "__main__":
    main()
