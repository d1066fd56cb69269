"""The `promptopt` command: one entry point for the operator, the worker, local runs and the CRD."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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

    return run_worker()


def _run(args: argparse.Namespace) -> int:
    from promptopt_worker.main import run_local

    return run_local(args.job, args.configmap_files, args.output, args.simulated_llm, args.dry_run)


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptopt")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptopt",
        description="Run LLM prompt-optimization jobs (GEPA, MetaPrompt) on Kubernetes or locally.",
    )
    parser.add_argument("--version", action="version", version=f"promptopt {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the PromptOptimizationJob CRD generated from the API models")
    crd.add_argument("-o", "--output-dir", action="append",
                     help="write <plural>.<group>.yaml into this folder (repeatable: crds/ and the Helm chart's "
                     "crds/) instead of stdout")
    crd.set_defaults(handler=_crd)

    api_docs = commands.add_parser("api-docs", help="write the API reference generated from the API models")
    api_docs.add_argument("-o", "--output-dir", default="docs", help="folder of api-reference.md (default: docs)")
    api_docs.set_defaults(handler=_api_docs)

    operator = commands.add_parser("operator", help="run the Kubernetes operator (needs the 'operator' extra)")
    add_operator_arguments(operator)
    operator.add_argument("--peering", action="store_true",
                          help="coordinate replicas through kopf peering (needs its CRDs); default: standalone")
    operator.add_argument("--verbose", action="store_true", help="log debug messages")
    operator.set_defaults(handler=_operator)

    worker = commands.add_parser(
        "worker", help="run one job's optimization inside its Pod (started by the operator)",
        description="Optimize the job named by PROMPTOPT_JOB_NAME in PROMPTOPT_JOB_NAMESPACE, reporting into its "
        "status. Uses KUBECONFIG when set, else the Pod's service account. Exit code 0: a usable result; 1: failed; "
        "2: invalid input.",
    )
    worker.set_defaults(handler=_worker)

    run = commands.add_parser(
        "run", help="run a job file on this machine, without a cluster",
        description="Run the PromptOptimizationJob in JOB (a YAML file; ConfigMaps it uses may sit in the same "
        "file or in files given with -f) here, showing progress on the console.",
    )
    run.add_argument("job", help="YAML file holding one PromptOptimizationJob (and possibly ConfigMaps)")
    run.add_argument("-f", "--configmap-file", dest="configmap_files", action="append", default=[], metavar="FILE",
                     help="YAML file with ConfigMaps the job reads (repeatable)")
    run.add_argument("-o", "--output", metavar="FILE",
                     help="write the result as JSON, shaped like the job's status (scores, prompts, cost)")
    run.add_argument("--simulated-llm", action="store_true",
                     help="answer every LLM call from the built-in simulated LLM, a test double (no API key needed)")
    run.add_argument("--dry-run", action="store_true",
                     help="resolve and check everything, then print the most calls per model and service and the "
                     "cost, without calling any; exit code 0 when the job can run (-o writes this plan as JSON)")
    run.set_defaults(handler=_run)

    report = commands.add_parser(
        "report", help="write a result file of `promptopt run -o` as one HTML page",
        description="Render RESULT (the JSON file `promptopt run -o` writes) as a self-contained HTML page: how the "
        "run ended, the scores, the best validation score against metric calls, the candidate tree and the winning "
        "prompts' diff against the original ones. The page loads nothing from the network. Exit code 2: RESULT is "
        "not a result.",
    )
    report.add_argument("result", metavar="RESULT", help="the result file (JSON) of `promptopt run -o`")
    report.add_argument("-o", "--output", metavar="REPORT.html", required=True, help="the HTML file to write")
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
