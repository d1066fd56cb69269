"""The Reconciler with a fake Kubernetes client: what it asks of the API, how it decides on what it last saw and
decides again when the job changed under it, and how it retries when the API fails."""

import asyncio
import copy


from promptopt.api.merge_patch import apply_merge_patch
from promptopt_operator.kube import StaleJob
from promptopt_operator.lifecycle import reconcile_error_delay
from promptopt_operator.metrics import OperatorMetrics
from promptopt_operator.pods import WorkerPod
from promptopt_operator.queue import QueueEntry
from promptopt_operator.reconciler import Reconciler
from promptopt_operator.settings import OperatorSettings

SPEC = {
    "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/x"},
    "prompts": [{"name": "p", "template": "{{q}}"}],
    "task": {"model": "openai/y"},
}


def job_body(name, created="2026-12-01T10:00:00Z", **status):
    return {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": created,
            "resourceVersion": "1",
        },
        "spec": copy.deepcopy(SPEC),
        "status": status,
    }


class FakeKube:
    """The operator's KubeClient in memory: jobs by name, every call recorded, failures on demand. As the API
    server does, every write moves the job's resourceVersion, a status patch at an older one is refused, and a write
    answers with the job's metadata only."""

    def __init__(self, *jobs):
        self.jobs = {job["metadata"]["name"]: job for job in jobs}
        self.calls = []
        self.failures = 0  # the next this many calls raise, as an unreachable API server would

    def _call(self, *call):
        self.calls.append(call)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("API server unreachable")

    async def patch_job_status(self, namespace, name, patch, resource_version):
        self._call("patch_job_status", name, patch)
        if name not in self.jobs:
            return None
        if resource_version != self.jobs[name]["metadata"]["resourceVersion"]:
            raise StaleJob(name)
        self.jobs[name]["status"] = apply_merge_patch(self.jobs[name]["status"], patch)
        self.changed(name)
        return copy.deepcopy(self.jobs[name]["metadata"])  # as the operator asks: PartialObjectMetadata

    def changed(self, name):
        metadata = self.jobs[name]["metadata"]
        metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)

    async def create_pod(self, namespace, manifest):
        self._call("create_pod", manifest["metadata"]["name"])
        return True

    async def delete_pod(self, namespace, name, grace_seconds):
        self._call("delete_pod", name)

    async def delete_job(self, namespace, name):
        self._call("delete_job", name)
        self.jobs.pop(name, None)


def reconciler_for(kube, events, **settings):
    reconciler = Reconciler(
        kube,
        OperatorSettings(**settings),
        OperatorMetrics(lambda: []),
        post_event=lambda body, event: events.append((body["metadata"]["name"], event.reason)),
    )
    for name in kube.jobs:
        watched(reconciler, kube, name)
    return reconciler


def watched(reconciler, kube, name):
    """The job's watch event reaches the reconciler: whether it says something new."""
    return reconciler.job_seen(("ns", name), copy.deepcopy(kube.jobs[name]))


def test_a_new_job_gets_its_pod_its_status_and_an_event():
    kube, events = FakeKube(job_body("a")), []

    async def run():
        await reconciler_for(kube, events).reconcile("ns", "a")

    asyncio.run(run())
    assert [c[0] for c in kube.calls] == ["create_pod", "patch_job_status"]
    assert kube.jobs["a"]["status"]["phase"] == "Pending" and kube.jobs["a"]["status"]["attempts"] == 1
    assert events == [("a", "PodCreated")]


def test_the_echo_of_its_own_write_is_not_reconciled_and_nothing_is_read():
    kube, events = FakeKube(job_body("a")), []

    async def run():
        reconciler = reconciler_for(kube, events)
        await reconciler.reconcile("ns", "a")
        assert not watched(reconciler, kube, "a")
        await reconciler.reconcile("ns", "a")  # a recheck: decides on the body its write returned

    asyncio.run(run())
    assert [c[0] for c in kube.calls] == ["create_pod", "patch_job_status"]


def test_a_job_changed_under_a_decision_is_decided_again_on_its_next_event():
    kube, events = FakeKube(job_body("a")), []

    async def run():
        reconciler = reconciler_for(kube, events)
        kube.jobs["a"]["spec"]["cancel"] = True  # the user cancels; the watch has not said so yet
        kube.jobs["a"]["metadata"]["generation"] = 2  # as the API server counts every change of a spec
        kube.changed("a")
        await reconciler.reconcile("ns", "a")
        assert reconciler.queue.requeues(("ns", "a")) == 0  # a conflict is no error: nothing to back off from
        # The newer job's event is reconciled, though the inputs it shows are those of the last decision made.
        assert watched(reconciler, kube, "a")
        await reconciler.reconcile("ns", "a")

    asyncio.run(run())
    # The Pod decided on the old body is created, the status patch at the old version is refused, and the decision
    # on the job as it is deletes that Pod again and says Cancelled.
    assert [c[0] for c in kube.calls] == ["create_pod", "patch_job_status", "delete_pod", "patch_job_status"]
    assert kube.jobs["a"]["status"]["phase"] == "Cancelled"
    assert events == [("a", "Cancelled")]


def test_a_job_deleted_under_a_decision_is_forgotten_without_an_error():
    kube, events = FakeKube(job_body("a")), []

    async def run():
        reconciler = reconciler_for(kube, events)
        del kube.jobs["a"]  # deleted; its DELETED event has not arrived
        await reconciler.reconcile("ns", "a")
        return reconciler

    reconciler = asyncio.run(run())
    assert reconciler.record(("ns", "a")) is None  # forgotten whole: no errors, no recheck left
    assert events == []


def test_a_job_not_seen_through_its_watch_is_left_to_its_event():
    kube, events = FakeKube(), []

    async def run():
        await reconciler_for(kube, events).reconcile("ns", "gone")

    asyncio.run(run())
    assert kube.calls == [] and events == []


def test_api_errors_are_retried_with_a_growing_delay_that_resets_on_success(caplog):
    kube, events = FakeKube(job_body("a")), []
    in_a_row = []

    async def run():
        reconciler = reconciler_for(kube, events)
        kube.failures = 3
        await reconciler.reconcile("ns", "a")
        first_retry = reconciler.queue.delayed(("ns", "a"))
        for _ in range(3):
            in_a_row.append(reconciler.queue.requeues(("ns", "a")))
            await reconciler.reconcile("ns", "a")
        return reconciler, first_retry

    with caplog.at_level("ERROR", logger="promptopt_operator.reconciler"):
        reconciler, first_retry = asyncio.run(run())
    assert 0.9 < first_retry <= 1.0
    assert [r.getMessage() for r in caplog.records] == [
        f"reconciling ns/a failed ({n} in a row); retrying in {delay} s" for n, delay in ((1, 1), (2, 2), (3, 4))
    ]
    assert in_a_row == [1, 2, 3]
    assert kube.jobs["a"]["status"]["phase"] == "Pending"  # the fourth try went through
    assert reconciler.queue.requeues(("ns", "a")) == 0  # and the next failure starts the back-off over
    assert reconciler.metrics.registry.get_sample_value("promptopt_reconcile_errors_total") == 3


def test_the_error_delay_doubles_and_is_capped():
    assert [reconcile_error_delay(n) for n in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]


def test_a_recheck_is_reconciled_by_the_workers_and_close_stops_them():
    kube, events = FakeKube(job_body("a")), []

    async def run():
        reconciler = reconciler_for(kube, events)
        reconciler.start()
        reconciler.recheck(("ns", "a"), 0.0)
        for _ in range(100):  # the timer fires and a worker reconciles
            if kube.calls:
                break
            await asyncio.sleep(0.05)
        await reconciler.finish_tasks()
        await reconciler.close()
        reconciler.enqueue(("ns", "a"))  # closed: nothing takes it
        await asyncio.sleep(0.1)
        return reconciler

    reconciler = asyncio.run(run())
    assert [c[0] for c in kube.calls] == ["create_pod", "patch_job_status"]
    assert reconciler.running_tasks == 0


def test_a_burst_of_events_for_one_job_is_one_reconcile():
    kube, events = FakeKube(job_body("a"), job_body("b")), []

    async def run():
        reconciler = reconciler_for(kube, events)
        for _ in range(5):
            reconciler.enqueue(("ns", "a"))
            reconciler.enqueue(("ns", "b"))
        assert len(reconciler.queue) == 2
        reconciler.start()
        await reconciler.finish_tasks()
        await reconciler.close()

    asyncio.run(run())
    assert sorted(c[:2] for c in kube.calls) == [
        ("create_pod", "a-worker-1"),
        ("create_pod", "b-worker-1"),
        ("patch_job_status", "a"),
        ("patch_job_status", "b"),
    ]


def test_positions_at_the_queue_front_are_refreshed_soon_after_a_start(monkeypatch):
    monkeypatch.setattr("promptopt_operator.reconciler.QUEUE_POSITION_DELAY_SECONDS", 0.0)
    running = job_body("running", created="2026-12-01T10:00:00Z", phase="Running", attempts=1)
    waiting = [
        job_body(
            f"w{i}", created=f"2026-12-01T10:00:0{i + 1}Z", phase="Queued", queuePosition=i + 2, observedGeneration=1
        )
        for i in range(3)
    ]
    kube, events = FakeKube(running, *waiting), []

    async def run():
        reconciler = reconciler_for(kube, events, max_running_jobs=1)
        # The running job finished: w0 may start, and everyone behind it moves up one.
        reconciler.line.put(QueueEntry(("ns", "running"), "2026-12-01T10:00:00Z", "Succeeded"))
        reconciler.wake_waiting()
        await reconciler.finish_tasks()

    asyncio.run(run())
    assert [c[1] for c in kube.calls if c[0] == "create_pod"] == ["w0-worker-1"]
    assert {name: kube.jobs[name]["status"].get("queuePosition") for name in ("w0", "w1", "w2")} == {
        "w0": None,
        "w1": 1,
        "w2": 2,
    }


def test_the_sweep_gives_every_waiting_job_its_place_from_one_plan_and_looks_at_running_ones():
    """Beyond the front of the line too (the 50 refreshed after each start); it starts nobody itself."""
    running = job_body("running", phase="Running", attempts=1, startTime="2026-12-01T10:00:00Z")
    waiting = [
        job_body(
            f"w{i:02d}", created=f"2026-12-01T10:01:{i:02d}Z", phase="Queued", queuePosition=99, observedGeneration=1
        )
        for i in range(60)
    ]
    kube, events = FakeKube(running, *waiting), []

    async def run():
        reconciler = reconciler_for(kube, events, max_running_jobs=1)
        reconciler.pod_index = {("ns", "running"): [WorkerPod("running-worker-1", 1, "Running", deleting=False)]}
        reconciler.start()
        await reconciler.sweep()
        await reconciler.finish_tasks()
        first = list(kube.calls)
        await reconciler.sweep()  # nothing changed since: nothing to write
        await reconciler.finish_tasks()
        await reconciler.close()
        return first

    first = asyncio.run(run())
    assert {name: kube.jobs[name]["status"]["queuePosition"] for name in kube.jobs if name != "running"} == {
        f"w{i:02d}": i + 1 for i in range(60)
    }
    # The running job was queued and looked at too (its stored status lacked its conditions).
    assert sorted(c[1] for c in first) == ["running", *(f"w{i:02d}" for i in range(60))]
    assert {c[0] for c in first} == {"patch_job_status"}
    assert kube.calls == first
