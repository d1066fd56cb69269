#!/usr/bin/env python3
"""A real browser for tests: Debian's chromium, run headless (installed with apt on first use).

    python -m promptopt_harness.browser            # install if missing (as root, with apt-get); print its path
    python -m promptopt_harness.browser --check    # exit 0 if chromium is on PATH, 1 if not (installs nothing)

Tests load the pages promptopt writes (`promptopt report`) in it and read back the DOM chromium parsed
(`--dump-dom`) and a screenshot, so what is checked is what a browser makes of the page, not the string we wrote.
Standard library only, like build_kube.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

from promptopt_harness import debian

PACKAGE = "chromium"  # Debian's build (bookworm-security carries current releases)
INSTALL_HINT = debian.install_hint([PACKAGE])
# Flags every run needs here: no display, root in a container (the sandbox needs user namespaces), no GPU.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--no-default-browser-check",
)


class BrowserUnavailable(RuntimeError):
    """chromium is not installed and cannot be installed here; the message says how to install it."""


def find_chromium() -> Path | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def ensure_chromium() -> Path:
    """chromium's path, installed first when missing and possible (a first install downloads ~100 MB);
    else BrowserUnavailable."""
    found = find_chromium()
    if found:
        return found
    try:
        debian.ensure_installed({"chromium": PACKAGE}, "browser")
    except debian.PackagesUnavailable as unavailable:
        raise BrowserUnavailable(str(unavailable)) from None
    found = find_chromium()
    if found is None:
        raise BrowserUnavailable(f"apt-get installed {PACKAGE}, but no chromium is on PATH")
    print(f"browser: {version(found)}", file=sys.stderr, flush=True)
    return found


def version(chromium: Path) -> str:
    return subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()


def _run(chromium: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    # A profile of its own per run: runs in parallel never share (or lock) one, and nothing of the user's is read.
    with TemporaryDirectory(prefix="promptopt-chromium-") as profile:
        result = subprocess.run(
            [str(chromium), *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def dump_dom(chromium: Path, page: Path, timeout: float = 120) -> str:
    """The page's DOM as chromium serializes it after parsing the file (and running its scripts, if any)."""
    return _run(chromium, "--dump-dom", page.resolve().as_uri(), timeout=timeout).stdout


def screenshot(
    chromium: Path, page: Path, output: Path, width: int = 1200, height: int = 1600, timeout: float = 120
) -> Path:
    """A PNG of the page's first width × height pixels."""
    _run(
        chromium,
        f"--screenshot={output.resolve()}",
        f"--window-size={width},{height}",
        page.resolve().as_uri(),
        timeout=timeout,
    )
    if not output.is_file():
        raise RuntimeError(f"chromium exited 0 but wrote no screenshot at {output}")
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether chromium is installed")
    args = parser.parse_args()
    if args.check:
        found = find_chromium()
        print(found or f"chromium is not installed: {INSTALL_HINT}")
        return 0 if found else 1
    try:
        print(ensure_chromium())
    except BrowserUnavailable as unavailable:
        print(f"browser: {unavailable}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
