"""The console's live progress line in a real pseudo-terminal of 80 columns, as a terminal renders it: each redraw
fits the width, so none leaves a wrapped line behind."""

import fcntl
import os
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPTOPT = str(Path(sys.executable).with_name("promptopt"))
COLUMNS = 80
CLEAR_TO_END = "\x1b[K"


def in_terminal(argv: list[str], columns: int = COLUMNS) -> str:
    """What `argv` writes to a pseudo-terminal `columns` wide (its stdin, stdout and stderr), until it exits."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    # COLUMNS would override the terminal's width; no LLM key: the run uses the simulated LLM.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES") and not k.endswith("_API_KEY")}
    child = subprocess.Popen(
        argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env, cwd=REPO, start_new_session=True
    )
    os.close(terminal)
    output = bytearray()
    try:
        while chunk := os.read(controller, 65536):
            output += chunk
    except OSError:  # EIO: the child closed the terminal's last open end
        pass
    finally:
        os.close(controller)
    assert child.wait(timeout=120) == 0, output.decode(errors="replace")
    return output.decode()


def screen(output: str, columns: int = COLUMNS) -> list[str]:
    """The rows a terminal `columns` wide shows for `output`, as xterm draws them: \\r returns to the row's start,
    \\n starts a new row, ESC[K clears to the row's end, and a character written past the last column wraps to a
    new row (a row exactly `columns` long leaves the cursor at its end, not on the next row)."""
    rows: list[list[str]] = [[]]
    column, index = 0, 0
    while index < len(output):
        if output.startswith(CLEAR_TO_END, index):
            del rows[-1][column:]
            index += len(CLEAR_TO_END)
            continue
        character, index = output[index], index + 1
        if character == "\r":
            column = 0
        elif character == "\n":
            rows.append([])
            column = 0
        else:
            if column == columns:
                rows.append([])
                column = 0
            row = rows[-1]
            row[column : column + 1] = [character]
            column += 1
    return ["".join(row) for row in rows]


def redraws(output: str) -> list[str]:
    """Each redraw of the progress line: what is written between a carriage return and ESC[K."""
    return [part.split(CLEAR_TO_END)[0] for part in output.split("\r")[1:] if CLEAR_TO_END in part]


def assert_one_fitted_progress_line(output: str) -> str:
    """Every redraw fits the width; the screen keeps exactly one progress row (the last). Returns that row."""
    drawn = redraws(output)
    assert drawn, output
    assert max(len(line) for line in drawn) < COLUMNS, drawn
    rows = screen(output)
    before_result = rows[: next(index for index, row in enumerate(rows) if row.startswith("result: "))]
    progress_rows = [row for row in before_result if "metric calls" in row or row.startswith("[")]
    assert progress_rows == [drawn[-1]], progress_rows  # no wrapped remains of earlier redraws
    return progress_rows[0]


def test_promptopt_run_draws_one_progress_line_within_80_columns():
    output = in_terminal([PROMPTOPT, "run", "--simulated-llm", str(REPO / "examples" / "gepa-sentiment.yaml")])

    final = assert_one_fitted_progress_line(output)
    assert final.startswith("[") and "elapsed" in final and "ETA" in final and "best 1.000" in final
    assert "result: PerfectScore" in output


# The reporter alone, on a terminal it detects, with the longest facts a run can have and a clock it is given.
REPORTER_SCRIPT = textwrap.dedent("""
    from promptopt.api.v1alpha1 import Cost
    from promptopt_worker.problem import Progress, Result
    from promptopt_worker.reporting import ConsoleReporter

    now = [0.0]
    cost = Cost.model_validate({"llmCalls": 123456, "promptTokens": 98765432, "completionTokens": 1234567,
                                "usd": 1234.5678, "retries": 9})
    console = ConsoleReporter(cost=lambda: cost, clock=lambda: now[0])
    assert console.live  # it saw the terminal
    for step in range(1, 6):
        now[0] = 60.0 * step
        console.progress(Progress(metric_calls=100 * step, max_metric_calls=1000, iteration=10 * step,
                                  candidates=step, best_score=0.1 * step, failed_examples=step,
                                  cached_evaluations=50 * step), important=True)
    console.finished(Progress(metric_calls=600, max_metric_calls=1000, best_score=0.5), Result("Completed", "done"))
""")


def test_the_console_reporter_fits_its_longest_line_to_an_80_column_terminal():
    output = in_terminal([sys.executable, "-c", REPORTER_SCRIPT])

    final = assert_one_fitted_progress_line(output)
    # 500 metric calls in the 240 s since the first report: the 400 left take 192 s.
    assert final == "[######....] 600/1000 metric calls, best 0.500, 5:00 elapsed, ETA 3:12"
    assert all("elapsed" in line and "ETA" in line and "best" in line for line in redraws(output)[1:])
