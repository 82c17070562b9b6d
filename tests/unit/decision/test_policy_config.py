"""The policy configuration: it loads, validates its references, and its version hashes its meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from serving.decision import PolicyConfig, load_policy, parse_policy, policy_version
from serving.decision.config import POLICY_PATH


def _raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(POLICY_PATH.read_text())
    return data


def test_the_default_policy_has_the_whole_catalogue() -> None:
    cfg = load_policy()
    kinds = {a.kind for a in cfg.actions.values()}
    assert kinds == {"discount_offer", "content_slot", "email", "push", "tooltip", "help_chat", "no_action"}
    for a in cfg.actions.values():
        assert a.value >= 0 and a.cost >= 0
        assert a.consent == {"onsite": "personalization", "email": "marketing", "push": "marketing",
                             "none": None}[a.channel]
    assert cfg.holdout.fraction == 0.05
    assert cfg.version.startswith("kairos-decision@") and len(cfg.version.split("@")[1]) == 12


def test_the_version_ignores_formatting_order_and_duration_spelling(tmp_path: Path) -> None:
    raw = _raw()
    base = policy_version(parse_policy(raw))
    reordered = dict(reversed(list(raw.items())))
    reordered["default_cooldown"] = "60m"  # the same as 1h
    reordered["rules"] = raw["rules"][::-1]  # distinct priorities: the order they apply in is unchanged
    reordered["caps"] = [{**c, "window": "1d"} if c["window"] == "24h" else c for c in raw["caps"]]
    path = tmp_path / "policy.yaml"
    path.write_text("# a comment\n" + yaml.safe_dump(reordered, default_flow_style=True, sort_keys=False))
    assert policy_version(load_policy(path)) == base


def test_the_version_changes_with_any_meaning() -> None:
    raw = _raw()
    base = policy_version(parse_policy(raw))
    changed = [
        {**raw, "default_cooldown": "2h"},
        {**raw, "holdout": {**raw["holdout"], "version": 2}},
        {**raw, "exploration": {**raw["exploration"], "floor": 0.03}},
        {**raw, "actions": {**raw["actions"], "discount_offer": {**raw["actions"]["discount_offer"], "cost": 0.1}}},
        {**raw, "rules": raw["rules"][1:]},
        {**raw, "actions": dict(reversed(list(raw["actions"].items())))},  # the catalogue order breaks ties
    ]
    versions = {policy_version(parse_policy(c)) for c in changed}
    assert base not in versions and len(versions) == len(changed)
    same = [{**r, "priority": 0} for r in raw["rules"]]  # equal priorities apply in file order
    assert policy_version(parse_policy({**raw, "rules": same})) != policy_version(parse_policy({**raw,
                                                                                             "rules": same[::-1]}))


@pytest.mark.parametrize(("patch", "message"), [
    ({"default_action": "discount_offer"}, "default action must be a no_action"),
    ({"default_action": "nothing"}, "not in the catalogue"),
    ({"default_timezone": "Mars/Olympus"}, "IANA"),
    ({"rules": [{"name": "r", "effect": "promote", "actions": ["teleport"]}]}, "unknown actions"),
    ({"rules": [{"name": "r", "effect": "promote", "actions": ["push_reminder"], "when": "x >"}]}, "does not parse"),
    ({"rules": [{"name": "r", "effect": "promote", "actions": ["push_reminder"], "when": "open('x')"}]},
     "not supported"),
    ({"triggers": {"t": {"actions": ["nope"]}}}, "unknown actions"),
    ({"caps": [{"scope": "action", "max": 1, "window": "soon"}]}, "not a duration"),
    ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "time of day"),
    ({"guardrails": [{"name": "g"}]}, "needs segments or a condition"),
    ({"unknown_key": 1}, "Extra inputs"),
])
def test_invalid_policies_are_refused_with_the_reason(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_policy({**_raw(), **patch})


@pytest.mark.parametrize(("action", "message"), [
    ({"kind": "email", "channel": "email", "consent": "personalization", "value": 1}, "marketing consent"),
    ({"kind": "push", "channel": "onsite", "consent": "marketing", "value": 1}, "personalization consent"),
    ({"kind": "no_action", "channel": "none", "consent": None, "value": 1, "cost": 1}, "no cost"),
    ({"kind": "tooltip", "channel": "none", "consent": None, "value": 1}, "needs a channel"),
    ({"kind": "tooltip", "channel": "onsite", "consent": "personalization", "value": 1, "weights": {"ltv": 1}},
     "unknown scores"),
])
def test_actions_must_name_the_consent_their_channel_needs(action: dict[str, Any], message: str) -> None:
    raw = _raw()
    with pytest.raises(ValidationError, match=message):
        parse_policy({**raw, "actions": {**raw["actions"], "bad": action}})


def test_a_policy_is_immutable() -> None:
    cfg: PolicyConfig = load_policy()
    with pytest.raises(ValidationError):
        cfg.default_action = "discount_offer"
