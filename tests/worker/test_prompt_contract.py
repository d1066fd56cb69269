"""The prompt contract (promptopt.prompt_contract) round trip: the requests that the worker's own code renders parse
back (promptopt.simulated_llm.requests) into what the worker meant to ask, and the simulated LLM answers them; gepa's
own reflection prompt, built from the records our GEPA adapter made, too (so a gepa upgrade that changes its wording
or its rendering of the records fails here, not in a benchmark run)."""

import json

from gepa.proposer.reflective_mutation.reflection_lm import StatelessReflectionLM
from gepa.strategies.instruction_proposal import InstructionProposalSignature

from promptopt.api.v1alpha1 import OptimizerSpec, ScorerSpec, TaskSpec
from promptopt.prompt_contract import (
    CORRECTNESS_QUESTION,
    GUIDELINES_QUESTION,
    JUDGE_SYSTEM_MESSAGE,
    METAPROMPT_SYSTEM_MESSAGE,
    Feedback,
    JudgeRequest,
    MetaPromptExample,
    MetaPromptRequest,
)
from promptopt.simulated_llm import (
    JUDGE_MODEL,
    REFLECT_MODEL,
    RULE_ONE_LOWERCASE_WORD,
    RULE_SARCASM,
    RULE_SINGLE_WORD,
    SEED_INSTRUCTION,
    TASK_MODEL,
    respond,
    sentiment_dataset,
)
from promptopt.simulated_llm.requests import (
    GEPA_REFLECTION_MARKERS,
    ReflectionExample,
    parse_feedback,
    parse_judge_request,
    parse_metaprompt_request,
    parse_reflection_request,
)
from promptopt_worker.evaluation import TaskEvaluator
from promptopt_worker.gepa_optimizer import EvaluatorAdapter
from promptopt_worker.llm import LLMClient, ModelEndpoint
from promptopt_worker.metaprompt import build_request, optimize_metaprompt
from promptopt_worker.problem import Example, Problem, Progress, PromptTemplate, ScoredOutput, StopRequested
from promptopt_worker.scorers import Correctness, Guidelines, build_scorers

TASK = TaskSpec(model="openai/sim-task")
INPUTS = {"review": "I love it.\nReally.", "product": "blender"}
PROMPTS = [
    PromptTemplate("system", "system", "You classify {{product}} reviews."),
    PromptTemplate("classify", "user", "Classify the sentiment.\n\n{{review}}"),
]


class CapturingClient:
    """An LLMClient that records each conversation and answers with a verdict."""

    def __init__(self):
        self.conversations = []

    def complete(self, endpoint, messages):
        self.conversations.append(messages)
        return '{"result": "yes", "rationale": "fine"}'


def judge_conversation(judge_class, example, output, **params):
    client = CapturingClient()
    judge = judge_class(
        ScorerSpec(name=judge_class.__name__, model="openai/sim-judge", params=params or None), TASK, client
    )
    judge.score(example, output)
    [conversation] = client.conversations
    return conversation


def test_the_judge_requests_of_the_worker_parse_back_into_what_they_ask():
    output = "The sentiment is Positive.\n\nIt says love."
    correctness = judge_conversation(Correctness, Example(0, INPUTS, {"expected_response": "positive"}), output)
    guidelines = judge_conversation(
        Guidelines,
        Example(1, INPUTS, {"guidelines": "One word."}),
        output,
        guidelines=["Answer in lowercase.", "No punctuation."],
    )

    assert correctness[0] == guidelines[0] == {"role": "system", "content": JUDGE_SYSTEM_MESSAGE}
    assert parse_judge_request(correctness[1]["content"]) == JudgeRequest(
        INPUTS, output, expected_response="positive", question=CORRECTNESS_QUESTION
    )
    assert parse_judge_request(guidelines[1]["content"]) == JudgeRequest(
        INPUTS,
        output,
        guidelines=["Answer in lowercase.", "No punctuation.", "One word."],
        question=GUIDELINES_QUESTION,
    )
    # The simulated judge reads them as they are meant: the output gives the label but breaks each guideline.
    assert json.loads(respond(JUDGE_MODEL, correctness))["result"] == "yes"
    verdict = json.loads(respond(JUDGE_MODEL, guidelines))
    assert verdict["result"] == "no"
    assert all(g in verdict["rationale"] for g in ("'Answer in lowercase.'", "'No punctuation.'", "'One word.'"))


def metaprompt_problem() -> Problem:
    return Problem(
        prompts=PROMPTS,
        train=[],
        validation=[],
        evaluator=None,
        reflect=lambda prompt, system=None: "",
        settings=OptimizerSpec(type="MetaPrompt", reflection_model="openai/sim-reflect"),
    )


def test_the_metaprompt_requests_of_the_worker_parse_back_into_what_they_ask():
    problem = metaprompt_problem()
    failing = ScoredOutput(
        Example(3, INPUTS, {"expected_response": "positive"}),
        "Positive",
        {"exact": 0.0},
        {"exact": "output 'Positive' does not equal expected 'positive'"},
        0.0,
    )
    unscored = ScoredOutput(Example(4, INPUTS, {}), "positive", {}, {}, 0.0, failure="the judge gave no verdict")
    seed = {"system": "You classify {{product}} reviews.", "classify": "Classify the sentiment.\n\n{{review}}"}

    zero_shot = build_request(problem, None, examples=None)
    few_shot = build_request(problem, "  Use lowercase.\n", examples=[failing, unscored])

    assert parse_metaprompt_request(METAPROMPT_SYSTEM_MESSAGE, zero_shot) == MetaPromptRequest(seed)
    assert parse_metaprompt_request(METAPROMPT_SYSTEM_MESSAGE, few_shot) == MetaPromptRequest(
        seed,
        "Use lowercase.",
        [
            MetaPromptExample(
                INPUTS,
                "Positive",
                "positive",
                0.0,
                "exact: 0.00 — output 'Positive' does not equal expected 'positive'",
            ),
            MetaPromptExample(INPUTS, "positive", None, None, "Not scored: the judge gave no verdict"),
        ],
    )


def test_the_feedback_of_a_scored_output_parses_back_into_its_verdicts():
    result = ScoredOutput(
        Example(0, INPUTS, {}),
        "Positive",
        {"exact": 0.0, "judge: strict": 0.5, "lower": 1.0},
        {"exact": "no match", "judge: strict": "two lines:\nthe second"},
        0.0,
        failure="the judge of scorer 'other' gave no verdict\n(asked 3 times)",
    )
    assert parse_feedback(result.feedback()) == Feedback(result.scores, result.rationales, result.failure)


class Quiet:
    """A Reporter that keeps nothing."""

    def progress(self, progress, *, important=False):
        pass

    def finished(self, progress, result):
        pass


def test_the_simulated_llm_answers_the_metaprompt_request_of_the_worker_with_a_proposal_the_worker_takes():
    sent = []

    def reflect(prompt, system=None):
        sent.append(system)
        return respond(REFLECT_MODEL, [{"role": "system", "content": system}, {"role": "user", "content": prompt}])

    problem = Problem(
        prompts=PROMPTS[1:],
        train=[],
        validation=[],
        evaluator=None,
        reflect=reflect,
        settings=OptimizerSpec(
            type="MetaPrompt", reflection_model="openai/sim-reflect", meta_prompt={"guidelines": "Beware of sarcasm."}
        ),
    )

    result = optimize_metaprompt(problem, Progress(), Quiet(), StopRequested())

    assert sent == [METAPROMPT_SYSTEM_MESSAGE]
    assert result.reason == "Completed", result.message
    assert result.best_candidate == {
        "classify": "\n".join(["Classify the sentiment.", RULE_SINGLE_WORD, RULE_SARCASM, "", "{{review}}"])
    }


def test_gepas_own_reflection_prompt_from_our_adapters_records_is_answered_by_the_simulated_llm(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", llm.api_key)
    task = TaskSpec(model=f"openai/{TASK_MODEL}", api_base=llm.base_url)
    client = LLMClient()
    prompts = [PromptTemplate("classify", "user", SEED_INSTRUCTION)]
    specs = [ScorerSpec(name="ExactMatch"), ScorerSpec(name="Correctness", model=f"openai/{JUDGE_MODEL}")]
    scorers = build_scorers(specs, task, client)
    examples = [Example(i, r["inputs"], r["expectations"]) for i, r in enumerate(sentiment_dataset(6, seed=0))]
    settings = OptimizerSpec(type="GEPA", reflection_model=f"openai/{REFLECT_MODEL}")
    evaluator = TaskEvaluator(prompts, task, scorers, client)
    problem = Problem(
        prompts=prompts,
        train=examples,
        validation=examples,
        evaluator=evaluator,
        reflect=lambda prompt, system=None: "",
        settings=settings,
    )
    adapter = EvaluatorAdapter(problem, Progress(), StopRequested())
    candidate = {"classify": SEED_INSTRUCTION}
    try:
        batch = adapter.evaluate(examples, candidate, capture_traces=True)
    finally:
        evaluator.close()
    dataset = adapter.make_reflective_dataset(candidate, batch, ["classify"])

    # gepa's default reflection, as the worker runs it: its template, its markdown of the records, its extraction.
    reflection = ModelEndpoint.for_reflection(settings, task)
    gepa_reflection = StatelessReflectionLM(
        lambda prompt: client.complete(reflection, [{"role": "user", "content": prompt}])
    )
    proposal, _ = gepa_reflection.reflect(candidate, dataset, ["classify"])

    prompt = proposal.prompts["classify"]
    assert all(marker in InstructionProposalSignature.default_prompt_template for marker in GEPA_REFLECTION_MARKERS)
    assert parse_reflection_request(prompt).instruction == SEED_INSTRUCTION
    assert parse_reflection_request(prompt).examples == [
        ReflectionExample(dict(r.example.inputs), r.output, r.example.expectations["expected_response"], dict(r.scores))
        for r in batch.trajectories
    ]
    # Recognised as a reflection, answered with one sentence and the new instruction between ``` fences.
    assert llm.calls["reflection"] == 1
    answer = proposal.raw_lm_outputs["classify"]
    assert answer.count("```") == 2 and not answer.startswith("```")
    assert proposal.new_texts["classify"] == SEED_INSTRUCTION.replace("\n\n", f"\n{RULE_ONE_LOWERCASE_WORD}\n\n")
