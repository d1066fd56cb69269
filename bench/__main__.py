"""`python -m bench`: every benchmark of docs/performance.md in one run, each against its reference.

    .venv/bin/python -m bench                      # the issue's sizes (takes several minutes on 2 cores)
    .venv/bin/python -m bench --quick              # toy sizes, seconds: checks that every path works
    .venv/bin/python -m bench --jobs 100 --queue-jobs 300 --mlflow-python /path/to/venv-with-mlflow/bin/python
    .venv/bin/python -m bench --only operator --only queue   # the operator benchmarks only
    .venv/bin/python -m bench --only real-model    # opt-in: real small models (~30 min; the first run sets up more)

Prints one table per benchmark (target, measured value, PASS/MISS) on stdout, progress on stderr, and
writes everything measured as JSON (default: bench/results/latest.json, bench/results/quick.json with --quick,
bench/results/real-model.json for the real-model benchmark alone). The exit status is 0 whatever the verdicts:
targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import failover, operator_load, optimization, real_model, report

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("operator", "queue", "failover", "optimization")  # the default run
OPT_IN = ("real-model",)  # run only when named with --only
QUICK = {
    "jobs": 5,
    "queue_jobs": 10,
    "queue_limit": 3,
    "large_queue_jobs": 12,
    "large_queue_limit": 4,
    "memory_jobs": 6,
    "memory_job_kib": 64,
    "metric_calls": 20,
    "records": 8,
    "latency": 0.02,
    "real_train": 6,
    "real_test": 6,
    "real_metric_calls": 20,
    "failover_rounds": 1,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs created at once, ours and the floor (200)")
    parser.add_argument("--queue-jobs", type=int, default=1000, help="jobs of the queue benchmark (1000)")
    parser.add_argument("--queue-limit", type=int, default=50, help="--max-running-jobs of the queue benchmark (50)")
    parser.add_argument(
        "--large-queue-jobs", type=int, default=5000, help="jobs of the queue benchmark's larger run (5000; 0: none)"
    )
    parser.add_argument("--large-queue-limit", type=int, default=200, help="--max-running-jobs of the larger run (200)")
    parser.add_argument(
        "--memory-jobs",
        type=int,
        default=200,
        help="jobs of the memory comparison, small and then large, at --queue-limit (200; 0: none)",
    )
    parser.add_argument(
        "--memory-job-kib",
        type=int,
        default=1024,
        help="KiB of inline records in each large job of the memory comparison (1024)",
    )
    parser.add_argument(
        "--failover-rounds",
        type=int,
        default=5,
        help="failover: rounds of the leader killed, then stopped, on a real kube-apiserver (5)",
    )
    parser.add_argument("--metric-calls", type=int, default=200, help="GEPA max_metric_calls (200)")
    parser.add_argument("--records", type=int, default=30, help="records of the classification dataset (30)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per simulated LLM call (0.1)")
    parser.add_argument("--concurrency", type=int, default=8, help="LLM calls of one evaluation at once (8)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes for a smoke test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    parser.add_argument(
        "--real-train",
        type=int,
        default=real_model.RealModelConfig.train,
        help="real-model: training (= validation) records (%(default)s)",
    )
    parser.add_argument(
        "--real-test",
        type=int,
        default=real_model.RealModelConfig.test,
        help="real-model: held-out test records (%(default)s)",
    )
    parser.add_argument(
        "--real-metric-calls",
        type=int,
        default=real_model.RealModelConfig.metric_calls,
        help="real-model: GEPA max_metric_calls (%(default)s)",
    )
    parser.add_argument(
        "--only",
        choices=(*BENCHMARKS, *OPT_IN),
        action="append",
        help="run this benchmark only (repeatable; operator: ours and the floor at --jobs; queue; "
        "failover: two replicas on a real kube-apiserver; optimization; real-model, never run "
        "otherwise: real small models served by llama.cpp, set up in the user's cache on first "
        "use)",
    )
    parser.add_argument("--skip-queue", action="store_true", help="no queue benchmark")
    parser.add_argument("--skip-mlflow", action="store_true", help="no MLflow peer")
    parser.add_argument("--mlflow-python", help="an interpreter that has mlflow (default: this one)")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds the 200-job scenarios may wait before failing (600)"
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=900,
        help="seconds after which the queue benchmark reports what finished so far (900)",
    )
    parser.add_argument("--json", type=Path, help="where to write the results (default: bench/results/latest.json)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.json is None:
        name = "real-model" if args.only and set(args.only) == set(OPT_IN) else "latest"
        args.json = RESULTS_DIR / f"{'quick' if args.quick else name}.json"
    return args


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    operator_load.exit_on_sigterm()
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(["python -m bench", *(argv or sys.argv[1:])])}
    started = time.monotonic()
    chosen = set(args.only or BENCHMARKS)
    if chosen & {"operator", "queue"}:
        operator_config = operator_load.OperatorConfig(
            jobs=args.jobs,
            queue_jobs=args.queue_jobs,
            queue_limit=args.queue_limit,
            large_queue_jobs=args.large_queue_jobs,
            large_queue_limit=args.large_queue_limit,
            memory_jobs=args.memory_jobs,
            memory_job_kib=args.memory_job_kib,
            timeout_s=args.timeout,
            queue_timeout_s=args.queue_timeout,
            skip_latency="operator" not in chosen,
            skip_queue=args.skip_queue or "queue" not in chosen,
        )
        results["operator"] = operator_load.run(operator_config, progress)
    if "failover" in chosen:
        progress(f"failover: {args.failover_rounds} rounds of two replicas, the leader killed then stopped")
        results["failover"] = failover.run(failover.FailoverConfig(rounds=args.failover_rounds), progress)
    if "optimization" in chosen:
        optimization_config = optimization.OptimizationConfig(
            metric_calls=args.metric_calls,
            records=args.records,
            latency_s=args.latency,
            concurrency=args.concurrency,
            mlflow_python=args.mlflow_python,
            skip_mlflow=args.skip_mlflow,
        )
        progress(f"optimization: GEPA, {args.metric_calls} metric calls, ours then MLflow")
        results["optimization"] = optimization.run(optimization_config)
    if "real-model" in chosen:
        real_model_config = real_model.RealModelConfig(
            train=args.real_train,
            test=args.real_test,
            metric_calls=args.real_metric_calls,
            mlflow_python=args.mlflow_python,
            skip_mlflow=args.skip_mlflow,
        )
        results["real_model"] = real_model.run(real_model_config, progress)
    results["elapsed_s"] = time.monotonic() - started
    found = report.sections(results)
    results["verdicts"] = report.verdicts(found)
    results["tables"] = [dataclasses.asdict(section) for section in found]
    systems = report.real_model_table(results["real_model"]) if "real_model" in results else None
    if systems:
        results["tables"].append(dataclasses.asdict(systems))

    meta = results["machine"]
    print(
        f"promptopt benchmark, {meta['date']}, commit {meta['commit'] or '?'}, Python {meta['python']}, "
        f"{meta['cpus']} CPUs; {results['elapsed_s']:.0f} s in all"
    )
    print()
    print(report.render(found))
    if systems:
        print(report.render_systems(systems))
    if "unavailable" in results.get("operator", {}):
        print(f"Operator benchmarks not run: {results['operator']['unavailable']}")
    peer = results.get("optimization", {}).get("mlflow", {})
    if "optimization" in results and not peer.get("available"):
        print(
            f"MLflow peer not run: {peer.get('reason', '').strip().splitlines()[0] if peer.get('reason') else ''}; "
            "install it (pip install mlflow) in this environment or pass --mlflow-python to compare."
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
