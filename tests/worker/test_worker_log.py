"""The worker's log: bounded however much a library repeats itself (and a run whose original prompts score perfectly
ends at once instead of spinning gepa through its budget), one line per record, and `--log-format json` for log
pipelines, secrets masked in both formats."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from promptopt.api.v1alpha1 import Cost
from promptopt.api.validation import parse_spec
from promptopt.cli import LOG_FORMATS, build_parser, main
from promptopt.simulated_llm import OPTIMAL_INSTRUCTION
from promptopt_worker.llm import LLMClient, UsageMeter
from promptopt_worker.main import pod_reporters, run_job, with_simulated_models
from promptopt_worker.problem import Progress, Result, ScoreSummary, StopRequested
from promptopt_worker.reporting import (
    LogFormat,
    LogReporter,
    RedactingFormatter,
    RepeatLimitingHandler,
    Reporters,
    configure_logging,
)
from promptopt_worker.sources import LocalConfigMaps

REPO = Path(__file__).resolve().parents[2]
PROMPTOPT = str(Path(sys.executable).with_name("promptopt"))
SECRET = "hunter2-0123456789abcdef"
PROMPT = "Classify the sentiment.\nAnswer in one word.\n\n{{review}}"
# gepa's line when every score of a minibatch is perfect, 31,288 times in 10 s in the run that flooded a worker's log.
PERFECT_SKIP = "gepa: Iteration %d: All subsample scores perfect for parent 0. Skipping."


def perfect_job(max_metric_calls: int) -> dict:
    """examples/gepa-sentiment.yaml starting from the instruction the simulated LLM scores perfectly."""
    job = yaml.safe_load((REPO / "examples" / "gepa-sentiment.yaml").read_text())
    job["spec"]["prompts"][0]["template"] = OPTIMAL_INSTRUCTION
    job["spec"]["optimizer"]["gepa"]["maxMetricCalls"] = max_metric_calls
    return job


def test_a_worker_whose_original_prompts_score_perfectly_stops_at_once_with_a_few_log_lines(
    llm, monkeypatch, tmp_path, logging_restored
):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    monkeypatch.setenv("PROMPTOPT_TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    spec = with_simulated_models(parse_spec(perfect_job(max_metric_calls=3000)["spec"]), llm.base_url)
    log = io.StringIO()
    configure_logging(log, log_format="json")  # as the worker logs: INFO and up
    usage = UsageMeter()

    result = run_job(
        spec,
        LocalConfigMaps(),
        LLMClient(usage=usage),
        Reporters(*pod_reporters(lambda: usage.snapshot().as_cost())),
        StopRequested(),
    )
    logging.getLogger().handlers[0].close()  # as at exit: anything held back is counted

    assert result.reason == "PerfectScore" and "which no candidate can beat" in result.message, result.message
    assert "after 0 iterations" in result.message  # gepa spun through 3000 metric calls before
    lines = log.getvalue().splitlines()
    # Before: ~3,400 lines (12 MB in the user's run), gepa iteration after iteration finding nothing to do.
    assert len(lines) <= 25, "\n".join(lines)
    assert sum(llm.calls.values()) == usage.snapshot().as_cost().llm_calls <= 2 * 3  # the seed on validation
    messages = [json.loads(line)["message"] for line in lines]
    assert "optimized prompt classify: " + OPTIMAL_INSTRUCTION in messages and llm.api_key not in log.getvalue()


def test_a_library_repeating_itself_cannot_flood_the_log(logging_restored):
    log = io.StringIO()
    configure_logging(log)
    gepa = logging.getLogger("promptopt_worker.gepa_optimizer")
    for iteration in range(31_288):
        gepa.info(PERFECT_SKIP, iteration)
    gepa.info("gepa: Iteration 31289: Best score on valset: 1.0")  # another kind goes out
    logging.getLogger().handlers[0].close()  # at exit

    lines = log.getvalue().splitlines()
    assert len(lines) == 10 + 1 + 1, lines[-3:]  # a burst, the other kind, and how many were held back
    assert lines[9].endswith("Iteration 9: All subsample scores perfect for parent 0. Skipping.")
    assert "Best score on valset" in lines[10]
    assert "held back 31278 more records like this one" in lines[11]
    assert lines[11].endswith("Iteration 31287: All subsample scores perfect for parent 0. Skipping.")


def test_each_kind_gets_a_burst_per_window_and_the_count_held_back_when_its_window_ends():
    out, now = io.StringIO(), [0.0]
    handler = RepeatLimitingHandler(out, burst=2, window_s=60, clock=lambda: now[0])
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test_worker_log.window")
    logger.propagate, logger.handlers[:] = False, [handler]
    logger.setLevel(logging.INFO)
    try:
        for number in range(5):
            logger.info("retrying call %d", number)
        logger.warning("retrying call 5")  # another level, another kind
        now[0] = 59
        logger.info("retrying call 6")  # still the first window: held back
        now[0] = 60
        logger.info("retrying call 7")  # a new window: first the count, then this record
        handler.close()
    finally:
        logger.handlers[:] = []

    assert out.getvalue().splitlines() == [
        "INFO retrying call 0",
        "INFO retrying call 1",
        "WARNING retrying call 5",
        "INFO held back 4 more records like this one (at most 2 of a kind go out per 60 s): retrying call 6",
        "INFO retrying call 7",
    ]


def test_text_log_lines_keep_a_multi_line_prompt_and_a_traceback_on_one_line(logging_restored, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    log = io.StringIO()
    configure_logging(log)
    logger = logging.getLogger("promptopt_worker.test")
    logger.info("gepa: Iteration 3: Proposed new text for classify: %s", PROMPT + f"\nkey {SECRET}")
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        logger.exception("the reflection failed")

    # The test's own records: a warning of the interpreter's (an unclosed socket an earlier test left to the garbage
    # collector) may come through the log too, as configure_logging routes warnings there.
    lines = [line for line in log.getvalue().splitlines() if " promptopt_worker.test: " in line]
    assert len(lines) == 2
    assert lines[0].endswith(
        "Proposed new text for classify: Classify the sentiment.\\nAnswer in one word.\\n\\n{{review}}\\nkey ***"
    )
    assert "the reflection failed\\nTraceback (most recent call last):\\n" in lines[1]
    assert "ValueError: first line\\nsecond line" in lines[1]
    assert SECRET not in log.getvalue()


def test_json_log_lines_are_objects_with_the_fields_extras_and_secrets_masked(logging_restored, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    log = io.StringIO()
    configure_logging(log, log_format="json")
    logger = logging.getLogger("promptopt_worker.test")
    logger.warning(
        "the judge answered %r",
        f"no verdict\nusing {SECRET}",
        extra={"record": 7, "request": {"headers": {"Authorization": f"Bearer {SECRET}"}}, "at": Path("/x")},
    )
    try:
        raise RuntimeError(f"Incorrect API key provided: {SECRET}")
    except RuntimeError:
        logging.getLogger("LiteLLM").error("call failed", exc_info=True)

    entries = [json.loads(line) for line in log.getvalue().splitlines()]
    # The test's own records (a ResourceWarning of an earlier test's socket may come through too, see above).
    first, second = [entry for entry in entries if entry["logger"] in ("promptopt_worker.test", "LiteLLM")]
    assert set(first) == {"time", "level", "logger", "message", "record", "request", "at"}
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-01-01T00:00:00.000Z")
    assert (first["level"], first["logger"], first["record"]) == ("WARNING", "promptopt_worker.test", 7)
    assert first["message"] == "the judge answered 'no verdict\\nusing ***'"
    assert first["request"] == {"headers": {"Authorization": "Bearer ***"}} and first["at"] == "/x"
    assert (second["level"], second["logger"], second["message"]) == ("ERROR", "LiteLLM", "call failed")
    assert second["exception"].startswith("Traceback") and "Incorrect API key provided: ***" in second["exception"]
    assert SECRET not in log.getvalue()


def test_the_worker_log_has_the_result_with_its_data_one_record_each(logging_restored):
    log = io.StringIO()
    configure_logging(log, log_format="json")
    reporter = LogReporter(cost=lambda: Cost(llm_calls=5, prompt_tokens=50, completion_tokens=5, retries=2))
    progress = Progress(metric_calls=12, max_metric_calls=60, best_score=0.5)
    reporter.progress(progress, important=True)
    reporter.finished(
        progress,
        Result(
            "Completed",
            "GEPA finished",
            best_candidate={"classify": PROMPT},
            initial_scores=ScoreSummary(0.25, {"ExactMatch": 0.25}),
            final_scores=ScoreSummary(0.5, {"ExactMatch": 0.5}),
        ),
    )

    entries = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [entry["message"].split(":")[0] for entry in entries] == [
        "progress",
        "result",
        "scores (initial -> final)",
        "optimized prompt classify",
        "cost",
    ]
    assert entries[0]["progress"]["metricCalls"] == 12 and "best 0.500" in entries[0]["message"]
    assert entries[1]["workerResult"] == {"reason": "Completed", "message": "GEPA finished", "succeeded": True}
    assert entries[2]["message"].endswith("ExactMatch 0.250 -> 0.500, aggregate 0.250 -> 0.500")
    assert entries[3]["message"] == f"optimized prompt classify: {PROMPT}" and entries[3]["prompt"] == "classify"
    assert "2 retries of transient errors" in entries[4]["message"] and entries[4]["cost"]["llmCalls"] == 5


def test_promptopt_run_logs_json_lines_to_stderr(llm, tmp_path):
    """The job's models at the simulated LLM without a price: litellm knows none, and the run warns of it."""
    job = perfect_job(max_metric_calls=150)
    job["spec"]["task"]["apiBase"] = llm.base_url
    job["spec"]["optimizer"]["reflectionModel"] = "openai/sim-reflect"
    job["spec"]["task"]["model"] = "openai/sim-task"
    job["spec"]["scorers"][1]["model"] = "openai/sim-judge"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "OPENAI_API_KEY": llm.api_key}

    run = subprocess.run(
        [PROMPTOPT, "run", "--log-format", "json", str(tmp_path / "job.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    entries = [json.loads(line) for line in run.stderr.splitlines()]
    assert entries and all(entry["level"] == "WARNING" for entry in entries), run.stderr
    assert any("litellm does not know the price of task model" in entry["message"] for entry in entries)
    assert "which no candidate can beat" in run.stdout and llm.api_key not in run.stdout + run.stderr


def test_log_format_is_a_flag_of_worker_and_run_and_defaults_from_the_environment(monkeypatch, capsys):
    assert LOG_FORMATS == get_args(LogFormat)
    assert build_parser().parse_args(["worker", "--log-format", "json"]).log_format == "json"
    assert build_parser().parse_args(["run", "job.yaml"]).log_format == "text"
    monkeypatch.setenv("PROMPTOPT_LOG_FORMAT", "json")  # set through the job's spec.worker.env
    assert build_parser().parse_args(["worker"]).log_format == "json"
    monkeypatch.setenv("PROMPTOPT_LOG_FORMAT", "yaml")
    with pytest.raises(SystemExit) as exited:
        main(["worker"])
    assert exited.value.code == 2
    assert "PROMPTOPT_LOG_FORMAT: 'yaml' is not a log format (text or json)" in capsys.readouterr().err
