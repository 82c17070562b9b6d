"""Batch/stream parity: one event log through the reference, Spark and Bytewax, compared per feature.

``make parity`` runs the parity tests, then this report on a simulated log with
raised rates of duplicate, out-of-order and late delivery that crosses midnights
and a month boundary::

    kairos parity --users 300 --days 6

What is compared, in the spirit of Chronon's online/offline consistency metrics:

* **stream vs Spark**, per feature: at every (key, timestamp) where the stream wrote
  a row (its changelog), Spark's as-of value from the offline table (the latest row
  at or before that timestamp) must be identical (floats within 1e-9). ``compared``
  counts those rows, ``mismatched`` the rows whose value differs, ``missing`` the
  stream rows Spark has no change point for (its as-of value still counts), and
  ``extra`` the change points Spark has that the stream never wrote;
* **reference**: the stream's values at those points against the plain-Python
  oracle (:class:`features.reference.Reference`), for every key or a sample;
* **Feast**: after the stream wrote the online store, ``get_online_features`` for
  every key (or a sample) equals Feast's ``get_historical_features`` over Spark's
  offline tables at the same moment;
* **late data**: how many events each engine dropped as late, duplicate, without
  consent or invalid, next to the reference's counts, so any effect of late data
  on agreement is visible, not hidden;
* **triggers**, per trigger: the sets of ``(key, trigger, fire_time)`` of the trigger
  reference (:class:`features.trigger_reference.TriggerReference`), Spark's offline
  table of firings (:class:`pipelines.spark.triggers.SparkTriggers`) and the stream's
  trigger log (deduplicated by ``fire_id`` on read): ``compared`` counts the
  reference's firings, ``missing``/``extra`` per engine those it lacks or adds.

Both engines run to the same end, the UTC midnight after the last arrival: Spark
backfills ``[-inf, end)`` (features and firings); the stream replays the whole log in
arrival order and runs its timers (expiries and trigger deadlines) up to ``end`` minus
one microsecond, as the trigger reference's ``until``. The JSON report lands in
``data_path/parity/report.json``; the exit status is 1 on any disagreement.
"""

from __future__ import annotations

import bisect
import math
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from conf.settings import Settings
from features import spec
from features.reference import Reference
from features.registry import REGISTRY, Registry
from features.semantics import Collision, Drop, EventRules
from features.trigger_catalog import TRIGGERS
from features.trigger_reference import TriggerReference
from pipelines.engine import BuildReport
from pipelines.ingest.eventlog import read_parquet, table_to_records
from pipelines.ingest.simulator import write_stream
from pipelines.progress import Progress, as_progress
from pipelines.store.offline import EVENT_TIMESTAMP, offline_table_path
from pipelines.store.values import nullable_spec_value

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.stream.types import FeatureRow

FLOAT_TOLERANCE = 1e-9
Timeline = tuple[list[datetime], list[dict[str, Any]]]


def same(a: Any, b: Any, dtype: str | None = None) -> bool:
    """The parity tolerance (features/SEMANTICS.md), in one place: floats within 1e-9 (absolute or relative),
    arrays element-wise, all else equal. ``dtype`` (the spec's) compares numbers of a float feature as floats."""
    if a is None or b is None:
        return a is None and b is None
    if dtype == "float64" or (isinstance(a, float) and isinstance(b, float)):
        fa, fb = float(a), float(b)
        return fa == fb or math.isclose(fa, fb, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    if dtype == "array<string>":
        return list(a) == list(b)
    return bool(a == b)


@dataclass
class FeatureParity:
    """Agreement of one feature between the stream and Spark (and the reference)."""

    view: str
    feature: str
    compared: int = 0
    mismatched: int = 0
    missing: int = 0
    extra: int = 0
    reference_compared: int = 0
    reference_mismatched: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.extra or self.reference_mismatched)


FireKey = tuple[str, str, datetime]  # (key, trigger, fire_time)


@dataclass
class TriggerParity:
    """Agreement of one trigger's firings: the reference's against each engine's, as sets of (key, trigger,
    fire time)."""

    trigger: str
    compared: int = 0  # the reference's firings
    fired: dict[str, int] = field(default_factory=dict)  # engine -> its firings
    missing: dict[str, int] = field(default_factory=dict)  # engine -> reference firings it lacks
    extra: dict[str, int] = field(default_factory=dict)  # engine -> firings the reference does not have
    examples: list[str] = field(default_factory=list)

    @property
    def mismatched(self) -> int:
        return sum(self.missing.values()) + sum(self.extra.values())

    @property
    def ok(self) -> bool:
        return not self.mismatched


def compare_triggers(reference: Iterable[FireKey], engines: Mapping[str, Iterable[FireKey]],
                     names: Iterable[str] | None = None, examples: int = 3) -> list[TriggerParity]:
    """Per trigger (``names``: every trigger, firing or not), each engine's firings against the reference's."""
    want: dict[str, set[FireKey]] = defaultdict(set)
    for f in reference:
        want[f[1]].add(f)
    got: dict[str, dict[str, set[FireKey]]] = {e: defaultdict(set) for e in engines}
    for engine, fires in engines.items():
        for f in fires:
            got[engine][f[1]].add(f)
    every = list(names) if names is not None else []
    every += sorted({*want, *(t for g in got.values() for t in g)} - set(every))
    out: list[TriggerParity] = []
    for name in every:
        tp = TriggerParity(trigger=name, compared=len(want[name]))
        for engine in engines:
            mine = got[engine][name]
            lacks, adds = want[name] - mine, mine - want[name]
            tp.fired[engine], tp.missing[engine], tp.extra[engine] = len(mine), len(lacks), len(adds)
            for kind, diff in (("missing", lacks), ("extra", adds)):
                for key, _t, at in sorted(diff)[:max(0, examples - len(tp.examples))]:
                    tp.examples.append(f"{engine} {kind}: {key} at {at.isoformat()}")
        out.append(tp)
    return out


@dataclass
class ParityReport:
    events: int
    end: datetime
    features: list[FeatureParity]
    drops: dict[str, dict[str, int]]  # engine -> drop reason or collision kind -> events
    feast: dict[str, int]  # compared / mismatched cells between Feast online and Feast offline
    seconds: dict[str, float]
    workers: int
    triggers: list[TriggerParity] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return sum(f.mismatched + f.missing + f.extra + f.reference_mismatched for f in self.features) + \
            self.feast.get("mismatched", 0) + sum(int(d != self.drops.get("reference")) for e, d in self.drops.items()
                                                  if e != "reference") + \
            sum(t.mismatched for t in self.triggers)

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "end": self.end.isoformat(), "workers": self.workers,
                "mismatches": self.mismatches, "drops": self.drops, "feast": self.feast, "seconds": self.seconds,
                "features": [asdict(f) for f in self.features],
                "triggers": [{**asdict(t), "mismatched": t.mismatched} for t in self.triggers]}

    def lines(self) -> list[str]:
        """The per-feature table, the per-trigger table and the drop counts, for a terminal."""
        out = [f"{'view':17s} {'feature':42s} {'compared':>9s} {'mismatch':>8s} {'missing':>7s} {'extra':>6s} "
               f"{'ref cmp':>8s} {'ref bad':>7s}"]
        for f in self.features:
            out.append(f"{f.view:17s} {f.feature:42s} {f.compared:9,d} {f.mismatched:8,d} {f.missing:7,d} "
                       f"{f.extra:6,d} {f.reference_compared:8,d} {f.reference_mismatched:7,d}")
            out += [f"    e.g. {e}" for e in f.examples[:3]]
        if self.triggers:
            engines = list(self.triggers[0].fired)
            out.append("")
            out.append(f"{'trigger':28s} {'compared':>9s} " + " ".join(
                f"{e + ' ' + k:>16s}" for e in engines for k in ("fired", "missing", "extra")))
            for t in self.triggers:
                out.append(f"{t.trigger:28s} {t.compared:9,d} " + " ".join(
                    f"{n:16,d}" for e in engines for n in (t.fired[e], t.missing[e], t.extra[e])))
                out += [f"    e.g. {e}" for e in t.examples[:3]]
        reasons = sorted({r for d in self.drops.values() for r in d})
        out.append("")
        out.append(f"{'drops/collisions':17s} " + " ".join(f"{r:>17s}" for r in reasons))
        for engine, d in self.drops.items():
            out.append(f"{engine:17s} " + " ".join(f"{d.get(r, 0):17,d}" for r in reasons))
        out.append("")
        out.append(f"Feast online vs Feast offline (get_historical_features) at {self.end - timedelta(microseconds=1)}:"
                   f" {self.feast.get('compared', 0):,} cells, {self.feast.get('mismatched', 0):,} differ")
        return out


# ------------------------------------------------------------------------------------------- reading both engines
def offline_timelines(settings: Settings, view: spec.FeatureView) -> dict[str, Timeline]:
    """A view's Spark offline table as ``key -> (sorted timestamps, rows)``, spec-typed Python values."""
    key = view.entity.join_key
    table = ds.dataset(str(offline_table_path(settings, view)), format="parquet", partitioning="hive").to_table(
        columns=[key, EVENT_TIMESTAMP, *view.feature_names])
    table = table.sort_by([(key, "ascending"), (EVENT_TIMESTAMP, "ascending")])
    out: dict[str, Timeline] = {}
    for r in table.to_pylist():
        times, rows = out.setdefault(str(r.pop(key)), ([], []))
        times.append(r.pop(EVENT_TIMESTAMP).astimezone(UTC))
        for f in view.features:
            if f.dtype == "timestamp" and r[f.name] is not None:
                r[f.name] = r[f.name].astimezone(UTC)
        rows.append(r)
    return out


def stream_timelines(rows: Iterable[FeatureRow]) -> dict[tuple[str, str], Timeline]:
    """The stream's changelog as ``(view, key) -> (sorted timestamps, rows)``; the last row of a timestamp wins."""
    by: dict[tuple[str, str], dict[datetime, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by[(r.view, r.key)][r.event_timestamp] = r.values
    out: dict[tuple[str, str], Timeline] = {}
    for k, points in by.items():
        times = sorted(points)
        out[k] = (times, [points[t] for t in times])
    return out


def compare_view(view: spec.FeatureView, stream: Mapping[str, Timeline], offline: Mapping[str, Timeline],
                 reference: Callable[[str, datetime], dict[str, Any]] | None = None,
                 reference_keys: set[str] | None = None, examples: int = 3) -> list[FeatureParity]:
    """Per feature of ``view``: the stream's rows against Spark's as-of values (and the reference's)."""
    stats = {f.name: FeatureParity(view=view.name, feature=f.name) for f in view.features}
    defaults = {f.name: f.default for f in view.features}
    missing = extra = 0
    for key in sorted(set(stream) | set(offline)):
        s_times, s_rows = stream.get(key, ([], []))
        o_times, o_rows = offline.get(key, ([], []))
        missing += len(set(s_times) - set(o_times))
        extra += len(set(o_times) - set(s_times))
        check_ref = reference is not None and (reference_keys is None or key in reference_keys)
        for t, got in zip(s_times, s_rows, strict=True):
            i = bisect.bisect_right(o_times, t) - 1
            want = o_rows[i] if i >= 0 else defaults
            expected = reference(key, t) if check_ref and reference is not None else None
            for f in view.features:
                st = stats[f.name]
                st.compared += 1
                if not same(got.get(f.name), want.get(f.name), f.dtype):
                    st.mismatched += 1
                    if len(st.examples) < examples:
                        st.examples.append(f"{key} at {t.isoformat()}: stream {got.get(f.name)!r}, "
                                           f"spark {want.get(f.name)!r}")
                if expected is not None:
                    st.reference_compared += 1
                    if not same(got.get(f.name), expected[f.name], f.dtype):
                        st.reference_mismatched += 1
                        if len(st.examples) < examples:
                            st.examples.append(f"{key} at {t.isoformat()}: stream {got.get(f.name)!r}, "
                                               f"reference {expected[f.name]!r}")
    for st in stats.values():
        st.missing, st.extra = missing, extra
    return list(stats.values())


# ------------------------------------------------------------------------------------------- running it
def _next_midnight(t: datetime) -> datetime:
    return datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)


def parity_end(settings: Settings) -> datetime:
    """Where both engines stop: the UTC midnight after the last arrival in ``settings.events_path``."""
    arrivals = ds.dataset(str(settings.events_path), format="parquet", partitioning="hive").to_table(
        columns=["ingest_time"]).column("ingest_time")
    return _next_midnight(pc.max(arrivals).as_py().astimezone(UTC))


def run_parity(settings: Settings, *, spark: SparkSession | None = None, built: BuildReport | None = None,
               workers: int = 1,
               reference_keys: int | None = 200, feast_keys: int | None = 300, seed: int = 7,
               registry: Registry = REGISTRY, progress: Progress | Callable[[str], None] | None = print
               ) -> ParityReport:
    """Run the three implementations on ``settings.events_path`` and compare them (see the module docstring).

    ``reference_keys`` / ``feast_keys``: keys per view checked against the reference /
    read from Feast (``None``: all). Writes Spark's offline tables, the stream's logs and
    the Feast online store under ``settings.data_path``. ``built``: the report of a Spark
    backfill of ``[-inf, parity_end(settings))`` already run on this log (not run again).
    ``progress``: a :class:`~pipelines.progress.Progress` (tasks for the replay and the comparisons) or a line
    callback.
    """
    # the engines and Feast import pyspark, bytewax and feast (seconds each): only here, so that importing the
    # comparison rules (``same``, ``compare_view``), as the tests and the demo do, stays quick
    from pipelines.spark.backfill import SparkBackfill
    from pipelines.spark.triggers import SparkTriggers, read_fire_table
    from pipelines.store.online import read_online
    from pipelines.store.repo import apply_repo
    from pipelines.store.retrieval import FeastRetrieval
    from pipelines.stream.changelog import read_changelog
    from pipelines.stream.engine import BytewaxEngine
    from pipelines.stream.sources import JsonlReplaySource
    from pipelines.stream.triggers import fire_set, read_triggers
    from pipelines.stream.types import StreamClock, StreamOutputs

    report = as_progress(progress)
    seconds: dict[str, float] = {}
    table = read_parquet(settings.events_path)
    end = parity_end(settings)
    rules = EventRules(allowed_lateness=settings.events.allowed_lateness)

    if built is None:
        t0 = time.perf_counter()
        backfill = SparkBackfill(settings, registry, spark=spark)
        backfill.progress = report
        spark_report = backfill.backfill(None, end)
        seconds["spark"] = round(time.perf_counter() - t0, 2)
        report.log(f"   spark: {sum(spark_report.views.values()):,} change points in {seconds['spark']}s")
    else:
        spark_report, seconds["spark"] = built, round(built.seconds, 2)
    t0 = time.perf_counter()
    spark_triggers = SparkTriggers(settings, registry, spark=spark).build(None, end)
    seconds["spark_triggers"] = round(time.perf_counter() - t0, 2)
    report.log(f"   spark: {sum(spark_triggers.fires.values()):,} trigger firings in {seconds['spark_triggers']}s")

    replay = settings.data_path / "parity" / "stream.jsonl"
    n = write_stream(table, replay)
    out = StreamOutputs.from_settings(settings, online=True)
    for d in (out.changelog_dir, out.drops_dir, out.triggers_dir):
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
    store = apply_repo(settings)
    t0 = time.perf_counter()
    builder = BytewaxEngine(settings, registry, clock=StreamClock(until=end - timedelta(microseconds=1)),
                                    outputs=out)
    with report.task("bytewax replay", total=n, unit="events") as task:
        stream_report = builder.run(JsonlReplaySource(replay, on_batch=task.advance), workers=workers)
    seconds["bytewax"] = round(time.perf_counter() - t0, 2)
    assert out.changelog_dir is not None
    changelog = read_changelog(out.changelog_dir, registry)
    report.log(f"   bytewax ({workers} worker{'s' if workers > 1 else ''}): {n:,} events, {len(changelog):,} rows "
               f"in {seconds['bytewax']}s")

    t0 = time.perf_counter()
    records = table_to_records(table)
    ref = Reference(records, rules=rules)
    stream = stream_timelines(changelog)
    rng = random.Random(seed)
    features: list[FeatureParity] = []
    with report.task("compare reference, spark, bytewax", total=len(registry.views), unit="views") as task:
        for view in registry.views:
            offline = offline_timelines(settings, view)
            mine = {k: tl for (v, k), tl in stream.items() if v == view.name}
            keys = sorted(mine)
            checked = set(keys if reference_keys is None or len(keys) <= reference_keys
                          else rng.sample(keys, reference_keys))
            raw_keys = {str(k): k for k in ref.keys(view)}

            def oracle(key: str, t: datetime, view: spec.FeatureView = view, raw: dict[str, Any] = raw_keys
                       ) -> dict[str, Any]:
                return ref.features(view, raw.get(key, key), t)

            features += compare_view(view, mine, offline, oracle, checked)
            task.advance(1, note=f"{view.name}: {len(keys):,} keys")

    t1 = time.perf_counter()
    names = [t.name for t in TRIGGERS]
    streamed = fire_set(read_triggers(out.triggers_dir)) if out.triggers_dir is not None else set()
    trigger_ref = TriggerReference(records, rules=rules, until=end - timedelta(microseconds=1))
    engines = {"spark": fire_set(read_fire_table(settings)), "bytewax": streamed}
    triggers = compare_triggers(trigger_ref.fire_set(), engines, names)
    seconds["compare_triggers"] = round(time.perf_counter() - t1, 2)
    seconds["compare"] = round(time.perf_counter() - t0, 2)

    # Feast online (written by the stream) against Feast offline (get_historical_features over Spark's tables)
    t0 = time.perf_counter()
    at = end - timedelta(microseconds=1)
    feast = {"compared": 0, "mismatched": 0, "keys": 0}
    with report.task("compare feast online and offline", total=len(registry.views), unit="views") as task:
        for view in registry.views:
            key = view.entity.join_key
            keys = sorted({k for (v, k) in stream if v == view.name})
            if feast_keys is not None and len(keys) > feast_keys:
                keys = sorted(rng.sample(keys, feast_keys))
            task.advance(1, note=f"{view.name}: {len(keys):,} keys")
            if not keys:
                continue
            refs = [f"{view.name}:{n}" for n in view.feature_names]
            online = read_online(store, refs, [{key: k} for k in keys], registry)
            entity_df = pd.DataFrame({key: keys, EVENT_TIMESTAMP: pd.Series([at] * len(keys)).astype(
                "datetime64[us, UTC]")})
            offline_df = FeastRetrieval(store, registry).training_set(entity_df, refs)
            feast["keys"] += len(keys)
            for i, row in enumerate(online):
                for f in view.features:
                    value = offline_df[f.name].iloc[i]
                    value = nullable_spec_value(f, value)
                    feast["compared"] += 1
                    if not same(row[f.name], value, f.dtype):
                        feast["mismatched"] += 1
                        if feast["mismatched"] <= 3:
                            report.log(f"   MISMATCH Feast {view.name}:{f.name} {keys[i]}: online "
                                       f"{row[f.name]!r}, offline {value!r}")
    seconds["feast"] = round(time.perf_counter() - t0, 2)

    ref_drops = {**{d.value: ref.drops.get(d, 0) for d in Drop},
                 **{c.value: ref.collisions.get(c, 0) for c in Collision}}
    drops = {"reference": ref_drops,
             "spark": {k: v for k, v in {**spark_report.dropped, **spark_report.collisions}.items() if k in ref_drops},
             "bytewax": {k: v for k, v in {**stream_report.dropped, **stream_report.collisions}.items()
                         if k in ref_drops}}
    return ParityReport(events=table.num_rows, end=end, features=features, drops=drops, feast=feast,
                        seconds=seconds, workers=workers, triggers=triggers)
