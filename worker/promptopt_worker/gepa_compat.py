"""What the worker knows of gepa beyond its top-level API, in one place.

gepa's public seams (gepa.optimize and its reflection_strategy, GEPAAdapter, EvaluationBatch, GEPAResult, the
stoppers, the callback events) are used where they are needed; everything else the worker relies on is here, held to
the range pyproject.toml allows (gepa>=0.1.4,<0.2) by tests/worker/test_gepa_compat.py: the submodules it imports,
what it reads from gepa.optimize's signature, the engine state its stoppers and callbacks read, how many metric calls
a merge spends, and how long gepa's reflection template is. A gepa upgrade starts here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any

import gepa
from gepa.core.callbacks import GEPACallback
from gepa.core.state import GEPAState
from gepa.proposer.reflective_mutation.base import LanguageModel
from gepa.proposer.reflective_mutation.reflection_lm import ReflectionJob, ReflectionProposal, StatelessReflectionLM

__all__ = [
    "GEPA_PARAMETERS",
    "GEPA_PERFECT_SCORE",
    "GEPA_TEMPLATE_TOKENS",
    "GEPA_VERSION",
    "MERGE_SUBSAMPLE",
    "GEPACallback",
    "GEPAState",
    "LanguageModel",
    "ScreenedReflection",
    "best_on_validation",
    "candidates_found",
    "iteration_cost_bound",
    "metric_calls_spent",
]

GEPA_VERSION = version("gepa")
GEPA_PARAMETERS = frozenset(inspect.signature(gepa.optimize).parameters)
GEPA_PERFECT_SCORE = inspect.signature(gepa.optimize).parameters["perfect_score"].default

# MergeProposer scores a merged candidate on this many validation records before the full pass.
MERGE_SUBSAMPLE = 5

# gepa's default instruction-proposal template (gepa.strategies.instruction_proposal) around the prompt and the records,
# its markdown headings included, in tokens.
GEPA_TEMPLATE_TOKENS = 400


def iteration_cost_bound(minibatch_size: int, validation_size: int, use_merge: bool) -> int:
    """The most metric calls one gepa iteration can spend: a reflective step scores the parent and its child on a
    minibatch, then an accepted child on the whole validation set; a merge scores the merged candidate on
    MERGE_SUBSAMPLE validation records, then an accepted one on all of them."""
    proposal = max(2 * minibatch_size, MERGE_SUBSAMPLE) if use_merge else 2 * minibatch_size
    return proposal + validation_size


# The engine state, as gepa hands it to stoppers and to the on_iteration_start callback.


def metric_calls_spent(state: GEPAState) -> int:
    return state.total_num_evals


def candidates_found(state: GEPAState) -> int:
    return len(state.program_candidates)


def best_on_validation(state: GEPAState) -> tuple[dict[str, str], float]:
    """The best candidate so far and its aggregate validation score (ties keep the earlier one, as gepa's best_idx
    does)."""
    scores = state.program_full_scores_val_set
    best = max(range(len(scores)), key=scores.__getitem__)
    return state.program_candidates[best], scores[best]


class ScreenedReflection:
    """gepa's default reflection (its prompt, its parsing of the answer), each proposal screened before gepa scores it.

    A proposal that `accepts` refuses is dropped whole (never patched): its new texts are emptied, so gepa skips the
    iteration's proposal ("Reflection returned no text updates") and the candidate costs no task LLM call, no metric
    call and never enters the pool. This is gepa.optimize's reflection_strategy: gepa's callbacks only observe (none
    can veto a proposal), and a custom_candidate_proposer or an adapter's propose_new_texts would replace gepa's
    reflection rather than screen it. Refusing it in the adapter's evaluate instead would spend metric calls and count
    on a zero score losing gepa's acceptance test (which `acceptance_criterion="improvement_or_equal"` would not
    guarantee).
    """

    def __init__(
        self,
        lm: LanguageModel,
        template: str | dict[str, str] | None,
        logger: Any,
        accepts: Callable[[dict[str, str]], bool],
    ):
        self._reflector = StatelessReflectionLM(lm, template, logger=logger)
        self._accepts = accepts  # given the proposed candidate: the parent with the new texts

    def reflect(
        self,
        candidate: dict[str, str],
        reflective_dataset: Mapping[str, Sequence[Mapping[str, Any]]],
        components_to_update: list[str],
    ) -> tuple[ReflectionProposal, ScreenedReflection]:
        return self.reflect_many([(candidate, reflective_dataset, components_to_update)])[0]

    def reflect_many(self, jobs: list[ReflectionJob]) -> list[tuple[ReflectionProposal, ScreenedReflection]]:
        proposals = [proposal for proposal, _ in self._reflector.reflect_many(jobs)]
        return [(self._screened(job[0], proposal), self) for job, proposal in zip(jobs, proposals, strict=True)]

    def _screened(self, parent: dict[str, str], proposal: ReflectionProposal) -> ReflectionProposal:
        if self._accepts({**parent, **proposal.new_texts}):
            return proposal
        return ReflectionProposal(
            new_texts={}, prompts=proposal.prompts, raw_lm_outputs=proposal.raw_lm_outputs, metadata=proposal.metadata
        )
