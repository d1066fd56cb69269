"""`promptopt report`: the renderer over plain results (pure), the command's errors, and the page of a real run as
headless chromium (Debian's, installed on first use) parses and draws it."""

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from html import unescape
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import pytest

from promptopt.cli import main
from promptopt.report import Step, best_so_far, diff_lines, generations, render_report
from promptopt.worker_contract import ResultFile

REPO = Path(__file__).resolve().parents[1]
PROMPTOPT = str(Path(sys.executable).with_name("promptopt"))
# "required" (CI sets it): a browser that cannot be found or installed fails the run instead of skipping.
BROWSER_ENV = "PROMPTOPT_BROWSER"

# Prompts are user text: the seed's carries markup that must stay text.
SEED_PROMPT = "Classify the sentiment.\n<script>alert('x')</script>\nKeep A\nOld line\nKeep B\nReview: {{review}}"
BEST_PROMPT = SEED_PROMPT.replace("Old line", "New line") + "\nAdded"


def candidate(id, parents, score, at, prompt=SEED_PROMPT):
    return {
        "id": id,
        "parents": parents,
        "score": score,
        "scorers": {"ExactMatch": score},
        "foundAtMetricCalls": at,
        "prompts": {"classify": prompt},
    }


def gepa_result(**changes):
    """A GEPA result with a merge: 3 = 1 + 2; the best so far rises at 0, 1 and 3 (5 ties 3, found later)."""
    result = {
        "progress": {
            "metricCalls": 90,
            "maxMetricCalls": 100,
            "cachedEvaluations": 12,
            "iteration": 7,
            "candidates": 6,
            "rejectedCandidates": 1,
            "bestScore": 0.8,
        },
        "initialScores": {"aggregate": 0.3, "scorers": {"ExactMatch": 0.3}, "failedExamples": 0},
        "finalScores": {"aggregate": 0.8, "scorers": {"ExactMatch": 0.8}, "failedExamples": 0},
        "optimizedPrompts": [{"name": "classify", "template": BEST_PROMPT}],
        "candidates": [  # ranked best first, as the result file has them
            candidate(3, [1, 2], 0.8, 30, BEST_PROMPT),
            candidate(5, [3], 0.8, 50),
            candidate(4, [3], 0.7, 40),
            candidate(1, [0], 0.5, 10),
            candidate(2, [0], 0.4, 20),
            candidate(0, [], 0.3, 0),
        ],
        "cost": {"promptTokens": 1000, "completionTokens": 200, "usd": 0.0123, "llmCalls": 40, "retries": 0},
        "workerResult": {"reason": "Completed", "message": "GEPA finished", "succeeded": True},
    }
    return ResultFile.model_validate({**result, **changes})


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, and its text (for reading back what a browser parsed)."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def having(self, tag: str, css_class: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag and css_class in attrs.get("class", "").split()]

    def by_id(self, element_id: str) -> list[tuple[str, dict[str, str]]]:
        return [(name, attrs) for name, attrs in self.tags if attrs.get("id") == element_id]


# --- the curve -----------------------------------------------------------------------------------------------------


def test_the_best_so_far_rises_only_where_a_candidate_beats_it():
    status = gepa_result()
    assert best_so_far(status.candidates) == [Step(0, 0.3, 0), Step(10, 0.5, 1), Step(30, 0.8, 3)]


def test_the_curve_steps_through_the_best_so_far_and_draws_every_candidate():
    page = Elements(render_report(gepa_result()))
    points = page.having("circle", "point")
    assert sorted(int(p["data-candidate"]) for p in points) == [0, 1, 2, 3, 4, 5]
    assert sorted(int(p["data-candidate"]) for p in page.having("circle", "raised")) == [0, 1, 3]
    [line] = page.having("polyline", "best-so-far")
    corners = [tuple(map(float, corner.split(","))) for corner in line["points"].split()]
    # A step line: x never goes back, the score never falls (SVG's y grows downwards), every move is flat or upright.
    assert all(x2 >= x1 and y2 <= y1 and (x2 == x1 or y2 == y1) for (x1, y1), (x2, y2) in pairwise(corners))
    for point in page.having("circle", "raised"):  # each rise starts at its candidate
        assert (float(point["cx"]), float(point["cy"])) in corners
    # It runs on to the metric calls spent (90 of 100), flat after the last rise.
    assert corners[-1][1] == corners[-2][1] and corners[-1][0] > corners[-2][0]
    assert page.by_id("curve-svg") and "metric calls" in "".join(page.text)


def test_the_seed_without_a_metric_call_count_starts_the_curve_at_zero():
    result = gepa_result().model_dump(by_alias=True, exclude_none=True)
    for listed in result["candidates"]:
        if listed["id"] == 0:
            del listed["foundAtMetricCalls"]
    assert best_so_far(ResultFile.model_validate(result).candidates)[0] == Step(0, 0.3, 0)


# --- the tree ------------------------------------------------------------------------------------------------------


def test_the_tree_has_every_candidate_and_both_parents_of_a_merge():
    page = Elements(render_report(gepa_result()))
    nodes = {int(node["data-candidate"]): node for node in page.having("g", "node")}
    assert sorted(nodes) == [0, 1, 2, 3, 4, 5]
    assert [n for n, node in nodes.items() if "best" in node["class"].split()] == [3]  # first of the 0.8s
    assert [n for n, node in nodes.items() if "merge" in node["class"].split()] == [3]
    edges = {(int(edge["data-parent"]), int(edge["data-child"])) for edge in page.having("path", "edge")}
    assert edges == {(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (3, 5)}
    assert {(int(e["data-parent"]), int(e["data-child"])) for e in page.having("path", "merge")} == {(1, 3), (2, 3)}


def test_a_merge_sits_below_both_its_parents():
    assert generations(gepa_result().candidates) == {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 3}


def test_a_parent_missing_from_the_file_makes_a_root_not_an_error():
    # A job's status keeps only the best 5: a parent may be absent.
    status = gepa_result(candidates=[candidate(7, [6], 0.9, 70), candidate(0, [], 0.3, 0)])
    assert generations(status.candidates) == {7: 0, 0: 0}
    assert "#6 not in the file" in render_report(status)


def test_metaprompt_has_the_original_and_the_proposal():
    status = gepa_result(candidates=[candidate(1, [0], 0.9, 3, BEST_PROMPT), candidate(0, [], 0.3, 0)])
    page = Elements(render_report(status))
    assert sorted(int(node["data-candidate"]) for node in page.having("g", "node")) == [0, 1]
    assert len(page.having("path", "edge")) == 1


# --- the diff ------------------------------------------------------------------------------------------------------


def test_the_diff_marks_added_and_removed_lines():
    assert diff_lines("a\nold\nb", "a\nnew\nb\nc") == [
        ("same", "a"),
        ("removed", "old"),
        ("added", "new"),
        ("same", "b"),
        ("added", "c"),
    ]
    page = render_report(gepa_result())
    assert re.search(r'<del class="line removed">.*?<span class="text">Old line</span></del>', page)
    assert re.search(r'<ins class="line added">.*?<span class="text">New line</span></ins>', page)
    assert re.search(r'<ins class="line added">.*?<span class="text">Added</span></ins>', page)
    assert re.search(r'<div class="line same">.*?<span class="text">Keep A</span></div>', page)


def test_long_unchanged_stretches_fold_away_but_stay_in_the_page():
    before = "\n".join(f"line {n}" for n in range(40))
    status = gepa_result(
        candidates=[
            candidate(1, [0], 0.9, 3, before.replace("line 20", "line twenty")),
            candidate(0, [], 0.3, 0, before),
        ]
    )
    page = render_report(status)
    assert page.count('<details class="folded">') == 2 and "line 39" in page


def test_when_the_original_prompts_win_the_page_says_nothing_changed():
    status = gepa_result(candidates=[candidate(0, [], 0.9, 0), candidate(1, [0], 0.3, 3, BEST_PROMPT)])
    page = render_report(status)
    assert "The original prompts scored best" in page and "<ins" not in page


# --- escaping, self-containment, no candidates ----------------------------------------------------------------------


def test_prompts_and_every_other_text_are_escaped():
    status = gepa_result(
        workerResult={"reason": "Error", "message": "<img src=x onerror=alert(1)>", "succeeded": False},
        initialScores={"aggregate": 0.3, "scorers": {"<b>scorer</b>": 0.3}},
    )
    page = render_report(status, source="<i>result</i>.json")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img" not in page
    assert "&lt;b&gt;scorer&lt;/b&gt;" in page and "&lt;i&gt;result&lt;/i&gt;.json" in page


def test_the_page_loads_nothing_from_anywhere():
    page = render_report(gepa_result())
    # No reference that leaves the page: absolute, scheme-relative, or any src at all (images are inline SVG).
    assert not re.search(r"""\b(src|href|xlink:href|action)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page  # and the browser refuses anything that slipped in


def test_a_result_without_candidates_renders_and_says_so():
    status = gepa_result(
        candidates=None,
        finalScores=None,
        optimizedPrompts=None,
        workerResult={"reason": "LLMError", "message": "bad key", "succeeded": False},
    )
    page = render_report(status)
    assert page.count("This result has no candidates") == 2  # the curve's and the tree's places
    assert "<svg" not in page and "The file holds no prompts." in page
    assert 'class="outcome failed">LLMError<' in page and "bad key" in page


def test_test_scores_get_a_table_of_their_own_beside_the_validation_scores():
    test = {"scorers": {"ExactMatch": 0.25}, "failedExamples": 0, "records": 8}
    status = gepa_result(
        initialScores={"aggregate": 0.3, "scorers": {"ExactMatch": 0.3}, "test": {**test, "aggregate": 0.25}},
        finalScores={
            "aggregate": 0.8,
            "scorers": {"ExactMatch": 0.8},
            "test": {**test, "aggregate": 0.625, "scorers": {"ExactMatch": 0.625}},
        },
    )
    page = render_report(status)
    assert "<caption>Validation scores</caption>" in page
    test_table = page.split("<caption>Test scores: 8 held-out records, never shown to the optimizer</caption>")[1]
    assert "0.250" in test_table.split("</table>")[0] and "0.625" in test_table.split("</table>")[0]
    assert "Test scores" not in render_report(gepa_result())  # none without a test set


# --- what produced it ----------------------------------------------------------------------------------------------

RUN = {
    "job": "gepa-sentiment",
    "namespace": "team-a",
    "optimizer": "GEPA",
    "optimizerSettings": {"maxMetricCalls": 150, "candidateSelection": "pareto"},
    "models": {
        "task": "openai/sim-task",
        "judges": {"Correctness": "openai/sim-judge"},
        "reflection": "openai/sim-reflect",
    },
    "startedAt": "2026-01-01T10:00:00Z",
    "finishedAt": "2026-01-01T10:02:05Z",
    "promptoptVersion": "0.1.0",
    "simulatedLlm": True,
}


def test_the_page_says_what_produced_the_result_and_marks_a_simulated_llm(tmp_path):
    result = write_json(tmp_path / "result.json", {**gepa_result().model_dump(mode="json", by_alias=True), "run": RUN})
    assert main(["report", str(result), "-o", str(tmp_path / "report.html")]) == 0  # read back through its model
    page = (tmp_path / "report.html").read_text()

    [run] = re.findall(r'<dl id="run" class="facts run">(.*?)</dl>', page)
    shown = {unescape(name): unescape(value) for name, value in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", run)}
    assert shown == {
        "job": "gepa-sentiment in namespace team-a",
        "optimizer": 'GEPA (maxMetricCalls 150, candidateSelection "pareto")',
        "task": "openai/sim-task",
        "judges": "openai/sim-judge (Correctness)",
        "reflection model": "openai/sim-reflect",
        "ran": "2026-01-01T10:00:00Z to 2026-01-01T10:02:05Z (2 min 5 s)",
        "promptopt": "0.1.0",
        "LLM": "simulated: every answer came from promptopt's simulated LLM, a test double",
    }
    [mark] = Elements(page).having("span", "simulated")  # beside the outcome, at the top
    assert "test double" in mark["title"]
    assert "<title>promptopt report: result.json (gepa-sentiment) [simulated LLM]</title>" in page


def test_a_run_with_real_models_has_no_simulated_mark_and_an_old_file_says_it_does_not_know():
    real = render_report(gepa_result(run={**RUN, "simulatedLlm": False}))
    assert not Elements(real).having("span", "simulated") and "simulated LLM" not in real
    old = Elements(render_report(gepa_result()))  # written before results said what produced them
    assert not old.having("span", "simulated") and old.by_id("run")
    assert "The file does not say what produced it" in "".join(old.text)


# --- the command ---------------------------------------------------------------------------------------------------


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_the_command_writes_the_page(tmp_path, capsys):
    result = write_json(tmp_path / "result.json", gepa_result().model_dump(mode="json", by_alias=True))
    assert main(["report", str(result), "-o", str(tmp_path / "report.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    assert "<title>promptopt report: result.json</title>" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "not JSON"),  # the job file itself (YAML)
        ("[1, 2]", "it holds a JSON list, not an object"),
        ('{"apiVersion": "v1", "kind": "ConfigMap"}', "it has no workerResult"),
        (
            '{"candidates": "all", "workerResult": {"reason": "Completed", "message": "", "succeeded": true}}',
            "candidates: Input should be a valid list",
        ),
        ('{"workerResult": {"reason": "Finished", "message": "", "succeeded": true}}', "workerResult.reason:"),
    ],
)
def test_a_file_that_is_not_a_result_is_refused_with_its_name_and_problem(tmp_path, capsys, content, problem):
    source = REPO / "examples" / "gepa-sentiment.yaml" if content is None else tmp_path / "not-a-result.json"
    if content is not None:
        source.write_text(content)
    assert main(["report", str(source), "-o", str(tmp_path / "report.html")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"promptopt report: {source} is not a promptopt result: ") and problem in error
    assert "Traceback" not in error and not (tmp_path / "report.html").exists()


def test_a_missing_file_is_named(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere.json"), "-o", str(tmp_path / "report.html")]) == 2
    assert f"{tmp_path / 'nowhere.json'}: cannot be read: No such file" in capsys.readouterr().err


# --- a real browser ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium(request):
    """Debian's chromium, installed with apt on first use where we may (root, apt-get); else skipped, saying how to
    install it, or failed when PROMPTOPT_BROWSER=required (CI)."""
    from promptopt_harness.browser import BrowserUnavailable, ensure_chromium

    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():  # a first install says what it does and how long it took
            return ensure_chromium()
    except BrowserUnavailable as unavailable:
        if os.environ.get(BROWSER_ENV) == "required":
            pytest.fail(f"{BROWSER_ENV}=required, but there is no browser: {unavailable}")
        pytest.skip(f"no headless browser here: {unavailable}")


def test_without_chromium_or_a_way_to_install_it_the_reason_says_how(monkeypatch):
    from promptopt_harness import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(
        browser.BrowserUnavailable,
        match="apt-get is not available.*apt-get install -y --no-install-recommends chromium",
    ):
        browser.ensure_chromium()


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct scanlines) of a PNG, read with the standard library. A page drawn in one colour
    has all its scanlines alike (whatever filter the encoder picks, identical rows filter identically)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    offset, chunks = 8, {}
    while offset < len(data):
        (length,), kind = struct.unpack(">I", data[offset : offset + 4]), data[offset + 4 : offset + 8]
        chunks[kind] = chunks.get(kind, b"") + data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    pixels = zlib.decompress(chunks[b"IDAT"])
    row = 1 + width * channels * depth // 8
    assert len(pixels) == height * row
    return width, height, len({pixels[start : start + row] for start in range(0, len(pixels), row)})


@pytest.mark.slow
@pytest.mark.timeout(900)  # a first install of chromium (apt) happens in here
def test_the_report_of_a_real_run_in_headless_chromium(chromium, tmp_path):
    from promptopt_harness.browser import dump_dom, screenshot

    result, report = tmp_path / "result.json", tmp_path / "report.html"
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    run = subprocess.run(
        [PROMPTOPT, "run", "--simulated-llm", str(REPO / "examples" / "gepa-sentiment.yaml"), "-o", str(result)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    made = subprocess.run(
        [PROMPTOPT, "report", str(result), "-o", str(report)], capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    candidates = json.loads(result.read_text())["candidates"]
    assert len(candidates) >= 2  # the seed and what GEPA found

    # The DOM after chromium parsed the page: its SVG elements, not our string.
    dom = Elements(dump_dom(chromium, report))
    assert dom.by_id("curve-svg")[0][0] == "svg" and dom.by_id("tree-svg")[0][0] == "svg"
    assert len(dom.having("circle", "point")) == len(candidates)
    assert len(dom.having("circle", "raised")) == len(
        best_so_far(ResultFile.model_validate({"candidates": candidates}).candidates or [])
    )
    assert len(dom.having("polyline", "best-so-far")) == 1
    nodes = dom.having("g", "node")
    assert sorted(int(node["data-candidate"]) for node in nodes) == sorted(c["id"] for c in candidates)
    assert [int(node["data-candidate"]) for node in dom.having("g", "best")] == [candidates[0]["id"]]
    assert len(dom.having("path", "edge")) == sum(len(c["parents"]) for c in candidates)
    assert dom.having("ins", "added")  # the winning prompt adds a line to the seed's
    assert dom.having("span", "simulated") and dom.by_id("run")[0][0] == "dl"  # what produced it, simulated LLM

    shot = screenshot(chromium, report, tmp_path / "report.png", width=1200, height=1600)
    width, height, distinct_rows = png_facts(shot)
    assert (width, height) == (1200, 1600)
    assert distinct_rows > 100  # text, the curve, the tree: far from a blank or one-colour page


@pytest.mark.slow
def test_chromium_shows_a_script_in_a_prompt_as_text(chromium, tmp_path):
    from promptopt_harness.browser import dump_dom

    page = tmp_path / "report.html"
    page.write_text(render_report(gepa_result()))
    dom = Elements(dump_dom(chromium, page))
    assert not [tag for tag, _ in dom.tags if tag == "script"]
    assert "<script>alert('x')</script>" in "".join(dom.text)  # shown as the prompt's text
