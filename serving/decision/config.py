"""The decision policy's typed, versioned configuration (``conf/policy.yaml``).

Everything the decision layer does is read from one :class:`PolicyConfig`: the action catalogue, the
eligibility rules (consent, frequency caps, quiet hours, trigger cool-downs), the business-rule
overrides and guardrails, the scoring model, the exploration settings and the control holdout.

The **policy version** (:func:`policy_version`) is a hash of the *normalized* configuration: the
model after validation, dumped to canonical JSON (durations in seconds, keys sorted). Two files that
differ only in formatting, key order, comments or in how a duration is spelt (``"60m"`` and ``"1h"``)
have the same version; any change of meaning gives a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator, model_validator

from conf.settings import parse_duration
from serving.decision.conditions import compile_condition

POLICY_PATH = Path(__file__).resolve().parents[2] / "conf" / "policy.yaml"

Consent = Literal["personalization", "marketing"]
Channel = Literal["onsite", "email", "push", "none"]
ActionKind = Literal["discount_offer", "content_slot", "email", "push", "tooltip", "help_chat", "no_action"]

Duration = Annotated[timedelta, BeforeValidator(parse_duration),
                     PlainSerializer(lambda d: d.total_seconds(), return_type=float)]


def _clock(v: Any) -> time:
    if isinstance(v, time):
        return v
    hh, _, mm = str(v).partition(":")
    try:
        return time(int(hh), int(mm or 0))
    except ValueError:
        raise ValueError(f"{v!r} is not a time of day like '21:00'") from None


ClockTime = Annotated[time, BeforeValidator(_clock), PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionSpec(_Model):
    """One action of the catalogue.

    ``value`` is what a success (the action's outcome: a purchase, a retained user, a completed step) is
    worth when this action was taken (a discount's value is the margin net of the discount); ``cost`` is paid
    whenever the action is taken (sending, support time). ``response`` is the scoring model's prior
    probability of success: ``base + Σ weights[score] · score``, clipped to [0, 1].
    """

    kind: ActionKind
    channel: Channel
    consent: Consent | None = Field(description="the consent the action needs; none for no action")
    value: float = Field(ge=0)
    cost: float = Field(ge=0, default=0.0)
    base: float = Field(ge=0, le=1, default=0.0)
    weights: dict[str, float] = Field(default_factory=dict, description="score name -> weight")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ActionSpec:
        if self.kind == "no_action" and (self.channel != "none" or self.consent is not None or self.cost):
            raise ValueError("no_action has channel 'none', no consent and no cost")
        if self.kind != "no_action" and self.channel == "none":
            raise ValueError(f"a {self.kind} action needs a channel")
        if self.channel in ("email", "push") and self.consent != "marketing":
            raise ValueError(f"the {self.channel} channel needs marketing consent")
        if self.channel == "onsite" and self.consent != "personalization":
            raise ValueError("on-site actions need personalization consent")
        return self


class Cap(_Model):
    """At most ``max`` actions of ``scope`` (``action``: each action; ``channel``: each channel) per ``window``;
    ``targets`` limits the cap to some actions or channels (default: every one)."""

    scope: Literal["action", "channel"]
    max: int = Field(ge=0)
    window: Duration
    targets: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        what = ",".join(self.targets) if self.targets else "*"
        return f"{self.scope}:{what}:{self.max}/{int(self.window.total_seconds())}s"


class QuietHours(_Model):
    """No action on ``channels`` between ``start`` and ``end`` in the user's time zone (wrapping midnight when
    ``start > end``)."""

    start: ClockTime
    end: ClockTime
    channels: tuple[Channel, ...] = ("email", "push")


class TriggerPolicy(_Model):
    """What a trigger may lead to: its candidate actions (default: every action) and its cool-down."""

    actions: tuple[str, ...] | None = None
    cooldown: Duration | None = None


class Rule(_Model):
    """A business-rule override: ``promote`` or ``suppress`` ``actions`` when the user is in one of ``segments``
    (if given) and ``when`` holds (if given). Rules apply in descending ``priority``; on one action, the first
    (highest-priority) rule that applies decides. ``force`` makes a promoted action the only candidate."""

    name: str
    effect: Literal["promote", "suppress"]
    actions: tuple[str, ...]
    segments: tuple[str, ...] | None = None
    when: str | None = Field(default=None, description="a condition over features, scores and context")
    priority: int = 0
    boost: float = Field(default=0.0, ge=0, description="promote: added to the action's sampled value")
    force: bool = False

    @field_validator("when")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            compile_condition(v)
        return v


class Guardrail(_Model):
    """A safeguard for a segment (e.g. high-value customers, where a model misbehaving is expensive): only
    ``allowed_actions``, none costing more than ``max_cost``, and no exploration unless ``explore``."""

    name: str
    segments: tuple[str, ...] | None = None
    when: str | None = None
    allowed_actions: tuple[str, ...] | None = None
    max_cost: float | None = Field(default=None, ge=0)
    explore: bool = False

    @field_validator("when")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            compile_condition(v)
        return v

    @model_validator(mode="after")
    def _targeted(self) -> Guardrail:
        if self.segments is None and self.when is None:
            raise ValueError(f"guardrail {self.name!r} needs segments or a condition")
        return self


class ScoreBands(_Model):
    """A context bucket's score part: the band of ``score`` among ``edges`` (ascending)."""

    score: str
    edges: tuple[float, ...] = Field(min_length=1)

    @field_validator("edges")
    @classmethod
    def _ascending(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if list(v) != sorted(set(v)):
            raise ValueError("edges must be strictly ascending")
        return v


class Exploration(_Model):
    """Thompson sampling per context bucket (trigger × score bands), with a probability floor.

    The prior of each (bucket, action) Beta is centred on the scoring model's success probability for the
    context, worth ``prior_strength`` pseudo-observations; the bucket's outcomes then dominate.
    ``mc_draws`` posterior draws give the probability vector the action is sampled from and logged with.
    """

    enabled: bool = True
    floor: float = Field(default=0.01, ge=0, le=1, description="minimum probability of each eligible action")
    prior_strength: float = Field(default=2.0, gt=0)
    mc_draws: int = Field(default=1000, ge=10, le=100_000)
    seed: int = 0
    bucket_by_trigger: bool = True
    bands: tuple[ScoreBands, ...] = ()


class Holdout(_Model):
    """The control group: ``sha256(salt:version:user_id)`` below ``fraction`` (sticky; a new version or salt
    re-draws it). Holdout users get ``default_action``."""

    salt: str = "kairos-holdout"
    version: int = Field(default=1, ge=1)
    fraction: float = Field(default=0.05, ge=0, le=1)


class Degraded(_Model):
    """When the features were read degraded or a needed score is missing: answer ``default_action``
    (``mode: default``) or carry on with ``score_defaults`` (``mode: defaults``)."""

    mode: Literal["default", "defaults"] = "default"
    score_defaults: dict[str, float] = Field(default_factory=dict)


class PolicyConfig(_Model):
    name: str = "kairos-decision"
    default_action: str = "no_action"
    default_timezone: str = "UTC"
    scores: tuple[str, ...] = ("purchase_propensity", "churn")
    actions: dict[str, ActionSpec]
    caps: tuple[Cap, ...] = ()
    quiet_hours: QuietHours | None = None
    default_cooldown: Duration | None = None
    triggers: dict[str, TriggerPolicy] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    guardrails: tuple[Guardrail, ...] = ()
    exploration: Exploration = Exploration()
    holdout: Holdout = Holdout()
    degraded: Degraded = Degraded()

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone") from None
        return v

    @model_validator(mode="after")
    def _references(self) -> PolicyConfig:
        names = set(self.actions)
        if self.default_action not in names:
            raise ValueError(f"default_action {self.default_action!r} is not in the catalogue")
        if self.actions[self.default_action].kind != "no_action":
            raise ValueError("the default action must be a no_action (holdout and degraded users get it)")
        refs: list[tuple[str, tuple[str, ...]]] = [(f"rule {r.name!r}", r.actions) for r in self.rules]
        refs += [(f"guardrail {g.name!r}", g.allowed_actions or ()) for g in self.guardrails]
        refs += [(f"trigger {t!r}", p.actions or ()) for t, p in self.triggers.items()]
        for owner, acts in refs:
            unknown = sorted(set(acts) - names)
            if unknown:
                raise ValueError(f"{owner} names unknown actions {unknown}")
        for name, a in self.actions.items():
            unknown = sorted(set(a.weights) - set(self.scores))
            if unknown:
                raise ValueError(f"action {name!r} weighs unknown scores {unknown}")
        for b in self.exploration.bands:
            if b.score not in self.scores:
                raise ValueError(f"bucket band on unknown score {b.score!r}")
        if len({r.name for r in self.rules}) != len(self.rules):
            raise ValueError("rule names must be unique")
        return self

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(self.actions)

    def normalized(self) -> dict[str, Any]:
        """The configuration as canonical JSON data: what the version hashes. The catalogue's order is part of it
        (it breaks ties between actions of equal value), and the rules are in the order they apply (descending
        priority, then file order); the order of other mappings is not."""
        data: dict[str, Any] = self.model_dump(mode="json")
        data["action_order"] = list(self.actions)
        data["rules"] = sorted(data["rules"], key=lambda r: -r["priority"])  # the order they apply in (stable)
        return data

    @property
    def version(self) -> str:
        return policy_version(self)


def policy_version(config: PolicyConfig) -> str:
    """A stable hash of the normalized configuration: ``<name>@<12 hex digits>``."""
    canonical = json.dumps(config.normalized(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{config.name}@{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def parse_policy(data: Mapping[str, Any]) -> PolicyConfig:
    return PolicyConfig.model_validate(dict(data))


def load_policy(path: Path | str = POLICY_PATH) -> PolicyConfig:
    """The policy of a YAML file (default: ``conf/policy.yaml``)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a policy is a mapping, got {type(data).__name__}")
    return parse_policy(data)
