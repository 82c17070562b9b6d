"""Which actions may be taken at all: the trigger's candidates, consent, frequency caps, quiet hours, cool-down.

Pure functions of the configuration, the context and the user's history of past decisions. The default
action (no action) is always eligible: it needs no consent, has no channel and is never capped.

* **consent**: an action needs the consent its catalogue entry names (personalization for on-site
  actions, marketing for email and push);
* **frequency caps**: a cap of scope ``action`` counts the user's past decisions of the same action, one of
  scope ``channel`` those on the same channel, in the window ``[now - window, now]``; at ``max`` the action
  is capped. Holdout decisions and decisions for no action delivered nothing and are not counted;
* **quiet hours**: in the user's time zone (``zoneinfo``; the policy's default zone when the user's is
  unknown or invalid), actions on the quiet channels are ineligible between ``start`` and ``end``;
* **cool-down**: once a trigger has fired for the user (any past decision with that trigger, holdout or
  not), the same trigger leads to no action for its cool-down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from serving.decision.config import ActionSpec, Cap, Consent, PolicyConfig, QuietHours
from serving.decision.context import DecisionContext, HistoryLike, PastDecision


@dataclass(frozen=True)
class Eligibility:
    eligible: tuple[str, ...]  # in catalogue order; always holds the default action
    ineligible: dict[str, tuple[str, ...]]  # action -> reasons
    caps_hit: tuple[str, ...]
    quiet_hours: bool
    cooldown: bool
    notes: tuple[str, ...] = ()


def candidates(config: PolicyConfig, trigger: str | None) -> tuple[str, ...]:
    """The actions the trigger may lead to (every action when the trigger declares none), plus the default."""
    policy = config.triggers.get(trigger) if trigger is not None else None
    allowed = policy.actions if policy is not None and policy.actions is not None else config.action_names
    return tuple(a for a in config.action_names if a in allowed or a == config.default_action)


def consent_missing(action: ActionSpec, consents: frozenset[Consent]) -> Consent | None:
    """The consent the action needs and the user has not given, if any."""
    return action.consent if action.consent is not None and action.consent not in consents else None


def _delivered(decisions: Iterable[PastDecision]) -> list[PastDecision]:
    return [d for d in decisions if not d.holdout and d.channel != "none"]


def caps_hit(caps: Iterable[Cap], action_name: str, action: ActionSpec, history: HistoryLike,
             now: datetime) -> tuple[str, ...]:
    """The names of the caps the action would exceed."""
    if action.channel == "none":
        return ()
    hit: list[str] = []
    for cap in caps:
        key = action_name if cap.scope == "action" else action.channel
        if cap.targets is not None and key not in cap.targets:
            continue
        past = _delivered(d for d in history.since(now - cap.window) if d.at <= now)
        n = sum(1 for d in past if (d.action if cap.scope == "action" else d.channel) == key)
        if n >= cap.max:
            hit.append(cap.name)
    return tuple(hit)


def user_zone(tz: str | None, default: str) -> tuple[ZoneInfo, str | None]:
    """The user's zone, or the default with a note saying why."""
    if tz:
        try:
            return ZoneInfo(tz), None
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo(default), f"unknown time zone {tz!r}: used {default}"
    return ZoneInfo(default), None


def in_window(t: time, start: time, end: time) -> bool:
    """Whether the local time ``t`` is in ``[start, end)``, which wraps midnight when ``start > end``."""
    if start == end:
        return False
    if start < end:
        return start <= t < end
    return t >= start or t < end


def is_quiet(quiet: QuietHours, now: datetime, zone: ZoneInfo) -> bool:
    local = now.astimezone(zone)
    return in_window(local.time().replace(tzinfo=None), quiet.start, quiet.end)


def cooldown_active(config: PolicyConfig, trigger: str | None, history: HistoryLike, now: datetime) -> bool:
    """Whether ``trigger`` already fired for the user within its cool-down."""
    if trigger is None:
        return False
    policy = config.triggers.get(trigger)
    cooldown = policy.cooldown if policy is not None and policy.cooldown is not None else config.default_cooldown
    if cooldown is None or cooldown.total_seconds() <= 0:
        return False
    return any(d.trigger == trigger and d.at <= now for d in history.since(now - cooldown))


def eligibility(config: PolicyConfig, ctx: DecisionContext, history: HistoryLike) -> Eligibility:
    """Every action's eligibility for the context, with the reasons of those that are not."""
    zone, note = user_zone(ctx.timezone, config.default_timezone)
    quiet = config.quiet_hours is not None and is_quiet(config.quiet_hours, ctx.now, zone)
    cooling = cooldown_active(config, ctx.trigger, history, ctx.now)
    allowed = set(candidates(config, ctx.trigger))
    eligible: list[str] = []
    ineligible: dict[str, tuple[str, ...]] = {}
    all_caps: list[str] = []
    for name, action in config.actions.items():
        if name == config.default_action:
            eligible.append(name)
            continue
        why: list[str] = []
        if name not in allowed:
            why.append(f"not a candidate of trigger {ctx.trigger!r}")
        missing = consent_missing(action, ctx.consents)
        if missing is not None:
            why.append(f"no {missing} consent")
        if quiet and config.quiet_hours is not None and action.channel in config.quiet_hours.channels:
            why.append("quiet hours")
        if cooling:
            why.append(f"trigger {ctx.trigger!r} in cool-down")
        hit = caps_hit(config.caps, name, action, history, ctx.now)
        why += [f"cap {c}" for c in hit]
        all_caps += [c for c in hit if c not in all_caps]
        if why:
            ineligible[name] = tuple(why)
        else:
            eligible.append(name)
    return Eligibility(eligible=tuple(eligible), ineligible=ineligible, caps_hit=tuple(all_caps),
                       quiet_hours=quiet, cooldown=cooling, notes=(note,) if note else ())
