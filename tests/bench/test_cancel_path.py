"""The operator benchmark's cancel path: where a cancel's time goes, read from the API server's audit log (entries
shaped as kube-apiserver v1.33 writes them at Metadata level). The benchmark itself runs the real server."""

from bench.operator_load import cancel_path
from promptopt_harness import realkube


def entry(verb, resource, name, received, done, user="system:serviceaccount:promptopt-system:promptopt", agent=""):
    """One audit entry; times are seconds past 12:00:00 (microseconds kept, as the server writes them)."""
    return {
        "verb": verb,
        "user": {"username": user},
        "userAgent": agent,
        "objectRef": {"resource": resource, "namespace": "bench", "name": name},
        "requestReceivedTimestamp": f"2026-12-07T12:00:{received:09.6f}Z",
        "stageTimestamp": f"2026-12-07T12:00:{done:09.6f}Z",
    }


def cancelled_job(job, start, operator_after, node_after):
    """The four writes of one cancel: the benchmark's, the operator's Pod delete, then the kubelet's two."""
    pod = f"{job}-worker-1"
    delete_at = start + 0.010 + operator_after
    removed_at = delete_at + 0.020 + node_after
    return [
        entry("patch", "promptoptimizationjobs", job, start, start + 0.010, user="admin", agent="promptopt-bench"),
        entry("delete", "pods", pod, delete_at, delete_at + 0.020),
        entry("patch", "pods", pod, removed_at - 0.005, removed_at - 0.004, user=realkube.KUBELET_USER),
        entry("delete", "pods", pod, removed_at - 0.002, removed_at, user=realkube.KUBELET_USER),
    ]


def test_each_part_of_a_cancel_is_timed_from_the_servers_clock():
    audit = [
        *cancelled_job("lat-00000", 1.0, operator_after=0.030, node_after=0.100),
        *cancelled_job("lat-00001", 1.5, operator_after=0.050, node_after=0.300),
        *cancelled_job("lat-00002", 2.0, operator_after=0.040, node_after=0.200),
    ]
    path = cancel_path(audit)
    assert path["cancel_write"]["n"] == 3 and round(path["cancel_write"]["max"]) == 10
    assert round(path["operator"]["p50"]) == 40 and round(path["operator"]["p99"]) == 50
    assert round(path["delete_write"]["p99"]) == 20
    assert round(path["node"]["p50"]) == 200 and round(path["node"]["p99"]) == 300


def test_the_operators_own_writes_and_the_kubelets_status_patch_are_not_taken_for_the_cancel():
    audit = cancelled_job("lat-00000", 1.0, operator_after=0.030, node_after=0.100)
    # The operator's status write is a patch of the job too (its status subresource), after the cancel.
    status = entry("patch", "promptoptimizationjobs", "lat-00000", 1.2, 1.21, agent="OpenAPI-Generator/31.0.0")
    status["objectRef"]["subresource"] = "status"
    path = cancel_path([*audit, status])
    assert round(path["cancel_write"]["max"]) == 10 and round(path["operator"]["max"]) == 30


def test_a_pod_never_removed_leaves_the_nodes_part_uncounted_rather_than_wrong():
    audit = cancelled_job("lat-00000", 1.0, operator_after=0.030, node_after=0.100)[:2]
    path = cancel_path(audit)
    assert path["operator"]["n"] == 1 and path["node"] == {"n": 0, "p50": None, "p99": None, "max": None}
