"""Shared fixtures: a real Kubernetes API server, a real node, the chart, the local kubelet, an MLflow server and the
simulated LLM."""

import os

from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV, use_bundled_litellm_cost_map

use_bundled_litellm_cost_map()  # before any test imports litellm: these machines have no network


# --- Simulated LLM: a deterministic OpenAI-compatible test double (promptopt.simulated_llm) ---
import pytest  # noqa: E402

SIMULATED_LLM_API_KEY = "sk-simulated-test-key"


@pytest.fixture
def llm():
    """A started SimulatedLLM (test double) that requires SIMULATED_LLM_API_KEY.

    Reach it through litellm with ``litellm.completion(**llm.litellm_kwargs("sim-task"), messages=...)``
    (model "openai/<name>", api_base=llm.base_url, api_key=llm.api_key). Stopped after the test.
    """
    from promptopt.simulated_llm import SimulatedLLM

    with SimulatedLLM(api_key=SIMULATED_LLM_API_KEY) as server:
        yield server


# --- Kubernetes: a real kube-apiserver and etcd (promptopt_harness.realkube) ---
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


from promptopt_harness.chart import RBAC_KINDS, RELEASE_NAMESPACE  # noqa: E402

# "required" (CI sets it): a real API server that cannot be built or started fails the run instead of skipping.
REAL_KUBE_ENV = "PROMPTOPT_REAL_KUBE"
REPO = Path(__file__).resolve().parents[1]
# The chart under test: the harness renders the chart it is given, as `helm template` does.
CHART = REPO / "deploy" / "helm" / "promptopt"


# "required" (CI sets it): a real node (kubelet, containerd, the product's images) that cannot be built or started
# fails the run instead of skipping.
REAL_PODS_ENV = "PROMPTOPT_REAL_PODS"

# What the real tiers did this session, for the summary at the end: (tier, ran, what).
_tiers: list[tuple[str, bool, str]] = []


BUILT_IMAGES = pytest.StashKey[object]()  # the real Pods tier's images, or why they could not be built


def needs(session, fixture: str) -> bool:
    return any(fixture in item.fixturenames for item in session.items)


def pytest_collection_finish(session):
    """Build what the real tiers need before the first test that needs it, outside every test's timeout: a first
    build on a new machine takes minutes, and says what it does meanwhile. The images (mostly downloads and
    unpacking) build while Go compiles (two cores' work)."""
    from concurrent.futures import ThreadPoolExecutor

    from promptopt_harness import build_kube, images
    from promptopt_harness.realkube import RealKubeUnavailable, ensure_binaries

    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled(), ThreadPoolExecutor(1) as pool:
        built_images = pool.submit(images.ensure_built, REPO) if needs(session, "real_pods") else None
        if needs(session, "real_cluster") or built_images:
            try:
                ensure_binaries()
                if built_images:
                    build_kube.ensure_tool(build_kube.HELM)
                    build_kube.ensure_tool(build_kube.COREDNS)
            except (RealKubeUnavailable, subprocess.CalledProcessError, SystemExit):
                pass  # the fixtures say so, once, and skip (or fail, when required)
        if built_images:
            try:
                session.config.stash[BUILT_IMAGES] = built_images.result()
            except images.ImagesUnavailable as unavailable:
                session.config.stash[BUILT_IMAGES] = unavailable


def pytest_terminal_summary(terminalreporter):
    for tier, ran, what in _tiers:
        terminalreporter.write_line(f"{tier} tier: {what}", **({"green": True} if ran else {"yellow": True}))


def pytest_sessionfinish(session):
    # CI never passes without the real tiers.
    for tier, variable, fixture in (
        ("real Kubernetes", REAL_KUBE_ENV, "real_cluster"),
        ("real Pods", REAL_PODS_ENV, "real_pods"),
    ):
        required = os.environ.get(variable) == "required" and needs(session, fixture)
        if required and not any(ran for name, ran, _ in _tiers if name == tier):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def real_cluster(request, tmp_path_factory):
    """etcd and kube-apiserver (built from Go modules on first use), shared by the session; tests each get a
    namespace of their own through `cluster`. Skipped, with the reason said once, where Go is missing."""
    from promptopt_harness.realkube import RealCluster, RealKubeUnavailable

    capture = request.config.pluginmanager.getplugin("capturemanager")
    cluster = RealCluster(tmp_path_factory.mktemp("real-kube"))
    try:
        with capture.global_and_fixture_disabled():  # the first build says what it does and how long it took
            cluster.start()
    except RealKubeUnavailable as unavailable:
        cluster.stop()
        _tiers.append(("real Kubernetes", False, f"NOT RUN, its tests are skipped: {unavailable}"))
        if os.environ.get(REAL_KUBE_ENV) == "required":
            pytest.fail(f"{REAL_KUBE_ENV}=required, but the real Kubernetes API server cannot run: {unavailable}")
        pytest.skip(f"the real Kubernetes API server cannot run here: {unavailable}")
    _tiers.append(
        (
            "real Kubernetes",
            True,
            f"kube-apiserver v{cluster.version} with etcd and kube-controller-manager "
            f"(started in {cluster.startup_seconds:.1f} s)",
        )
    )
    cluster.create_namespace(RELEASE_NAMESPACE)
    yield cluster
    cluster.stop()


# The real Pods tier: its namespaces, restricted by Pod Security admission like the jobs' in a careful cluster.
JOBS_NAMESPACE = "promptopt-jobs"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def chart_values(built_images):
    """The values a user who built the images would install the chart with: the images as built, one namespace
    for jobs; the rest as the chart's defaults, except quick retries."""
    return {
        "operator": {"image": {"repository": built_images.operator.repository, "tag": built_images.operator.tag}},
        "worker": {"image": {"repository": built_images.worker.repository, "tag": built_images.worker.tag}},
        "jobNamespaces": [JOBS_NAMESPACE],
        "retryBaseDelaySeconds": 1,
    }


@pytest.fixture(scope="session")
def real_pods(request, tmp_path_factory):
    """A real node (promptopt_harness.node: kubelet on containerd, the control plane, all in a network namespace
    of the run's own) running the product's images, and the chart installed on it with the helm CLI: the operator
    is the chart's Deployment. Skipped, with the reason said once, where it cannot run (or failed when
    PROMPTOPT_REAL_PODS=required)."""
    from promptopt_harness import build_kube
    from promptopt_harness.chart import HelmCli
    from promptopt_harness.node import NodeUnavailable, RealNode
    from promptopt_harness.realkube import RealKubeUnavailable

    built = request.config.stash.get(BUILT_IMAGES, None)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    node = None
    try:
        if built is None or isinstance(built, Exception):
            raise NodeUnavailable(f"the images could not be built: {built}")
        node = RealNode(tmp_path_factory.mktemp("real-node"), built)
        with capture.global_and_fixture_disabled():
            node.start()
            helm = HelmCli(build_kube.ensure_tool(build_kube.HELM), node.kubeconfig)
    except (NodeUnavailable, RealKubeUnavailable, subprocess.CalledProcessError, SystemExit) as unavailable:
        if node is not None:
            node.stop()
        _tiers.append(("real Pods", False, f"NOT RUN, its tests are skipped: {unavailable}"))
        if os.environ.get(REAL_PODS_ENV) == "required":
            pytest.fail(f"{REAL_PODS_ENV}=required, but the real node cannot run: {unavailable}")
        pytest.skip(f"a real node cannot run here: {unavailable}")
    cluster = node.cluster
    started = time.monotonic()
    try:
        for namespace in (RELEASE_NAMESPACE, JOBS_NAMESPACE):
            cluster.create_namespace(namespace, RESTRICTED)
        helm.install(CHART, chart_values(built))
    except BaseException:
        node.stop()  # a failed install must not leave the node's processes and mounts behind
        raise
    versions = node.versions()
    built_seconds = sum(image.built_seconds for image in built.all())
    steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in node.timings.items())
    _tiers.append(
        (
            "real Pods",
            True,
            (
                f"kubelet {versions['kubelet']} on containerd {versions['containerd']}, images "
                f"promptopt/worker:{built.worker.tag} and promptopt/operator:{built.operator.tag} "
                f"({f'built in {built_seconds:.0f} s' if built_seconds else 'as built before'}); node up in "
                f"{node.startup_seconds:.1f} s ({steps}), chart installed by helm {build_kube.HELM_VERSION} in "
                f"{time.monotonic() - started:.1f} s"
            ),
        )
    )
    yield RealPods(node, cluster.in_namespace(JOBS_NAMESPACE), helm, built)
    node.stop()


class RealPods:
    """The real Pods tier as tests use it: ``cluster`` (the admin, in the jobs namespace), ``node``
    (``node.inside()``, ``node.expose(port)``, ``node.address``), ``helm`` (the CLI, on the release) with ``chart``
    and ``values()`` (as installed), ``images``."""

    chart = CHART

    def __init__(self, node, cluster, helm, built_images):
        self.node, self.cluster, self.helm, self.images = node, cluster, helm, built_images

    def values(self):
        return chart_values(self.images)

    def operator_pods(self):
        return self.cluster.in_namespace(RELEASE_NAMESPACE).list(
            "pods", label_selector="app.kubernetes.io/component=operator"
        )

    def lease_holder(self) -> str:
        """The identity of the operator process that holds the leader Lease: its Pod's name, "_", a random part."""
        return self.cluster.get("leases", "promptopt", namespace=RELEASE_NAMESPACE)["spec"].get("holderIdentity") or ""

    def leader_pod(self):
        """The operator replica that holds the leader Lease, or None."""
        holder = self.lease_holder()
        return next((p for p in self.operator_pods() if holder.startswith(p["metadata"]["name"] + "_")), None)


_namespaces_made = 0


@pytest.fixture
def cluster(real_cluster, request, tmp_path):
    """A namespace of its own on the real API server, seen as the test admin: ``cluster.create/get/list/patch/
    delete/apply/wait_for`` default to it, ``cluster.kubeconfig`` is the admin's, ``cluster.kubelet_kubeconfig``
    and ``cluster.scheduler_kubeconfig`` the local node's. Pods, jobs and their finalizers are cleared after."""
    global _namespaces_made
    _namespaces_made += 1
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    namespace = f"t{_namespaces_made}-{name}"
    real_cluster.create_namespace(namespace)
    view = real_cluster.in_namespace(namespace)
    # Pods that name no ServiceAccount are refused until the controller manager has made the default one.
    view.wait_for("serviceaccounts", "default", lambda account: account is not None, timeout=30)
    view.kubeconfig = real_cluster.write_kubeconfig(tmp_path / "admin.kubeconfig", namespace)
    yield view
    _clear_namespace(view)


def _clear_namespace(cluster) -> None:
    """Nothing of a finished test may act on the next one: its jobs (finalizers dropped, the operator is gone)
    and Pods (no kubelet is left to end them) go at once."""
    from promptopt_harness.client import ApiError

    for job in cluster.list("poj"):
        name = job["metadata"]["name"]
        try:
            cluster.patch("poj", name, {"metadata": {"finalizers": None}})
            cluster.delete("poj", name)
        except ApiError as error:
            if error.code != 404:
                raise
    for pod in cluster.list("pods"):
        try:
            cluster.delete("pods", pod["metadata"]["name"], gracePeriodSeconds=0)
        except ApiError as error:
            if error.code != 404:
                raise


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite, loopback), shared by the session: tests name their prompts apart."""
    from promptopt_harness.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def chart():
    """The Helm chart, loaded by the real Helm engine (helm-python-sdk)."""
    from promptopt_harness.chart import loaded_chart

    with loaded_chart(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    """``render(values, namespace=RELEASE_NAMESPACE)``: every object the chart renders, parsed (CRDs excluded:
    Helm installs crds/ as they are)."""
    from promptopt_harness.chart import render as render_chart

    return lambda values, namespace=RELEASE_NAMESPACE: render_chart(chart, values, namespace)


@pytest.fixture
def install_rbac(cluster, render, tmp_path):
    """``install_rbac(**values)``: apply the chart's ServiceAccounts, Roles and bindings (jobNamespaces: this
    test's namespace unless the values say otherwise) and return a kubeconfig of the operator's ServiceAccount,
    so the operator runs with exactly the permissions the chart gives it."""

    def install(**values) -> Path:
        values.setdefault("jobNamespaces", [cluster.namespace])
        manifests = [m for m in render(values) if m["kind"] in RBAC_KINDS]
        for manifest in manifests:
            cluster.apply(manifest)
        (operator,) = [
            m for m in manifests if m["kind"] == "ServiceAccount" and m["metadata"]["namespace"] == RELEASE_NAMESPACE
        ]
        return cluster.service_account_kubeconfig(
            RELEASE_NAMESPACE, operator["metadata"]["name"], tmp_path / "operator.kubeconfig", cluster.namespace
        )

    return install


@pytest.fixture
def kubectl_for(tmp_path_factory):
    """``kubectl_for(kubeconfig)``: a runner of /usr/bin/kubectl with that kubeconfig (see `kubectl`)."""

    def runner(kubeconfig):
        cache_dir = tmp_path_factory.mktemp("kubectl-cache")  # own discovery cache: ports get reused

        def run(*args, check=True, input=None, timeout=60):
            command = ["/usr/bin/kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir), *args]
            result = subprocess.run(command, capture_output=True, text=True, input=input, timeout=timeout)
            if check and result.returncode != 0:
                raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
            return result

        return run

    return runner


@pytest.fixture
def kubectl(cluster, kubectl_for):
    """``kubectl(*args, check=True, input=None, timeout=60)`` runs /usr/bin/kubectl against `cluster`.

    Returns the CompletedProcess (text); fails with kubectl's stderr unless ``check=False``.
    """
    return kubectl_for(cluster.kubeconfig)


# --- Local kubelet: runs the cluster's Pods as local processes (promptopt_harness.kubelet) ---
@pytest.fixture
def kubelet(cluster):
    """A started LocalKubelet on `cluster` (all namespaces, node "local-kubelet"); stopped after the test,
    which kills every process it started. ``kubelet.logs(ns, name)``, ``kubelet.running_pods()``."""
    from promptopt_harness.kubelet import LocalKubelet

    # The containers' environment is clean, so pass on what any litellm-importing process here needs.
    with LocalKubelet(
        cluster.kubelet_kubeconfig,
        scheduler_kubeconfig=cluster.scheduler_kubeconfig,
        extra_env=LITELLM_BUNDLED_COST_MAP_ENV,
    ) as local_kubelet:
        yield local_kubelet
