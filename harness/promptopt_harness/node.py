"""A real one-node cluster for tests: the control plane, kube-scheduler and a real kubelet on containerd, all in a
network namespace of the run's own, running the product's images.

`RealNode` (a context manager) brings up, in this order:

1. a network namespace (promptopt_harness.netns) with a bridge whose address is the node's: the kubelet's node IP,
   kube-apiserver's address (port 443) and the `kubernetes` Service's ClusterIP at once, so Pods reach the API
   by in-cluster config with no kube-proxy; Pods get addresses on that bridge from the CNI bridge plugin
   (no gateway, no masquerade: nothing routes off the namespace, and the machine's forwarding stays off);
2. Debian's containerd and runc (installed with apt on first use), with root in the cache, so images imported
   once are there on the next run, and state, socket and the CNI configuration in the run's folder;
3. the images (promptopt_harness.images) imported into containerd when it lacks them;
4. the control plane (promptopt_harness.realkube) inside the namespace, the cluster DNS (CoreDNS, which answers
   a headless Service's name with its Pods' addresses: no Service proxy, so no NAT, is needed), kube-scheduler,
   and the kubelet (built from the same Go module), with the two settings this machine's kernel needs: cgroup v1
   (`failCgroupV1: false`, cgroupfs) and no CAP_SYS_RESOURCE in root's bounding set (containerd's
   `restrict_oom_score_adj`);
5. once the Node is Ready and untainted: `url`/`kubeconfig` reach the API server from outside through a loopback
   forwarder; a server started `inside()` the node listens where Pods reach it (the simulated LLM, an example
   service), on `address`; `expose()` forwards a port of it to loopback (MLflow, for the test's own client).

`stop()` tears everything down in the order that leaves nothing behind: Pods, the kubelet and the control plane,
any sandbox left, containerd, the kubelet's mounts, the cgroups, the namespace (and with it the bridge), and the
few fixed paths containerd's shims and the kubelet write outside the run's folder.

Facts this rests on: ../shared/notes/real-pods.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import yaml

from promptopt_harness import build_kube, debian
from promptopt_harness.client import ApiError
from promptopt_harness.images import Images
from promptopt_harness.netns import LoopbackForwarder, NetworkNamespace
from promptopt_harness.processes import ManagedProcesses
from promptopt_harness.realkube import RealCluster, RealKubeUnavailable

NODE_NAME = "promptopt-node"
ADDRESS = "10.96.0.1"  # the bridge, the node, kube-apiserver and the `kubernetes` Service
PREFIX = 24
POD_RANGE = ("10.96.0.64", "10.96.0.250")  # above the Service range (the first 64 addresses)
BRIDGE = "promptopt0"
CLUSTER_DOMAIN = "cluster.local"
DNS_READY_PORT = 8181
CNI_NETWORK = "promptopt-node"
PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
}
CNI_BIN_DIR = "/usr/lib/cni"
CGROUP_ROOT_PREFIX = "promptopt-node-"  # + the PID of the test run: two runs on a machine never share one
CGROUP_V1 = Path("/sys/fs/cgroup")
READY_TIMEOUT_SECONDS = 90
# Folders containerd's shims, CNI and the kubelet write whatever they are configured with: what the run adds to
# them is removed at the end (what was there before stays).
FIXED_PATHS = (Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/lib/kubelet"), Path("/var/log/containers"))


class NodeUnavailable(RuntimeError):
    """The real node cannot run here (not root, no cgroups, no packages, a component that would not start)."""


def cache_dir() -> Path:
    return build_kube.user_cache("node", "PROMPTOPT_NODE_CACHE")


def check_machine() -> None:
    """What the node needs of the machine before anything is started; NodeUnavailable says what is missing."""
    if sys.platform != "linux" or os.geteuid() != 0:
        raise NodeUnavailable("a real kubelet needs Linux and root (it makes cgroups, mounts and namespaces)")
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        raise NodeUnavailable("`ip` (iproute2) and `nsenter` (util-linux) are needed for the node's namespace")
    if not (CGROUP_V1 / "memory").is_dir() and not (CGROUP_V1 / "cgroup.controllers").is_file():
        raise NodeUnavailable(f"no cgroup hierarchy under {CGROUP_V1}")
    try:
        debian.ensure_installed(PACKAGES, "node")
    except debian.PackagesUnavailable as unavailable:
        raise NodeUnavailable(str(unavailable)) from None


def _version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout.split("\n")[0].strip()


class RealNode(ManagedProcesses):
    """One real node and its control plane (see the module docstring). ``cluster`` is the RealCluster: tests use
    it as the admin, as with the process kubelet."""

    network: NetworkNamespace

    def __init__(self, workdir: str | Path | None, images: Images):
        # One namespace per run: its name carries the PID, so a crashed run's is told apart (and removed).
        super().__init__(workdir, "promptopt-node-", NetworkNamespace(f"promptopt-node-{os.getpid()}"))
        self.images = images
        self.cgroup_root = f"{CGROUP_ROOT_PREFIX}{os.getpid()}"
        self.cluster: RealCluster | None = None
        self.containerd_socket = self.workdir / "containerd" / "containerd.sock"
        self.kubelet_root = self.workdir / "kubelet"
        self._forwarders: list[LoopbackForwarder] = []
        self._found_in_fixed_paths: set[Path] | None = None
        self._root_lock: IO[str] | None = None
        self.timings: dict[str, float] = {}
        self.startup_seconds = 0.0

    # --- what tests use ------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return ADDRESS

    @property
    def kubeconfig(self) -> Path:
        assert self.cluster is not None
        return self.cluster.kubeconfig

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The calling thread in the node's network namespace: a server started in the block listens where Pods
        reach it (bind it to `address`)."""
        with self.network.entered():
            yield

    def expose(self, port: int) -> int:
        """A loopback port (outside) that reaches `address`:`port` (inside): for the test's own clients."""
        forwarder = LoopbackForwarder(self.network, (ADDRESS, port)).start()
        self._forwarders.append(forwarder)
        return forwarder.port

    def versions(self) -> dict[str, str]:
        return {
            "kubelet": f"v{build_kube.kubernetes_version()}",
            "containerd": _version(["containerd", "--version"]).split()[2],
            "runc": _version(["runc", "--version"]).split()[2],
        }

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> RealNode:
        check_machine()
        started = time.monotonic()
        binaries = build_kube.ensure_built()
        coredns = build_kube.ensure_tool(build_kube.COREDNS)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._found_in_fixed_paths = self._fixed_paths_content()
        self._remove_stale_namespaces()
        self._remove_stale_cgroups()
        self.network.create()
        self.network.ip("link", "add", BRIDGE, "type", "bridge")
        self.network.ip("addr", "add", f"{ADDRESS}/{PREFIX}", "dev", BRIDGE)
        self.network.ip("link", "set", BRIDGE, "up")
        self._step("containerd", self._start_containerd)
        self._step("image import", self._import_images)
        self.cluster = RealCluster(
            self.workdir / "control-plane", network=self.network, address=ADDRESS, node_name=NODE_NAME
        )
        self._step("control plane", self.cluster.start)
        self._make_cgroup_root()
        self._step("cluster DNS", lambda: self._start_cluster_dns(coredns))
        self._start(
            "kube-scheduler",
            [
                str(binaries["kube-scheduler"]),
                f"--kubeconfig={self.cluster.scheduler_kubeconfig}",
                f"--authentication-kubeconfig={self.cluster.scheduler_kubeconfig}",
                f"--authorization-kubeconfig={self.cluster.scheduler_kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--authentication-skip-lookup=true",
            ],
        )
        self._step("kubelet to a Ready node", lambda: self._start_kubelet(binaries["kubelet"]))
        self.startup_seconds = time.monotonic() - started
        return self

    def _step(self, what: str, run: Callable[[], object]) -> None:
        started = time.monotonic()
        run()
        self.timings[what] = time.monotonic() - started

    def _check_running(self) -> None:
        if exited := self._exited():
            raise NodeUnavailable(exited)

    @staticmethod
    def _remove_stale_namespaces() -> None:
        """A killed run leaves its namespace (and its bridge) behind: remove those whose process is gone."""
        for path in Path("/run/netns").glob("promptopt-node-*") if Path("/run/netns").is_dir() else ():
            pid = path.name.rsplit("-", 1)[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                NetworkNamespace(path.name).delete()

    # --- cluster DNS -----------------------------------------------------------------------------------------------

    def _start_cluster_dns(self, coredns: Path) -> None:
        """CoreDNS on the node's address, answering the cluster's names from the API (Services and their
        EndpointSlices), as kubeadm's clusters do; other names get no answer, as nothing leaves the namespace. Like
        the rest of the control plane it is not under test, and runs as the admin."""
        assert self.cluster is not None
        kubeconfig = self.cluster.inside().write_kubeconfig(self.workdir / "coredns.kubeconfig")
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            f"{CLUSTER_DOMAIN}:53 {{\n  bind {ADDRESS}\n  errors\n  ready {ADDRESS}:{DNS_READY_PORT}\n"
            f"  kubernetes {CLUSTER_DOMAIN} {{\n    kubeconfig {kubeconfig}\n  }}\n}}\n"
        )
        self._start("coredns", [str(coredns), "-conf", str(corefile)])
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._dns_ready():
            self._check_running()
            if time.monotonic() > deadline:
                raise NodeUnavailable(
                    f"CoreDNS was not ready in {READY_TIMEOUT_SECONDS} s:\n{self.log('coredns')[-4000:]}"
                )
            time.sleep(0.2)

    def _dns_ready(self) -> bool:
        """CoreDNS's `ready` plugin: 200 once the kubernetes plugin has synced with the API."""
        with self.inside():
            try:
                with urllib.request.urlopen(f"http://{ADDRESS}:{DNS_READY_PORT}/ready", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

    # --- containerd ----------------------------------------------------------------------------------------------

    def _containerd_root(self) -> Path:
        """The kept root in the cache (images imported once), unless another run on this machine holds it: then one
        of this run's own, which imports the images again."""
        kept = cache_dir() / "containerd"
        kept.parent.mkdir(parents=True, exist_ok=True)
        lock = (kept.parent / "containerd.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            print(
                f"node: {kept} is in use by another test run; this one imports its images into a root of its own",
                file=sys.stderr,
                flush=True,
            )
            return self.workdir / "containerd" / "root"
        self._root_lock = lock  # held until the process ends or stop() closes it
        return kept

    def _containerd_config(self) -> Path:
        folder = self.workdir / "containerd"
        folder.mkdir(parents=True, exist_ok=True)
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-promptopt.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": False,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(self.workdir / "cni" / "ipam"),
                                "ranges": [
                                    [
                                        {
                                            "subnet": f"{ADDRESS.rsplit('.', 1)[0]}.0/{PREFIX}",
                                            "rangeStart": POD_RANGE[0],
                                            "rangeEnd": POD_RANGE[1],
                                        }
                                    ]
                                ],
                            },
                        }
                    ],
                }
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = folder / "config.toml"
        config.write_text(f"""version = 2
root = "{self._containerd_root()}"
state = "{folder / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{folder / "containerd.sock.ttrpc"}"
[{cri}]
  sandbox_image = "{self.images.pause.reference}"
  # root's bounding set here lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj of -998 cannot be set.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{folder / "runc"}"
""")
        return config

    def _start_containerd(self) -> None:
        config = self._containerd_config()
        self._start("containerd", ["containerd", "--config", str(config), "--log-level", "warn"])
        deadline = time.monotonic() + 30
        while not self._ctr_ok("version"):
            self._check_running()
            if time.monotonic() > deadline:
                raise NodeUnavailable(f"containerd did not answer in 30 s:\n{self.log('containerd')[-4000:]}")
            time.sleep(0.1)
        self._remove_containers()  # a killed run's, from the kept root

    def ctr(self, *args: str) -> str:
        result = subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise NodeUnavailable(f"ctr {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def _ctr_ok(self, *args: str) -> bool:
        try:
            self.ctr(*args)
        except NodeUnavailable:
            return False
        return True

    def _image_digests(self) -> dict[str, str]:
        """Every image reference in the node's containerd and the digest it points to."""
        lines = self.ctr("images", "list").splitlines()[1:]
        return {fields[0]: fields[2] for fields in (line.split() for line in lines) if len(fields) > 2}

    def _import_images(self) -> None:
        present = self._image_digests()
        for image in self.images.all():
            if image.reference not in present:
                print(f"node: importing {image.reference} into containerd", file=sys.stderr, flush=True)
                self.ctr("images", "import", "--no-unpack=false", str(image.archive))
        # Older builds, hundreds of megabytes each: every reference to anything else goes, the CRI's own by image ID
        # (sha256:...) too, or their layers stay. This root is the test runs' alone (_containerd_root).
        present = self._image_digests()
        wanted = {present[image.reference] for image in self.images.all()}
        stale = [reference for reference, digest in present.items() if digest not in wanted]
        if stale:
            self._ctr_ok("images", "remove", "--sync", *stale)

    def _remove_containers(self) -> None:
        """Every container and task containerd has (each Pod's sandbox and containers): none may outlive the run."""
        for task in self.ctr("tasks", "list", "--quiet").split():
            self._ctr_ok("tasks", "kill", "--signal", "SIGKILL", task)
        deadline = time.monotonic() + 10
        while self.ctr("tasks", "list", "--quiet").split() and time.monotonic() < deadline:
            for task in self.ctr("tasks", "list", "--quiet").split():
                self._ctr_ok("tasks", "delete", "--force", task)
            time.sleep(0.1)
        for container in self.ctr("containers", "list", "--quiet").split():
            self._ctr_ok("containers", "delete", container)

    # --- the kubelet ---------------------------------------------------------------------------------------------

    def _make_cgroup_root(self) -> None:
        """The kubelet's cgroupRoot must exist in every v1 hierarchy; cpuset's needs its parent's CPUs and nodes."""
        for hierarchy in self._cgroup_hierarchies():
            folder = hierarchy / self.cgroup_root
            folder.mkdir(exist_ok=True)
            for inherited in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / inherited).is_file() and not (folder / inherited).read_text().strip():
                    (folder / inherited).write_text((hierarchy / inherited).read_text())

    @staticmethod
    def _cgroup_hierarchies() -> list[Path]:
        return [
            path
            for path in sorted(CGROUP_V1.iterdir())
            if path.is_dir() and (path / "cgroup.procs").is_file() and path.name != "unified"
        ]

    def _kubelet_config(self) -> Path:
        assert self.cluster is not None and self.cluster.pki is not None
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine's cgroups are v1 (hybrid), which the kubelet refuses unless told.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": ADDRESS,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            # Only the API server (its client certificate, from the cluster's CA) may call the kubelet.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.pki.ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # Pods resolve through the cluster DNS only (no upstream: nothing outside is reachable).
            "clusterDNS": [ADDRESS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "",
            "failSwapOn": False,
            # No iptables chains of its own (they would include a KUBE-FIREWALL rule on the machine).
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            # A busy test disk must evict nothing and collect no image.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            # The kubelet reports status changes at once; these only pace what is not event-driven.
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
        }
        path = self.workdir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _start_kubelet(self, kubelet: Path) -> None:
        assert self.cluster is not None
        self._start(
            "kubelet",
            [
                str(kubelet),
                f"--config={self._kubelet_config()}",
                f"--kubeconfig={self.cluster.kubelet_kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={ADDRESS}",
                "--v=1",
            ],
        )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._check_running()
            if self._node_ready():
                return
            time.sleep(0.2)
        raise NodeUnavailable(
            f"the Node was not Ready and untainted in {READY_TIMEOUT_SECONDS} s:\n{self.log('kubelet')[-4000:]}"
        )

    def _node_ready(self) -> bool:
        assert self.cluster is not None
        try:
            node = self.cluster.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        except (ApiError, OSError):
            return False
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions") or [])
        return ready and not node["spec"].get("taints")

    # --- teardown ------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        for forwarder in self._forwarders:
            forwarder.stop()
        self._forwarders.clear()
        for name in ("kubelet", "kube-scheduler", "coredns"):
            self._stop_process(name)
        if self.cluster is not None:
            self.cluster.stop()
        if "containerd" in self._processes:
            with contextlib.suppress(NodeUnavailable):
                self._remove_containers()
        self._stop_process("containerd")
        self._release_containerd_root()
        self._unmount(self.kubelet_root)
        self._unmount(self.workdir / "containerd")
        self._remove_cgroups(self.cgroup_root)
        self.network.delete()
        self._clean_fixed_paths()
        self.remove_workdir()

    def _release_containerd_root(self) -> None:
        if self._root_lock is not None:
            self._root_lock.close()
            self._root_lock = None

    @staticmethod
    def _unmount(folder: Path) -> None:
        """Every mount at or under `folder`, deepest first (the kubelet bind-mounts its root and mounts each Pod's
        volumes; containerd mounts the sandboxes' network namespaces and /dev/shm)."""
        prefix = str(folder)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        # Every entry, not each path once: a path mounted twice (the kubelet's root, stacked) needs two unmounts.
        for mount in sorted((m for m in mounts if m == prefix or m.startswith(prefix + "/")), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount], capture_output=True)

    @classmethod
    def _remove_cgroups(cls, name: str) -> None:
        """The cgroup tree `name` in every hierarchy, deepest first (only empty cgroups can go)."""
        for hierarchy in cls._cgroup_hierarchies():
            root = hierarchy / name
            if not root.is_dir():
                continue
            for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()

    @classmethod
    def _remove_stale_cgroups(cls) -> None:
        """A killed run's cgroup tree: its processes are gone with it, so it is empty."""
        memory = CGROUP_V1 / "memory"
        for root in memory.glob(f"{CGROUP_ROOT_PREFIX}*") if memory.is_dir() else ():
            pid = root.name.removeprefix(CGROUP_ROOT_PREFIX)
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                cls._remove_cgroups(root.name)

    @staticmethod
    def _fixed_paths_content() -> set[Path]:
        return {path for root in FIXED_PATHS if root.exists() for path in (root, *root.rglob("*"))}

    def _clean_fixed_paths(self) -> None:
        if self._found_in_fixed_paths is None:
            return
        added = self._fixed_paths_content() - self._found_in_fixed_paths
        for path in sorted(added, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


def main(argv: list[str] | None = None) -> int:
    """`python -m promptopt_harness.node --workdir DIR --context REPO`: a real node until SIGTERM/SIGINT."""
    import argparse

    from promptopt_harness import images

    parser = argparse.ArgumentParser(description="Serve a real one-node cluster until SIGTERM/SIGINT.")
    parser.add_argument("--workdir", type=Path, help="keep the node's files here (default: a temporary folder)")
    parser.add_argument("--context", type=Path, default=Path.cwd(), help="the repository, for the images")
    parser.add_argument("--kubeconfig", type=Path, help="also write the admin kubeconfig here, last")
    args = parser.parse_args(argv)
    stopping: list[bool] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    try:
        built = images.ensure_built(args.context)
        with RealNode(args.workdir, built) as node:
            assert node.cluster is not None
            if args.kubeconfig:
                node.cluster.write_kubeconfig(args.kubeconfig)
            print(
                f"Serving node {NODE_NAME} ({node.versions()}) at {node.cluster.url}, started in "
                f"{node.startup_seconds:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in node.timings.items())});"
                f" admin kubeconfig: {args.kubeconfig or node.kubeconfig}",
                flush=True,
            )
            while not stopping:
                time.sleep(0.2)
    except (NodeUnavailable, RealKubeUnavailable, images.ImagesUnavailable) as unavailable:
        print(f"node: {unavailable}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
