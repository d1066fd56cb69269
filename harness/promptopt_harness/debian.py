"""Debian packages a test tier needs, installed with apt-get on first use (as root), saying what it does.

The browser tier needs chromium; the real Pods tier containerd, runc, the CNI plugins, buildah and mmdebstrap.
Standard library only: build scripts run it before anything is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


class PackagesUnavailable(RuntimeError):
    """Packages are missing and cannot be installed here; the message says which and how to install them."""


def missing(packages: Mapping[str, str]) -> list[str]:
    """The packages of `packages` ({a command or absolute path it installs: the package}) not installed."""
    return sorted(
        {
            package
            for probe, package in packages.items()
            if not (Path(probe).exists() if probe.startswith("/") else shutil.which(probe))
        }
    )


def install_hint(packages: list[str]) -> str:
    return f"apt-get install -y --no-install-recommends {' '.join(packages)} (as root)"


def ensure_installed(packages: Mapping[str, str], who: str) -> None:
    """Install whatever of `packages` is missing (apt-get update, then install), printing each command and the
    time it took under the name `who`; PackagesUnavailable where that cannot be done."""
    needed = missing(packages)
    if not needed:
        return
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        why = "apt-get is not available" if apt_get is None else "not running as root"
        raise PackagesUnavailable(
            f"{', '.join(needed)} not installed and cannot be installed ({why}); install with {install_hint(needed)}"
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    for command in ([apt_get, "update"], [apt_get, "install", "-y", "--no-install-recommends", *needed]):
        print(f"{who}: running {' '.join(command)}", file=sys.stderr, flush=True)
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        if result.returncode != 0:
            raise PackagesUnavailable(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stderr.strip()[-2000:]}; install with {install_hint(needed)}"
            )
    still = missing(packages)
    if still:
        raise PackagesUnavailable(f"apt-get installed {', '.join(needed)}, but {', '.join(still)} is still missing")
    print(f"{who}: installed {', '.join(needed)} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
