"""Entry points: `promptopt worker` (inside a job's Pod) and `promptopt run` (a job file on this machine).

Both take the same path: parse the spec, resolve its sources, build the Problem, run the optimizer with
reporters. The worker reads its job and ConfigMaps through the Kubernetes API and reports into the job's
status and the Pod's termination message; a local run reads manifests from files and reports to the
console and a JSON file.

Exit codes: 0 when the run produced a usable result (Completed, BudgetExhausted, DeadlineReached, or
Cancelled after a first score), 2 for InvalidInput (and, locally, a job that cannot run as given), 1 for
everything else (LLMError, Error, or a stop before any result).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from promptopt.api.times import format_time, parse_time
from promptopt.api.v1alpha1 import (
    API_VERSION,
    KIND,
    ConfigMapInput,
    Cost,
    MlflowStatus,
    PromptOptimizationJobSpec,
    Pricing,
    WorkerOutcome,
    read_status,
)
from promptopt.api.validation import InvalidSpec, parse_spec
from promptopt.worker_contract import (
    CHECKPOINT_DIR_ENV,
    EXIT_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_SUCCEEDED,
    JOB_NAME_ENV,
    JOB_NAMESPACE_ENV,
    LITELLM_BUNDLED_COST_MAP_ENV,
    SPEC_HASH_ENV,
    ModelsUsed,
    RunInfo,
)
from promptopt_worker import llm
from promptopt_worker.dry_run import plan_dry_run, render_dry_run
from promptopt_worker.kube import kubernetes_api_client, read_job
from promptopt_worker.llm import LLMClient, ModelEndpoint, Usage, UsageMeter
from promptopt_worker.mlflow_store import MlflowStore
from promptopt_worker.mlflow_tracking import TrackingRun, dry_run_notes
from promptopt_worker.optimizers import optimize
from promptopt_worker.problem import InvalidInput, Progress, Reporter, Result, StopRequested
from promptopt_worker.redaction import add_secrets
from promptopt_worker.reporting import (
    ConsoleReporter,
    CostSource,
    KubernetesStatusReporter,
    LogFormat,
    LogReporter,
    Reporters,
    ResultFileReporter,
    TerminationMessageReporter,
    configure_logging,
    no_cost,
)
from promptopt_worker.sources import (
    ConfigMapSource,
    KubernetesConfigMaps,
    LocalConfigMaps,
    build_problem,
    read_manifests,
)

log = logging.getLogger(__name__)

# The operator kills the Pod at the job's deadline: stop this much earlier (a share of the time left, capped)
# so the optimizer can finish its step and the result reaches the status first.
DEADLINE_RESERVE_SHARE, DEADLINE_RESERVE_MAX_S = 0.1, 60.0

SIMULATED_MODELS = {"task": "openai/sim-task", "reflection": "openai/sim-reflect", "judge": "openai/sim-judge"}
SIMULATED_NOTICE = (
    "NOTE: --simulated-llm: every answer comes from promptopt's simulated LLM, a deterministic test double "
    "on localhost, not from a real model. The scores and prompts below show how the optimizer works; they say "
    "nothing about a real model."
)


def exit_code(result: Result) -> int:
    """EXIT_SUCCEEDED for a usable result (Completed, GoalReached, NoImprovement, PerfectScore, and a stop with the
    best so far: BudgetExhausted, DeadlineReached, Cancelled); EXIT_INVALID_INPUT when no attempt can fix it;
    EXIT_FAILED otherwise (LLMError, TooManyFailedExamples, Error: the operator's PERMANENT_FAILURES decide)."""
    if result.succeeded:
        return EXIT_SUCCEEDED
    return EXIT_INVALID_INPUT if result.reason == "InvalidInput" else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# The shared path


def run_job(
    spec: PromptOptimizationJobSpec,
    configmaps: ConfigMapSource,
    llm_client: LLMClient,
    reporter: Reporter,
    stop: StopRequested,
    *,
    deadline_seconds: float | None = None,
    checkpoint_dir: str | None = None,
    started_with: Sequence[ConfigMapInput] | None = None,
    mlflow_started: MlflowStatus | None = None,
    identity: Mapping[str, str] | None = None,
) -> Result:
    """Resolve the job's inputs (refusing ConfigMap keys changed since `started_with`, and reading MLflow's prompts and
    dataset as `mlflow_started`, status.mlflow of the job's first worker, says they were), start or resume its MLflow
    run and optimize; the reporter hears of every ending, early ones included. `identity` (job, namespace, job-uid)
    tags what the job logs and registers in MLflow."""
    mlflow_started = mlflow_started or MlflowStatus()
    try:
        problem = build_problem(
            spec,
            configmaps,
            llm_client,
            deadline_seconds=deadline_seconds,
            checkpoint_dir=checkpoint_dir,
            started_with=started_with,
            mlflow=mlflow_store(spec),
            mlflow_started=mlflow_started,
            identity=identity,
        )
        if spec.mlflow is not None and spec.mlflow.experiment is not None:
            run = TrackingRun(
                spec, problem, identity or {}, mlflow_started.run_id, cost=lambda: llm_client.usage.snapshot().as_cost()
            )
            problem = replace(problem, mlflow_run=MlflowStatus(run_id=run.run_id, experiment_id=run.experiment_id))
            reporter = Reporters(reporter, run)
    except InvalidInput as error:
        return finish_early(reporter, "InvalidInput", str(error))
    except Exception as error:  # noqa: BLE001 - e.g. the API refused to show a ConfigMap: still report it
        log.exception("could not prepare the job")
        return finish_early(reporter, "Error", f"could not prepare the job: {type(error).__name__}: {error}")
    try:
        return optimize(problem, reporter, stop)  # it reports its own ending
    finally:
        if problem.evaluator is not None:
            problem.evaluator.close()


def mlflow_store(spec: PromptOptimizationJobSpec) -> MlflowStore | None:
    """MLflow as the job's store of prompts and records, for a job with spec.mlflow (its client is imported only
    then)."""
    return MlflowStore(spec.mlflow.tracking_uri) if spec.mlflow else None


def finish_early(reporter: Reporter, reason: WorkerOutcome, message: str) -> Result:
    """End a run that never reached the optimizer."""
    result = Result(reason, message)
    reporter.finished(Progress(), result)
    return result


def stop_on_signals(stop: StopRequested) -> None:
    """SIGTERM (the Pod is deleted or hits its deadline) and ^C stop the optimizer cleanly: LLM calls in flight
    are abandoned and it reports the best result so far. A second ^C aborts at once."""

    def handle(signum: int, _frame: Any) -> None:
        if stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        stop.terminate("Cancelled", f"stopped by {name}")
        log.warning("%s received: stopping now, with the best result so far", name)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def remaining_deadline(
    spec: PromptOptimizationJobSpec, started_at: str | None, now: datetime | None = None
) -> float | None:
    """Seconds the optimizer may run: activeDeadlineSeconds less the time since the job started (status.startTime,
    RFC 3339) and a reserve for reporting; None without a deadline."""
    if spec.active_deadline_seconds is None:
        return None
    elapsed = 0.0
    if started := parse_time(started_at):
        elapsed = max(0.0, ((now or datetime.now(UTC)) - started).total_seconds())
    left = spec.active_deadline_seconds - elapsed
    return max(0.0, left - min(DEADLINE_RESERVE_MAX_S, DEADLINE_RESERVE_SHARE * left))


# ---------------------------------------------------------------------------------------------
# promptopt worker


def run_worker(log_format: LogFormat = "text") -> int:
    """Run the job named by PROMPTOPT_JOB_NAME / PROMPTOPT_JOB_NAMESPACE, reporting into its status and its log
    (`log_format` json: one JSON object per line)."""
    import kubernetes

    configure_logging(sys.stdout, log_format=log_format)
    stop = StopRequested()
    stop_on_signals(stop)
    name, namespace = os.environ.get(JOB_NAME_ENV), os.environ.get(JOB_NAMESPACE_ENV)
    if not name or not namespace:
        message = f"{JOB_NAME_ENV} and {JOB_NAMESPACE_ENV} must name the job (the operator sets them)"
        return exit_code(finish_early(Reporters(*pod_reporters()), "Error", message))
    try:
        api_client = kubernetes_api_client()
        custom = kubernetes.client.CustomObjectsApi(api_client)
        job = read_job(custom, name, namespace)
    except Exception as error:  # noqa: BLE001 - without the API, the termination message carries the news
        message = f"could not read job {namespace}/{name}: {type(error).__name__}: {error}"
        return exit_code(finish_early(Reporters(*pod_reporters()), "Error", message))

    recorded = read_status(job.get("status"))
    usage = UsageMeter(Usage.from_cost(recorded.cost))

    def cost() -> Cost:
        return usage.snapshot().as_cost()

    reporter = Reporters(KubernetesStatusReporter(custom, name, namespace, cost=cost), *pod_reporters(cost))
    try:
        spec = parse_spec(job.get("spec"))
    except InvalidSpec as error:
        return exit_code(finish_early(reporter, "InvalidInput", f"the job's spec is invalid: {error}"))

    add_secrets(credential_values(os.environ, spec))
    started_with = os.environ.get(SPEC_HASH_ENV)
    if started_with and spec.run_hash() != started_with:
        # A retried Pod must not optimize a spec the job did not start with (see status.specHash).
        message = (
            "the job's spec changed after it started; only cancel and ttlSecondsAfterFinished may change. "
            "Create a new job to run the changed spec"
        )
        return exit_code(finish_early(reporter, "InvalidInput", message))

    max_cost = spec.budget.max_cost_usd if spec.budget else None
    if max_cost is not None and usage.snapshot().usd >= max_cost:
        message = f"earlier attempts spent the budget of ${max_cost:g} (spec.budget.maxCostUSD)"
        return exit_code(finish_early(reporter, "BudgetExhausted", message))
    log.info("optimizing job %s/%s with %s", namespace, name, spec.optimizer.type)
    result = run_job(
        spec,
        KubernetesConfigMaps(kubernetes.client.CoreV1Api(api_client), namespace),
        LLMClient(max_cost_usd=max_cost, stop=stop, usage=usage),
        reporter,
        stop,
        deadline_seconds=remaining_deadline(spec, recorded.start_time),
        checkpoint_dir=os.environ.get(CHECKPOINT_DIR_ENV) or None,
        # Recorded by the job's first worker.
        started_with=recorded.config_map_inputs,
        mlflow_started=recorded.mlflow,
        identity={"job": name, "namespace": namespace, "job-uid": (job.get("metadata") or {}).get("uid") or ""},
    )
    return exit_code(result)


# Environment a worker container has besides its credentials: the image's, the runtime's and the operator's.
_PLAIN_ENV = re.compile(
    r"PROMPTOPT_.*|KUBERNETES_.*|PYTHON.*|LC_.*|LANG|PATH|HOME|HOSTNAME|TMPDIR|TERM|PWD|SHLVL"
    r"|KUBECONFIG|VIRTUAL_ENV|GPG_KEY|" + "|".join(LITELLM_BUNDLED_COST_MAP_ENV)
)


def credential_values(environ: Mapping[str, str], spec: PromptOptimizationJobSpec) -> list[str]:
    """Values to mask in everything the worker writes: in a worker Pod, every variable that is neither plain
    container environment nor a literal of spec.worker.env came from a Secret (the credentials Secret's keys
    can have any name, so names alone cannot tell)."""
    literal = {v.name for v in (spec.worker.env if spec.worker and spec.worker.env else []) if v.value is not None}
    return [value for name, value in environ.items() if name not in literal and not _PLAIN_ENV.fullmatch(name)]


def pod_reporters(cost: CostSource = no_cost) -> list[Reporter]:
    """What a worker reports to besides the job's status: its log, and the termination message."""
    return [LogReporter(cost=cost), TerminationMessageReporter(cost=cost)]


# ---------------------------------------------------------------------------------------------
# promptopt run


def run_local(
    path: str | Path,
    configmap_files: list[str | Path] | None = None,
    output_json: str | Path | None = None,
    simulated_llm: bool = False,
    dry_run: bool = False,
    *,
    log_format: LogFormat = "text",
    strict: bool = False,
    promptopt_version: str | None = None,
) -> int:
    """Run the job in the YAML file `path` here; ConfigMaps come from the same file and `configmap_files`. With
    `dry_run`, prepare it and print what it would call and cost instead (the plan as JSON in `output_json`). Warnings
    and errors go to stderr (`log_format` json: one JSON object per line). The result file names the
    `promptopt_version` that ran it (the entry point's)."""
    configure_logging(sys.stderr, logging.WARNING, log_format)
    try:
        documents = read_manifests(Path(path))
        job = single_job(documents, path)
        metadata = job.get("metadata") or {}
        spec, job_name = parse_spec(job.get("spec")), metadata.get("name") or Path(path).stem
        configmaps = LocalConfigMaps.from_files([path, *(configmap_files or [])])
    except InvalidSpec as error:
        print(f"{path}: the job is invalid:\n  " + "\n  ".join(error.problems), file=sys.stderr)
        return EXIT_INVALID_INPUT
    except (OSError, ValueError) as error:  # unreadable files, YAML errors, not exactly one job
        print(f"promptopt run: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if dry_run:
        if simulated_llm:  # priced at zero; nothing is called, so no simulated LLM need run
            spec = with_simulated_models(spec, "http://simulated-llm.invalid/v1")
        return plan_locally(spec, configmaps, path, output_json, strict)

    with ExitStack() as cleanup:
        if simulated_llm:
            from promptopt.simulated_llm import SimulatedLLM

            spec = with_simulated_models(spec, cleanup.enter_context(SimulatedLLM()).base_url)
            print(SIMULATED_NOTICE, flush=True)
        elif missing := missing_api_keys(spec):
            print(
                f"promptopt run: no API key for {missing}. Set the environment variables, or run with "
                "--simulated-llm to try promptopt against a simulated LLM (a test double).",
                file=sys.stderr,
            )
            return EXIT_INVALID_INPUT
        usage = UsageMeter()

        def cost() -> Cost:
            return usage.snapshot().as_cost()

        reporters: list[Reporter] = [ConsoleReporter(sys.stdout, cost=cost)]
        if output_json:
            run = run_info(
                spec,
                job_name,
                metadata.get("namespace"),
                simulated_llm=simulated_llm,
                promptopt_version=promptopt_version,
            )
            reporters.append(ResultFileReporter(output_json, cost=cost, run=run))
        stop = StopRequested()
        stop_on_signals(stop)
        max_cost = spec.budget.max_cost_usd if spec.budget else None
        result = run_job(
            spec,
            configmaps,
            LLMClient(max_cost_usd=max_cost, stop=stop, usage=usage),
            Reporters(*reporters),
            stop,
            deadline_seconds=remaining_deadline(spec, None),
            identity={"job": job_name, "run": "promptopt run"},
        )
        if simulated_llm:
            print(SIMULATED_NOTICE)
    return exit_code(result)


def run_info(
    spec: PromptOptimizationJobSpec,
    job: str,
    namespace: str | None,
    *,
    simulated_llm: bool,
    promptopt_version: str | None,
) -> RunInfo:
    """What produces a run starting now, for its result file (which sets the end)."""
    optimizer = spec.optimizer
    settings = optimizer.gepa_settings if optimizer.type == "GEPA" else optimizer.meta_prompt_settings
    return RunInfo(
        job=job,
        namespace=namespace,
        optimizer=optimizer.type,
        optimizer_settings={
            **settings.model_dump(mode="json", by_alias=True, exclude_none=True),
            **({"options": optimizer.options} if optimizer.options else {}),
        },
        models=ModelsUsed(
            task=spec.task.model or (spec.task.http.url if spec.task.http else None),
            judges={scorer.key: scorer.model for scorer in spec.scorers or [] if scorer.model} or None,
            reflection=optimizer.reflection_model,
        ),
        started_at=format_time(datetime.now(UTC)),
        promptopt_version=promptopt_version,
        simulated_llm=simulated_llm,
    )


class NoCalls(LLMClient):
    """The client of a dry run: preparing a job calls nothing, and this makes sure of it."""

    def complete(self, endpoint: ModelEndpoint, messages: Any) -> str:
        raise AssertionError(f"a dry run called the {endpoint.where()}")

    def post(self, endpoint: ModelEndpoint, headers: Any, body: Any, read: Any) -> Any:
        raise AssertionError(f"a dry run called the {endpoint.where()}")


def plan_locally(
    spec: PromptOptimizationJobSpec,
    configmaps: ConfigMapSource,
    path: str | Path,
    output_json: str | Path | None,
    strict: bool = False,
) -> int:
    """`promptopt run --dry-run`: prepare the job as a run would, its MLflow server reached as the run reaches it
    (read only), and print its calls and cost (promptopt_worker.dry_run; with `strict`, its warnings fail it).
    Credentials this environment lacks are not the job's fault (in a cluster they come from its Secret): they are
    named, and stand-ins let the preparation go on."""
    absent_headers = absent_header_credentials(spec)
    os.environ.update({key: "dry-run-stand-in" for key in absent_headers})
    problem = None
    try:
        problem = build_problem(spec, configmaps, NoCalls(), mlflow=mlflow_store(spec))
        plan = replace(plan_dry_run(spec, problem, strict), mlflow=tuple(dry_run_notes(spec, problem)))
    except InvalidInput as error:
        print(f"{path}: the job cannot run: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    finally:
        if problem is not None and problem.evaluator is not None:
            problem.evaluator.close()
    print(render_dry_run(plan, str(path)))
    if missing := "; ".join(filter(None, [missing_api_keys(spec), ", ".join(absent_headers)])):
        print(
            f"Not in this environment, so a local run would need them: {missing} (in a cluster, the job's "
            "credentials Secret holds them)."
        )
    if output_json:
        Path(output_json).write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    return EXIT_SUCCEEDED


def absent_header_credentials(spec: PromptOptimizationJobSpec) -> list[str]:
    """The credentials keys of the job's service headers that this environment lacks."""
    headers = [
        *(spec.task.http.headers or [] if spec.task.http else []),
        *(h for s in spec.scorers or [] if s.http for h in s.http.headers or []),
    ]
    return sorted({h.credentials_key for h in headers if h.credentials_key and h.credentials_key not in os.environ})


def single_job(documents: list[dict[str, Any]], path: str | Path) -> dict[str, Any]:
    jobs = [doc for doc in documents if doc.get("kind") == KIND]
    if len(jobs) != 1:
        found = ", ".join(f"{doc.get('apiVersion')}/{doc.get('kind')}" for doc in documents) or "no document"
        raise ValueError(f"{path} must hold exactly one {API_VERSION} {KIND}; it holds {len(jobs)} (found: {found})")
    if jobs[0].get("apiVersion") != API_VERSION:
        raise ValueError(f"{path}: apiVersion is {jobs[0].get('apiVersion')!r}; a {KIND} is {API_VERSION}")
    return jobs[0]


def with_simulated_models(spec: PromptOptimizationJobSpec, base_url: str) -> PromptOptimizationJobSpec:
    """The spec with every model (a Registered judge's too) replaced by its simulated counterpart, priced at zero (it
    costs nothing); the job's HTTP services stay as they are."""
    free = Pricing(input_per_million_tokens=0, output_per_million_tokens=0)
    task = (
        spec.task
        if spec.task.http
        else spec.task.model_copy(update={"model": SIMULATED_MODELS["task"], "api_base": base_url, "pricing": free})
    )
    optimizer = spec.optimizer.model_copy(
        update={
            "reflection_model": SIMULATED_MODELS["reflection"],
            "reflection_api_base": base_url,
            "reflection_pricing": free,
        }
    )
    judge = {"model": SIMULATED_MODELS["judge"], "api_base": base_url, "pricing": free}
    scorers = spec.scorers and [s.model_copy(update=judge) if s.model or s.registered else s for s in spec.scorers]
    return spec.model_copy(update={"task": task, "optimizer": optimizer, "scorers": scorers})


def missing_api_keys(spec: PromptOptimizationJobSpec) -> str:
    """The environment variables the job's models need and do not find, with the models that need them ("" when
    none is missing). Models with an apiBase (local servers) need no key."""
    endpoints = [
        *([ModelEndpoint.for_task(spec.task)] if spec.task.model else []),
        ModelEndpoint.for_reflection(spec.optimizer, spec.task),
        *(ModelEndpoint.for_judge(s, spec.task) for s in spec.scorers or [] if s.model),
    ]
    needs: dict[str, list[str]] = {}
    for endpoint in endpoints:
        for variable in llm.missing_api_keys(endpoint):
            needs.setdefault(variable, []).append(endpoint.description)
    return "; ".join(f"{variable} (needed by the {', '.join(users)})" for variable, users in needs.items())
