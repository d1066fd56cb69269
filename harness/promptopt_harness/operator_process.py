"""The real operator (`promptopt operator`) as a child process, for tests, benchmarks and the e2e script."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV
from promptopt_harness.processes import stop_process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OperatorProcess:
    """Starts `promptopt operator` against a kubeconfig; ready once its liveness endpoint answers."""

    def __init__(self, kubeconfig: str | Path, *flags: str, log_path: str | Path, env: dict[str, str] | None = None):
        self.kubeconfig, self.flags, self.log_path = str(kubeconfig), flags, Path(log_path)
        self.env = env or {}
        self.liveness_port, self.metrics_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 30) -> OperatorProcess:
        command = [
            str(Path(sys.executable).with_name("promptopt")),
            "operator",
            "--liveness-port",
            str(self.liveness_port),
            "--metrics-port",
            str(self.metrics_port),
            *self.flags,
        ]
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, **LITELLM_BUNDLED_COST_MAP_ENV, **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the operator did not become live in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.process is not None:
            stop_process(self.process, timeout, sig)

    def kill(self) -> None:
        """Dies at once, as a crashed or OOM-killed operator would: no cleanup of any kind."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def scrape(self) -> str:
        return urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
