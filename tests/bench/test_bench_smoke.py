"""`python -m bench --quick`: every benchmark path runs at toy sizes and the table has every row, the operator
benchmarks on a real kube-apiserver.

No timing is asserted here: speed targets belong to the benchmark's report (docs/performance.md), and a
MISS is a finding, not a failure.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

OPERATOR_ROWS = [
    "create → Pod created, p50 (ms)",
    "create → Pod created, p99 (ms)",
    "cancel → Pod deleted, p50 (ms)",
    "cancel → Pod deleted, p99 (ms)",
    "create → job Running, p50 / p99 (ms)",
    "launch throughput",
    "operator peak RSS (MiB, VmHWM)",
    "operator API requests per job",
    "operator CPU (s)",
    "Pods per job (max)",
    "cancel: the operator's part (cancel written → Pod delete arrives), p99 (ms)",
    "cancel: the node's part (Pod delete written → Pod removed), p99 (ms)",
    "cancel phase, first cancel → last Pod removed (s)",
    "cancel phase: operator CPU (s)",
    "cancel phase: kubelet CPU (s)",
]
QUEUE_ROWS = [
    "jobs Succeeded",
    "jobs Failed / duplicated / Succeeded without Pod",
    "most worker Pods at once",
    "queue order",
    "wall time, first create → last Succeeded (s)",
    "end-to-end throughput (jobs/s)",
    "jobs Succeeded by minute",
    "operator peak RSS (MiB, VmHWM)",
    "operator API requests per job",
]
MEMORY_ROWS = [
    "operator peak RSS (MiB, VmHWM)",
    "jobs Succeeded (Failed / duplicated)",
    "wall time, first create → last Succeeded (s)",
    "operator CPU (s)",
    "operator API requests per job",
]
OPTIMIZATION_ROWS = [
    "wall time (s)",
    "bound (s)",
    "wall time / bound",
    "wall time / critical path",
    "LLM calls task / judge",
    "evaluations / cache hits",
    "CPU in the optimizing process (s)",
    "final score (own report)",
    "final score, best prompt rescored on all records",
    "speed-up vs MLflow",
]
WORKER_PROCESS_ROWS = [
    "process start → first LLM request (s)",
    "result written → process exit (s)",
    "CPU per LLM call",
    "peak RSS (MiB)",
    "wall time / CPU, start to exit (s)",
    "final score (own report)",
]
FAILOVER_ROWS = [
    "leader killed (SIGKILL) → first action, p50 / max (s)",
    "leader stopped (SIGTERM) → first action, p50 / max (s)",
]
TARGET_ROWS = [
    *FAILOVER_ROWS,
    "create → Pod created, p99 (ms)",
    "jobs Succeeded",
    "jobs Failed / duplicated / Succeeded without Pod",
    "most worker Pods at once",
    "queue order",
    "wall time / bound",
    "wall time / critical path",
    "final score, best prompt rescored on all records",
    "speed-up vs MLflow",
    "process start → first LLM request (s)",
    "result written → process exit (s)",
    "CPU per LLM call",
    "peak RSS (MiB)",
    "operator API requests per job",
    "operator peak RSS (MiB, VmHWM)",
]


def operator_rows(server: str, api_cpu: str) -> dict[str, list[str]]:
    """The operator tables of the quick sizes on one server, as the report titles them."""
    return {
        f"Operator on {server}: 5 jobs created at once": [
            *OPERATOR_ROWS,
            f"{api_cpu} CPU (s)",
            f"cancel phase: {api_cpu} CPU (s)",
        ],
        f"Operator queue on {server}: 10 jobs created at once, --max-running-jobs 3": [
            *QUEUE_ROWS,
            f"operator / {api_cpu} CPU (s)",
        ],
        f"Operator queue on {server}: 12 jobs created at once, --max-running-jobs 4": [
            *QUEUE_ROWS,
            f"operator / {api_cpu} CPU (s)",
        ],
        f"Operator memory on {server}: 6 jobs of": MEMORY_ROWS,
    }


def run_quick(tmp_path: Path) -> tuple[dict, str]:
    """`python -m bench --quick`: its results JSON and its stdout."""
    results_path = tmp_path / "results.json"
    env = {**os.environ, **LITELLM_BUNDLED_COST_MAP_ENV}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(results_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(results_path.read_text()), run.stdout


def assert_tables(results: dict, stdout: str, expected: dict[str, list[str]]) -> None:
    """Exactly the expected tables, each printed with every expected row filled in, and every target judged."""
    tables = {table["title"]: table for table in results["tables"]}
    assert len(tables) == len(expected), list(tables)
    for title_start, metrics in expected.items():
        (title,) = [t for t in tables if t.startswith(title_start)]
        assert f"### {title}" in stdout
        rows = {row["metric"]: row for row in tables[title]["rows"]}
        for metric in metrics:
            (found,) = [m for m in rows if m == metric] or [m for m in rows if m.startswith(metric)]
            assert found in stdout
            if rows[found]["result"] != "SKIP":  # SKIP: the MLflow peer is not installed here
                assert rows[found]["ours"] not in ("", "—"), (title, found, rows[found])
    targets = {row["metric"]: row for table in tables.values() for row in table["rows"] if row["target"]}
    expected_metrics = {metric for metrics in expected.values() for metric in metrics}
    for metric in (m for m in TARGET_ROWS if m in expected_metrics):
        (found,) = [m for m in targets if m == metric] or [m for m in targets if m.startswith(metric)]
        assert targets[found]["result"] in ("PASS", "MISS", "SKIP"), targets[found]


def assert_queues_correct(scenarios: dict) -> None:
    """Correctness holds at any size: every queued job finished with exactly one Pod, in both queue runs."""
    for scenario, jobs in (("queue", 10), ("large_queue", 12), ("memory_small", 6), ("memory_large", 6)):
        queue = scenarios[scenario]
        assert queue["jobs"] == queue["succeeded"] == jobs and queue["duplicated"] == 0 and queue["without_pod"] == 0


def test_quick_run_prints_the_table_with_every_row_and_writes_json(real_cluster, tmp_path):
    """Every benchmark of the default run, the operator's on kube-apiserver with requests counted from its audit
    log. `real_cluster` is asked for its rule only (skip where the real tier cannot run, fail where CI requires it):
    the benchmark starts fresh clusters of its own."""
    results, stdout = run_quick(tmp_path)
    server = f"kube-apiserver v{real_cluster.version}"
    assert_tables(
        results,
        stdout,
        {
            **operator_rows(server, "kube-apiserver + etcd"),
            f"Operator failover on {server}": FAILOVER_ROWS,
            "Optimization: GEPA, max_metric_calls 20, 8 records": OPTIMIZATION_ROWS,
            "Worker process: promptopt run of the same job (20 metric calls": WORKER_PROCESS_ROWS,
        },
    )

    # The sizes actually used are in the table and in the JSON.
    operator = results["operator"]
    assert operator["config"]["jobs"] == 5
    assert results["optimization"]["config"]["metric_calls"] == 20
    worker = results["optimization"]["worker_process"]
    assert worker["final_score"] is not None and worker["samples"] > 0 and worker["llm_calls_total"] > 0
    assert_queues_correct(operator)
    assert operator["memory_large"]["job_kib"] > 60 > 2 > operator["memory_small"]["job_kib"]
    # One round of each: the new leader acted on the job created as the old one went.
    assert {how: found["n"] for how, found in results["failover"]["first_action_s"].items()} == {"kill": 1, "stop": 1}
    # The MLflow peer either ran or said clearly why not.
    peer = results["optimization"]["mlflow"]
    assert peer["available"] or "MLflow peer not run" in stdout

    for scenario in (
        operator["floor"],
        operator["ours"],
        operator["queue"],
        operator["large_queue"],
        operator["memory_large"],
    ):
        assert scenario["server"]["title"] == server
        requests = scenario["api_requests"]
        assert requests["operator_per_job"] > 0 and requests["kubelet_per_job"] > 0
        clients = requests["by_client"]
        # Each operator's ServiceAccount has what it needs: the authorizer refused none of its requests.
        operator_requests = {**clients["kopf"], **clients["kubernetes-client"]}
        assert operator_requests.get("create pods") == scenario["jobs"], operator_requests
        assert not [what for what in operator_requests if what.endswith("-> 403")], operator_requests
        assert clients["bench"]["create promptoptimizationjobs"] == scenario["jobs"]
        assert clients["scheduler"]["create pods/binding"] == scenario["jobs"]
