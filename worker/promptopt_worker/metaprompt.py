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

The request is promptopt.prompt_contract's MetaPrompt request, which the simulated LLM parses from the same
definition: the system message METAPROMPT_SYSTEM_MESSAGE; the user message has the sections "### Current prompts"
(a ```json object name → template), "### Template variables", "### Guidelines" and "### Examples" (a ```json
array of {inputs, output, expected, score, rationale}); the answer is a JSON object {"prompts": {name: template},
"rationale": why}, bare, fenced or amid other text.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from statistics import fmean

from promptopt.prompt_contract import (
    METAPROMPT_SYSTEM_MESSAGE,
    MetaPromptExample,
    MetaPromptRequest,
    metaprompt_request,
)
from promptopt_worker.litellm_transport import completion_parameters
from promptopt_worker.llm import WORKER_COMPLETION_PARAMETERS, json_object_with
from promptopt_worker.problem import (
    Candidate,
    CandidateRecord,
    Example,
    InvalidInput,
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

RATIONALE_LIMIT = 500  # characters of the model's rationale quoted in the result's message


class UnusableAnswer(ValueError):
    """The reflection model's answer holds no usable proposal."""


def check_options(problem: Problem) -> None:
    """InvalidInput naming each of spec.optimizer.options that its reflection calls cannot take."""
    options = problem.settings.options
    receiver = "litellm.completion (MetaPrompt passes options to its reflection calls)"
    known = completion_parameters() if options else frozenset()  # it imports litellm: only when there are some
    if problems := option_problems(options, WORKER_COMPLETION_PARAMETERS, known, receiver):
        raise InvalidInput("; ".join(problems))


def metric_calls(problem: Problem) -> int:
    """The evaluations of the pass: the seed and the proposal on the validation records, the seed on the training
    records shown to the reflection model (none without a dataset)."""
    if problem.evaluator is None or not problem.validation:
        return 0
    return 2 * len(problem.validation) + len(problem.train[: problem.settings.meta_prompt_settings.max_examples])


def optimize_metaprompt(problem: Problem, progress: Progress, reporter: Reporter, stop: StopRequested) -> Result:
    """One pass; exceptions (a permanent LLM error, the budget spent, too many failed examples) propagate to
    the caller, which turns them into a Result with the best so far in `progress`."""
    try:
        check_options(problem)
    except InvalidInput as error:
        return Result("InvalidInput", str(error))
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
    progress.max_metric_calls = metric_calls(problem)
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
        where = (
            "on validation"
            if records == len(baseline)
            else f"on the {records} of {len(baseline)} validation records scored for both"
        )
        if proposal_mean > original_mean:
            progress.best_score, progress.best_candidate = proposed.aggregate, proposal
            kept, final = proposal, proposed
            verdict = (
                f"kept the proposal, which scores {proposal_mean:.3f} {where} against {original_mean:.3f} "
                "for the original prompts"
            )
        else:
            kept, final = seed, initial
            verdict = (
                f"kept the original prompts, which score {original_mean:.3f} {where}; the proposal scores "
                f"{proposal_mean:.3f}"
            )
    reporter.progress(progress, important=kept is proposal)
    scored = [(seed, (), initial, 0), (proposal, (0,), proposed, progress.metric_calls - len(proposed_results))]
    candidates = tuple(
        CandidateRecord(index, parents, summary.aggregate, summary.scorers, found, dict(prompts))
        for index, (prompts, parents, summary, found) in enumerate(scored)
        if summary.aggregate is not None
    )
    return Result(
        "Completed",
        f"{mode}: {verdict}. {note}",
        best_candidate=kept,
        initial_scores=initial,
        final_scores=final,
        candidates=candidates,
    )


def build_request(problem: Problem, guidelines: str | None, examples: Sequence[ScoredOutput] | None) -> str:
    """The user message of the reflection request (see the module docstring for the contract)."""
    request = MetaPromptRequest(
        problem.seed_candidate, guidelines, None if examples is None else [_example(result) for result in examples]
    )
    return metaprompt_request(
        request,
        {prompt.name: prompt.role for prompt in problem.prompts},
        VariableCheck.for_prompts(problem.prompts).expected,
    )


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
    answer = problem.reflect(request, system=METAPROMPT_SYSTEM_MESSAGE)
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


def _evaluate(
    problem: Problem, progress: Progress, stop: StopRequested, candidate: Candidate, examples: Sequence[Example]
) -> list[ScoredOutput]:
    """The candidate's results, counted as metric calls and failed examples (which may stop the run)."""
    assert problem.evaluator is not None
    hits = problem.evaluator.cache_hits
    results = problem.evaluator.evaluate(candidate, examples)
    progress.metric_calls += len(results)
    progress.cached_evaluations += problem.evaluator.cache_hits - hits
    count_failed_examples(results, problem, progress, stop)
    return results


def _scored_for_both(
    original: Sequence[ScoredOutput], proposal: Sequence[ScoredOutput]
) -> tuple[float, float, int] | None:
    """The mean aggregates of original and proposal over the records scored for both, and how many those are
    (None when there are none): means over different records would compare the failures, not the prompts."""
    pairs = [
        (a.aggregate, b.aggregate)
        for a, b in zip(original, proposal, strict=True)
        if a.failure is None and b.failure is None
    ]
    if not pairs:
        return None
    return fmean(a for a, _ in pairs), fmean(b for _, b in pairs), len(pairs)


def _example(result: ScoredOutput) -> MetaPromptExample:
    return MetaPromptExample(
        inputs=dict(result.example.inputs),
        output=result.output,
        expected=result.example.expectations.get("expected_response"),
        score=None if result.failure else round(result.aggregate, 4),
        rationale=result.feedback() or None,
    )


def _stopped(stop: StopRequested, seed: Candidate, initial: ScoreSummary) -> Result:
    return Result(
        stop.reason or "Cancelled",
        f"{stop.message}; kept the original prompts",
        best_candidate=seed,
        initial_scores=initial,
        final_scores=initial,
    )
