"""The README's two set-up commands are the ones that work: CI runs the test command exactly."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_commands():
    section = REPO.joinpath("README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands():
    install_and_run, run_tests = setup_commands()
    assert "promptopt run" in install_and_run and "--simulated-llm" in install_and_run
    assert "pytest" in run_tests


def test_ci_runs_the_readme_test_command():
    _, run_tests = setup_commands()
    assert run_tests in REPO.joinpath(".ci", "run").read_text().splitlines()


def test_the_main_job_exists():
    install_and_run, _ = setup_commands()
    example = re.search(r"(examples/\S+\.yaml)", install_and_run).group(1)
    assert (REPO / example).is_file()
