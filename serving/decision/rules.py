"""Business-rule overrides and guardrails, applied to the eligible actions.

* A :class:`~serving.decision.config.Rule` applies when the user is in one of its segments (if it names
  any) and its condition holds (if it has one). Rules are taken in descending priority (ties: file
  order); for each action, the **first** applying rule that names it decides: ``suppress`` removes it,
  ``promote`` adds ``boost`` to its sampled value, and ``force`` makes it the only candidate (the
  highest-priority forced action wins). So a high-priority "never discount a user whose purchase propensity
  is above 0.8" beats a lower-priority "promote discounts on cart abandonment".
* A :class:`~serving.decision.config.Guardrail` then restricts what applying segments can get: only its
  allowed actions, none costing more than ``max_cost``, and no exploration unless it allows it.
  Guardrails come last: no rule can force past them.

The default action is never removed: it is what is left when everything else is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.decision.conditions import holds
from serving.decision.config import Guardrail, PolicyConfig, Rule
from serving.decision.context import DecisionContext


@dataclass(frozen=True)
class Overrides:
    candidates: tuple[str, ...]  # what the policy may choose from, in catalogue order
    boosts: dict[str, float] = field(default_factory=dict)
    forced: str | None = None
    rules_applied: tuple[str, ...] = ()
    guardrails: tuple[str, ...] = ()
    explore: bool = True
    removed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # action -> why rules removed it


def _targets(segments: tuple[str, ...] | None, when: str | None, ctx: DecisionContext,
             row: dict[str, object]) -> bool:
    if segments is not None and not (ctx.segments & set(segments)):
        return False
    return when is None or holds(when, row)


def rule_applies(rule: Rule, ctx: DecisionContext) -> bool:
    return _targets(rule.segments, rule.when, ctx, ctx.row())


def guardrail_applies(guardrail: Guardrail, ctx: DecisionContext) -> bool:
    return _targets(guardrail.segments, guardrail.when, ctx, ctx.row())


def ordered_rules(config: PolicyConfig) -> list[Rule]:
    """The rules in the order they apply: descending priority, then file order."""
    return sorted(config.rules, key=lambda r: -r.priority)


def apply_overrides(config: PolicyConfig, ctx: DecisionContext, eligible: tuple[str, ...]) -> Overrides:
    """The candidates, boosts and exploration after the rules and guardrails that apply to ``ctx``."""
    row = ctx.row()
    applying = [r for r in ordered_rules(config) if _targets(r.segments, r.when, ctx, row)]
    decided: dict[str, Rule] = {}
    for rule in applying:
        for a in rule.actions:
            if a in eligible and a not in decided and a != config.default_action:
                decided[a] = rule
    removed: dict[str, tuple[str, ...]] = {}
    boosts: dict[str, float] = {}
    forced: tuple[int, str] | None = None
    for a, rule in decided.items():
        if rule.effect == "suppress":
            removed[a] = (f"suppressed by rule {rule.name!r}",)
        else:
            if rule.boost:
                boosts[a] = rule.boost
            if rule.force and (forced is None or rule.priority > forced[0]):
                forced = (rule.priority, a)
    candidates = [a for a in eligible if a not in removed]
    if forced is not None:
        for a in candidates:
            if a != forced[1]:
                removed[a] = (f"rule {decided[forced[1]].name!r} forced {forced[1]}",)
        candidates = [forced[1]]
    applied = tuple(r.name for r in applying if r in decided.values())

    explore = config.exploration.enabled
    guardrails: list[str] = []
    for g in config.guardrails:
        if not _targets(g.segments, g.when, ctx, row):
            continue
        guardrails.append(g.name)
        explore = explore and g.explore
        keep: list[str] = []
        for a in candidates:
            spec = config.actions[a]
            if a != config.default_action and g.allowed_actions is not None and a not in g.allowed_actions:
                removed[a] = (f"guardrail {g.name!r}: not allowed",)
            elif a != config.default_action and g.max_cost is not None and spec.cost > g.max_cost:
                removed[a] = (f"guardrail {g.name!r}: costs more than {g.max_cost}",)
            else:
                keep.append(a)
        candidates = keep
    if config.default_action not in candidates and not (forced is not None and forced[1] in candidates):
        candidates.append(config.default_action)
    final = tuple(a for a in config.action_names if a in candidates)
    forced_action = forced[1] if forced is not None and forced[1] in final else None
    if forced_action is not None:
        final = (forced_action,)
    return Overrides(candidates=final, boosts={a: b for a, b in boosts.items() if a in final}, forced=forced_action,
                     rules_applied=applied, guardrails=tuple(guardrails), explore=explore, removed=removed)
