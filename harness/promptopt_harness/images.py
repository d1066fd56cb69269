#!/usr/bin/env python3
"""The product's container images, built here without a registry, for the real Pods tier.

    python -m promptopt_harness.images            # build what is missing; print the image references
    python -m promptopt_harness.images --check    # exit 0 if every image is built, 1 if not (builds nothing)

What a user's cluster runs, built from the repository's **unchanged** Dockerfile.worker and Dockerfile.operator
with buildah (Debian's; no daemon), so a change to either Dockerfile is what the tests run:

- the base the Dockerfiles name, `python:3.11-slim`, cannot be pulled here: it is a Debian bookworm rootfs
  (python3, python3-venv, ca-certificates) made with mmdebstrap from the sources apt uses, under that name;
- the Pod sandbox's `pause` image: pause.c beside this file, compiled static, run as 65535;
- `promptopt/worker:<hash>` and `promptopt/operator:<hash>`, where the hash covers the Dockerfile, the base image
  and every file its COPY instructions take from the build context (less what .dockerignore leaves out): an image
  is rebuilt only when one of them changed, and a test run never runs an image older than its source.

buildah's storage, the rootfs and the image archives (what containerd imports) are kept in
$PROMPTOPT_IMAGE_CACHE (default: promptopt/images in the user's cache, beside the Kubernetes binaries). pip in the
build sees this machine's pip configuration and CA bundle, mounted read-only, as a build machine behind a proxy
would give them. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from promptopt_harness import build_kube, debian

HERE = Path(__file__).resolve().parent
BASE_IMAGE = "docker.io/library/python:3.11-slim"
PAUSE_IMAGE = "registry.k8s.io/pause:promptopt"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
DEBIAN_SUITE = "bookworm"
HOST_APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
PACKAGES = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "gcc": "gcc"}
# The build machine's pip settings and CA bundle (an index mirror, a proxy's CA): pip in the build needs them.
HOST_FILES_FOR_PIP = ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt")
PRODUCT_IMAGES = ("worker", "operator")  # Dockerfile.<name> -> promptopt/<name>:<hash>


class ImagesUnavailable(RuntimeError):
    """The images cannot be built here (no buildah, not root, a failed build); the message says why."""


def cache_dir() -> Path:
    return build_kube.user_cache("images", "PROMPTOPT_IMAGE_CACHE")


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


# --- what an image is made of ---------------------------------------------------------------------------------


def dockerignore_patterns(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.lstrip("/") for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching: `*` and `?` stay within one path element, `**` crosses them."""
    parts = []
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token.startswith("**"):
            parts.append("(?:.*/)?" if token.endswith("/") else ".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts) + r"\Z")


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `relative` out of the context: a pattern matches it or a folder above it."""
    regexes = [_pattern_regex(pattern) for pattern in patterns if not pattern.startswith("!")]
    prefixes = [relative.split("/")[:depth] for depth in range(1, relative.count("/") + 2)]
    return any(regex.match("/".join(prefix)) for regex in regexes for prefix in prefixes)


def copied_sources(dockerfile: Path) -> list[str]:
    """The context paths the Dockerfile's COPY and ADD instructions take (those --from another stage excepted)."""
    sources = []
    for line in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        words = shlex.split(line.split("#", 1)[0]) if not line.lstrip().startswith("#") else []
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        arguments = words[1:]
        if any(argument.startswith("--from") for argument in arguments):
            continue
        arguments = [argument for argument in arguments if not argument.startswith("--")]
        sources.extend(arguments[:-1])
    return sources


def context_files(context: Path, dockerfile: Path) -> list[Path]:
    """Every file the Dockerfile copies from the context, as the build would see it."""
    patterns = dockerignore_patterns(context)
    found = set()
    for source in copied_sources(dockerfile):
        root = context / source
        candidates = [root] if root.is_file() else sorted(path for path in root.rglob("*") if path.is_file())
        for path in candidates:
            if not ignored(path.relative_to(context).as_posix(), patterns):
                found.add(path)
    return sorted(found)


def content_hash(context: Path, dockerfile: Path, base_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"base {base_id}\n".encode())
    digest.update(dockerfile.read_bytes())
    for path in context_files(context, dockerfile):
        digest.update(f"\0{path.relative_to(context).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --- buildah ---------------------------------------------------------------------------------------------------


@dataclass
class Buildah:
    """buildah with its storage in the cache (never the machine's /var/lib/containers)."""

    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_conf = self.root / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root / "storage"}"\nrunroot = "{self.root / "run"}"\n'
        )

    def run(self, *args: str, quiet: bool = False) -> str:
        result = subprocess.run(
            ["buildah", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "CONTAINERS_STORAGE_CONF": str(self.storage_conf)},
        )
        if result.returncode != 0:
            if quiet:
                return ""
            output = (result.stdout + result.stderr).strip()
            raise ImagesUnavailable(f"buildah {' '.join(args)} failed ({result.returncode}):\n{output[-4000:]}")
        return result.stdout.strip()

    def image_id(self, reference: str) -> str:
        """The image's ID, or "" when the storage has no such image."""
        return self.run("inspect", "--type", "image", "--format", "{{.FromImageID}}", reference, quiet=True)

    def build(self, context: Path, dockerfile: Path, reference: str, *extra: str) -> None:
        self.run(
            "bud", "--pull=never", "--network", "host", "-f", str(dockerfile), "-t", reference, *extra, str(context)
        )

    def remove_other_tags(self, repository: str, keep: str) -> None:
        """Older builds of `repository`: each is hundreds of megabytes."""
        listing = self.run("images", "--format", "{{.Name}}:{{.Tag}}", quiet=True)
        for reference in listing.splitlines():
            if reference.rsplit(":", 1)[0].endswith(repository) and reference != keep:
                self.run("rmi", "--force", reference, quiet=True)

    def archive(self, reference: str, path: Path) -> Path:
        """The image as a docker-archive file under its reference: what `ctr images import` reads."""
        if not path.is_file():
            partial = path.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            self.run("push", "--quiet", reference, f"docker-archive:{partial}:{reference}")
            partial.replace(path)
        return path


# --- the images ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    reference: str  # as Pods name it, e.g. docker.io/promptopt/worker:0123abcd
    archive: Path  # its docker-archive file, for containerd
    built_seconds: float  # 0 when it was already built

    @property
    def repository(self) -> str:
        """The chart's image.repository (image.tag is `tag`)."""
        return self.reference.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.reference.rsplit(":", 1)[1]


@dataclass(frozen=True)
class Images:
    pause: BuiltImage
    worker: BuiltImage
    operator: BuiltImage

    def all(self) -> tuple[BuiltImage, ...]:
        return (self.pause, self.worker, self.operator)


def _timed(what: str, build: Callable[[], object]) -> float:
    log(f"building {what}")
    started = time.monotonic()
    build()
    seconds = time.monotonic() - started
    log(f"built {what} in {seconds:.0f} s")
    return seconds


def _base_rootfs(cache: Path) -> Path:
    """A Debian rootfs with Python 3.11, from the sources apt uses here (mmdebstrap: no root tricks, ~1 min)."""
    sources = HOST_APT_SOURCES.read_text() if HOST_APT_SOURCES.is_file() else ""
    key = hashlib.sha256(f"{DEBIAN_SUITE} {BASE_PACKAGES} {sources}".encode()).hexdigest()[:12]
    rootfs = cache / "base" / f"rootfs-{key}.tar"
    if not rootfs.is_file():
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        for stale in rootfs.parent.glob("rootfs-*"):
            stale.unlink()
        partial = rootfs.with_suffix(".partial.tar")
        command = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE,
            str(partial),
            *([str(HOST_APT_SOURCES)] if sources else []),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ImagesUnavailable(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        partial.replace(rootfs)
    return rootfs


def _ensure_base(buildah: Buildah, cache: Path) -> str:
    base_id = buildah.image_id(BASE_IMAGE)
    if base_id:
        return base_id

    def build() -> None:
        rootfs = _base_rootfs(cache)
        folder = rootfs.parent
        (folder / "Containerfile").write_text(f'FROM scratch\nADD {rootfs.name} /\nCMD ["python3"]\n')
        buildah.build(folder, folder / "Containerfile", BASE_IMAGE)

    _timed(f"the base image {BASE_IMAGE} (a Debian {DEBIAN_SUITE} rootfs with Python 3.11, by mmdebstrap)", build)
    return buildah.image_id(BASE_IMAGE)


def _ensure_pause(buildah: Buildah, cache: Path) -> BuiltImage:
    source = HERE / "pause" / "pause.c"
    tag = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    reference = f"{PAUSE_IMAGE}-{tag}"
    archive = cache / "archives" / f"pause-{tag}.tar"
    seconds = 0.0
    if not buildah.image_id(reference):

        def build() -> None:
            folder = cache / "pause"
            folder.mkdir(parents=True, exist_ok=True)
            compiled = subprocess.run(
                ["gcc", "-Os", "-static", "-o", str(folder / "pause"), str(source)], capture_output=True, text=True
            )
            if compiled.returncode != 0:
                raise ImagesUnavailable(f"gcc could not build pause.c:\n{compiled.stderr[-4000:]}")
            (folder / "Containerfile").write_text(
                'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
            )
            buildah.build(folder, folder / "Containerfile", reference)

        seconds = _timed(f"the Pod sandbox image {reference}", build)
    return BuiltImage(reference, buildah.archive(reference, archive), seconds)


def product_reference(context: Path, name: str, base_id: str) -> str:
    """docker.io/promptopt/<name>:<hash of what Dockerfile.<name> builds from>."""
    return f"docker.io/promptopt/{name}:{content_hash(context, context / f'Dockerfile.{name}', base_id)}"


def _ensure_product_image(buildah: Buildah, cache: Path, context: Path, name: str, base_id: str) -> BuiltImage:
    dockerfile = context / f"Dockerfile.{name}"
    reference = product_reference(context, name, base_id)
    repository, tag = reference.rsplit(":", 1)
    seconds = 0.0
    if not buildah.image_id(reference):
        mounts = [
            argument for path in HOST_FILES_FOR_PIP if Path(path).is_file() for argument in ("-v", f"{path}:{path}:ro")
        ]
        seconds = _timed(
            f"{reference} from {dockerfile.name}", lambda: buildah.build(context, dockerfile, reference, *mounts)
        )
        buildah.remove_other_tags(repository, reference)
    archives = cache / "archives"
    for stale in archives.glob(f"{name}-*.tar"):
        if stale.name != f"{name}-{tag}.tar":
            stale.unlink()
    return BuiltImage(reference, buildah.archive(reference, archives / f"{name}-{tag}.tar"), seconds)


def ensure_built(context: Path) -> Images:
    """The three images, built where missing or out of date (the product's two in parallel)."""
    if os.geteuid() != 0:
        raise ImagesUnavailable("building images with buildah needs root here (no user namespaces are set up)")
    try:
        debian.ensure_installed(PACKAGES, "images")
    except debian.PackagesUnavailable as unavailable:
        raise ImagesUnavailable(str(unavailable)) from None
    cache = cache_dir()
    (cache / "archives").mkdir(parents=True, exist_ok=True)
    buildah = Buildah(cache / "buildah")
    base_id = _ensure_base(buildah, cache)
    with ThreadPoolExecutor(len(PRODUCT_IMAGES) + 1) as pool:
        pause = pool.submit(_ensure_pause, buildah, cache)
        worker, operator = (
            pool.submit(_ensure_product_image, buildah, cache, context, name, base_id) for name in PRODUCT_IMAGES
        )
        return Images(pause.result(), worker.result(), operator.result())


def built(context: Path) -> bool:
    """Whether every image is built for the source in `context` (nothing is built)."""
    if shutil.which("buildah") is None:
        return False
    buildah = Buildah(cache_dir() / "buildah")
    base_id = buildah.image_id(BASE_IMAGE)
    return bool(base_id) and all(buildah.image_id(product_reference(context, name, base_id)) for name in PRODUCT_IMAGES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--context",
        type=Path,
        default=Path.cwd(),
        help="the repository root, where the Dockerfiles are (default: the current folder)",
    )
    parser.add_argument("--check", action="store_true", help="only say whether the images are built")
    args = parser.parse_args(argv)
    if args.check:
        ready = built(args.context)
        print("built" if ready else "not built")
        return 0 if ready else 1
    try:
        images = ensure_built(args.context)
    except ImagesUnavailable as unavailable:
        print(f"images: {unavailable}", file=sys.stderr)
        return 1
    for image in images.all():
        print(image.reference, image.archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
