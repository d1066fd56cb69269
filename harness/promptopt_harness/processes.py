"""Processes the harness starts and stops: `stop_process` for one, and what the control plane (realkube) and the
real node (node) share: named processes started in a folder of their own, each logged to <folder>/<name>.log,
inside a network namespace when there is one, stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from promptopt_harness.netns import NetworkNamespace


def stop_process(process: subprocess.Popen, timeout: float = 15, signum: int = signal.SIGTERM) -> None:
    """`signum` (SIGTERM), then SIGKILL if the process has not ended within `timeout` seconds; nothing if it had."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ManagedProcesses:
    """Subclasses define start() and stop(); used as a context manager, a start() that fails still stops what it
    started. `workdir` None: a temporary folder, removed by remove_workdir()."""

    def __init__(self, workdir: str | Path | None, temp_prefix: str, network: NetworkNamespace | None = None):
        self._tempdir = None if workdir else tempfile.TemporaryDirectory(prefix=temp_prefix)
        self.workdir = Path(workdir or self._tempdir.name)  # type: ignore[union-attr]
        self.network = network
        self._processes: dict[str, subprocess.Popen] = {}

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> dict[str, int]:
        """The processes running, by name: benchmarks read their CPU."""
        return {name: process.pid for name, process in self._processes.items()}

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        command = argv if self.network is None else self.network.command(argv)
        self._processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def _exited(self) -> str | None:
        """A message naming the first process that has exited, with the end of its log; None while all run."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                return f"{name} exited with {process.returncode}:\n{self.log(name)[-4000:]}"
        return None

    def _stop_process(self, name: str, timeout: float = 15) -> None:
        if (process := self._processes.pop(name, None)) is not None:
            stop_process(process, timeout)

    def remove_workdir(self) -> None:
        """The temporary folder, when there is one."""
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
