"""Reporters: the job's status (worker-owned fields only, rate-limited, resilient), console, termination message."""

import io
import json
import logging
import re
from datetime import UTC, datetime

import pytest
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from promptopt.api.times import format_time
from promptopt.api.v1alpha1 import GROUP, PLURAL, VERSION, Cost
from promptopt.worker_contract import (
    WORKER_STATUS_FIELDS,
    ModelsUsed,
    ResultFile,
    RunInfo,
    parse_termination_message,
)
from promptopt_worker.problem import CandidateRecord, Progress, Result, ScoreSummary
from promptopt_worker.reporting import (
    ConsoleReporter,
    KubernetesStatusReporter,
    Reporters,
    ResultFileReporter,
    TerminationMessageReporter,
    configure_logging,
    status_fields,
    worker_status,
)

SECRET = "hunter2-0123456789abcdef"  # not key-shaped: only its place in the environment marks it secret
INITIAL = ScoreSummary(aggregate=0.25, scorers={"ExactMatch": 0.0, "Correctness": 0.75})
FINAL = ScoreSummary(aggregate=1.0, scorers={"ExactMatch": 1.0, "Correctness": 1.0})
BEST = {"classify": "Answer with one lowercase word.\n\n{{review}}"}

OPERATOR_STATUS = {
    "phase": "Running",
    "conditions": [{"type": "Running", "status": "True", "reason": "PodRunning", "message": "worker pod running"}],
    "observedGeneration": 1,
    "message": "running in pod job-abc",
    "podName": "job-abc",
    "attempts": 1,
    "startTime": "2026-01-01T00:00:00Z",
}


@pytest.fixture(autouse=True)
def _no_real_termination_log(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_TERMINATION_MESSAGE_PATH", str(tmp_path / "default-termination-log"))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class RecordingStatusApi:
    """Stands in for CustomObjectsApi: records status patches, raises the queued failures first."""

    def __init__(self, failures=()):
        self.patches = []
        self.failures = list(failures)

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **options):
        assert (group, version, plural) == (GROUP, VERSION, PLURAL)
        assert options["_content_type"] == "application/merge-patch+json"
        if self.failures:
            raise self.failures.pop(0)
        self.patches.append(body["status"])


def running(metric_calls, best=None, **fields):
    return Progress(
        metric_calls=metric_calls,
        max_metric_calls=60,
        best_score=best,
        initial_scores=INITIAL if best is not None else None,
        **fields,
    )


def completed(**fields):
    fields.setdefault("best_candidate", BEST)
    return Result(
        reason="Completed", message="budget of metric calls spent", initial_scores=INITIAL, final_scores=FINAL, **fields
    )


def reporter_for(api, clock=None, sleeps=None, **options):
    return KubernetesStatusReporter(
        api,
        "job",
        "default",
        clock=clock or FakeClock(),
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        **options,
    )


# --- the job's status ---------------------------------------------------------------------------


def test_status_reporter_patches_only_worker_owned_fields(cluster):
    cluster.create(
        {
            "apiVersion": "promptopt.dev/v1alpha1",
            "kind": "PromptOptimizationJob",
            "metadata": {"name": "job"},
            "spec": {
                "optimizer": {"type": "MetaPrompt", "reflectionModel": "openai/sim-reflect"},
                "prompts": [{"name": "classify", "template": "{{review}}"}],
                "task": {"model": "openai/sim-task"},
            },
        }
    )
    cluster.patch("poj", "job", {"status": OPERATOR_STATUS}, subresource="status")
    sent = []

    class Recording(CustomObjectsApi):
        def patch_namespaced_custom_object_status(self, *args, **kwargs):
            sent.append(args[-1]["status"])
            return super().patch_namespaced_custom_object_status(*args, **kwargs)

    reporter = KubernetesStatusReporter(
        Recording(cluster.api_client()),
        "job",
        cluster.namespace,
        cost=lambda: Cost(llm_calls=3, prompt_tokens=90, completion_tokens=9),
    )
    reporter.progress(running(12, best=0.25, iteration=1, candidates=1, best_candidate=BEST), important=True)
    reporter.finished(running(60, best=1.0, cached_evaluations=21), completed())

    status = cluster.get("poj", "job")["status"]
    assert {key: status[key] for key in OPERATOR_STATUS} == OPERATOR_STATUS
    assert status["progress"] == {
        "metricCalls": 60,
        "maxMetricCalls": 60,
        "percent": 100,
        "iteration": 0,
        "candidates": 0,
        "rejectedCandidates": 0,
        "bestScore": 1.0,
        "failedExamples": 0,
        "cachedEvaluations": 21,
    }
    assert status["initialScores"] == {
        "aggregate": 0.25,
        "scorers": {"ExactMatch": 0.0, "Correctness": 0.75},
        "failedExamples": 0,
    }
    assert status["finalScores"] == {
        "aggregate": 1.0,
        "scorers": {"ExactMatch": 1.0, "Correctness": 1.0},
        "failedExamples": 0,
    }
    assert status["optimizedPrompts"] == [{"name": "classify", "template": BEST["classify"]}]
    assert status["cost"] == {"llmCalls": 3, "promptTokens": 90, "completionTokens": 9}
    assert status["display"] == {"initialScore": "0.250", "bestScore": "1.000"}  # kubectl get's columns; no price
    assert status["workerResult"] == {
        "reason": "Completed",
        "message": "budget of metric calls spent",
        "succeeded": True,
    }
    assert len(sent) == 2 and all(set(patch) <= set(WORKER_STATUS_FIELDS) for patch in sent)
    assert set(sent[1]) == {"progress", "finalScores", "display", "workerResult"}  # unchanged fields are not resent


def test_status_is_rate_limited_but_important_events_and_the_end_go_out_at_once():
    api, clock = RecordingStatusApi(), FakeClock()
    reporter = reporter_for(api, clock, min_interval_s=3)

    reporter.progress(running(1))  # the first report goes out
    clock.now = 1
    reporter.progress(running(2))  # within 3 s: held back
    clock.now = 2
    reporter.progress(running(3, best=0.25), important=True)  # first score: at once
    clock.now = 4
    reporter.progress(running(4, best=0.25))  # 2 s after the last patch: held back
    clock.now = 5.5
    reporter.progress(running(5, best=0.25))  # 3.5 s after: goes out
    clock.now = 20
    reporter.progress(running(5, best=0.25))  # nothing changed: no patch
    reporter.finished(running(6, best=0.5), completed())  # the end: at once, whatever the clock
    reporter.progress(running(7, best=0.5), important=True)  # after the end: ignored

    assert [patch["progress"]["metricCalls"] for patch in api.patches] == [1, 3, 5, 6]
    assert "initialScores" in api.patches[1] and "initialScores" not in api.patches[2]
    assert api.patches[-1]["workerResult"]["reason"] == "Completed"


def test_transient_api_errors_are_retried_with_backoff_and_never_raised(caplog):
    unavailable = ApiException(status=503, reason="Service Unavailable")
    api, sleeps = RecordingStatusApi([unavailable, unavailable]), []
    reporter = reporter_for(api, sleeps=sleeps, retry_delays_s=(0.5, 1.0))

    reporter.progress(running(1), important=True)

    assert sleeps == [0.5, 1.0] and len(api.patches) == 1
    assert sum("could not patch status" in r.message for r in caplog.records) == 1  # one warning per streak


def test_a_failed_update_is_retried_later_and_permanent_errors_are_not_retried():
    api, sleeps = RecordingStatusApi([ConnectionResetError("reset"), ApiException(status=403, reason="Forbidden")]), []
    reporter = reporter_for(api, sleeps=sleeps, retry_delays_s=(0.5,))

    reporter.progress(running(1), important=True)  # reset (retried after 0.5 s), then 403: given up
    assert sleeps == [0.5] and api.patches == []
    reporter.progress(running(1), important=True)  # nothing reached the status yet: sent again
    assert len(api.patches) == 1


def test_the_final_patch_retries_harder():
    api, sleeps = RecordingStatusApi([ApiException(status=500)] * 4), []
    reporter = reporter_for(api, sleeps=sleeps, retry_delays_s=(0.5,), final_retry_delays_s=(0.5, 1, 2, 4, 8))

    reporter.finished(running(6), completed())

    assert sleeps == [0.5, 1, 2, 4] and api.patches[0]["workerResult"]["reason"] == "Completed"


# --- the termination message --------------------------------------------------------------------


def test_termination_message_holds_the_whole_result_when_small(tmp_path):
    path = tmp_path / "termination-log"
    TerminationMessageReporter(str(path), cost=lambda: Cost(llm_calls=5)).finished(running(60), completed())

    message = json.loads(path.read_text())
    assert message == {
        "initialScores": {"aggregate": 0.25, "scorers": {"ExactMatch": 0.0, "Correctness": 0.75}, "failedExamples": 0},
        "finalScores": {"aggregate": 1.0, "scorers": {"ExactMatch": 1.0, "Correctness": 1.0}, "failedExamples": 0},
        "optimizedPrompts": [{"name": "classify", "template": BEST["classify"]}],
        "cost": {"llmCalls": 5},
        "display": {"initialScore": "0.250"},
        "workerResult": {"reason": "Completed", "message": "budget of metric calls spent", "succeeded": True},
    }


def test_scores_and_cost_are_formatted_for_kubectls_columns():
    """A printer column shows a number in full (0.8333333333333334) and no currency: the worker writes both."""
    status = worker_status(running(12, best=5 / 6), cost=Cost(llm_calls=4, usd=0.0123456))
    assert status.display is not None
    assert (status.display.best_score, status.display.cost) == ("0.833", "$0.0123")
    assert worker_status(running(12), cost=Cost(usd=12.345)).display.cost == "$12.35"


def seven_candidates() -> tuple[CandidateRecord, ...]:
    """The seed (0.25), then six children, each of the one before; candidate 3 is the best."""
    scores = [0.25, 0.5, 0.75, 1.0, 0.5, 0.625, 0.875]
    return tuple(
        CandidateRecord(i, (i - 1,) if i else (), score, {"ExactMatch": score}, 10 * i, {"classify": f"v{i}"})
        for i, score in enumerate(scores)
    )


def test_status_keeps_the_best_candidates_and_the_result_file_all_of_them(tmp_path):
    result = completed(candidates=seven_candidates())
    in_status = status_fields(worker_status(running(60, best=1.0), result))["candidates"]
    assert [c["id"] for c in in_status] == [3, 6, 2, 5, 1]  # best first, at most 5, no prompts
    assert in_status[0] == {
        "id": 3,
        "parents": [2],
        "score": 1.0,
        "scorers": {"ExactMatch": 1.0},
        "foundAtMetricCalls": 30,
    }

    path = tmp_path / "result.json"
    ResultFileReporter(path).finished(running(60, best=1.0), result)
    in_file = json.loads(path.read_text())["candidates"]
    assert [c["id"] for c in in_file] == [3, 6, 2, 5, 1, 4, 0]
    assert in_file[-1] == {
        "id": 0,
        "parents": [],
        "score": 0.25,
        "scorers": {"ExactMatch": 0.25},
        "foundAtMetricCalls": 0,
        "prompts": {"classify": "v0"},
    }


def test_the_result_file_says_what_produced_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run = RunInfo(
        job="sentiment",
        namespace="team-a",
        optimizer="GEPA",
        optimizer_settings={"maxMetricCalls": 60, "options": {"note": f"key {SECRET}"}},
        models=ModelsUsed(
            task="openai/gpt-4.1-mini", judges={"Correctness": "openai/gpt-4.1"}, reflection="openai/gpt-4.1"
        ),
        started_at="2026-01-01T00:00:00Z",
        promptopt_version="0.1.0",
        simulated_llm=False,
    )
    path = tmp_path / "result.json"
    ResultFileReporter(path, run=run).finished(running(60, best=1.0), completed())

    written = json.loads(path.read_text())
    assert written["run"] == {
        "job": "sentiment",
        "namespace": "team-a",
        "optimizer": "GEPA",
        "optimizerSettings": {"maxMetricCalls": 60, "options": {"note": "key ***"}},
        "models": {
            "task": "openai/gpt-4.1-mini",
            "judges": {"Correctness": "openai/gpt-4.1"},
            "reflection": "openai/gpt-4.1",
        },
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": written["run"]["finishedAt"],
        "promptoptVersion": "0.1.0",
        "simulatedLlm": False,
    }
    assert "2026-01-01T00:00:00Z" < written["run"]["finishedAt"] <= format_time(datetime.now(UTC))
    assert ResultFile.model_validate(written).run == run.model_copy(
        update={  # `promptopt report` reads it back
            "finished_at": written["run"]["finishedAt"],
            "optimizer_settings": written["run"]["optimizerSettings"],
        }
    )


def test_termination_message_leaves_the_candidates_to_the_status(tmp_path):
    path = tmp_path / "termination-log"
    TerminationMessageReporter(str(path)).finished(running(60), completed(candidates=seven_candidates()))
    assert "candidates" not in json.loads(path.read_text())


def test_termination_message_stays_under_4_kib_with_huge_prompts(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv("PROMPTOPT_TERMINATION_MESSAGE_PATH", str(path))
    huge = {f"prompt{i}": f'{i} «ünïcode» "quoted"\n' * 5000 + "{{review}}" for i in range(5)}
    result = Result(
        reason="Cancelled",
        message="stopped by SIGTERM " * 500,
        best_candidate=huge,
        initial_scores=INITIAL,
        final_scores=FINAL,
    )

    TerminationMessageReporter().finished(running(30), result)

    raw = path.read_bytes()
    assert len(raw) <= 4096
    message = json.loads(raw)
    assert message["workerResult"]["reason"] == "Cancelled" and message["workerResult"]["succeeded"] is True
    assert message["finalScores"]["scorers"] == {"ExactMatch": 1.0, "Correctness": 1.0}
    prompts = message["optimizedPrompts"]
    assert [p["name"] for p in prompts] == list(huge)
    assert all(p["truncated"] is True for p in prompts)  # each cut prompt says so
    assert all(huge[p["name"]].startswith(p["template"].removesuffix("…")) for p in prompts)
    assert min(len(p["template"]) for p in prompts) > 300  # the space is shared, not given up
    assert parse_termination_message(raw.decode()) is not None  # the operator reads it with the same model


def test_termination_message_marks_only_the_prompts_it_cut(tmp_path):
    path = tmp_path / "termination-log"
    prompts = {"short": "Say {{x}}.", "long": "Explain {{x}} in depth. " * 400}
    TerminationMessageReporter(str(path)).finished(running(30), completed(best_candidate=prompts))

    message = json.loads(path.read_bytes())
    marks = {p["name"]: p.get("truncated") for p in message["optimizedPrompts"]}
    assert marks == {"short": None, "long": True}


# --- the console --------------------------------------------------------------------------------


def test_console_reporter_logs_sparse_lines_and_a_score_table_at_the_end():
    out, clock = io.StringIO(), FakeClock()
    console = ConsoleReporter(
        out,
        live=False,
        log_interval_s=10,
        clock=clock,
        cost=lambda: Cost(llm_calls=7, prompt_tokens=70, completion_tokens=7, usd=0.0012),
    )
    console.progress(running(1))
    clock.now = 5
    console.progress(running(2))  # held back
    console.progress(running(3, best=0.25), important=True)
    console.finished(running(60, best=1.0), completed())

    text = out.getvalue()
    assert "\r" not in text
    progress_lines = [line for line in text.splitlines() if " progress: " in line]
    assert len(progress_lines) == 2
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d progress: ", line) for line in progress_lines)  # when
    # 2 metric calls in the 5 s since the first report: the 57 left take 142.5 s more.
    assert "3/60 metric calls, best 0.250, 0:05 elapsed, ETA 2:22" in progress_lines[1]
    assert "result: Completed - budget of metric calls spent" in text
    table = text[text.index("scorer") :].splitlines()[:4]
    assert table[1].split() == ["ExactMatch", "0.000", "1.000"]
    assert table[2].split() == ["Correctness", "0.750", "1.000"]
    assert table[3].split() == ["aggregate", "0.250", "1.000"]
    assert "--- classify ---\n" + BEST["classify"] in text
    assert "cost: 7 LLM calls, 70+7 tokens, $0.0012\n" in text  # no retries, so none mentioned


def test_failed_examples_are_counted_in_status_and_on_the_console():
    initial = ScoreSummary(0.5, {"ExactMatch": 0.5}, failed_examples=2)
    final = ScoreSummary(None, {}, failed_examples=4)  # no validation record could be scored
    progress = running(30, failed_examples=7)
    result = Result(reason="Completed", message="done", best_candidate=BEST, initial_scores=initial, final_scores=final)

    status = status_fields(worker_status(progress, result))
    assert status["progress"]["failedExamples"] == 7
    assert status["initialScores"] == {"aggregate": 0.5, "scorers": {"ExactMatch": 0.5}, "failedExamples": 2}
    assert status["finalScores"] == {"scorers": {}, "failedExamples": 4}

    text = ConsoleReporter.render_result(progress, result, None)
    table = text[text.index("scorer") :].splitlines()[:4]
    assert table[2].split() == ["aggregate", "0.500", "-"] and table[3].split() == ["not", "scored", "2", "4"]
    assert "7 evaluations could not be scored (the log says why); the scores above leave those records out" in text


def test_console_result_counts_the_retries_of_transient_llm_errors():
    cost = Cost(llm_calls=7, prompt_tokens=70, completion_tokens=7, usd=0.0, retries=3)
    text = ConsoleReporter.render_result(running(60), completed(), cost)
    assert "cost: 7 LLM calls, 70+7 tokens, $0.0000, 3 retries of transient errors" in text


def test_console_reporter_draws_a_live_bar_on_a_terminal():
    out, clock = io.StringIO(), FakeClock()
    console = ConsoleReporter(out, live=True, clock=clock, columns=lambda: 120)
    console.progress(running(30, best=0.5, iteration=2), important=True)
    clock.now = 75
    console.finished(running(40, best=1.0), completed())

    text = out.getvalue()
    assert text.startswith(
        "\r[#####.....] 30/60 metric calls, best 0.500, 0:00 elapsed, iteration 2, 0 candidates\x1b[K"
    )
    # 10 metric calls in 75 s: the 20 left take 150 s.
    assert "\r[######....] 40/60 metric calls, best 1.000, 1:15 elapsed, ETA 2:30, iteration 0" in text


FACTS = [
    "1230/2000 metric calls",
    "best 0.875",
    "1:02:05 elapsed",
    "ETA 26:33:28",
    "7 not scored",
    "iteration 400",
    "50 candidates",
    "123456 LLM calls",
    "987 from the cache",
]


@pytest.mark.parametrize(
    ("columns", "shown"),
    [
        (20, []),  # not even the metric calls fit whole: cut
        (40, FACTS[:2]),
        (80, FACTS[:4]),  # with the bar
        (200, FACTS[:7] + FACTS[8:]),  # all but the cost, too long for the room left
    ],
)
def test_the_live_bar_fits_the_terminal_keeping_the_most_telling_facts(columns, shown):
    out, clock = io.StringIO(), FakeClock()
    cost = Cost(llm_calls=123456, prompt_tokens=98765432, completion_tokens=1234567, usd=1234.5678, retries=12)
    console = ConsoleReporter(out, live=True, clock=clock, columns=lambda: columns, cost=lambda: cost)
    console.progress(Progress(metric_calls=1200, max_metric_calls=2000), important=True)
    clock.now = 3725  # 30 metric calls in 3725 s: the 770 left take 95608 s
    console.progress(
        Progress(
            metric_calls=1230,
            max_metric_calls=2000,
            iteration=400,
            candidates=50,
            best_score=0.875,
            failed_examples=7,
            cached_evaluations=987,
        ),
        important=True,
    )

    line = out.getvalue().split("\r")[-1].removesuffix("\x1b[K")
    assert len(line) <= columns - 1  # the last column stays free: a full line wraps on some terminals
    assert [fact for fact in FACTS if fact in line] == shown
    assert line.startswith("[######....] ") == (columns >= 80)  # the bar only with room for the main facts too
    if not shown:
        assert line == "1230/2000 metric calls"[:19]


def test_one_failing_reporter_does_not_stop_the_others():
    class Broken:
        def progress(self, progress, *, important=False):
            raise RuntimeError("broken")

        finished = progress

    out = io.StringIO()
    both = Reporters(Broken(), ConsoleReporter(out, live=False))
    both.progress(running(1), important=True)
    both.finished(running(60), completed())
    assert "progress: 1/60" in out.getvalue() and "result: Completed" in out.getvalue()


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_are_masked_in_status_logs_and_termination_message(tmp_path, monkeypatch, logging_restored):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    log_stream, console_out, termination = io.StringIO(), io.StringIO(), tmp_path / "termination-log"
    litellm_logger = logging.getLogger("LiteLLM")
    configure_logging(log_stream)
    api = RecordingStatusApi([ApiException(status=403, reason=f"Forbidden for token {SECRET}")])
    leaky = {"classify": f"Use key {SECRET} for {{{{review}}}}"}
    result = Result(
        reason="LLMError",
        message=f"AuthenticationError: Incorrect API key provided: {SECRET}",
        best_candidate=leaky,
        initial_scores=INITIAL,
    )
    reporters = Reporters(
        reporter_for(api), ConsoleReporter(console_out, live=False), TerminationMessageReporter(str(termination))
    )
    reporters.progress(running(1, best=0.25, best_candidate=leaky), important=True)  # 403 with the secret: logged
    reporters.finished(running(2, best=0.25), result)
    litellm_logger.warning("retrying after error with key %s", SECRET)
    assert litellm_logger.handlers == []  # its own handler would bypass redaction

    everything = {
        "status": json.dumps(api.patches),
        "logs": log_stream.getvalue(),
        "console": console_out.getvalue(),
        "termination message": termination.read_text(),
    }
    assert "Forbidden for token" in everything["logs"] and "retrying after error" in everything["logs"]
    assert "Incorrect API key" in everything["console"]
    assert api.patches and "Incorrect API key" in everything["status"]
    for where, text in everything.items():
        assert SECRET not in text, f"the secret leaked into the {where}"
