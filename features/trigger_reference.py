"""The trigger reference: every firing of every trigger over one event log, written to be obviously right.

It is the oracle the engines' trigger histories are held to (parity compares the sets of
``(key, trigger, fire_time)``). It takes the input :class:`features.reference.Reference` takes (normalised event
records and the admission rules) and reads the admitted events and feature values from it, with the rules of
features/SEMANTICS.md ("Triggers") stated directly, not through :class:`features.triggers.TriggerStepper`:

* absence: a start ``s`` of a key fires at ``F = max(s.event_time + within, s.ingest_time)`` unless some start or
  cancel of the key later than ``s`` (by :func:`features.semantics.event_order_key`) arrived by ``F``
  (``ingest_time <= F``); then the cool-down is applied to the firings in time order;
* condition: at each change point ``t`` of the key (:meth:`Reference.change_points`), the condition over the
  reference's feature values as of ``t``; a firing where it is true and was not at the previous change point
  (before the first: the cold-start row); then the cool-down.

A condition is evaluated on the view narrowed to the features it reads (and the aggregations those derive from):
its values change only at that narrowed view's change points, which are among the full view's, so the edges,
hence the firings, are the same, and the oracle folds a fraction of the aggregations. The narrowed view keeps
the full view's name, so the reference gives it the full view's events of the key's owner.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from features.reference import Reference
from features.semantics import Collision, Drop, EventRules, event_order_key
from features.spec import FeatureView
from features.trigger_catalog import TRIGGERS
from features.triggers import AbsenceTrigger, ConditionTrigger, Fire, Trigger, truthy

FireKey = tuple[str, str, datetime]  # (key, trigger, fire_time)


def narrowed(view: FeatureView, columns: Iterable[str]) -> FeatureView:
    """``view`` with only the features ``columns`` read and what they are derived from (same name)."""
    need = set(columns)
    derived = []
    for d in reversed(view.derived):
        if d.name in need:
            derived.append(d)
            need |= d.expr.columns()
    aggs = tuple(a for a in view.aggregations if a.name in need)
    return replace(view, aggregations=aggs, derived=tuple(reversed(derived)))


def _matches(event: Mapping[str, Any], types: frozenset[Any], where: Any) -> bool:
    return event["event_type"] in types and (where is None or truthy(where.evaluate(event)))


def _cooled(candidates: list[Fire], trigger: Trigger) -> list[Fire]:
    """The firings left by the cool-down: each at least ``cooldown`` after the previous one kept."""
    out: list[Fire] = []
    for f in sorted(candidates, key=lambda f: f.fire_time):
        if not out or f.fire_time >= out[-1].fire_time + trigger.cooldown:
            out.append(f)
    return out


class TriggerReference:
    """Every firing of ``triggers`` over one log, up to ``until`` (inclusive; None: all, as data time runs on)."""

    def __init__(self, events: Iterable[Mapping[str, Any]], *, rules: EventRules,
                 triggers: Iterable[Trigger] = TRIGGERS, until: datetime | None = None) -> None:
        self.triggers = tuple(triggers)
        self.until = until
        views: list[FeatureView] = []
        for t in self.triggers:
            if isinstance(t, ConditionTrigger) and t.view not in views:
                views.append(t.view)
        self.reference = Reference(events, rules=rules, views=views)
        self.fires: list[Fire] = []
        for t in self.triggers:
            self.fires += self._absence(t) if isinstance(t, AbsenceTrigger) else self._condition(t)
        self.fires.sort(key=lambda f: (f.fire_time, f.trigger, f.key))

    @property
    def drops(self) -> dict[Drop, int]:
        return self.reference.drops

    @property
    def collisions(self) -> dict[Collision, int]:
        return self.reference.collisions

    def fire_set(self) -> set[FireKey]:
        return {f.identity for f in self.fires}

    def counts(self) -> dict[str, int]:
        """Firings per trigger (every trigger named, 0 if it never fired)."""
        out = {t.name: 0 for t in self.triggers}
        for f in self.fires:
            out[f.trigger] += 1
        return out

    def _absence(self, trigger: AbsenceTrigger) -> list[Fire]:
        by_key: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for e in self.reference.events:  # admitted, in arrival order
            k = e.get(trigger.key_field)
            if k is not None:
                by_key[k].append(e)
        out: list[Fire] = []
        for key, events in by_key.items():
            starts = [e for e in events if _matches(e, trigger.start_types, trigger.start_where)]
            marks = starts + [e for e in events if _matches(e, trigger.cancel_types, trigger.cancel_where)]
            candidates = []
            for s in starts:
                fire_time = max(s["event_time"] + trigger.within, s["ingest_time"])
                if self.until is not None and fire_time > self.until:
                    continue
                o = event_order_key(s)
                if any(event_order_key(x) > o and x["ingest_time"] <= fire_time for x in marks):
                    continue  # a newer start restarted it, or a newer cancel disarmed it, by the fire time
                candidates.append(Fire(trigger=trigger.name, key=key, fire_time=fire_time, user_id=s.get("user_id"),
                                       cause=s["event_id"]))
            out += _cooled(candidates, trigger)
        return out

    def _condition(self, trigger: ConditionTrigger) -> list[Fire]:
        ref, when = self.reference, trigger.when
        view = narrowed(trigger.view, when.columns())
        out: list[Fire] = []
        for key in ref.keys(trigger.view):
            before = truthy(when.evaluate(view.finalize_row({})))
            candidates = []
            for t in ref.change_points(view, key):
                if self.until is not None and t > self.until:
                    break
                now = truthy(when.evaluate(ref.features(view, key, t)))
                if now and not before:
                    candidates.append(Fire(trigger=trigger.name, key=key, fire_time=t))
                before = now
            out += _cooled(candidates, trigger)
        return out


def trigger_history(events: Iterable[Mapping[str, Any]], *, rules: EventRules,
                    triggers: Iterable[Trigger] = TRIGGERS, until: datetime | None = None) -> set[FireKey]:
    """The reference's set of ``(key, trigger, fire_time)`` over a log."""
    return TriggerReference(events, rules=rules, triggers=triggers, until=until).fire_set()
