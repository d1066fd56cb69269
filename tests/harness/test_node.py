"""The real node's own bookkeeping, without starting it (tests/pods runs it)."""

import fcntl

from promptopt_harness import node


def test_a_second_run_on_the_machine_takes_a_containerd_root_of_its_own(tmp_path, monkeypatch):
    """Two containerds on one root would corrupt it, and each run removes the containers it finds there."""
    monkeypatch.setenv("PROMPTOPT_NODE_CACHE", str(tmp_path / "cache"))
    first, second = node.RealNode(tmp_path / "first", images=None), node.RealNode(tmp_path / "second", images=None)
    assert first._containerd_root() == tmp_path / "cache" / "containerd"
    assert second._containerd_root() == tmp_path / "second" / "containerd" / "root"
    with open(tmp_path / "cache" / "containerd.lock") as lock:  # held by `first`, as its containerd runs
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("the kept root was not locked")
        except BlockingIOError:
            pass
    first._release_containerd_root()  # as stop() does
    assert node.RealNode(tmp_path / "third", images=None)._containerd_root() == tmp_path / "cache" / "containerd"
