"""The prompt contract (promptopt.prompt_contract): the requests that the worker's own code renders parse back into
what the worker meant to ask."""
from promptopt.api.v1alpha1 import OptimizerSpec, ScorerSpec, TaskSpec
from promptopt.prompt_contract import (
    JUDGE_SYSTEM_MESSAGE,
    METAPROMPT_SYSTEM_MESSAGE,
    Feedback,
    JudgeRequest,
    MetaPromptExample,
    MetaPromptRequest,
    parse_judge_request,
    parse_metaprompt_request,
)
from promptopt_worker.metaprompt import build_request
from promptopt_worker.problem import Example, Problem, PromptTemplate, ScoredOutput
from promptopt_worker.scorers import Correctness, Guidelines

TASK = TaskSpec(model="openai/sim-task")
INPUTS = {"review": "I love it.\nReally.", "product": "blender"}
PROMPTS = [PromptTemplate("system", "system", "You classify {{product}} reviews."),
           PromptTemplate("classify", "user", "Classify the sentiment.\n\n{{review}}")]


class CapturingClient:
    """An LLMClient that records each conversation and answers with a verdict."""

    def __init__(self):
        self.conversations = []

    def complete(self, endpoint, messages):
        self.conversations.append(messages)
        return '{"result": "yes", "rationale": "fine"}'


def judge_conversation(judge_class, example, output, **params):
    client = CapturingClient()
    judge = judge_class(ScorerSpec(name=judge_class.__name__, model="openai/sim-judge", params=params or None),
                        TASK, client)
    judge.score(example, output)
    [conversation] = client.conversations
    return conversation


def test_the_judge_requests_of_the_worker_parse_back_into_what_they_ask():
    output = "The sentiment is Positive.\n\nIt says love."
    correctness = judge_conversation(Correctness, Example(0, INPUTS, {"expected_response": "positive"}), output)
    guidelines = judge_conversation(Guidelines, Example(1, INPUTS, {"guidelines": "One word."}), output,
                                    guidelines=["Answer in lowercase.", "No punctuation."])

    assert correctness[0] == guidelines[0] == {"role": "system", "content": JUDGE_SYSTEM_MESSAGE}
    assert parse_judge_request(correctness[1]["content"]) == JudgeRequest(INPUTS, output, expected_response="positive")
    assert parse_judge_request(guidelines[1]["content"]) == JudgeRequest(
        INPUTS, output, guidelines=["Answer in lowercase.", "No punctuation.", "One word."])


def metaprompt_problem() -> Problem:
    return Problem(prompts=PROMPTS, train=[], validation=[], evaluator=None, reflect=lambda prompt, system=None: "",
                   settings=OptimizerSpec(type="MetaPrompt", reflection_model="openai/sim-reflect"))


def test_the_metaprompt_requests_of_the_worker_parse_back_into_what_they_ask():
    problem = metaprompt_problem()
    failing = ScoredOutput(Example(3, INPUTS, {"expected_response": "positive"}), "Positive", {"exact": 0.0},
                           {"exact": "output 'Positive' does not equal expected 'positive'"}, 0.0)
    unscored = ScoredOutput(Example(4, INPUTS, {}), "positive", {}, {}, 0.0, failure="the judge gave no verdict")
    seed = {"system": "You classify {{product}} reviews.", "classify": "Classify the sentiment.\n\n{{review}}"}

    zero_shot = build_request(problem, None, examples=None)
    few_shot = build_request(problem, "  Use lowercase.\n", examples=[failing, unscored])

    assert parse_metaprompt_request(METAPROMPT_SYSTEM_MESSAGE, zero_shot) == MetaPromptRequest(seed)
    assert parse_metaprompt_request(METAPROMPT_SYSTEM_MESSAGE, few_shot) == MetaPromptRequest(seed, "Use lowercase.", [
        MetaPromptExample(INPUTS, "Positive", "positive", 0.0, "exact: 0.00 — output 'Positive' does not equal "
                          "expected 'positive'"),
        MetaPromptExample(INPUTS, "positive", None, None, "Not scored: the judge gave no verdict"),
    ])


def test_the_feedback_of_a_scored_output_parses_back_into_its_verdicts():
    result = ScoredOutput(Example(0, INPUTS, {}), "Positive", {"exact": 0.0, "judge: strict": 0.5, "lower": 1.0},
                          {"exact": "no match", "judge: strict": "two lines:\nthe second"}, 0.0,
                          failure="the judge of scorer 'other' gave no verdict\n(asked 3 times)")
    assert Feedback.parse(result.feedback()) == Feedback(result.scores, result.rationales, result.failure)
