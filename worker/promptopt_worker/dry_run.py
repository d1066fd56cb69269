"""`promptopt run --dry-run`: what a job will call and cost, found without calling any model or service.

The job is prepared exactly as a run prepares it (every source resolved, the dataset checked against the prompts and
the scorers, the optimizer's options and budget checked), then:

Calls, upper bounds for one worker attempt (a replaced Pod re-runs the evaluations its checkpoint did not keep;
retries of transient errors are not calls, status.cost counts them apart):
- evaluations E: GEPA's budget of metric calls, never exceeded; MetaPrompt's pass (metaprompt.metric_calls);
- the program: at most one call per evaluation (the job's cache answers the others);
- each LLM judge: at most 1 + judgeRetries calls per evaluation; each webhook: one per evaluation;
- the reflection model: MetaPrompt asks it once. GEPA asks it once per prompt a reflective iteration updates (one,
  round robin; every prompt with options.module_selector "all"), and every reflective iteration first scores its
  parent on a minibatch of m records, so after the seed's V validation records at most floor((E - V) / m)
  iterations reflect. With options.cache_evaluation gepa's own cache may answer a minibatch without a metric call,
  and no bound follows.

USD: a candidate prompt may grow with every reflection, so the prompts bound no call's tokens; the models do. Every
call filling its model's context window (litellm's list: max_input_tokens, and max_output_tokens or the endpoint's
maxTokens) at its price is a true bound, far above what a run spends, and none exists for a model the list does not
know or a service (it reports its own usage). spec.budget.maxCostUSD bounds the job too: new calls stop there, and
the calls already in flight (at most task.concurrency evaluations and one reflection) finish. Beside the bounds, an
estimate says it is one: every call as long as the seed prompts make it (4 characters a token), every answer as long
as maxTokens (ASSUMED_* tokens where none is set), priced as the client prices it (the spec's pricing, else
litellm's list).

Models: every model the job names is looked up in litellm's offline model list, and one it does not know is a
warning naming its field and the listed id closest to it (with --strict, the dry run fails). A model on a server of
the user's is not looked up: any name is valid there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any

from promptopt.api.v1alpha1 import PromptOptimizationJobSpec
from promptopt.prompt_contract import reflective_record
from promptopt_worker import litellm_transport, metaprompt, openai_compatible
from promptopt_worker.evaluation import ModelProgram, TaskEvaluator
from promptopt_worker.gepa_compat import GEPA_TEMPLATE_TOKENS
from promptopt_worker.gepa_optimizer import GepaRun, gepa_run
from promptopt_worker.llm import ModelEndpoint, list_price, token_limits
from promptopt_worker.problem import Example, InvalidInput, Problem
from promptopt_worker.scorers import LLMJudge, Scorer, Webhook
from promptopt_worker.templates import as_text, messages

CHARACTERS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text
ASSUMED_ANSWER_TOKENS = 100  # a program's answer, where task.maxTokens is unset
ASSUMED_VERDICT_TOKENS = 60  # a judge's JSON verdict with a sentence of rationale


@dataclass(frozen=True)
class CallBound:
    """The calls of one role (the program, a judge, a webhook, the reflection model)."""

    role: str  # task, judge, webhook, reflection
    target: str  # the model id or URL
    scorer: str | None  # the scorer's key, for judges and webhooks
    calls: int | None  # at most; None: no bound
    why: str
    usd_estimate: float | None  # None: no price known, or a service that reports its own
    no_estimate: str = "no price known: set its pricing in the spec"  # why, when usd_estimate is None
    usd_bound: float | None = None  # every call filling its model's context window; None: no window or price known


@dataclass(frozen=True)
class DryRun:
    optimizer: str
    prompts: int
    train_records: int
    validation_records: int
    test_records: int
    evaluations: int
    evaluations_from: str
    calls: tuple[CallBound, ...]
    max_cost_usd: float | None
    in_flight: int  # calls that may still finish once maxCostUSD is reached
    warnings: tuple[str, ...] = ()  # models litellm's list does not know
    mlflow: tuple[str, ...] = ()  # what the job's MLflow server answered (mlflow_tracking.dry_run_notes)

    @property
    def total_calls(self) -> int | None:
        counts = [bound.calls for bound in self.calls]
        return None if None in counts else sum(c for c in counts if c is not None)

    @property
    def usd_estimate(self) -> float | None:
        estimates = [bound.usd_estimate for bound in self.calls if bound.calls]
        return None if None in estimates else sum(e for e in estimates if e is not None)

    @property
    def usd_bound(self) -> float | None:
        """The most the calls can cost if each fills its model's context window (None when one is unknown)."""
        bounds = [bound.usd_bound for bound in self.calls if bound.calls != 0]
        return None if None in bounds else sum(b for b in bounds if b is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "calls": [asdict(bound) for bound in self.calls],
            "totalCalls": self.total_calls,
            "usdEstimate": self.usd_estimate,
            "usdBound": self.usd_bound,
        }


def plan_dry_run(spec: PromptOptimizationJobSpec, problem: Problem, strict: bool = False) -> DryRun:
    """The bounds of the job prepared as `problem`; InvalidInput for what the optimizer would refuse at its start,
    and with `strict` for a warning too."""
    evaluator, run = problem.evaluator, None
    if spec.optimizer.type == "GEPA":
        run = gepa_run(problem)
        evaluations, evaluations_from = run.budget, run.budget_field
    else:
        metaprompt.check_options(problem)
        evaluations, evaluations_from = metaprompt.metric_calls(problem), "MetaPrompt's pass"
    bounds: list[CallBound] = []
    if isinstance(evaluator, TaskEvaluator):
        # The held-out test records are scored once more at the end, with the original and the best prompts.
        scored = evaluations + 2 * len(problem.test)
        bounds.append(_program_bound(evaluator, scored, problem))
        bounds += [
            _scorer_bound(scorer, scored, problem)
            for scorer in evaluator.scorers
            if isinstance(scorer, LLMJudge | Webhook)
        ]
    bounds.append(_reflection_bound(spec, problem, evaluations, run))
    warnings = unknown_models(spec)
    if strict and warnings:
        raise InvalidInput("; ".join(warnings) + " (--strict)")
    return DryRun(
        optimizer=spec.optimizer.type,
        prompts=len(problem.prompts),
        train_records=len(problem.train),
        validation_records=len(problem.validation),
        test_records=len(problem.test),
        evaluations=evaluations,
        evaluations_from=evaluations_from,
        calls=tuple(bounds),
        max_cost_usd=spec.budget.max_cost_usd if spec.budget else None,
        in_flight=spec.task.concurrency + 1,
        warnings=warnings,
    )


def unknown_models(spec: PromptOptimizationJobSpec) -> tuple[str, ...]:
    """One warning per model the job names that litellm's offline model list does not know, naming the fields that
    name it and the listed id closest to it."""
    fields_by_model: dict[str, list[str]] = {}
    for field, endpoint in _named_models(spec):
        if not _serves_any_name(endpoint):
            fields_by_model.setdefault(endpoint.model, []).append(field)
    found = ((model, fields, litellm_transport.unknown_model(model)) for model, fields in fields_by_model.items())
    return tuple(f"unknown model {model} ({', '.join(fields)}): {why}" for model, fields, why in found if why)


def _named_models(spec: PromptOptimizationJobSpec) -> list[tuple[str, ModelEndpoint]]:
    """The job's models, each with its field, as the worker will call them (an apiBase defaults to the task's)."""
    task = [("spec.task.model", ModelEndpoint.for_task(spec.task))] if spec.task.model else []
    judges = [
        (f"spec.scorers[{index}].model", ModelEndpoint.for_judge(scorer, spec.task))
        for index, scorer in enumerate(spec.scorers or [])
        if scorer.model
    ]
    return [*task, *judges, ("spec.optimizer.reflectionModel", ModelEndpoint.for_reflection(spec.optimizer, spec.task))]


def _serves_any_name(endpoint: ModelEndpoint) -> bool:
    """Whether the model is called on a server of the user's (vLLM, Ollama, a gateway, promptopt's simulated sim-*
    models), which answers to whatever names it chooses: the endpoint's apiBase, or for openai/ models the
    OPENAI_BASE_URL of this environment, read as the worker reads it. (A base URL that only the job's credentials
    Secret sets cannot be seen here: such a model warns.)"""
    return bool(endpoint.api_base) or (
        endpoint.model.startswith(openai_compatible.PROVIDER_PREFIX)
        and openai_compatible.base_url(endpoint) != openai_compatible.OPENAI_API_BASE
    )


def _tokens(text: str) -> int:
    return math.ceil(len(text) / CHARACTERS_PER_TOKEN)


def _estimate(endpoint: ModelEndpoint, calls: int, prompt_tokens: float, completion_tokens: int) -> float | None:
    per_call = list_price(endpoint, round(prompt_tokens), completion_tokens)
    return None if per_call is None else calls * per_call


def _bound(endpoint: ModelEndpoint, calls: int | None) -> float | None:
    """`calls` calls, each as long as the model's context window lets it be, at its price."""
    if calls is None:
        return None
    if endpoint.pricing is not None and not (
        endpoint.pricing.input_per_million_tokens or endpoint.pricing.output_per_million_tokens
    ):
        return 0.0  # free whatever the calls' length (a local model, the simulated LLM)
    limits = token_limits(endpoint)
    if limits is None:
        return None
    per_call = list_price(endpoint, *limits)
    return None if per_call is None else calls * per_call


def _examples(problem: Problem) -> list[Example]:
    return list({e.index: e for e in [*problem.train, *problem.validation]}.values())


def _program_bound(evaluator: TaskEvaluator, evaluations: int, problem: Problem) -> CallBound:
    why, endpoint = "one per evaluation the cache does not answer", evaluator.program.endpoint
    if not isinstance(evaluator.program, ModelProgram):
        return CallBound("task", endpoint.model, None, evaluations, why, None, "the service reports its own usage")
    seed = problem.seed_candidate
    prompt_tokens = fmean(
        _tokens("".join(m["content"] for m in messages(problem.prompts, seed, e.inputs))) for e in _examples(problem)
    )
    answer = int(endpoint.params.get("max_tokens") or ASSUMED_ANSWER_TOKENS)
    return CallBound(
        "task",
        endpoint.model,
        None,
        evaluations,
        why,
        _estimate(endpoint, evaluations, prompt_tokens, answer),
        usd_bound=_bound(endpoint, evaluations),
    )


def _scorer_bound(scorer: Scorer, evaluations: int, problem: Problem) -> CallBound:
    if isinstance(scorer, Webhook):
        return CallBound(
            "webhook", scorer.endpoint.model, scorer.key, evaluations, "one per evaluation", 0.0, usd_bound=0.0
        )
    assert isinstance(scorer, LLMJudge)
    asks = 1 + scorer.judge_retries
    calls = evaluations * asks
    examples = _examples(problem)
    request_tokens = fmean(
        sum(_tokens(m["content"]) for m in scorer.conversation(e, as_text(e.expectations.get("expected_response", ""))))
        for e in examples
    )
    return CallBound(
        "judge",
        scorer.endpoint.model,
        scorer.key,
        calls,
        f"up to {asks} per evaluation (1 + exampleFailurePolicy.judgeRetries)",
        _estimate(scorer.endpoint, calls, request_tokens, ASSUMED_VERDICT_TOKENS),
        usd_bound=_bound(scorer.endpoint, calls),
    )


def _reflection_bound(
    spec: PromptOptimizationJobSpec, problem: Problem, evaluations: int, run: GepaRun | None
) -> CallBound:
    endpoint = ModelEndpoint.for_reflection(spec.optimizer, spec.task)
    seed_tokens = sum(_tokens(p.text) for p in problem.prompts)
    if spec.optimizer.type == "MetaPrompt":
        shown = problem.train[: spec.optimizer.meta_prompt_settings.max_examples] if problem.evaluator else []
        request = metaprompt.build_request(problem, spec.optimizer.meta_prompt_settings.guidelines, examples=None)
        request_tokens = _tokens(request) + _records_tokens(shown)
        return CallBound(
            "reflection",
            endpoint.model,
            None,
            1,
            "one pass",
            _estimate(endpoint, 1, request_tokens, 2 * seed_tokens),
            usd_bound=_bound(endpoint, 1),
        )
    assert run is not None  # GEPA's
    options = spec.optimizer.options
    if options.get("cache_evaluation"):
        return CallBound(
            "reflection",
            endpoint.model,
            None,
            None,
            "no bound: with options.cache_evaluation gepa's cache may answer an iteration's minibatch "
            "without spending a metric call",
            None,
        )
    per_iteration = len(problem.prompts) if options.get("module_selector") == "all" else 1
    iterations = max(0, evaluations - len(problem.validation)) // run.minibatch_size
    calls = per_iteration * iterations
    why = (
        f"{per_iteration} per reflective iteration, each spending at least a minibatch of {run.minibatch_size} "
        "metric calls after the seed's validation"
    )
    # gepa's request shows one prompt (of the seed's mean length) and a minibatch of records.
    reflection_tokens = (
        GEPA_TEMPLATE_TOKENS + seed_tokens / len(problem.prompts) + _records_tokens(problem.train[: run.minibatch_size])
    )
    return CallBound(
        "reflection",
        endpoint.model,
        None,
        calls,
        why,
        _estimate(endpoint, calls, reflection_tokens, seed_tokens + ASSUMED_ANSWER_TOKENS),
        usd_bound=_bound(endpoint, calls),
    )


def _records_tokens(examples: Sequence[Example]) -> int:
    """The records as a reflection request shows them, with an answer and a line of feedback each."""
    return sum(
        _tokens(
            json.dumps(
                reflective_record(
                    e.inputs,
                    "x" * CHARACTERS_PER_TOKEN * ASSUMED_ANSWER_TOKENS,
                    e.expectations.get("expected_response"),
                    "y" * 200,
                ),
                default=str,
            )
        )
        for e in examples
    )


def render_dry_run(plan: DryRun, source: str) -> str:
    """The console's report of a dry run."""
    lines = [
        f"{source}: the job is valid. {plan.optimizer}, {plan.prompts} prompt(s), {plan.train_records} training and "
        f"{plan.validation_records} validation records; at most {plan.evaluations} evaluations "
        f"({plan.evaluations_from})"
        + (f", then 2 × {plan.test_records} on the held-out test records." if plan.test_records else "."),
        *(f"warning: {warning}" for warning in plan.warnings),
        *(f"MLflow: {note}" for note in plan.mlflow),
        "",
        "calls, at most (one worker attempt; retries of transient errors are counted apart):",
    ]
    for bound in plan.calls:
        who = f"{bound.role} {bound.scorer}" if bound.scorer else bound.role
        calls = "no bound" if bound.calls is None else f"{bound.calls:,}"
        lines.append(f"  {who:<22} {bound.target:<34} {calls:>8}   {bound.why}")
    total = plan.total_calls
    lines.append(f"  {'total':<22} {'':<34} {'no bound' if total is None else f'{total:,}':>8}")
    lines.append("")
    if plan.usd_bound is not None:
        lines.append(
            f"USD: at most ${plan.usd_bound:,.2f} if every call fills its model's context window "
            "(litellm's list of windows and prices, or the spec's pricing)."
        )
    if plan.max_cost_usd is not None:
        lines.append(
            f"USD: at most ${plan.max_cost_usd:g} (spec.budget.maxCostUSD) plus the calls in flight when it "
            f"is reached (up to {plan.in_flight})."
        )
    elif plan.usd_bound is None:
        unbounded = sorted({b.target for b in plan.calls if b.calls != 0 and b.usd_bound is None})
        lines.append(
            f"USD: no upper bound: no context window and price known for {', '.join(unbounded)}, and a "
            "candidate prompt may grow with every reflection; set spec.budget.maxCostUSD to cap the job."
        )
    estimate = plan.usd_estimate
    if estimate is None:
        unpriced = {f"{b.target} ({b.no_estimate})" for b in plan.calls if b.calls and b.usd_estimate is None}
        lines.append(f"USD estimate: none, for {'; '.join(sorted(unpriced))}.")
    else:
        lines.append(
            f"USD estimate (not a bound): ${estimate:.4f}, if every call is as long as the seed prompts make "
            f"it and every answer as long as maxTokens ({ASSUMED_ANSWER_TOKENS} tokens where unset)."
        )
    lines.append("Nothing was called.")
    return "\n".join(lines)
