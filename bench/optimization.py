"""The optimization benchmark: our GEPA run, its lower bound, and MLflow's optimize_prompts as the peer.

Everything talks to one simulated LLM (a deterministic test double) in a process of its own with a fixed
latency per call, so wall time is dominated by waiting for the "model", as with a real one:

- ours: the worker's own path (`build_problem` + `optimize`, what `promptopt worker` / `promptopt run` run),
  in this process, with an evaluator wrapper that only records how many examples each `evaluate` call had
  to send to the model;
- the bound: the LLM calls that cannot be avoided (task + judge calls of the evaluations the cache could not
  answer) spread over the configured concurrency, plus the reflection calls, which are sequential:
  ``bound = unique_task_and_judge_calls / concurrency * latency + reflection_calls * latency``;
  the critical path (issue 14: rounds × latency + reflections) adds what gepa's structure imposes: each
  evaluate() call waits for its slowest example, and an example's judge call for its task call, so a batch of n
  uncached examples takes ``ceil(n / concurrency) * (1 + judges)`` rounds of one latency;
- the worker as a process: the same job run by `promptopt run` in a child process, as a worker Pod runs it
  (interpreter start, imports, the optimization, the final report, exit): when its first LLM request reached
  the simulated LLM, how long it took to exit after writing its result, its CPU per LLM call and its peak RSS;
- the peer: MLflow's `mlflow.genai.optimize_prompts` with `GepaPromptOptimizer`, in a child process
  (`bench/mlflow_peer.py`, optionally another interpreter), same data, budget, scorers and concurrency.

Final scores are compared on the same footing: each tool's best prompt rescored here on every record with
the simulated models' own rules (`respond`, no HTTP, no LLM call counted).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptopt.prompt_contract import CORRECTNESS_QUESTION, JudgeRequest, judge_messages
from promptopt.simulated_llm import (
    JUDGE_MODEL,
    REFLECT_MODEL,
    SEED_INSTRUCTION,
    TASK_MODEL,
    respond,
    sentiment_dataset,
)
from promptopt.worker_contract import LITELLM_BUNDLED_COST_MAP_ENV, use_bundled_litellm_cost_map

use_bundled_litellm_cost_map()  # before warm_up_litellm imports litellm

BENCH_DIR = Path(__file__).resolve().parent
PROMPT_NAME = "classify"
DATASET_SEED = 0


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    metric_calls: int = 200
    records: int = 30
    latency_s: float = 0.1
    concurrency: int = 8
    mlflow_python: str | None = None  # the interpreter for the MLflow peer (default: this one)
    skip_mlflow: bool = False


# ------------------------------------------------------------------------------------------------
# The simulated LLM in its own process.


class LLMServer:
    """bench/llm_server.py as a child process: `base_url`, `stats()`, `reset()`."""

    def __init__(self, latency_s: float):
        self._process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "llm_server.py"), "--latency", str(latency_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._process.stdout is not None
        self.base_url = self._process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.close()
            raise RuntimeError(f"the simulated LLM did not start: {self.base_url!r}")

    def _ask(self, command: str) -> str:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._process.stdout.readline().strip()

    def stats(self) -> dict[str, Any]:
        return json.loads(self._ask("stats"))

    def reset(self) -> None:
        self._ask("reset")

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> LLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# The same score for every tool's result: the simulated models' rules, applied here without HTTP.


def rescore(template: str, records: Sequence[dict[str, Any]]) -> float:
    """Mean over records of (ExactMatch + Correctness) / 2 for `template`, by the simulated models' rules."""
    total = 0.0
    for record in records:
        text = template
        for name, value in record["inputs"].items():
            text = text.replace("{{" + name + "}}", str(value))
        output = respond(TASK_MODEL, [{"role": "user", "content": text}])
        expected = record["expectations"]["expected_response"]
        exact = float(output.strip().casefold() == expected.strip().casefold())
        judged = JudgeRequest(record["inputs"], output, expected_response=expected)
        verdict = json.loads(respond(JUDGE_MODEL, judge_messages(CORRECTNESS_QUESTION, judged)))
        total += (exact + float(verdict["result"] == "yes")) / 2
    return total / len(records)


# ------------------------------------------------------------------------------------------------
# Ours.


class CountingEvaluator:
    """The worker's TaskEvaluator, unchanged, with the number of uncached examples of each evaluate() call."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.uncached_per_call: list[int] = []
        self.examples_requested = 0

    def evaluate(self, candidate: Any, examples: Sequence[Any]) -> Any:
        before = self.inner.examples_run
        results = self.inner.evaluate(candidate, examples)
        self.uncached_per_call.append(self.inner.examples_run - before)
        self.examples_requested += len(examples)
        return results

    @property
    def cache_hits(self) -> int:
        return self.inner.cache_hits

    def summarize(self, results: Any) -> Any:
        return self.inner.summarize(results)

    def close(self) -> None:
        self.inner.close()


FREE = {"inputPerMillionTokens": 0, "outputPerMillionTokens": 0}  # the simulated models cost nothing


def job_spec(base_url: str, records: list[dict[str, Any]], config: OptimizationConfig) -> dict[str, Any]:
    """The job: every record for training and validation (the default, as MLflow does), two scorers."""
    return {
        "optimizer": {
            "type": "GEPA",
            "reflectionModel": f"openai/{REFLECT_MODEL}",
            "reflectionPricing": FREE,
            "gepa": {"maxMetricCalls": config.metric_calls},
        },
        "prompts": [{"name": PROMPT_NAME, "template": SEED_INSTRUCTION}],
        "task": {
            "model": f"openai/{TASK_MODEL}",
            "apiBase": base_url,
            "temperature": 0,
            "concurrency": config.concurrency,
            "pricing": FREE,
        },
        "dataset": {"records": records},
        "scorers": [{"name": "ExactMatch"}, {"name": "Correctness", "model": f"openai/{JUDGE_MODEL}", "pricing": FREE}],
    }


def warm_up_litellm(base_url: str) -> None:
    """litellm imports much of itself on the first call: pay that before the clock starts (for every tool)."""
    import litellm

    litellm.completion(
        model=f"openai/{TASK_MODEL}",
        api_base=base_url,
        api_key="sk-simulated",
        messages=[{"role": "user", "content": "warm up: love"}],
    )


def run_ours(llm: LLMServer, records: list[dict[str, Any]], config: OptimizationConfig) -> dict[str, Any]:
    from promptopt.api.validation import parse_spec
    from promptopt_worker.llm import LLMClient, UsageMeter
    from promptopt_worker.optimizers import optimize
    from promptopt_worker.problem import StopRequested
    from promptopt_worker.reporting import ConsoleReporter
    from promptopt_worker.sources import LocalConfigMaps, build_problem

    spec = parse_spec(job_spec(llm.base_url, records, config))
    warm_up_litellm(llm.base_url)
    llm.reset()
    console = io.StringIO()
    cpu_started, started = time.process_time(), time.perf_counter()
    client = LLMClient(usage=UsageMeter())
    problem = build_problem(spec, LocalConfigMaps(), client)
    counting = CountingEvaluator(problem.evaluator)
    problem = dataclasses.replace(problem, evaluator=counting)
    try:
        result = optimize(problem, ConsoleReporter(console, live=False), StopRequested())
    finally:
        counting.close()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    calls = llm.stats()["calls"]
    if result.best_candidate is None or result.final_scores is None:
        raise RuntimeError(f"our GEPA run failed: {result.reason}: {result.message}")
    judges = sum(1 for s in spec.scorers or [] if s.model)
    evaluator = counting.inner
    unique_calls = evaluator.examples_run * (1 + judges)
    reflections = calls.get("reflection", 0)
    latency, concurrency = config.latency_s, config.concurrency
    bound = unique_calls / concurrency * latency + reflections * latency
    critical_path = (
        sum(math.ceil(n / concurrency) for n in counting.uncached_per_call) * (1 + judges) * latency
        + reflections * latency
    )
    template = result.best_candidate[PROMPT_NAME]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "reason": result.reason,
        "llm_calls": {kind: calls.get(kind, 0) for kind in ("task", "judge", "reflection")},
        "llm_calls_total": sum(calls.get(kind, 0) for kind in ("task", "judge", "reflection")),
        "evaluations": counting.examples_requested,
        "examples_run": evaluator.examples_run,
        "cache_hits": evaluator.cache_hits,
        "evaluate_calls": len(counting.uncached_per_call),
        "unique_task_judge_calls": unique_calls,
        "judges": judges,
        "bound_s": bound,
        "critical_path_s": critical_path,
        "initial_score": result.initial_scores.aggregate if result.initial_scores else None,
        "final_score": result.final_scores.aggregate,
        "rescored": rescore(template, records),
        "best_template": template,
    }


# ------------------------------------------------------------------------------------------------
# Ours again, as a worker process.


def job_manifest(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "promptopt.dev/v1alpha1",
        "kind": "PromptOptimizationJob",
        "metadata": {"name": "bench-worker-process"},
        "spec": spec,
    }


def promptopt_command() -> str:
    """The promptopt console script of this interpreter's environment."""
    command = shutil.which("promptopt", path=str(Path(sys.executable).parent))
    if command is None:
        raise RuntimeError(f"no promptopt console script beside {sys.executable}")
    return command


def run_worker_process(llm: LLMServer, records: list[dict[str, Any]], config: OptimizationConfig) -> dict[str, Any]:
    """`promptopt run` of the benchmark's job in a child process: the life of a worker Pod's process.

    The child is sampled every 20 ms from /proc (its CPU seconds and VmHWM) once it has executed: the rusage a
    parent gets at exit counts, as peak RSS, the copy of this process the child was forked from."""
    command = promptopt_command()
    ticks = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as workdir:
        job_path, result_path = Path(workdir) / "job.yaml", Path(workdir) / "result.json"
        job_path.write_text(json.dumps(job_manifest(job_spec(llm.base_url, records, config))))  # JSON is YAML
        llm.reset()
        samples: list[tuple[float, float, int]] = []  # (Unix time, CPU seconds, VmHWM KiB)
        # A bare environment, as a Pod's: no cost-map switch, no key.
        env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
        with (Path(workdir) / "stderr").open("w+") as stderr:
            started = time.time()
            child = subprocess.Popen(
                [command, "run", str(job_path), "-o", str(result_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
            while child.poll() is None:
                try:
                    # Before its exec the child is still a copy of this process: not sampled.
                    executed = str(job_path).encode() in Path(f"/proc/{child.pid}/cmdline").read_bytes()
                    stat = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
                    status = Path(f"/proc/{child.pid}/status").read_text()
                except (FileNotFoundError, ProcessLookupError):
                    break
                if not executed:
                    continue
                hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
                samples.append((time.time(), (int(stat[11]) + int(stat[12])) / ticks, hwm))
                time.sleep(0.02)
            child.wait()
            exited = time.time()
            stderr.seek(0)
            if child.returncode != 0 or not result_path.exists():
                raise RuntimeError(f"promptopt run failed (exit {child.returncode}): {stderr.read()[-2000:]}")
        reported = result_path.stat().st_mtime
        result = json.loads(result_path.read_text())
    stats = llm.stats()
    calls = sum(stats["calls"].get(kind, 0) for kind in ("task", "judge", "reflection"))
    first_request = stats["first_request_at"]

    def cpu_at(moment: float) -> float:  # the last sample at or before the moment
        return max((cpu for at, cpu, _ in samples if at <= moment), default=0.0)

    optimizing_cpu = cpu_at(reported) - cpu_at(first_request)
    return {
        "wall_s": exited - started,
        "start_to_first_request_s": first_request - started,
        "report_to_exit_s": exited - reported,
        "cpu_s": samples[-1][1] if samples else None,
        "optimizing_cpu_s": optimizing_cpu,
        "llm_calls_total": calls,
        "cpu_per_call_ms": 1000 * optimizing_cpu / calls,
        "peak_rss_mib": max(hwm for _, _, hwm in samples) / 1024 if samples else None,
        "samples": len(samples),
        "final_score": (result.get("finalScores") or {}).get("aggregate"),
    }


# ------------------------------------------------------------------------------------------------
# The peer: MLflow, in a child process.

GEPA_KWARGS = {"reflection_minibatch_size": 3, "candidate_selection_strategy": "pareto", "seed": 0}  # ours' defaults


def mlflow_config(llm: LLMServer, records: list[dict[str, Any]], config: OptimizationConfig) -> dict[str, Any]:
    return {
        "base_url": llm.base_url,
        "records": records,
        "prompt_name": PROMPT_NAME,
        "template": SEED_INSTRUCTION,
        "max_metric_calls": config.metric_calls,
        "concurrency": config.concurrency,
        "models": {"task": TASK_MODEL, "judge": JUDGE_MODEL, "reflect": REFLECT_MODEL},
        "scorers": ["ExactMatch", "Correctness"],
        "task_parameters": {"temperature": 0},
        "gepa_kwargs": GEPA_KWARGS,
    }


def run_mlflow_peer(python: str, peer_config: dict[str, Any], llm: Any) -> dict[str, Any]:
    """bench/mlflow_peer.py under `python` with `peer_config` (its workdir added), the calls it made counted by
    `llm` (an object with reset() and stats() -> {"calls": {kind: n}}) from its "ready" on; or {"available": False,
    "reason": ...} when mlflow cannot be imported there or the peer failed."""
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as workdir:
        config_path = Path(workdir) / "config.json"
        result_path = Path(workdir) / "result.json"
        config_path.write_text(json.dumps({**peer_config, "workdir": workdir}))
        # The peer may run in an interpreter without promptopt: it finds the setting in its environment.
        env = {**os.environ, **LITELLM_BUNDLED_COST_MAP_ENV, "PYTHONUNBUFFERED": "1"}
        log_path = Path(workdir) / "peer.log"
        with log_path.open("w") as log:
            peer = subprocess.Popen(
                [python, str(BENCH_DIR / "mlflow_peer.py"), str(config_path), str(result_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                env=env,
            )
            assert peer.stdin is not None and peer.stdout is not None
            ready = peer.stdout.readline().strip()  # "ready" once mlflow is imported and set up, or "absent"
            if ready == "ready":
                llm.reset()  # its set-up and warm-up calls are not the run's
                peer.stdin.write("go\n")
                peer.stdin.flush()
            peer.stdin.close()
            peer.wait(timeout=3600)
        if not result_path.exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            return {"available": False, "reason": f"the MLflow peer failed (exit {peer.returncode}):\n{tail}"}
        result = json.loads(result_path.read_text())
    if not result.get("available"):
        return result
    calls = llm.stats()["calls"]
    result["llm_calls"] = {kind: calls.get(kind, 0) for kind in ("task", "judge", "reflection")}
    result["llm_calls_total"] = sum(result["llm_calls"].values())
    return result


def run_mlflow(llm: LLMServer, records: list[dict[str, Any]], config: OptimizationConfig) -> dict[str, Any]:
    """MLflow's run, or {"available": False, "reason": ...} when mlflow cannot be imported there."""
    result = run_mlflow_peer(config.mlflow_python or sys.executable, mlflow_config(llm, records, config), llm)
    if result.get("available"):
        result["rescored"] = rescore(result["best_template"], records)
    return result


def run(config: OptimizationConfig) -> dict[str, Any]:
    records = sentiment_dataset(config.records, seed=DATASET_SEED)
    with LLMServer(config.latency_s) as llm:
        ours = run_ours(llm, records, config)
        worker_process = run_worker_process(llm, records, config)
        if config.skip_mlflow:
            peer = {"available": False, "reason": "skipped (--skip-mlflow)"}
        else:
            peer = run_mlflow(llm, records, config)
    return {
        "config": dataclasses.asdict(config),
        "dataset_seed": DATASET_SEED,
        "ours": ours,
        "worker_process": worker_process,
        "mlflow": peer,
    }
