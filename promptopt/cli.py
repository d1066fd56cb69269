"""The `promptopt` command: one entry point for the operator, the worker, local runs and the CRD."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Flags only (stdlib imports): `promptopt --help` works in the worker image, which has no kopf.
from promptopt_operator.settings import add_arguments as add_operator_arguments


def _crd(args: argparse.Namespace) -> int:
    from promptopt.api import crd

    for directory in args.output_dir or []:
        Path(directory).mkdir(parents=True, exist_ok=True)
        print(crd.write_crd(Path(directory)))
    if not args.output_dir:
        sys.stdout.write(crd.render_crd_yaml())
    return 0


def _api_docs(args: argparse.Namespace) -> int:
    from promptopt.api import docs

    print(docs.write_api_reference(Path(args.output_dir)))
    return 0


def _operator(args: argparse.Namespace) -> int:
    from promptopt_operator.main import run_operator

    return run_operator(args)


def _worker(args: argparse.Namespace) -> int:
    from promptopt_worker.main import run_worker

    return run_worker(args.log_format)


def _run(args: argparse.Namespace) -> int:
    from promptopt_worker.main import run_local

    return run_local(
        args.job,
        args.configmap_files,
        args.output,
        args.simulated_llm,
        args.dry_run,
        log_format=args.log_format,
        strict=args.strict,
        promptopt_version=installed_version(),
    )


def _report(args: argparse.Namespace) -> int:
    from promptopt.report import NotAResult, write_report

    try:
        print(write_report(Path(args.result), Path(args.output)))
    except NotAResult as error:
        print(f"promptopt report: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"promptopt report: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import json
    import shutil
    import textwrap

    import kubernetes
    from kubernetes.client.exceptions import ApiException

    from promptopt.api.v1alpha1 import GROUP, PLURAL, VERSION
    from promptopt_operator.diagnosis import (
        OPERATOR_SELECTOR,
        describe_operator,
        diagnose,
        installed_operators,
        seen_jobs,
    )

    def listed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """The items, as JSON: what the pure diagnosis reads."""
        return json.loads(call(*args, _preload_content=False, **kwargs).data)["items"]

    kubernetes.config.load_kube_config()
    custom, apps = kubernetes.client.CustomObjectsApi(), kubernetes.client.AppsV1Api()
    try:
        jobs = seen_jobs(
            listed(custom.list_namespaced_custom_object, GROUP, VERSION, args.namespace, PLURAL)
            if args.namespace
            else listed(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        )
        deployments = listed(apps.list_deployment_for_all_namespaces, label_selector=OPERATOR_SELECTOR)
    except ApiException as error:
        print(
            f"promptopt doctor: the API refused to list jobs or Deployments ({error.status} {error.reason}); "
            "it needs to list promptoptimizationjobs, and Deployments in every namespace",
            file=sys.stderr,
        )
        return 2
    operators = installed_operators(deployments)
    width = shutil.get_terminal_size().columns - 1
    for line in [*map(describe_operator, operators), *(f"{job.where}: {diagnose(job, operators)}" for job in jobs)]:
        # Names and commands stay whole, to be copied.
        print(
            textwrap.fill(line, width=width, subsequent_indent="    ", break_on_hyphens=False, break_long_words=False)
        )
    if not jobs:
        print(f"no PromptOptimizationJobs{' in namespace ' + args.namespace if args.namespace else ''}")
    return 1 if any(not job.phase for job in jobs) else 0


def installed_version() -> str:
    """promptopt's version, as installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptopt")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


LOG_FORMATS = ("text", "json")  # promptopt_worker.reporting.LogFormat, which this module cannot import
# The log format's default, so a job can ask its worker for JSON (spec.worker.env) without a flag.
LOG_FORMAT_ENV = "PROMPTOPT_LOG_FORMAT"


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get(LOG_FORMAT_ENV) or "text",
        help=f"text (default; {LOG_FORMAT_ENV} sets another) or json: one JSON object per line (time, level, logger, "
        "message and the record's fields), for log pipelines; secrets are masked in both",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptopt",
        description="Run LLM prompt-optimization jobs (GEPA, MetaPrompt) on Kubernetes or locally.",
    )
    parser.add_argument("--version", action="version", version=f"promptopt {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the PromptOptimizationJob CRD generated from the API models")
    crd.add_argument(
        "-o",
        "--output-dir",
        action="append",
        help="write <plural>.<group>.yaml into this folder (repeatable: crds/ and the Helm chart's "
        "crds/) instead of stdout",
    )
    crd.set_defaults(handler=_crd)

    api_docs = commands.add_parser("api-docs", help="write the API reference generated from the API models")
    api_docs.add_argument("-o", "--output-dir", default="docs", help="folder of api-reference.md (default: docs)")
    api_docs.set_defaults(handler=_api_docs)

    operator = commands.add_parser("operator", help="run the Kubernetes operator (needs the 'operator' extra)")
    add_operator_arguments(operator)
    operator.add_argument("--verbose", action="store_true", help="log debug messages")
    operator.set_defaults(handler=_operator)

    worker = commands.add_parser(
        "worker",
        help="run one job's optimization inside its Pod (started by the operator)",
        description="Optimize the job named by PROMPTOPT_JOB_NAME in PROMPTOPT_JOB_NAMESPACE, reporting into its "
        "status. Uses KUBECONFIG when set, else the Pod's service account. Exit code 0: a usable result; 1: failed; "
        "2: invalid input.",
    )
    add_log_format_argument(worker)
    worker.set_defaults(handler=_worker)

    run = commands.add_parser(
        "run",
        help="run a job file on this machine, without a cluster",
        description="Run the PromptOptimizationJob in JOB (a YAML file; ConfigMaps it uses may sit in the same "
        "file or in files given with -f) here, showing progress on the console.",
    )
    run.add_argument("job", help="YAML file holding one PromptOptimizationJob (and possibly ConfigMaps)")
    run.add_argument(
        "-f",
        "--configmap-file",
        dest="configmap_files",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file with ConfigMaps the job reads (repeatable)",
    )
    run.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the result as JSON, shaped like the job's status (scores, prompts, cost)",
    )
    run.add_argument(
        "--simulated-llm",
        action="store_true",
        help="answer every LLM call from the built-in simulated LLM, a test double (no API key needed)",
    )
    add_log_format_argument(run)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve and check everything, then print the most calls per model and service and the "
        "cost, without calling any; exit code 0 when the job can run (-o writes this plan as JSON)",
    )
    run.add_argument(
        "--strict",
        action="store_true",
        help="with --dry-run: fail (exit code 2) on a warning too, such as a model litellm's list does not know",
    )
    run.set_defaults(handler=_run)

    report = commands.add_parser(
        "report",
        help="write a result file of `promptopt run -o` as one HTML page",
        description="Render RESULT (the JSON file `promptopt run -o` writes) as a self-contained HTML page: how the "
        "run ended, the scores, the best validation score against metric calls, the candidate tree and the winning "
        "prompts' diff against the original ones. The page loads nothing from the network. Exit code 2: RESULT is "
        "not a result.",
    )
    report.add_argument("result", metavar="RESULT", help="the result file (JSON) of `promptopt run -o`")
    report.add_argument("-o", "--output", metavar="REPORT.html", required=True, help="the HTML file to write")
    report.set_defaults(handler=_report)

    doctor = commands.add_parser(
        "doctor",
        help="say why each job is where it is, above all one no operator has acted on",
        description="List the promptopt operators installed (their Deployments, and the namespaces each watches) and "
        "every job with its phase; for a job without a phase, say why no operator acted on it (none installed, "
        "none watching its namespace, or not running) and what to do. Uses the current kubeconfig. Exit code 1: "
        "a job has no phase.",
    )
    doctor.add_argument("-n", "--namespace", help="only this namespace's jobs (default: every namespace)")
    doctor.set_defaults(handler=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "log_format", LOG_FORMATS[0]) not in LOG_FORMATS:  # argparse checks only what the flag gives
        parser.error(f"{LOG_FORMAT_ENV}: {args.log_format!r} is not a log format ({' or '.join(LOG_FORMATS)})")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
