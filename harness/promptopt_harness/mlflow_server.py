"""A real MLflow tracking server on loopback, for the tests of spec.mlflow: `mlflow server` from the test
environment (the `mlflow` package of the dev extra), a SQLite backend, and artifacts served by it from a folder of its
own.

    with MlflowServer(tmp_path) as server:
        MlflowClient(tracking_uri=server.url).register_prompt("sentiment", "Classify: {{review}}")

The server imports litellm, so it runs with litellm's bundled cost map (LITELLM_LOCAL_MODEL_COST_MAP): without it,
litellm tries the network at import and the server never starts here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from promptopt_harness.netns import NetworkNamespace
from promptopt_harness.processes import stop_process
from promptopt_harness.realkube import free_port

START_TIMEOUT_S = 180.0


class MlflowServer:
    """With `admin_password`, MLflow's basic-auth app: every request needs a user (the admin is "admin").
    With `network`, the server runs inside that network namespace, on `host` (a real node's address, where its
    Pods reach it); `url` is then that address."""

    def __init__(
        self,
        workdir: Path,
        admin_password: str | None = None,
        *,
        host: str = "127.0.0.1",
        network: NetworkNamespace | None = None,
    ):
        self.workdir = Path(workdir)
        self.host, self.network = host, network
        self.port = free_port()
        self.admin_password = admin_password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.workdir / 'mlflow.db'}",
            # Artifacts go through the server (mlflow-artifacts:/), as a shared tracking server serves them:
            # with a local --default-artifact-root every client would write that path on its own machine,
            # which a worker in a Pod does into its own filesystem (lost, with no error).
            "--artifacts-destination",
            str(self.workdir / "artifacts"),
        ]
        environment = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        if self.admin_password is not None:
            command += ["--app-name", "basic-auth"]
            environment |= {
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "promptopt-tests",
            }
        log = (self.workdir / "server.log").open("wb")
        if self.network is not None:
            command = self.network.command(command)
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=environment
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}): {self.log()[-2000:]}")
            try:
                with self.network.entered() if self.network else contextlib.nullcontext():
                    answer = urllib.request.urlopen(f"{self.url}/health", timeout=2)
                with answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT_S:.0f} s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
