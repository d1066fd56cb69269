"""The repository layout must not shadow the standard library."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_operator_folder_does_not_shadow_stdlib_operator():
    # Run from the repo root, where the folder operator/ sits first on sys.path.
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.itemgetter(1)([0, 42]))"],
        cwd=REPO, capture_output=True, text=True, check=True,
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
