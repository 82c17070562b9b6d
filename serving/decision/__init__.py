"""The decision layer: pure functions over the typed, versioned policy of ``conf/policy.yaml``.

:func:`decide` turns a :class:`DecisionContext` (features, scores, trigger, consents), the user's
:class:`History` of past decisions and the :class:`BanditState` into a :class:`Decision` that carries
the action, the whole probability vector of the final policy and every reason. Nothing here does I/O,
keeps state or starts a server: the caller reads the inputs and stores the outputs.

Modules: :mod:`.config` (the policy and its version), :mod:`.conditions` (rule conditions over
``features.expr``), :mod:`.eligibility` (consent, caps, quiet hours, cool-down), :mod:`.rules` (overrides
and guardrails), :mod:`.scoring` (expected values), :mod:`.bandit` (Thompson sampling), :mod:`.holdout`,
:mod:`.policy` (``decide``), :mod:`.ope` (off-policy estimators), :mod:`.readout` (holdout A/B/n and
sample-ratio mismatch) and :mod:`.simulator` (users who respond to actions).

Beside the pure layer, for the shells that call it (the service, a trigger consumer): :mod:`.store` (the shared
state: bandit counts, user histories, pending decisions, on SQLite or Redis) and :mod:`.log` (the decision and
outcome logs, parquet). They do I/O, so importing this package does not load them: their names below are
imported on first use.
"""

from serving.decision.bandit import EMPTY_STATE, BanditState, context_bucket, update
from serving.decision.conditions import ConditionError, compile_condition, holds
from serving.decision.config import (
    ActionSpec,
    Cap,
    Degraded,
    Exploration,
    Guardrail,
    Holdout,
    PolicyConfig,
    QuietHours,
    Rule,
    ScoreBands,
    TriggerPolicy,
    load_policy,
    parse_policy,
    policy_version,
)
from serving.decision.context import EMPTY_HISTORY, Decision, DecisionContext, History, PastDecision, Reasons
from serving.decision.eligibility import Eligibility, eligibility
from serving.decision.holdout import holdout_unit, in_holdout
from serving.decision.ope import (
    Estimate,
    LoggedRow,
    OPEReport,
    TabularRewardModel,
    doubly_robust,
    effective_sample_size,
    evaluate_policy,
    ips,
    snips,
)
from serving.decision.policy import decide, probability_vector, record_outcome
from serving.decision.readout import Readout, readout, srm_check
from serving.decision.rules import Overrides, apply_overrides
from serving.decision.scoring import expected_value, expected_values, success_probability

_LAZY = {
    "DecisionStore": "store", "SqliteDecisionStore": "store", "RedisDecisionStore": "store", "UserHistory": "store",
    "Join": "store", "Pending": "store", "open_store": "store", "history_horizon": "store",
    "PartitionedLog": "log", "DECISION_SCHEMA": "log", "OUTCOME_SCHEMA": "log", "decision_record": "log",
    "read_decisions": "log", "read_outcomes": "log", "decisions_with_outcomes": "log",
}


def __getattr__(name: str) -> object:
    """The store's and the log's names, imported on first use (so that the pure layer loads no store)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "EMPTY_HISTORY", "EMPTY_STATE", "ActionSpec", "BanditState", "Cap", "ConditionError", "Decision",
    "DecisionContext", "Degraded", "Eligibility", "Estimate", "Exploration", "Guardrail", "History", "Holdout",
    "LoggedRow", "OPEReport", "Overrides", "PastDecision", "PolicyConfig", "QuietHours", "Readout", "Reasons",
    "Rule", "ScoreBands", "TabularRewardModel", "TriggerPolicy", "apply_overrides", "compile_condition",
    "context_bucket", "decide", "doubly_robust", "effective_sample_size", "eligibility", "evaluate_policy",
    "expected_value", "expected_values", "holdout_unit", "holds", "in_holdout", "ips", "load_policy",
    "parse_policy", "policy_version", "probability_vector", "readout", "record_outcome", "snips", "srm_check",
    "success_probability", "update",
]
