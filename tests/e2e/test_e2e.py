"""tests/e2e/run_e2e.sh on this machine (E2E_LOCAL=1): the examples through kubectl, end to end."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run_e2e.sh")


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_examples_succeed_a_job_is_cancelled_another_deleted_and_nothing_is_left():
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "E2E_LOCAL": "1", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=220,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "e2e passed" in output, output[-8000:]
    started = [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", output)]
    assert len(started) == 4  # the API server (with etcd), the simulated LLM, the kubelet and the operator
    assert [pid for pid in started if running(pid)] == [], "the script left processes running"
