"""ruff and mypy, configured in pyproject.toml, find nothing in the code; each is shown failing on a broken file
first, so a checker that stopped checking (a path that matches nothing, a rule set gone) cannot pass here."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A name that is never defined (pyflakes' F821) and a str passed where an int is declared (mypy's arg-type).
BROKEN_MODULE = '''\
def double(count: int) -> int:
    return count * 2


print(double("two"), undefined_name)
'''


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


def test_mypy_reports_a_broken_file(broken_module: Path):
    result = run_checker("mypy", "--no-incremental", str(broken_module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[arg-type]" in result.stdout


def test_mypy_finds_nothing():
    # No arguments: the files listed in [tool.mypy] (the product, the harness and the benchmarks).
    result = run_checker("mypy")
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"
    assert "Success: no issues found" in result.stdout
