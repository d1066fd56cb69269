"""MetaPrompt: one reflection pass over the prompts, as MLflow defines it, with two differences.

Zero-shot (no dataset): one request with the prompts, best practices, template variables and the job's
guidelines; no scores. Few-shot: the original prompts are evaluated on the validation examples, the
reflection model sees evaluated training examples (worst first), and its proposal is evaluated too.
Unlike MLflow, the better of original and proposal is kept, and a proposal that loses or invents a
`{{variable}}` is rejected (MLflow silently strips invented ones). `optimizer.options` are litellm completion
parameters of the reflection calls (MLflow's lm_kwargs); names litellm.completion does not take, or that the
worker sets itself, end the run with InvalidInput before any call. Examples that could not be scored (a judge
answer that stayed unusable) are counted; they are shown to the reflection model last, without a score and
with the reason, and the proposal is compared with the original prompts on the records scored for both.

The request contract (promptopt.simulated_llm follows it exactly): the system message starts with
"You are an expert prompt engineer"; the user message has the sections "### Current prompts" (a ```json
object name → template), "### Template variables", "### Guidelines" and "### Examples" (a ```json array
of {inputs, output, expected, score, rationale}); the answer is a JSON object {"prompts": {name: template},
"rationale": why}, bare, fenced or amid other text.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from statistics import fmean
from typing import Any

from promptopt_worker.llm import COMPLETION_PARAMETERS, WORKER_COMPLETION_PARAMETERS, json_object_with
from promptopt_worker.problem import (
    Candidate,
    Example,
    Problem,
    Progress,
    Reporter,
    Result,
    ScoredOutput,
    ScoreSummary,
    StopRequested,
    VariableCheck,
    count_failed_examples,
    option_problems,
)

SYSTEM_MESSAGE = """You are an expert prompt engineer. You improve prompt templates so that the language \
model that receives them does its task better.

Best practices for a good prompt:
- State the task plainly at the start, with the context the model needs.
- Specify the output format exactly: its form, its length, its letter case, what to leave out.
- Name the cases that are easy to get wrong and say how to handle them.
- Be concise and unambiguous; keep one instruction per sentence; avoid contradictions.
- Keep what already works: change only what helps.

Template variables are written {{name}}. They are filled with each request's inputs, so every variable of \
the current prompts must appear in your version exactly as written, and you must not add new ones.

Answer with one JSON object and nothing else."""

ANSWER_FORMAT = """### Answer format
Reply with one JSON object: "prompts" maps every prompt name above to its improved template (all of them, \
even those you keep unchanged), and "rationale" explains your changes in a few sentences:
{"prompts": {"<prompt name>": "<improved template>"}, "rationale": "<why these changes>"}"""

RATIONALE_LIMIT = 500  # characters of the model's rationale quoted in the result's message


class UnusableAnswer(ValueError):
    """The reflection model's answer holds no usable proposal."""


def optimize_metaprompt(problem: Problem, progress: Progress, reporter: Reporter, stop: StopRequested) -> Result:
    """One pass; exceptions (a permanent LLM error, the budget spent, too many failed examples) propagate to
    the caller, which turns them into a Result with the best so far in `progress`."""
    receiver = "litellm.completion (MetaPrompt passes options to its reflection calls)"
    if problems := option_problems(problem.settings.options, WORKER_COMPLETION_PARAMETERS, COMPLETION_PARAMETERS,
                                   receiver):
        return Result("InvalidInput", "; ".join(problems))
    seed = problem.seed_candidate
    settings = problem.settings.meta_prompt_settings
    progress.iteration, progress.candidates = 1, 1
    if problem.evaluator is None or not problem.validation:
        reporter.progress(progress)
        proposal, note = _propose(problem, progress, build_request(problem, settings.guidelines, examples=None))
        progress.best_candidate = proposal or seed
        verdict = "rewrote the prompts (no dataset, so no scores)" if proposal else "kept the original prompts"
        return Result("Completed", f"MetaPrompt (zero-shot): {verdict}. {note}", best_candidate=progress.best_candidate)

    train = list(problem.train[: settings.max_examples])
    progress.max_metric_calls = 2 * len(problem.validation) + len(train)
    baseline = _evaluate(problem, progress, stop, seed, problem.validation)
    initial = problem.evaluator.summarize(baseline)
    progress.initial_scores, progress.best_score, progress.best_candidate = initial, initial.aggregate, seed
    reporter.progress(progress, important=True)

    # Training examples when there are some, else the validation results at hand (free). Worst first; failed
    # examples last, as they say nothing about the prompts.
    shown = _evaluate(problem, progress, stop, seed, train) if train else baseline
    shown = sorted(shown, key=lambda result: (result.failure is not None, result.aggregate))[: settings.max_examples]
    reporter.progress(progress)
    if stop:
        return _stopped(stop, seed, initial)

    proposal, note = _propose(problem, progress, build_request(problem, settings.guidelines, examples=shown))
    mode = f"MetaPrompt (few-shot, {len(shown)} examples)"
    if proposal is None:
        message = f"{mode}: kept the original prompts. {note}"
        return Result("Completed", message, best_candidate=seed, initial_scores=initial, final_scores=initial)
    if stop:
        return _stopped(stop, seed, initial)

    proposed_results = _evaluate(problem, progress, stop, proposal, problem.validation)
    proposed = problem.evaluator.summarize(proposed_results)
    compared = _scored_for_both(baseline, proposed_results)
    if compared is None:
        kept, final = seed, initial
        verdict = "kept the original prompts: no validation record could be scored for both them and the proposal"
    else:
        original_mean, proposal_mean, records = compared
        where = ("on validation" if records == len(baseline)
                 else f"on the {records} of {len(baseline)} validation records scored for both")
        if proposal_mean > original_mean:
            progress.best_score, progress.best_candidate = proposed.aggregate, proposal
            kept, final = proposal, proposed
            verdict = (f"kept the proposal, which scores {proposal_mean:.3f} {where} against {original_mean:.3f} "
                       "for the original prompts")
        else:
            kept, final = seed, initial
            verdict = (f"kept the original prompts, which score {original_mean:.3f} {where}; the proposal scores "
                       f"{proposal_mean:.3f}")
    reporter.progress(progress, important=kept is proposal)
    return Result(
        "Completed", f"{mode}: {verdict}. {note}", best_candidate=kept, initial_scores=initial, final_scores=final
    )


def build_request(problem: Problem, guidelines: str | None, examples: Sequence[ScoredOutput] | None) -> str:
    """The user message of the reflection request (see the module docstring for the contract)."""
    variables = VariableCheck.for_prompts(problem.prompts).expected
    sections = [
        "Improve the prompt templates below. They are sent to a language model in this order: "
        + ", ".join(f"{p.name} (as the {p.role} message)" for p in problem.prompts)
        + ".",
        "### Current prompts\n```json\n" + json.dumps(problem.seed_candidate, indent=2, ensure_ascii=False) + "\n```",
        "### Template variables\n"
        + "\n".join(
            f"- {name}: " + (", ".join("{{" + v + "}}" for v in sorted(found)) or "none")
            for name, found in variables.items()
        )
        + "\nKeep each prompt's variables exactly as they are: drop none and add none.",
    ]
    if guidelines:
        sections[0] += " Follow the guidelines below."
        sections.append("### Guidelines\n" + guidelines.strip())
    if examples:
        sections[0] += (
            " The current prompts were run on the examples below, worst first: each shows the inputs, the "
            "model's output, the expected output (null when none), the score between 0 and 1 and the scorers' "
            "rationale. Find what the failing outputs have in common and change the prompts to fix it, "
            "without overfitting to single examples."
        )
        shown = json.dumps([_example(result) for result in examples], indent=2, ensure_ascii=False, default=str)
        sections.append("### Examples\n```json\n" + shown + "\n```")
    sections.append(ANSWER_FORMAT)
    return "\n\n".join(sections)


def parse_answer(answer: str, names: Collection[str]) -> tuple[Candidate, str]:
    """The proposed templates (for exactly `names`) and the rationale; raises UnusableAnswer."""
    value = json_object_with(answer, "prompts")
    if value is None:
        raise UnusableAnswer('the answer holds no JSON object with a "prompts" key')
    prompts = value["prompts"]
    if not isinstance(prompts, Mapping) or not all(isinstance(t, str) for t in prompts.values()):
        raise UnusableAnswer('"prompts" in the answer is not an object of template strings')
    if missing := sorted(set(names) - set(prompts)):
        raise UnusableAnswer(f"the answer lacks the prompt(s) {', '.join(missing)}")
    rationale = value.get("rationale")
    return {name: prompts[name] for name in names}, rationale if isinstance(rationale, str) else ""


def _propose(problem: Problem, progress: Progress, request: str) -> tuple[Candidate | None, str]:
    """The reflection model's proposal and its rationale, or None and why it cannot be used (a rejection
    for a lost or invented variable is counted)."""
    answer = problem.reflect(request, system=SYSTEM_MESSAGE)
    try:
        proposal, rationale = parse_answer(answer, [p.name for p in problem.prompts])
    except UnusableAnswer as error:
        return None, f"The reflection model's answer was unusable: {error}."
    if problems := VariableCheck.for_prompts(problem.prompts).problems(proposal):
        progress.rejected_candidates += 1
        return None, f"The proposal was rejected: {'; '.join(problems)}."
    if proposal == problem.seed_candidate:
        return None, "The reflection model proposed no change."
    progress.candidates += 1
    return proposal, "Rationale: " + (rationale[:RATIONALE_LIMIT] or "(none given)")


def _evaluate(problem: Problem, progress: Progress, stop: StopRequested, candidate: Candidate,
              examples: Sequence[Example]) -> list[ScoredOutput]:
    """The candidate's results, counted as metric calls and failed examples (which may stop the run)."""
    assert problem.evaluator is not None
    results = problem.evaluator.evaluate(candidate, examples)
    progress.metric_calls += len(results)
    count_failed_examples(results, problem, progress, stop)
    return results


def _scored_for_both(original: Sequence[ScoredOutput],
                     proposal: Sequence[ScoredOutput]) -> tuple[float, float, int] | None:
    """The mean aggregates of original and proposal over the records scored for both, and how many those are
    (None when there are none): means over different records would compare the failures, not the prompts."""
    pairs = [(a.aggregate, b.aggregate) for a, b in zip(original, proposal, strict=True)
             if a.failure is None and b.failure is None]
    if not pairs:
        return None
    return fmean(a for a, _ in pairs), fmean(b for _, b in pairs), len(pairs)


def _example(result: ScoredOutput) -> dict[str, Any]:
    return {
        "inputs": dict(result.example.inputs),
        "output": result.output,
        "expected": result.example.expectations.get("expected_response"),
        "score": None if result.failure else round(result.aggregate, 4),
        "rationale": result.feedback() or None,
    }


def _stopped(stop: StopRequested, seed: Candidate, initial: ScoreSummary) -> Result:
    return Result(
        stop.reason or "Cancelled",
        f"{stop.message}; kept the original prompts",
        best_candidate=seed,
        initial_scores=initial,
        final_scores=initial,
    )
