"""promptopt_worker.gepa_compat holds for the installed gepa: it is within the range pyproject.toml allows, and what the
module assumes of it (the engine state it reads, the merge's subsample, the reflection template, how a proposal with no
texts is skipped) is so. A gepa upgrade that breaks an assumption fails here."""

import inspect
import math
import tomllib
from pathlib import Path

import gepa
from gepa.proposer.merge import MergeProposer
from gepa.strategies.instruction_proposal import InstructionProposalSignature
from packaging.requirements import Requirement

from promptopt_worker.dry_run import CHARACTERS_PER_TOKEN
from promptopt_worker.gepa_compat import (
    GEPA_PARAMETERS,
    GEPA_TEMPLATE_TOKENS,
    GEPA_VERSION,
    MERGE_SUBSAMPLE,
    ScreenedReflection,
    best_on_validation,
    candidates_found,
    metric_calls_spent,
)
from promptopt_worker.gepa_optimizer import RESERVED_OPTIONS, GepaLog

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_gepa_is_within_the_range_pyproject_allows():
    worker = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["worker"]
    [requirement] = [Requirement(line) for line in worker if Requirement(line).name == "gepa"]
    assert requirement.specifier.contains(GEPA_VERSION), f"gepa {GEPA_VERSION} is not {requirement}"


def test_the_options_the_worker_owns_are_parameters_of_gepa_optimize():
    assert set(RESERVED_OPTIONS) <= GEPA_PARAMETERS


def test_a_merge_scores_its_candidate_on_merge_subsample_records_first():
    select = inspect.signature(MergeProposer.select_eval_subsample_for_merged_program)
    assert select.parameters["num_subsample_ids"].default == MERGE_SUBSAMPLE


def test_gepas_default_reflection_template_fences_the_prompt_and_the_records_within_its_token_allowance():
    template = InstructionProposalSignature.default_prompt_template
    # The simulated LLM and the tests' fake reflector read the prompt from the first ``` block, the records after it.
    assert template.index("```\n<curr_param>\n```") < template.index("```\n<side_info>\n```")
    words = template.replace("<curr_param>", "").replace("<side_info>", "")
    assert math.ceil(len(words) / CHARACTERS_PER_TOKEN) <= GEPA_TEMPLATE_TOKENS


class ScoringNothing:
    """gepa's adapter protocol: every output scores 0 (so every iteration reflects); records what it scores."""

    propose_new_texts = None

    def __init__(self):
        self.scored: list[tuple[dict[str, str], int]] = []  # (candidate, records)

    def evaluate(self, batch, candidate, capture_traces=False):
        self.scored.append((dict(candidate), len(batch)))
        return gepa.EvaluationBatch(
            outputs=["no"] * len(batch), scores=[0.0] * len(batch), trajectories=list(batch) if capture_traces else None
        )

    def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
        records = [{"Inputs": record, "Feedback": "wrong"} for record in eval_batch.trajectories]
        return {name: records for name in components_to_update}


class EngineStateReads:
    """A stopper that keeps what gepa_compat reads of the engine state each time gepa asks it."""

    def __init__(self):
        self.reads = []

    def __call__(self, state) -> bool:
        self.reads.append((metric_calls_spent(state), candidates_found(state), best_on_validation(state)))
        return False


def test_a_refused_proposal_costs_no_metric_call_and_the_engine_state_reads_agree_with_gepas_result():
    # The worker's own run of this (a reflection that drops a {{variable}}): test_gepa_optimizer's
    # test_proposals_breaking_template_variables_are_rejected_without_evaluation.
    seed, proposed = {"prompt": "seed"}, []

    def refuse(candidate):
        proposed.append(candidate)
        return False

    adapter, reads = ScoringNothing(), EngineStateReads()
    reflection = ScreenedReflection(lambda prompt: "Better:\n```\nnew\n```", None, GepaLog(), refuse)

    result = gepa.optimize(
        seed_candidate=seed,
        trainset=list(range(6)),
        valset=list(range(3)),
        adapter=adapter,
        reflection_strategy=reflection,
        reflection_minibatch_size=2,
        max_metric_calls=9,
        stop_callbacks=[reads],
        logger=GepaLog(),
        display_progress_bar=False,
    )

    assert proposed == [{"prompt": "new"}] * 3
    assert [candidate for candidate, _ in adapter.scored] == [seed] * 4  # the validation set, then 3 parents
    assert result.total_metric_calls == sum(records for _, records in adapter.scored) == 3 + 3 * 2
    assert reads.reads[-1] == (
        result.total_metric_calls,
        len(result.candidates),
        (result.candidates[result.best_idx], result.val_aggregate_scores[result.best_idx]),
    )
    assert [metric_calls for metric_calls, _, _ in reads.reads] == [3, 5, 7, 9]
