"""The repository layout: no folder shadows the standard library, and the imports show the flow of a job
(API → operator → Pod → worker → reporters), no module reaching into another's internals."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_operator_folder_does_not_shadow_stdlib_operator():
    # Run from the repo root, where the folder operator/ sits first on sys.path.
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.itemgetter(1)([0, 42]))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "42"
    assert not (REPO / "operator" / "__init__.py").exists()


def test_packages_import_from_their_folders():
    import promptopt_operator
    import promptopt_worker

    assert Path(promptopt_operator.__file__).parent == REPO / "operator" / "promptopt_operator"
    assert Path(promptopt_worker.__file__).parent == REPO / "worker" / "promptopt_worker"


def test_console_script_help_lists_commands():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("promptopt")), "--help"], capture_output=True, text=True, check=True
    )
    assert "crd" in result.stdout


# --- the layering -------------------------------------------------------------------------------------------------

# Which of promptopt's own modules each part may import (besides the standard library and third parties): a module
# takes the rule of the longest name it is within, so one outside every part (promptopt.new) may import none.
MAY_IMPORT = {
    "promptopt": set(),
    "promptopt.api": {"promptopt.api"},  # the API is defined once, by itself
    "promptopt.worker_contract": {"promptopt.api"},
    "promptopt.prompt_contract": set(),  # stdlib only: the simulated LLM parses with it where litellm is absent
    # Its ContractError is the prompt contract's: one for both. No litellm or gepa either: the example services read it.
    "promptopt.service_contract": {"promptopt.prompt_contract"},
    # The operator and the worker meet only in the API and the contracts (the Pod's environment and result).
    "promptopt_operator": {"promptopt_operator", "promptopt.api", "promptopt.worker_contract"},
    "promptopt_worker": {
        "promptopt_worker",
        "promptopt.api",
        "promptopt.worker_contract",
        "promptopt.prompt_contract",
        "promptopt.service_contract",
    },
    # The reporters are where a run ends: they know the plain data of a run, not what produced it.
    "promptopt_worker.reporting": {
        "promptopt.api",
        "promptopt.worker_contract",
        "promptopt_worker.problem",
        "promptopt_worker.kube",
        "promptopt_worker.redaction",
    },
    "promptopt.simulated_llm": {"promptopt.simulated_llm", "promptopt.prompt_contract"},
    # The example services (test doubles of a user's RAG and scorer) answer in the simulated world's terms.
    "promptopt.example_services": {
        "promptopt.example_services",
        "promptopt.service_contract",
        "promptopt.simulated_llm",
    },
    # The report reads a run's result file: the API's plain data and the contract's model of the file, nothing of the
    # code that produced it.
    "promptopt.report": {"promptopt.api", "promptopt.worker_contract"},
    "promptopt.cli": {"promptopt.api", "promptopt.report", "promptopt_operator", "promptopt_worker"},  # the entry point
}
# `promptopt run --simulated-llm` starts the simulated LLM, a test double the product ships for the quickstart.
EXCEPTIONS = {
    ("promptopt_worker.main", "promptopt.simulated_llm"),
    ("promptopt.api.docs", "promptopt.service_contract"),
}  # the API reference documents the contract
TEST_CODE = ("promptopt_harness",)


def product_modules() -> dict[str, Path]:
    """The modules the promptopt distribution installs (pyproject's packages, from their folders), by name."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules = {}
    for package in setuptools["packages"]:
        top, *subpackage = package.split(".")
        for path in (REPO / setuptools["package-dir"].get(top, top)).joinpath(*subpackage).glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


PRODUCT_MODULES = product_modules()
FIRST_PARTY = {module.split(".")[0] for module in PRODUCT_MODULES}


def within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(what is imported, the name it is bound to, line) of every import, lazy ones too: `from a.b import c` imports
    a.b.c, whether c is a module or a name in a.b."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.asname or alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: a relative import"
            found += [(f"{node.module}.{alias.name}", alias.asname or alias.name, node.lineno) for alias in node.names]
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def layering_problems(module: str, tree: ast.Module) -> list[str]:
    rule = max((part for part in MAY_IMPORT if within(module, part)), key=len)
    problems = []
    for imported, _, line in imports(tree):
        if any(within(imported, test_code) for test_code in TEST_CODE):
            problems.append(f"{module}:{line} imports test code: {imported}")
        elif (
            imported.split(".")[0] in FIRST_PARTY
            and not any(within(imported, allowed) for allowed in MAY_IMPORT[rule])
            and not any(module == importer and within(imported, target) for importer, target in EXCEPTIONS)
        ):
            problems.append(f"{module}:{line} imports {imported}")
    return problems


def private_uses(module: str, tree: ast.Module) -> list[str]:
    """Uses of another module's _-prefixed names: imported by name, or read as an attribute of what was imported."""
    problems, bound = [], set()
    for imported, name, line in imports(tree):
        if any(is_private(part) for part in imported.split(".")):
            problems.append(f"{module}:{line} imports {imported}")
        bound.add(name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                problems.append(f"{module}:{node.lineno} uses {ast.unparse(node)}")
    return problems


def test_the_rules_name_product_modules():
    assert {
        "promptopt.api.v1alpha1",
        "promptopt_operator.lifecycle",
        "promptopt_worker.reporting",
        "promptopt.cli",
    } <= set(PRODUCT_MODULES)
    named = {*MAY_IMPORT, *(name for allowed in MAY_IMPORT.values() for name in allowed), *sum(EXCEPTIONS, ())}
    assert not [name for name in named if not any(within(module, name) for module in PRODUCT_MODULES)]


@pytest.mark.parametrize("module", sorted(PRODUCT_MODULES))
def test_imports_follow_the_flow(module):
    assert layering_problems(module, ast.parse(PRODUCT_MODULES[module].read_text())) == []


@pytest.mark.parametrize("module", sorted(PRODUCT_MODULES))
def test_no_module_uses_another_modules_private_names(module):
    assert private_uses(module, ast.parse(PRODUCT_MODULES[module].read_text())) == []
