"""The container images, checked from their Dockerfiles and constraints (no container engine here):
slim Python base, numeric non-root user, only the extra each needs, pinned dependencies consistent with
pyproject.toml, no secrets or caches baked in, the right entrypoint, and only what runs in a Pod: neither the
test harness nor any test code."""

import ast
import fnmatch
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV
from promptopt_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
HARNESS = tomllib.loads((REPO / "harness" / "pyproject.toml").read_text())
# What only tests and benchmarks use: never copied into an image's build.
TEST_FOLDERS = ("harness", "tests", "bench")
BASE_IMAGE = "python:3.11-slim"
IMAGES = {"operator": "operator", "worker": "worker"}  # Dockerfile.<name>: the extra it installs
SECRET_WORDS = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
FORBIDDEN_RELEASES = {"litellm": {"1.82.7", "1.82.8"}}  # compromised releases


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """The Dockerfile's stages (split at FROM), each a list of instructions; continuation lines joined."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), arguments.strip()))
    return stages


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(instruction.arguments))
    return env


def pip_installs(stages: list[list[Instruction]]) -> list[str]:
    return [i.arguments for stage in stages for i in stage if i.keyword == "RUN" and "pip install" in i.arguments]


@pytest.fixture(params=sorted(IMAGES))
def image(request):
    """(name, the extra it installs, its stages)."""
    return request.param, IMAGES[request.param], parse_dockerfile(REPO / f"Dockerfile.{request.param}")


def test_every_stage_starts_from_slim_python(image):
    _, _, stages = image
    assert [stage[0].arguments.split()[0] for stage in stages] == [BASE_IMAGE] * len(stages)


def test_runs_as_the_numeric_non_root_worker_user(image):
    _, _, stages = image
    users = [i.arguments for i in stages[-1] if i.keyword == "USER"]
    uid = OperatorSettings().worker_uid
    # Numeric, so that the kubelet can check runAsNonRoot; the same as the worker Pods' runAsUser.
    assert users and users[-1] == f"{uid}:{uid}" and uid != 0


def test_entrypoint_runs_its_promptopt_command(image):
    name, _, stages = image
    entrypoints = [i.arguments for i in stages[-1] if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["promptopt", name]  # exec form: signals reach promptopt


def test_installs_only_its_extra_with_pinned_dependencies_and_no_cache(image):
    _, extra, stages = image
    (install,) = pip_installs(stages)
    assert f'".[{extra}]"' in install and "--no-cache-dir" in install
    # PIP_CONSTRAINT reaches pip's isolated build of promptopt too (the pinned setuptools).
    assert f"PIP_CONSTRAINT=constraints/{extra}.txt" in install
    copied = [i.arguments.split() for stage in stages for i in stage if i.keyword == "COPY"]
    assert [f"constraints/{extra}.txt", f"constraints/{extra}.txt"] in copied


def test_no_secret_is_baked_in(image):
    _, _, stages = image
    for stage in stages:
        for instruction in stage:
            if instruction.keyword in ("ENV", "ARG"):
                names = [item.split("=", 1)[0] for item in shlex.split(instruction.arguments)]
                assert not [n for n in names if SECRET_WORDS.search(n)], instruction
            assert not (instruction.keyword == "COPY" and instruction.arguments.split()[0] in (".", "./")), (
                "copy named paths only: the whole context may hold credentials"
            )


def test_worker_image_never_downloads_the_litellm_cost_map():
    stages = parse_dockerfile(REPO / "Dockerfile.worker")
    assert env_of(stages[-1]).items() >= LITELLM_BUNDLED_COST_MAP_ENV.items()


def test_final_stage_takes_only_the_virtual_environment(image):
    _, _, stages = image
    copies = [i.arguments for i in stages[-1] if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/promptopt /opt/promptopt"]
    assert env_of(stages[-1])["PATH"].startswith("/opt/promptopt/bin:")


# --- the build context ---------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps the path (or a folder holding it) out of the build context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


def test_the_build_context_holds_what_the_images_copy_and_nothing_private(image):
    _, _, stages = image
    patterns = dockerignore_patterns()
    sources = [
        source
        for stage in stages
        for i in stage
        if i.keyword == "COPY" and "--from" not in i.arguments
        for source in i.arguments.split()[:-1]
    ]
    for source in sources:
        assert (REPO / source).exists() and not ignored(source, patterns), source
    # pyproject's package folders and readme are all copied, so `pip install .` can build the package.
    needed = {*PYPROJECT["tool"]["setuptools"]["package-dir"].values(), PYPROJECT["project"]["readme"]}
    assert {folder.split("/")[0] for folder in needed} <= set(sources)
    for private in (
        ".git/config",
        ".venv/bin/python",
        ".env",
        "tests/conftest.py",
        "deploy/helm",
        "x/kubeconfig",
        "promptopt/__pycache__/cli.cpython-311.pyc",
        "harness/pyproject.toml",
        "bench/__main__.py",
    ):
        assert ignored(private, patterns), private


# --- only what runs in a Pod -------------------------------------------------------------------------------------


def installed_modules() -> list[Path]:
    """The Python files `pip install .` puts into an image: those of each package pyproject lists, from its folder."""
    package_dirs = PYPROJECT["tool"]["setuptools"]["package-dir"]
    modules = []
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        top, *subpackage = package.split(".")
        modules += sorted((REPO / package_dirs.get(top, top)).joinpath(*subpackage).glob("*.py"))
    return modules


def imported_distributions(module: Path, in_images: set[str]) -> set[str]:
    """The distributions whose top-level modules the module imports anywhere (lazily too), standard library aside:
    for a module that several distributions install (mlflow: mlflow, mlflow-skinny, mlflow-tracing), the one an
    image pins, if any."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    installed = packages_distributions()
    found = set()
    for name in names - set(sys.stdlib_module_names):
        providers = {canonicalize_name(d) for d in installed.get(name, [f"{name} (not installed)"])}
        found |= (providers & in_images) or providers
    return found


def test_the_images_copy_neither_the_harness_nor_tests(image):
    _, _, stages = image
    sources = [
        source
        for stage in stages
        for i in stage
        if i.keyword == "COPY" and "--from" not in i.arguments
        for source in i.arguments.split()[:-1]
    ]
    assert not [source for source in sources if source.split("/")[0] in TEST_FOLDERS]
    assert all(ignored(folder, dockerignore_patterns()) for folder in TEST_FOLDERS)


def test_no_image_extra_requires_the_harness_or_a_test_runner():
    test_only = {canonicalize_name(HARNESS["project"]["name"]), "pytest"}
    for extra in sorted(set(IMAGES.values())):
        assert not {canonicalize_name(r.name) for r in requirements_of(extra)} & test_only, extra
        assert not set(pins(extra)) & test_only, extra


def test_the_installed_packages_hold_no_test_code():
    """No package of the harness, no test module, and no import of what only tests have: every module the images
    install imports the standard library, promptopt's own packages and what an image's constraints pin only."""
    harness_packages = set(HARNESS["tool"]["setuptools"]["packages"])
    assert not harness_packages & set(PYPROJECT["tool"]["setuptools"]["packages"])
    in_images = {canonicalize_name(PYPROJECT["project"]["name"]), *pins("operator"), *pins("worker")}
    modules = installed_modules()
    assert modules
    for module in modules:
        assert not module.name.startswith("test_") and module.name != "conftest.py", module
        imported = imported_distributions(module, in_images)
        assert imported <= in_images, (
            f"{module.relative_to(REPO)} imports {sorted(imported - in_images)}, which no image installs"
        )


# --- constraints -----------------------------------------------------------------------------------------------


def requirements_of(extra: str) -> list[Requirement]:
    """The project's dependencies with this extra, following self-references such as promptopt[operator,worker]."""
    wanted, seen, found = [extra], set(), [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    while wanted:
        current = wanted.pop()
        if current in seen:
            continue
        seen.add(current)
        for text in PYPROJECT["project"]["optional-dependencies"][current]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(PYPROJECT["project"]["name"]):
                wanted.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def pins(extra: str) -> dict[str, Version]:
    pinned = {}
    for line in (REPO / "constraints" / f"{extra}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints/{extra}.txt: {line!r} is not an exact pin"
            pinned[canonicalize_name(name)] = Version(version)
    return pinned


# The images' constraints, and the test environment's (constraints/dev.txt, the README's test command).
CONSTRAINED = [*sorted(set(IMAGES.values())), "dev"]


@pytest.mark.parametrize("extra", CONSTRAINED)
def test_constraints_pin_every_dependency_within_pyproject(extra):
    pinned = pins(extra)
    # The images pin the build backend too (PIP_CONSTRAINT reaches pip's isolated build); the test venv builds
    # promptopt with whatever setuptools pip's isolated build takes.
    build_requirements = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]] if extra != "dev" else []
    for requirement in requirements_of(extra) + build_requirements:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not pinned: run tools/compile_constraints.py {extra}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} does not satisfy pyproject's {requirement}: run tools/compile_constraints.py"
        )


@pytest.mark.parametrize("extra", CONSTRAINED)
def test_constraints_never_allow_a_compromised_release(extra):
    pinned = pins(extra)
    for name, versions in FORBIDDEN_RELEASES.items():
        assert str(pinned.get(name)) not in versions


def test_the_operator_image_carries_no_optimizer_or_llm_client():
    assert not {"gepa", "litellm", "openai"} & set(pins("operator"))
