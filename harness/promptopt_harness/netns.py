"""A network namespace of the test run's own, and the two ways across its border that tests need.

The real node (promptopt_harness.node) lives in one: its bridge, the addresses Pods reach and every listener
are confined to it, so nothing a test starts can be reached from, or reach, anything but this machine's
loopback and the namespaces the run made (this workplace's network rule, and good practice: no forwarding,
no NAT). Crossing it:

- `NetworkNamespace.entered()`: the calling thread is inside while the block runs; a socket created then
  stays in the namespace for good, so a server started there (the simulated LLM, an example service) serves
  Pods, from a thread of the test process;
- `LoopbackForwarder`: a port on this machine's loopback whose connections are made, from the test process,
  to an address inside (the API server, MLflow): kubectl, helm and the tests' clients reach the node this way.

Linux only, as root (`ip netns` from iproute2, nsenter from util-linux). Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    # os.setns arrived in Python 3.12; the harness runs on 3.11 too.
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


class NetworkNamespace:
    """`ip netns add NAME` on `create()`, `ip netns delete NAME` on `delete()`; its loopback is up."""

    def __init__(self, name: str):
        self.name = name
        self.path = NETNS_DIR / name

    def create(self) -> NetworkNamespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, text=True)
        self.ip("link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        """Deleting the namespace removes every interface in it (the bridge, the Pods' veth ends)."""
        if self.path.exists():
            subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as a command that runs inside the namespace. nsenter rather than `ip netns exec`, which also
        gives each command a mount namespace of its own: the kubelet's volume mounts must be seen by containerd."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def ip(self, *args: str) -> str:
        return subprocess.run(self.command(["ip", *args]), check=True, capture_output=True, text=True).stdout

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread inside the namespace for the block (setns moves one thread), then back."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)

    def connect(self, address: tuple[str, int], timeout: float = 10) -> socket.socket:
        with self.entered():
            connection = socket.create_connection(address, timeout=timeout)
        connection.settimeout(None)
        return connection


class LoopbackForwarder:
    """Listens on 127.0.0.1 (outside) and relays each connection to `target` inside `namespace`, byte for byte
    (TLS passes through untouched), two threads a connection so that a reader who stops reading (a watch left
    open) holds back only its own. `port` is where it listens."""

    def __init__(self, namespace: NetworkNamespace, target: tuple[str, int]):
        self.namespace, self.target = namespace, target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> LoopbackForwarder:
        threading.Thread(target=self._accept, name=f"forward-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stops listening and cuts every relayed connection."""
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def _accept(self) -> None:
        while True:
            try:
                outside, _ = self._listener.accept()
            except OSError:
                return  # stopped
            try:
                inside = self.namespace.connect(self.target)
            except OSError:
                outside.close()  # the client sees a closed connection, as if nothing listened
                continue
            with self._lock:
                self._open.update((outside, inside))
            relays = [
                threading.Thread(target=self._relay, args=pair, daemon=True)
                for pair in ((outside, inside), (inside, outside))
            ]
            for relay in relays:
                relay.start()
            threading.Thread(target=self._close_after, args=(relays, outside, inside), daemon=True).start()

    @staticmethod
    def _relay(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # pass the half-close on: the other direction may still have bytes
        except OSError:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)  # a broken side ends the other direction too

    def _close_after(self, relays: list[threading.Thread], *sockets: socket.socket) -> None:
        for relay in relays:
            relay.join()
        with self._lock:
            self._open.difference_update(sockets)
        for sock in sockets:
            sock.close()
