"""`promptopt report`: a run's result file (`promptopt run -o result.json`) as one self-contained HTML page.

The page shows how the run ended and its scores, what produced it (the job, the optimizer and its settings, the models,
when it ran, promptopt's version, and a mark when a simulated LLM answered), the best validation score against metric
calls, the lineage of the candidates and the winning prompts' line diff against the original ones. It is
self-contained on purpose: it is read from disk, mailed or attached to a ticket, so it loads nothing (static SVG drawn
here, inline CSS, no script; its Content-Security-Policy forbids every fetch). Standard library only besides the API
models and the result file's (promptopt.worker_contract.ResultFile): the operator image and a plain install render it
too.

`render_report` is pure (the parsed result in, the page out); `read_result` and `write_report` are the file edges.
Every text from the result is escaped: prompts, messages and scorer names are user text.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from promptopt.api.times import parse_time
from promptopt.api.v1alpha1 import CandidateReport, HeldOutScores, Progress, Scores, format_usd
from promptopt.worker_contract import ResultFile, RunInfo

# ---------------------------------------------------------------------------------------------
# Reading


class NotAResult(ValueError):
    """The file is not a result of `promptopt run -o`; the message names the file and says what is wrong."""


def read_result(path: Path) -> ResultFile:
    """The result file parsed by its model; NotAResult when it cannot be read or is not a result."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise NotAResult(f"{path}: cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise NotAResult(f"{path} is not a promptopt result: not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise NotAResult(f"{path} is not a promptopt result: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise NotAResult(f"{path} is not a promptopt result: it holds a JSON {type(data).__name__}, not an object")
    try:
        status = ResultFile.model_validate(data)
    except ValidationError as error:
        problems = [
            f"{'.'.join(map(str, problem['loc'])) or 'the object'}: {problem['msg']}" for problem in error.errors()
        ]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise NotAResult(f"{path} is not a promptopt result: {'; '.join(problems[:5])}{more}") from None
    # The status models skip unknown fields (a newer writer's), so any JSON object would parse: a result always
    # says how the run ended.
    if status.worker_result is None:
        raise NotAResult(
            f"{path} is not a promptopt result: it has no workerResult (the file `promptopt run -o "
            "FILE` writes always has one)"
        )
    return status


def write_report(result: Path, report: Path) -> Path:
    """Render the result file `result` into the HTML file `report`."""
    page = render_report(read_result(result), source=result.name)
    report.write_text(page, encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------
# The data behind the pictures (pure, tested on their own)


@dataclass(frozen=True)
class Step:
    """A point where the best validation score so far rose: `candidate` reached `score` at `metric_calls`."""

    metric_calls: int
    score: float
    candidate: int


def found_at(candidate: CandidateReport) -> int | None:
    """Metric calls when the candidate was found; the seed is there from the start when the file does not say."""
    if candidate.found_at_metric_calls is not None:
        return candidate.found_at_metric_calls
    return 0 if candidate.id == 0 else None


def best_so_far(candidates: Iterable[CandidateReport]) -> list[Step]:
    """The steps of the best score so far, in the order found (ties by id, the order the optimizer numbers them).
    Only a strictly better score is a step: that is when the optimizer's best changed."""
    placed = sorted(
        (at, candidate.id, candidate.score) for candidate in candidates if (at := found_at(candidate)) is not None
    )
    steps: list[Step] = []
    for at, candidate_id, score in placed:
        if not steps or score > steps[-1].score:
            steps.append(Step(at, score, candidate_id))
    return steps


def best_candidate(candidates: Sequence[CandidateReport]) -> CandidateReport | None:
    """The best by validation score; among equals the first listed (the file ranks them best first)."""
    return max(candidates, key=lambda candidate: candidate.score, default=None)


def generations(candidates: Iterable[CandidateReport]) -> dict[int, int]:
    """Each candidate's row in the tree: 0 for a root (the seed, or one whose parents the file lacks), else one
    below its lowest parent, so a merge sits below both of its parents."""
    parents = {candidate.id: candidate.parents for candidate in candidates}
    rows: dict[int, int] = {}

    def row(candidate_id: int, visiting: frozenset[int]) -> int:
        if candidate_id not in rows:
            # A lineage is acyclic; the guard only keeps a hand-edited file from recursing forever.
            known = [p for p in parents[candidate_id] if p in parents and p not in visiting]
            rows[candidate_id] = 1 + max((row(p, visiting | {candidate_id}) for p in known), default=-1)
        return rows[candidate_id]

    for candidate_id in parents:
        row(candidate_id, frozenset())
    return rows


LineKind = Literal["same", "removed", "added"]


def diff_lines(before: str, after: str) -> list[tuple[LineKind, str]]:
    """A line diff of two prompt texts: every line of both, marked same, removed (only in before) or added."""
    old, new = before.splitlines(), after.splitlines()
    lines: list[tuple[LineKind, str]] = []
    for tag, old_start, old_end, new_start, new_end in difflib.SequenceMatcher(
        None, old, new, autojunk=False
    ).get_opcodes():
        if tag == "equal":
            lines += [("same", line) for line in old[old_start:old_end]]
            continue
        lines += [("removed", line) for line in old[old_start:old_end]]
        lines += [("added", line) for line in new[new_start:new_end]]
    return lines


# ---------------------------------------------------------------------------------------------
# Formatting


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _change(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return '<td class="num"></td>'
    delta = after - before
    kind = "up" if delta > 5e-4 else "down" if delta < -5e-4 else "flat"
    return f'<td class="num change {kind}">{delta:+.3f}</td>'


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown (a model's price is not known)"
    return format_usd(value)


def _number(value: float) -> str:
    """An SVG coordinate: short, and the same on every machine."""
    return f"{value:.1f}"


def _ticks(low: float, high: float, count: int, *, whole: bool = False) -> list[float]:
    """Round tick values covering low..high, about `count` of them (steps of 1, 2 or 5 times a power of ten)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if whole:
        step = max(1, round(step))
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _tick_label(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.2f}".rstrip("0")


def _score_fill(score: float) -> str:
    """A node's colour: from red (0) through yellow to green (1), pale, so its text stays readable."""
    hue = 120 * min(max(score, 0.0), 1.0)
    return f"hsl({hue:.0f}, 65%, 86%)"


def _lineage(candidate: CandidateReport) -> str:
    if not candidate.parents:
        return "the original prompts" if candidate.id == 0 else "no parent recorded"
    listed = " and ".join(f"#{parent}" for parent in candidate.parents)
    return f"merge of {listed}" if len(candidate.parents) > 1 else f"from {listed}"


def _scorer_scores(scorers: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in (scorers or {}).items())


def _tooltip(candidate: CandidateReport) -> str:
    parts = [f"candidate #{candidate.id} ({_lineage(candidate)}): score {candidate.score:.3f}"]
    if candidate.scorers:
        parts.append(_scorer_scores(candidate.scorers))
    at = found_at(candidate)
    parts.append("found at an unknown metric call" if at is None else f"found at {at:,} metric calls")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# The page's sections


def _summary(status: ResultFile, source: str) -> str:
    result = status.worker_result
    reason = result.reason if result else "Unknown"
    outcome = "succeeded" if result and result.succeeded else "failed"
    initial, final = status.initial_scores or Scores(), status.final_scores or Scores()
    tables = _score_table("Validation scores", initial, final)
    if initial.test and final.test:
        tables += _score_table(
            f"Test scores: {_count(final.test.records)} held-out records, never shown to the optimizer",
            initial.test,
            final.test,
        )

    progress, cost = status.progress or Progress(), status.cost
    budget = f" of {progress.max_metric_calls:,}" if progress.max_metric_calls is not None else ""
    facts = [
        ("metric calls", f"{_count(progress.metric_calls)}{budget}"),
        ("answered by the cache", _count(progress.cached_evaluations)),
        ("iterations", _count(progress.iteration)),
        ("candidates", f"{_count(progress.candidates)} accepted, {_count(progress.rejected_candidates)} rejected"),
    ]
    if cost is not None:
        tokens = (
            (cost.prompt_tokens or 0) + (cost.completion_tokens or 0)
            if cost.prompt_tokens is not None or cost.completion_tokens is not None
            else None
        )
        facts += [
            ("LLM calls", f"{_count(cost.llm_calls)}" + (f" ({cost.retries:,} retried)" if cost.retries else "")),
            (
                "tokens",
                f"{_count(tokens)} ({_count(cost.prompt_tokens)} prompt, {_count(cost.completion_tokens)} completion)",
            ),
            ("cost", _usd(cost.usd)),
        ]
    else:
        facts.append(("cost", "not recorded"))
    fact_list = "".join(f"<div><dt>{_text(name)}</dt><dd>{_text(value)}</dd></div>" for name, value in facts)
    return f"""<header id="summary">
<p class="source">promptopt report{f" of {_text(source)}" if source else ""}</p>
<h1><span class="outcome {outcome}">{_text(reason)}</span>{_simulated_mark(status.run)}</h1>
<p class="message">{_text(result.message if result else "The file does not say how the run ended.")}</p>
<div class="columns">
<div>{tables}</div>
<dl class="facts">{fact_list}</dl>
</div>
{_provenance(status.run)}
</header>"""


def _score_table(caption: str, initial: Scores | HeldOutScores, final: Scores | HeldOutScores) -> str:
    """Initial and final aggregate and per-scorer scores, with the change, and the records not scored if any."""
    scorer_names = list(dict.fromkeys([*(initial.scorers or {}), *(final.scorers or {})]))
    rows = [
        f'<tr><th scope="row">aggregate</th><td class="num">{_score(initial.aggregate)}</td>'
        f'<td class="num">{_score(final.aggregate)}</td>{_change(initial.aggregate, final.aggregate)}</tr>'
    ]
    for name in scorer_names:
        before, after = (initial.scorers or {}).get(name), (final.scorers or {}).get(name)
        rows.append(
            f'<tr><th scope="row">{_text(name)}</th><td class="num">{_score(before)}</td>'
            f'<td class="num">{_score(after)}</td>{_change(before, after)}</tr>'
        )
    if initial.failed_examples or final.failed_examples:
        rows.append(
            f'<tr><th scope="row">records not scored</th><td class="num">{_count(initial.failed_examples)}'
            f'</td><td class="num">{_count(final.failed_examples)}</td><td class="num"></td></tr>'
        )
    return f"""<table class="scores"><caption>{_text(caption)}</caption>
<thead><tr><th></th><th scope="col">initial</th><th scope="col">final</th><th scope="col">change</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>"""


def _simulated_mark(run: RunInfo | None) -> str:
    if not (run and run.simulated_llm):
        return ""
    return (
        '<span class="simulated" title="Every answer came from promptopt\'s simulated LLM, a deterministic test '
        'double: these scores say nothing about a real model.">simulated LLM</span>'
    )


def _duration(started: str | None, finished: str | None) -> str:
    start, end = parse_time(started), parse_time(finished)
    if start is None or end is None:
        return ""
    minutes, seconds = divmod(round((end - start).total_seconds()), 60)
    return f" ({minutes} min {seconds} s)" if minutes else f" ({seconds} s)"


def _provenance(run: RunInfo | None) -> str:
    """What produced the result: the job, the optimizer, the models, when, and which promptopt."""
    if run is None:
        return (
            '<p id="run" class="empty">The file does not say what produced it (the job, the optimizer, the '
            "models): an older promptopt wrote it.</p>"
        )
    models = run.models
    judges = ", ".join(f"{model} ({scorer})" for scorer, model in (models.judges or {}).items()) if models else ""
    settings = ", ".join(f"{key} {json.dumps(value)}" for key, value in (run.optimizer_settings or {}).items())
    facts = [
        ("job", f"{run.job or '—'}" + (f" in namespace {run.namespace}" if run.namespace else "")),
        ("optimizer", f"{run.optimizer or '—'}" + (f" ({settings})" if settings else "")),
        ("task", (models.task if models else None) or "—"),
        ("judges", judges or "none"),
        ("reflection model", (models.reflection if models else None) or "—"),
        ("ran", f"{run.started_at or '?'} to {run.finished_at or '?'}{_duration(run.started_at, run.finished_at)}"),
        ("promptopt", run.promptopt_version or "—"),
    ]
    if run.simulated_llm:
        facts.append(("LLM", "simulated: every answer came from promptopt's simulated LLM, a test double"))
    rows = "".join(f"<div><dt>{_text(name)}</dt><dd>{_text(value)}</dd></div>" for name, value in facts)
    return f'<dl id="run" class="facts run">{rows}</dl>'


# The curve's frame, in SVG user units.
CURVE_WIDTH, CURVE_HEIGHT = 1000, 340
CURVE_LEFT, CURVE_RIGHT, CURVE_TOP, CURVE_BOTTOM = 64, 24, 16, 52


def _curve(candidates: Sequence[CandidateReport], progress: Progress) -> str:
    steps = best_so_far(candidates)
    if not candidates:
        return _no_candidates("curve", "Best validation score against metric calls")
    if not steps:
        return (
            '<section id="curve"><h2>Best validation score against metric calls</h2><p class="empty">No '
            "candidate says at how many metric calls it was found, so there is no curve.</p></section>"
        )
    placed = [(candidate, at) for candidate in candidates if (at := found_at(candidate)) is not None]
    end = max(progress.metric_calls or 0, *(at for _, at in placed))
    x_ticks = _ticks(0, max(end, progress.max_metric_calls or 0, 1), 6, whole=True)
    scores = [candidate.score for candidate, _ in placed]
    y_ticks = _ticks(min(0.0, *scores), max(1.0, *scores), 5)
    plot_width = CURVE_WIDTH - CURVE_LEFT - CURVE_RIGHT
    plot_height = CURVE_HEIGHT - CURVE_TOP - CURVE_BOTTOM

    def x(metric_calls: float) -> str:
        return _number(CURVE_LEFT + plot_width * (metric_calls - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]))

    def y(score: float) -> str:
        return _number(CURVE_TOP + plot_height * (y_ticks[-1] - score) / (y_ticks[-1] - y_ticks[0]))

    bottom, right = _number(CURVE_TOP + plot_height), _number(CURVE_LEFT + plot_width)
    parts = [f'<rect class="plot" x="{CURVE_LEFT}" y="{CURVE_TOP}" width="{plot_width}" height="{plot_height}"/>']
    for tick in y_ticks:
        parts.append(
            f'<line class="grid" x1="{CURVE_LEFT}" x2="{right}" y1="{y(tick)}" y2="{y(tick)}"/>'
            f'<text class="tick" x="{CURVE_LEFT - 8}" y="{y(tick)}" text-anchor="end" '
            f'dominant-baseline="middle">{_tick_label(tick)}</text>'
        )
    for tick in x_ticks:
        parts.append(
            f'<line class="grid" x1="{x(tick)}" x2="{x(tick)}" y1="{CURVE_TOP}" y2="{bottom}"/>'
            f'<text class="tick" x="{x(tick)}" y="{_number(CURVE_TOP + plot_height + 18)}" '
            f'text-anchor="middle">{_tick_label(tick)}</text>'
        )
    if progress.max_metric_calls:
        # The budget, so a run that stopped early (goal, patience, cost) shows how much it left.
        budget_x = x(progress.max_metric_calls)
        parts.append(
            f'<line class="budget" x1="{budget_x}" x2="{budget_x}" y1="{CURVE_TOP}" y2="{bottom}"/>'
            f'<text class="budget-label" x="{budget_x}" y="{CURVE_TOP - 4}" text-anchor="end">budget</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{_number(CURVE_LEFT + plot_width / 2)}" y="{CURVE_HEIGHT - 8}" '
        'text-anchor="middle">metric calls (candidate × record evaluations)</text>'
        f'<text class="axis-label" transform="translate(16 {_number(CURVE_TOP + plot_height / 2)}) '
        'rotate(-90)" text-anchor="middle">validation score</text>'
    )

    corners = [(steps[0].metric_calls, steps[0].score)]
    for previous, step in zip(steps, steps[1:], strict=False):
        corners += [(step.metric_calls, previous.score), (step.metric_calls, step.score)]
    if end > steps[-1].metric_calls:
        corners.append((end, steps[-1].score))
    points = " ".join(f"{x(calls)},{y(score)}" for calls, score in corners)
    parts.append(f'<polyline class="best-so-far" points="{points}"/>')

    raised = {step.candidate for step in steps}
    # Other candidates first, so the ones that raised the best are drawn on top of them.
    for candidate, at in sorted(placed, key=lambda item: item[0].id in raised):
        kind = "raised" if candidate.id in raised else "other"
        parts.append(
            f'<circle class="point {kind}" data-candidate="{candidate.id}" data-metric-calls="{at}" '
            f'data-score="{candidate.score}" cx="{x(at)}" cy="{y(candidate.score)}" '
            f'r="{5 if kind == "raised" else 4}"><title>{_text(_tooltip(candidate))}</title></circle>'
        )
        if kind == "raised":
            parts.append(
                f'<text class="point-label" x="{_number(float(x(at)) + 7)}" '
                f'y="{_number(float(y(candidate.score)) + 14)}">#{candidate.id}</text>'
            )
    unplaced = len(candidates) - len(placed)
    note = (
        f' <span class="note">{unplaced} candidate{"s" if unplaced != 1 else ""} without a metric-call count '
        "is not drawn.</span>"
        if unplaced
        else ""
    )
    return f"""<section id="curve">
<h2>Best validation score against metric calls</h2>
<p class="legend"><span class="key raised"></span> raised the best so far <span class="key other"></span> other
candidates (hover a point for its scores).{note}</p>
<svg id="curve-svg" class="chart" viewBox="0 0 {CURVE_WIDTH} {CURVE_HEIGHT}" width="{CURVE_WIDTH}"
 height="{CURVE_HEIGHT}" role="img" aria-label="best validation score so far against metric calls">
{"".join(parts)}
</svg>
</section>"""


# The tree's nodes and gaps, in SVG user units.
NODE_WIDTH, NODE_HEIGHT, NODE_GAP, ROW_GAP, TREE_MARGIN = 104, 48, 20, 44, 16


def _tree(candidates: Sequence[CandidateReport]) -> str:
    if not candidates:
        return _no_candidates("tree", "Candidate tree")
    rows = generations(candidates)
    by_id = {candidate.id: candidate for candidate in candidates}
    best = best_candidate(candidates)
    # Rows in order, each ordered by where its parents sit (fewer crossing edges), then by id.
    placed_x: dict[int, float] = {}
    layout: list[list[int]] = []
    widest = max(1, *(list(rows.values()).count(row) for row in set(rows.values())))
    width = 2 * TREE_MARGIN + widest * NODE_WIDTH + (widest - 1) * NODE_GAP
    for row in range(max(rows.values()) + 1):
        members = [candidate_id for candidate_id in rows if rows[candidate_id] == row]

        def anchor(candidate_id: int) -> tuple[float, int]:
            known = [placed_x[p] for p in by_id[candidate_id].parents if p in placed_x]
            return (sum(known) / len(known) if known else 0.0, candidate_id)

        members.sort(key=anchor)
        span = len(members) * NODE_WIDTH + (len(members) - 1) * NODE_GAP
        left = (width - span) / 2
        for index, candidate_id in enumerate(members):
            placed_x[candidate_id] = left + index * (NODE_WIDTH + NODE_GAP) + NODE_WIDTH / 2
        layout.append(members)
    height = 2 * TREE_MARGIN + len(layout) * NODE_HEIGHT + (len(layout) - 1) * ROW_GAP

    def top(candidate_id: int) -> float:
        return TREE_MARGIN + rows[candidate_id] * (NODE_HEIGHT + ROW_GAP)

    edges, nodes = [], []
    for candidate in candidates:
        merge = len(candidate.parents) > 1
        for parent in candidate.parents:
            if parent not in by_id:
                continue
            x1, y1 = placed_x[parent], top(parent) + NODE_HEIGHT
            x2, y2 = placed_x[candidate.id], top(candidate.id)
            bend = (y2 - y1) / 2
            edges.append(
                f'<path class="edge{" merge" if merge else ""}" data-parent="{parent}" '
                f'data-child="{candidate.id}" d="M{_number(x1)},{_number(y1)} C{_number(x1)},'
                f'{_number(y1 + bend)} {_number(x2)},{_number(y2 - bend)} {_number(x2)},{_number(y2)}"/>'
            )
    for candidate in candidates:
        left, upper = placed_x[candidate.id] - NODE_WIDTH / 2, top(candidate.id)
        classes = " ".join(
            [
                "node",
                *(["best"] if candidate is best else []),
                *(["merge"] if len(candidate.parents) > 1 else []),
                *(["seed"] if candidate.id == 0 else []),
            ]
        )
        label = (
            "best"
            if candidate is best
            else "merge"
            if len(candidate.parents) > 1
            else "seed"
            if candidate.id == 0
            else ""
        )
        missing = [p for p in candidate.parents if p not in by_id]
        tooltip = _tooltip(candidate) + (
            f"; parent {', '.join(f'#{p}' for p in missing)} not in the file" if missing else ""
        )
        center = placed_x[candidate.id]
        nodes.append(
            f'<g class="{classes}" data-candidate="{candidate.id}" '
            f'data-parents="{" ".join(map(str, candidate.parents))}"><title>{_text(tooltip)}</title>'
            f'<rect x="{_number(left)}" y="{_number(upper)}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="8" '
            f'fill="{_score_fill(candidate.score)}"/>'
            f'<text class="node-id" x="{_number(left + 10)}" y="{_number(upper + 20)}">#{candidate.id}</text>'
            f'<text class="node-tag" x="{_number(left + NODE_WIDTH - 10)}" y="{_number(upper + 20)}" '
            f'text-anchor="end">{label}</text>'
            f'<text class="node-score" x="{_number(center)}" y="{_number(upper + 40)}" '
            f'text-anchor="middle">{candidate.score:.3f}</text></g>'
        )
    merges = sum(1 for candidate in candidates if len(candidate.parents) > 1)
    return f"""<section id="tree">
<h2>Candidate tree</h2>
<p class="legend">Each candidate below the ones it was derived from, coloured by validation score;
<span class="key best"></span> the best; <span class="key merge"></span> a merge of two candidates
({merges} here). Hover a node for its scores.</p>
<div class="side-by-side">
<div class="scroll">
<svg id="tree-svg" class="chart" viewBox="0 0 {_number(width)} {_number(height)}" width="{_number(width)}"
 height="{_number(height)}" role="img" aria-label="lineage of the {len(candidates)} candidates">
{"".join(edges)}{"".join(nodes)}
</svg>
</div>
{_candidate_table(candidates, best)}
</div>
</section>"""


# The candidate table starts open up to this many rows (a screenshot of a small run then shows them all).
CANDIDATES_SHOWN_OPEN = 12


def _candidate_table(candidates: Sequence[CandidateReport], best: CandidateReport | None) -> str:
    scorer_names = list(dict.fromkeys(name for candidate in candidates for name in candidate.scorers or {}))
    head = "".join(f'<th scope="col">{_text(name)}</th>' for name in scorer_names)
    rows = []
    for candidate in candidates:
        cells = "".join(f'<td class="num">{_score((candidate.scorers or {}).get(name))}</td>' for name in scorer_names)
        at = found_at(candidate)
        marked = ' class="best"' if candidate is best else ""
        rows.append(
            f'<tr{marked}><th scope="row">#{candidate.id}</th>'
            f'<td class="num">{candidate.score:.3f}</td>{cells}<td>{_text(_lineage(candidate))}</td>'
            f'<td class="num">{_count(at)}</td></tr>'
        )
    opened = " open" if len(candidates) <= CANDIDATES_SHOWN_OPEN else ""
    return f"""<details class="candidates"{opened}><summary>All {len(candidates)} candidates, best first</summary>
<table><thead><tr><th scope="col">candidate</th><th scope="col">score</th>{head}<th scope="col">lineage</th>
<th scope="col">found at metric calls</th></tr></thead><tbody>{"".join(rows)}</tbody></table></details>"""


# Unchanged lines around a change that stay in view; longer unchanged runs fold into a <details>.
DIFF_CONTEXT = 3


def _diff_block(before: str, after: str) -> str:
    lines = diff_lines(before, after)
    out: list[str] = []
    index = 0
    while index < len(lines):
        end = index
        while end < len(lines) and lines[end][0] == "same":
            end += 1
        run = lines[index:end]
        if run:
            # Keep context next to changes; the first run keeps its end, the last its start.
            keep_head = DIFF_CONTEXT if index > 0 else 0
            keep_tail = DIFF_CONTEXT if end < len(lines) else 0
            if len(run) > keep_head + keep_tail + 2:
                out += [_diff_line(kind, text) for kind, text in run[:keep_head]]
                folded = run[keep_head : len(run) - keep_tail]
                out.append(
                    f'<details class="folded"><summary>{len(folded)} unchanged lines</summary>'
                    f"{''.join(_diff_line(kind, text) for kind, text in folded)}</details>"
                )
                out += [_diff_line(kind, text) for kind, text in run[len(run) - keep_tail :]]
            else:
                out += [_diff_line(kind, text) for kind, text in run]
            index = end
            continue
        out.append(_diff_line(*lines[index]))
        index += 1
    return f'<div class="diff">{"".join(out)}</div>'


def _diff_line(kind: LineKind, text: str) -> str:
    # <del>/<ins> say removed/added without the colours (screen readers, a printout in black and white).
    tag, sign = {"same": ("div", " "), "removed": ("del", "−"), "added": ("ins", "+")}[kind]
    return (
        f'<{tag} class="line {kind}"><span class="sign" aria-hidden="true">{sign}</span>'
        f'<span class="text">{_text(text) or " "}</span></{tag}>'
    )


def _prompts(status: ResultFile, candidates: Sequence[CandidateReport]) -> str:
    best = best_candidate(candidates)
    seed = next((candidate for candidate in candidates if candidate.id == 0), None)
    optimized = {prompt.name: prompt.template for prompt in status.optimized_prompts or []}
    winner = (best.prompts if best is not None and best.prompts else None) or optimized
    winner_name = f"candidate #{best.id}" if best is not None and best.prompts else "the optimized prompts"
    heading = "<h2>The winning prompts against the original ones</h2>"
    if not winner:
        return f'<section id="diff">{heading}<p class="empty">The file holds no prompts.</p></section>'
    if seed is None or not seed.prompts:
        # A job's status keeps no candidate prompts: only the optimized ones can be shown.
        shown = "".join(
            f'<h3>{_text(name)}</h3><pre class="prompt">{_text(text)}</pre>' for name, text in winner.items()
        )
        return (
            f'<section id="diff">{heading}<p class="empty">The file holds no original prompts to compare '
            f"with; {_text(winner_name)}:</p>{shown}</section>"
        )
    if best is seed:
        note = '<p class="empty">The original prompts scored best: the run changed nothing.</p>'
    else:
        note = (
            f'<p class="legend">{_text(winner_name)} (score {_score(best.score if best else None)}) against '
            f"the original prompts, candidate #0 (score {seed.score:.3f}): "
            '<span class="key removed"></span> removed, <span class="key added"></span> added.</p>'
        )
    blocks = []
    for name in dict.fromkeys([*winner, *seed.prompts]):
        before, after = seed.prompts.get(name), winner.get(name)
        what = (
            " (new)" if before is None else " (dropped)" if after is None else " (unchanged)" if before == after else ""
        )
        blocks.append(f"<h3>{_text(name)}{what}</h3>{_diff_block(before or '', after or '')}")
    return f'<section id="diff">{heading}{note}{"".join(blocks)}</section>'


def _no_candidates(section: str, title: str) -> str:
    return (
        f'<section id="{section}"><h2>{_text(title)}</h2><p class="empty no-candidates">This result has no '
        "candidates, so there is nothing to draw: no prompts were scored on validation records (the run ended "
        "before its first evaluation, or had no dataset).</p></section>"
    )


STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa;
  --good: #1a7f37; --bad: #cf222e; --accent: #0969da; --best: #bf8700; --merge: #8250df; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--ink); background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; }
h1 { margin: 4px 0 6px; font-size: 28px; }
h2 { margin: 32px 0 8px; font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { margin: 16px 0 6px; font-size: 15px; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.source { margin: 0; color: var(--muted); }
.message { margin: 0 0 16px; max-width: 900px; }
.outcome { padding: 2px 12px; border-radius: 999px; color: #fff; }
.outcome.succeeded { background: var(--good); }
.outcome.failed { background: var(--bad); }
.simulated { margin-left: 12px; padding: 2px 12px; border-radius: 999px; font-size: 18px; vertical-align: 3px;
  color: #6e4b00; background: #fff8c5; border: 2px dashed var(--best); }
.facts.run { margin-top: 16px; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); }
.columns { display: flex; flex-wrap: wrap; gap: 24px 48px; align-items: flex-start; }
table { border-collapse: collapse; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
th, td { padding: 3px 12px 3px 0; text-align: left; border-bottom: 1px solid var(--line); }
thead th { color: var(--muted); font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.change.up { color: var(--good); font-weight: 600; }
.change.down { color: var(--bad); font-weight: 600; }
.facts { display: grid; grid-template-columns: repeat(2, minmax(180px, auto)); gap: 8px 32px; margin: 0; }
.facts dt { color: var(--muted); font-size: 13px; }
.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
.legend, .note, .empty { color: var(--muted); margin: 4px 0 8px; }
.empty { font-style: italic; }
.key { display: inline-block; width: 12px; height: 12px; border-radius: 50%; vertical-align: -1px; }
.key.raised { background: var(--accent); }
.key.other { border: 2px solid #8c959f; background: #fff; }
.key.best { border-radius: 3px; border: 3px solid var(--best); }
.key.merge { border-radius: 3px; border: 2px dashed var(--merge); }
.key.removed { border-radius: 3px; background: #ffcecb; }
.key.added { border-radius: 3px; background: #aceebb; }
.scroll { overflow-x: auto; }
.chart { display: block; max-width: none; font-size: 12px; }
#curve-svg { width: 100%; max-width: 1000px; height: auto; }
.side-by-side { display: flex; flex-wrap: wrap; gap: 16px 40px; align-items: flex-start; }
.side-by-side .scroll { max-width: 100%; }
.chart text { fill: var(--ink); }
.plot { fill: #fff; stroke: var(--line); }
.grid { stroke: #eaeef2; }
.tick { fill: var(--muted); }
.axis-label { font-size: 13px; font-weight: 600; }
.budget { stroke: var(--bad); stroke-dasharray: 4 4; }
.budget-label { fill: var(--bad); }
.best-so-far { fill: none; stroke: var(--accent); stroke-width: 2.5; stroke-linejoin: round; }
.point.raised { fill: var(--accent); stroke: #fff; stroke-width: 1.5; }
.point.other { fill: #fff; stroke: #8c959f; stroke-width: 2; }
.point-label { fill: var(--accent); font-weight: 600; }
.edge { fill: none; stroke: #8c959f; stroke-width: 1.5; }
.edge.merge { stroke: var(--merge); stroke-dasharray: 5 3; stroke-width: 2; }
.node rect { stroke: #8c959f; stroke-width: 1; }
.node.merge rect { stroke: var(--merge); stroke-width: 2; stroke-dasharray: 5 3; }
.node.best rect { stroke: var(--best); stroke-width: 3.5; stroke-dasharray: none; }
.node-id { font-weight: 700; font-size: 13px; }
.node-tag { fill: var(--muted); font-size: 11px; }
.node.best .node-tag { fill: var(--best); font-weight: 700; }
.node.merge .node-tag { fill: var(--merge); }
.node-score { font-size: 14px; font-variant-numeric: tabular-nums; }
details.candidates { margin-top: 8px; }
details.candidates table { margin-top: 6px; }
tr.best th, tr.best td { background: #fff8c5; }
.diff, .prompt { font: 13px/1.5 ui-monospace, "DejaVu Sans Mono", monospace; border: 1px solid var(--line);
  border-radius: 6px; background: var(--panel); overflow-x: auto; }
.prompt { padding: 8px 12px; white-space: pre-wrap; margin: 0; }
.diff .line { display: flex; text-decoration: none; white-space: pre-wrap; word-break: break-word; }
.diff .sign { flex: none; width: 24px; text-align: center; color: var(--muted); user-select: none; }
.diff .text { flex: 1; padding-right: 12px; }
.diff .removed { background: #ffebe9; }
.diff .removed .sign { color: var(--bad); }
.diff .added { background: #dafbe1; }
.diff .added .sign { color: var(--good); }
.diff .folded summary { padding-left: 24px; color: var(--muted); cursor: pointer; font-style: italic; }
"""

# The page fetches nothing: no scripts, no remote styles, fonts or images (the CSP makes a stray one fail).
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def render_report(status: ResultFile, *, source: str = "") -> str:
    """The whole page for a parsed result; `source` (the file's name) goes in the title, with the job's name and the
    simulated LLM's mark."""
    candidates = status.candidates or []
    progress = status.progress or Progress()
    job = f" ({status.run.job})" if status.run and status.run.job else ""
    simulated = " [simulated LLM]" if status.run and status.run.simulated_llm else ""
    title = f"promptopt report{f': {source}' if source else ''}{job}{simulated}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
{_summary(status, source)}
{_curve(candidates, progress)}
{_tree(candidates)}
{_prompts(status, candidates)}
</main>
</body>
</html>
"""
