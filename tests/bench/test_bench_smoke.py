"""`python -m bench --quick`: every benchmark path runs at toy sizes and the table has every row.

No timing is asserted here: speed targets belong to the benchmark's report (docs/performance.md), and a
MISS is a finding, not a failure.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

EXPECTED_ROWS = {
    "Operator: 5 jobs created at once": [
        "create → Pod created, p50 (ms)", "create → Pod created, p99 (ms)", "cancel → Pod deleted, p50 (ms)",
        "cancel → Pod deleted, p99 (ms)", "create → job Running, p50 / p99 (ms)", "launch throughput",
        "operator peak RSS (MiB, VmHWM)", "operator API requests per job", "operator CPU (s)", "emulator CPU (s)",
        "Pods per job (max)",
    ],
    "Operator queue: 10 jobs created at once, --max-running-jobs 3": [
        "jobs Succeeded", "jobs Failed / duplicated / Succeeded without Pod", "most worker Pods at once",
        "queue order", "wall time, first create → last Succeeded (s)", "end-to-end throughput (jobs/s)",
        "jobs Succeeded by minute",
        "operator peak RSS (MiB, VmHWM)", "operator API requests per job", "operator / emulator CPU (s)",
    ],
    "Optimization: GEPA, max_metric_calls 20, 8 records": [
        "wall time (s)", "bound (s)", "wall time / bound", "wall time / structural bound", "LLM calls task / judge",
        "evaluations / cache hits", "CPU in the optimizing process (s)", "final score (own report)",
        "final score, best prompt rescored on all records", "speed-up vs MLflow",
    ],
}
TARGET_ROWS = ["create → Pod created, p99 (ms)", "jobs Succeeded", "jobs Failed / duplicated / Succeeded without Pod",
               "most worker Pods at once", "queue order", "wall time / bound",
               "final score, best prompt rescored on all records", "speed-up vs MLflow"]


def test_quick_run_prints_the_table_with_every_row_and_writes_json(tmp_path):
    results_path = tmp_path / "results.json"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(results_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-4000:]
    stdout = run.stdout

    results = json.loads(results_path.read_text())
    tables = {table["title"]: table for table in results["tables"]}
    for title_start, metrics in EXPECTED_ROWS.items():
        (title,) = [t for t in tables if t.startswith(title_start)]
        assert f"### {title}" in stdout
        rows = {row["metric"]: row for row in tables[title]["rows"]}
        for metric in metrics:
            (found,) = [m for m in rows if m == metric] or [m for m in rows if m.startswith(metric)]
            assert found in stdout
            if rows[found]["result"] != "SKIP":  # SKIP: the MLflow peer is not installed here
                assert rows[found]["ours"] not in ("", "—"), (title, found, rows[found])
    targets = {row["metric"]: row for table in tables.values() for row in table["rows"] if row["target"]}
    for metric in TARGET_ROWS:
        (found,) = [m for m in targets if m == metric] or [m for m in targets if m.startswith(metric)]
        assert targets[found]["result"] in ("PASS", "MISS", "SKIP"), targets[found]

    # The sizes actually used are in the table and in the JSON.
    assert results["operator"]["config"]["jobs"] == 5 and results["operator"]["queue"]["jobs"] == 10
    assert results["optimization"]["config"]["metric_calls"] == 20
    # Correctness holds at any size: every queued job finished with exactly one Pod.
    queue = results["operator"]["queue"]
    assert queue["succeeded"] == 10 and queue["duplicated"] == 0 and queue["without_pod"] == 0
    # The MLflow peer either ran or said clearly why not.
    peer = results["optimization"]["mlflow"]
    assert peer["available"] or "MLflow peer not run" in stdout
