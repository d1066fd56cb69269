"""ruff (check and format) and mypy, configured in pyproject.toml, find nothing in the code; each is shown failing on
a broken file first, so a checker that stopped checking (a path that matches nothing, a rule set gone) cannot pass
here."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A name that is never defined (pyflakes' F821) and a str passed where an int is declared (mypy's arg-type).
BROKEN_MODULE = """\
def double(count: int) -> int:
    return count * 2


print(double("two"), undefined_name)
"""


def run_checker(*args: str) -> subprocess.CompletedProcess[str]:
    """One checker from the dev extra, run as the CI runs it: from the repository root, its pyproject.toml read."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def broken_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lint") / "broken.py"
    path.write_text(BROKEN_MODULE)
    return path


def test_ruff_reports_a_broken_file(broken_module: Path):
    result = run_checker("ruff", "check", "--no-cache", str(broken_module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F821" in result.stdout


def test_ruff_finds_nothing():
    result = run_checker("ruff", "check", ".")
    assert result.returncode == 0, (
        "ruff check . found problems (`ruff check --fix` fixes the safe ones):\n" + result.stdout + result.stderr
    )


def test_ruff_format_reports_a_file_it_would_change(broken_module: Path):
    misformatted = broken_module.with_name("misformatted.py")
    misformatted.write_text("values = {'a':1,\n 'b' :2}\n")
    result = run_checker("ruff", "format", "--check", "--no-cache", str(misformatted))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 file would be reformatted" in result.stdout


def test_ruff_format_finds_nothing():
    result = run_checker("ruff", "format", "--check", ".")
    assert result.returncode == 0, "ruff format would change these files (run `ruff format`):\n" + result.stdout


def test_mypy_reports_a_broken_file(broken_module: Path):
    result = run_checker("mypy", "--no-incremental", str(broken_module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[arg-type]" in result.stdout


def test_mypy_finds_nothing():
    # No arguments: the files listed in [tool.mypy] (the product, the harness and the benchmarks).
    result = run_checker("mypy")
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"
    assert "Success: no issues found" in result.stdout


# A status field the CRD lacks: the API server would prune it without a word, so writing one must fail to type-check
# (statuses are built as the API models, whose every keyword the pydantic plugin checks).
MISSPELLED_STATUS = """\
from promptopt.api.v1alpha1 import Progress, PromptOptimizationJobStatus

PromptOptimizationJobStatus(phase="Pending", last_failure_time="2026-12-07T00:00:00Z")
PromptOptimizationJobStatus(progress=Progress(metric_call=3))
"""


def test_mypy_refuses_a_status_field_the_crd_lacks(tmp_path: Path):
    path = tmp_path / "misspelled_status.py"
    path.write_text(MISSPELLED_STATUS)
    result = run_checker("mypy", "--no-incremental", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Unexpected keyword argument "last_failure_time"' in result.stdout
    assert 'Unexpected keyword argument "metric_call"' in result.stdout
