"""The Kairos service: ``bentoml serve serving.service:Kairos`` (or ``kairos serve``).

A BentoML 1.4 service whose HTTP API is a FastAPI app mounted on it (``@bentoml.asgi_app``):
BentoML's own ``@bentoml.api`` methods are POST-only and answer 200 or 500, while this API
needs GET routes, 202/401/403/413/422/429/503 answers and headers (``Retry-After``). The
service is a shell: it authenticates, reads the online store, and calls pure functions
(:mod:`serving.vector` for freshness and on-demand features, :mod:`serving.intake` for
events, :mod:`serving.security` for keys and limits) and the champions (:mod:`serving.models`).

Endpoints (typed in :mod:`serving.api`; the OpenAPI document is ``/v1/openapi.json``):

==========================================  ==============  ==========================================
``POST /v1/events``                          events:write    202 with counts; 422 if no event is valid
``POST /v1/score``                           score           scores, model versions, feature ages
``GET /v1/users/{user_id}/features``         score           a feature service's vector, with ages
``POST /v1/decide``                          score           a logged decision: action, propensity, reasons
``POST /v1/outcomes``                        events:write    200 joined (the bandit learns); 404 unknown, 410
                                                             expired, 409 duplicate, 422 before its decision
``POST /v1/admin/reload``                    admin           look for moved champion aliases now
``GET /healthz``, ``/livez``, ``/readyz``    -               BentoML's probes; ready = champions loaded
                                                             and the online store reachable
``GET /metrics``                             -               Prometheus, every worker's (:mod:`serving.metrics`)
==========================================  ==============  ==========================================

Sizing for 2 cores: ``serving.workers`` processes (default 1) each run one event loop, and a
score never leaves it. The online read is asynchronous (one round trip; the loop serves other
requests while the store answers), and the vectors and predictions (each booster on one thread,
``nthread=1``; well under a millisecond of CPU together) run in place: a hop to a thread would
add a GIL hand-off to every request, where threads cannot run Python in parallel anyway. The
``serving.threads`` threads (default 4) do the blocking I/O that has no asyncio client:
appending events to the topic (a file, or Kafka) and loading models. Each worker loads the
champions and keeps its own connections.

Decisions: the service is a shell around the pure decision layer (:mod:`serving.decision`). ``/v1/decide``
reads the features and scores as ``/v1/score`` does (one online read), then in one hop to a thread reads the
bandit's bucket and the user's history from the decision store (:mod:`serving.decision.store`: SQLite under
``data_dir`` or the online store's Redis), calls :func:`~serving.decision.policy.decide`, records the decision
(pending its outcome) and appends it to the decision log (:mod:`serving.decision.log`). ``/v1/outcomes`` joins an
outcome to its decision within ``serving.attribution_window`` and updates the bandit, atomically.

Degraded, never a 500: an online read that fails, or does not answer within
``serving.feature_budget``, is answered from cold-start defaults, flagged ``degraded`` with
the reason; a missing champion is a 503 saying what to run; an unexpected error is logged
and answered 503 (:mod:`serving.middleware`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response

from conf.settings import Scope, load_settings
from features.registry import REGISTRY
from features.spec import FeatureService, FeatureView
from pipelines.ingest.eventlog import DeadLetterStore
from serving.api import (
    DecideRequest,
    DecisionReasons,
    DecisionResponse,
    EventBatch,
    EventError,
    EventsAccepted,
    EventsRejected,
    FeatureVector,
    ModelScore,
    OutcomeAccepted,
    OutcomeRefused,
    OutcomeRequest,
    Problem,
    Reloaded,
    ScoreRequest,
    ScoreResponse,
    ViewAge,
)
from serving.decision import BanditState, Decision, DecisionContext, context_bucket, decide, load_policy
from serving.decision.config import POLICY_PATH, PolicyConfig
from serving.decision.log import (
    DECISION_SCHEMA,
    OUTCOME_SCHEMA,
    PartitionedLog,
    decision_log_path,
    decision_record,
    outcome_log_path,
)
from serving.decision.store import DecisionStore, Join, history_horizon, open_store
from serving.intake import check_batch, event_topic
from serving.metrics import service_metrics
from serving.middleware import Guard
from serving.models import Champion, Champions
from serving.online import OnlineReader, StoredRow
from serving.security import Denied, KeyRing, Principal, RateLimiter, presented_key, retry_after
from serving.vector import Vector, ViewFreshness, feature_vector, stored_views

log = logging.getLogger("kairos.serving")
if not logging.getLogger("kairos").handlers:  # BentoML configures its own loggers only: ours go to stderr too
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s"))
    logging.getLogger("kairos").addHandler(_handler)
    logging.getLogger("kairos").setLevel(logging.INFO)
SETTINGS = load_settings()  # the service's configuration: YAML and KAIROS__* environment variables

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no API key, or an unknown one"},
    403: {"model": Problem, "description": "the key lacks the endpoint's scope"},
    413: {"model": Problem, "description": "the body is over serving.max_request_bytes"},
    429: {"model": Problem, "description": "over the key's rate limit; see Retry-After"},
}

app = FastAPI(title="Kairos", version="1", openapi_url="/v1/openapi.json", docs_url="/v1/docs", redoc_url=None,
              description="Fresh features, scores and (soon) decisions for one user at this moment.")


@app.exception_handler(Denied)
async def _denied(_: Request, exc: Denied) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field (its path in the body) and the problem, without echoing the input."""
    errors = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg", "")}
              for e in exc.errors()]
    detail = "; ".join(f"{e['field'] or 'body'}: {e['problem']}" for e in errors)
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def _observe(route: str, status: int, seconds: float) -> None:
    service_metrics().request_seconds.labels(endpoint=route, status=str(status)).observe(seconds)


app.add_middleware(Guard, max_body=SETTINGS.serving.max_request_bytes, observe=_observe)


async def _current_service() -> Any:
    return bentoml.get_current_service()


# BentoML binds ``self`` of the routes below with ``Depends(bentoml.get_current_service)``, a sync function, which
# FastAPI runs in its thread pool: a thread hop (and a GIL hand-off) on every request for a global read. The
# same dependency, async, is awaited in place.
app.dependency_overrides[bentoml.get_current_service] = _current_service


_OUTCOME_STATUS = {"unknown": 404, "expired": 410, "duplicate": 409, "before_decision": 422}
_DECISION_COUNTERS: tuple[Any, Any] | None = None


def decision_counters() -> tuple[Any, Any]:
    """``kairos_decisions_total`` (action, holdout, degraded) and ``kairos_outcomes_total`` (status: joined, unknown,
    expired, duplicate, before_decision), made once per process after :func:`service_metrics` (which checks that
    ``prometheus_client`` was imported in multiprocess mode)."""
    global _DECISION_COUNTERS
    if _DECISION_COUNTERS is None:
        import prometheus_client

        _DECISION_COUNTERS = (
            prometheus_client.Counter("kairos_decisions_total", "decisions made, by action", ["action", "holdout",
                                                                                             "degraded"]),
            prometheus_client.Counter("kairos_outcomes_total", "outcomes received: joined, or why they were refused",
                                      ["status"]))
    return _DECISION_COUNTERS


def load_serving_policy(settings: Any) -> PolicyConfig:
    """``serving.policy_file`` (relative to the home), or the packaged ``conf/policy.yaml``."""
    return load_policy(settings.resolve(settings.serving.policy_file) if settings.serving.policy_file else POLICY_PATH)


def _age(f: ViewFreshness) -> ViewAge:
    return ViewAge(age_seconds=None if f.age_seconds is None else round(f.age_seconds, 3), state=f.state,
                   max_age_seconds=f.max_age_seconds)


@bentoml.service(name="kairos", workers=SETTINGS.serving.workers, threads=SETTINGS.serving.threads,
                 traffic={"timeout": 30}, logging={"access": {"enabled": SETTINGS.serving.access_log}},
                 tracing={} if SETTINGS.serving.tracing else {"excluded_urls": ["/v1/"]})
@bentoml.asgi_app(app, path="/")
class Kairos:
    """See the module docstring."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.keys = KeyRing.from_settings(SETTINGS)
        self.limiter = RateLimiter(SETTINGS.serving.rate_limit)
        self.threads = anyio.CapacityLimiter(SETTINGS.serving.threads)
        self.budget = SETTINGS.serving.feature_budget.total_seconds()
        # a read not answered within the budget gives up (TimeoutError) and is answered degraded
        self.reader = OnlineReader.from_settings(SETTINGS, timeout=self.budget)
        self.metrics = service_metrics()
        self.champions = Champions(SETTINGS, on_load=self.published)
        refreshed = self.champions.refresh()
        for model in refreshed.missing:
            log.warning("no champion for %s yet: run `kairos train`; /v1/score answers 503 for it", model)
        self.champions.watch(SETTINGS.serving.reload_interval.total_seconds())
        self.topic = event_topic(SETTINGS)
        self.dead_letters = DeadLetterStore(path=SETTINGS.dead_letter_path / "api.jsonl", source="api")
        self.policy = load_serving_policy(SETTINGS)
        self.window = SETTINGS.serving.attribution_window
        self.horizon = history_horizon(self.policy)
        self.store: DecisionStore = open_store(SETTINGS, window=self.window, horizon=self.horizon)
        rows, every = SETTINGS.serving.decision_log_flush_rows, SETTINGS.serving.decision_log_flush_interval
        self.decision_log = PartitionedLog(decision_log_path(SETTINGS), DECISION_SCHEMA, "at", flush_rows=rows,
                                           flush_interval=every)
        self.outcome_log = PartitionedLog(outcome_log_path(SETTINGS), OUTCOME_SCHEMA, "time", flush_rows=rows,
                                          flush_interval=every)
        self.decisions_made, self.outcomes_received = decision_counters()
        self._stop_flushing = threading.Event()
        threading.Thread(target=self._flush_logs, name="kairos-decision-log", daemon=True).start()
        log.info("kairos service from %s: %d API keys, champions %s, online store %s, events to %s", __file__,
                 len(self.keys), {m: c.version for m, c in self.champions.all().items()},
                 SETTINGS.online_store.type, self.topic.name)
        log.info("decision policy %s, decision store %s, attribution window %s", self.policy.version,
                 self.store.backend, self.window)
        # what is loaded now (Feast, MLflow, BentoML, the boosters: ~330,000 objects) lives as long as the worker;
        # a full collection scans it all, a 300-400 ms pause of the event loop that showed as the p99 under load.
        # Frozen, the collector scans only what requests allocate.
        gc.collect()
        gc.freeze()

    def published(self, champion: Champion) -> None:
        """A champion now in place: this worker's ``kairos_champion_version`` says so (MLflow versions are
        numbers)."""
        self.metrics.champion_version.labels(model=champion.model).set(float(champion.version))

    def __is_ready__(self) -> bool:
        return self.champions.ready and self.reader.ping()

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    async def shutdown(self) -> None:
        self.champions.stop()
        self.topic.close()
        await self.reader.aclose()
        self._stop_flushing.set()
        self.decision_log.close()
        self.outcome_log.close()
        self.store.close()

    def _flush_logs(self) -> None:
        """Write buffered log rows once they are ``decision_log_flush_interval`` old, even without new requests."""
        every = max(self.settings.serving.decision_log_flush_interval.total_seconds(), 0.05)
        while not self._stop_flushing.wait(every):
            for each in (self.decision_log, self.outcome_log):
                try:
                    each.flush()
                except Exception:
                    log.exception("could not write the %s under %s", each.schema.metadata[b"kairos.schema"].decode(),
                                  each.root)

    # -- the shell's steps ---------------------------------------------------------------------------------------
    def authorize(self, request: Request, scope: Scope) -> Principal:
        who = self.keys.authenticate(presented_key(request.headers.get("authorization"),
                                                   request.headers.get("x-api-key")), scope)
        wait = self.limiter.check(who.key_id)
        if wait > 0:
            raise HTTPException(429, f"API key {who.name!r} is over its rate limit "
                                f"({self.limiter.limits.rate:g}/s, burst {self.limiter.limits.burst})",
                                headers={"Retry-After": retry_after(wait)})
        return who

    async def read(self, views: tuple[FeatureView, ...], keys: dict[str, str]) -> tuple[
            dict[str, StoredRow] | None, str | None]:
        """Every view's row in one round trip, without blocking the event loop; ``(None, reason)`` when the store
        fails or does not answer within the feature budget. A view whose key the request does not give (no session)
        is left out: it reads as a cold start."""
        views = tuple(v for v in views if v.entity.join_key in keys)
        if not views:
            return {}, None
        t0 = time.perf_counter()
        try:
            rows: dict[str, StoredRow] | None = await self.reader.aread(views, keys)
            reason, outcome = None, "ok"
        except Exception as e:  # the store is down or slow: answer from defaults, say why
            rows, outcome = None, "timeout" if "timeout" in type(e).__name__.lower() else "error"
            reason = (f"the online store did not answer within {self.budget * 1000:g} ms (serving.feature_budget)"
                      if outcome == "timeout" else f"the online store is unavailable ({type(e).__name__}: {e})")
            self.metrics.fallbacks.labels(reason=outcome).inc()
        self.metrics.feature_read_seconds.labels(outcome=outcome).observe(time.perf_counter() - t0)
        return rows, reason

    def vectors(self, services: tuple[FeatureService, ...], rows: dict[str, StoredRow] | None, at: datetime,
                reason: str | None) -> dict[str, Vector]:
        out = {s.name: feature_vector(self.reader, s, rows, at, reason=reason) for s in services}
        for vec in out.values():
            for view, f in vec.views.items():
                if f.state == "stale":
                    self.metrics.stale_views.labels(view=view).inc()
        return out

    # -- endpoints -----------------------------------------------------------------------------------------------
    @app.post("/v1/events", status_code=202, response_model=EventsAccepted,
              responses={**PROBLEMS, 422: {"model": EventsRejected, "description": "no event of the batch is valid"}})
    async def events(self, batch: EventBatch, request: Request) -> Any:
        """Validate a batch of events; append the valid ones of consenting users to the event topic."""
        self.authorize(request, "events:write")
        if len(batch.events) > self.settings.serving.max_events_per_batch:
            raise HTTPException(413, f"events: {len(batch.events):,} events are over the batch limit of "
                                f"{self.settings.serving.max_events_per_batch:,} (serving.max_events_per_batch)")
        intake = check_batch(batch.events, self.dead_letters)
        errors = [EventError(index=p.index, event_id=p.event_id, field=p.field, problem=p.problem)
                  for p in intake.problems]
        self.metrics.events.labels(outcome="rejected").inc(intake.rejected)
        self.metrics.events.labels(outcome="no_consent").inc(intake.no_consent)
        if intake.rejected == len(batch.events):
            return JSONResponse(EventsRejected(detail=f"none of the {intake.rejected} events is valid; they were "
                                               "sent to the dead-letter store", errors=errors).model_dump(),
                                status_code=422)
        await anyio.to_thread.run_sync(self.topic.append, intake.accepted, limiter=self.threads)
        self.metrics.events.labels(outcome="accepted").inc(len(intake.accepted))
        return EventsAccepted(accepted=len(intake.accepted), rejected=intake.rejected, no_consent=intake.no_consent,
                              errors=errors, topic=self.topic.name)

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={**PROBLEMS, 503: {"model": Problem, "description": "a requested model has no champion"}})
    async def score(self, body: ScoreRequest, request: Request) -> Response:
        """The user's scores now (or at ``request_time``) from fresh online features and the champions."""
        t0 = time.perf_counter()
        self.authorize(request, "score")
        models = body.models or list(self.settings.serving.models)
        unknown = [m for m in models if m not in self.settings.serving.models]
        if unknown:
            raise HTTPException(422, f"models: {', '.join(unknown)} not served (serving.models: "
                                f"{', '.join(self.settings.serving.models)})")
        champions: dict[str, Champion] = {}
        for m in models:
            c = self.champions.get(m)
            if c is None:
                raise HTTPException(503, f"no champion for {m!r} in the model registry yet: run `kairos train` "
                                    "(or `make train`), then POST /v1/admin/reload")
            champions[m] = c
        at = body.request_time.astimezone(UTC) if body.request_time else datetime.now(UTC)
        services = tuple({c.contract.feature_service: c.service() for c in champions.values()}.values())
        rows, reason = await self.read(stored_views(services), _keys(body.user_id, body.session_id))
        out = self.score_rows(body, champions, services, rows, reason, at)
        out.latency_ms = round((time.perf_counter() - t0) * 1000, 3)
        # the answer is a ScoreResponse built here: serialized once, not dumped, validated again and serialized by
        # FastAPI's response_model step (which documents it in the OpenAPI document all the same)
        return Response(out.model_dump_json(), media_type="application/json")

    def score_rows(self, body: ScoreRequest, champions: dict[str, Champion], services: tuple[FeatureService, ...],
                   rows: dict[str, StoredRow] | None, reason: str | None, at: datetime) -> ScoreResponse:
        """The CPU part of a score, in place on the event loop (well under a millisecond): the vectors, the
        predictions (each booster on one thread) and the answer."""
        vectors = self.vectors(services, rows, at, reason)
        scores = self.predict(champions, vectors)
        views = {v: _age(f) for vec in vectors.values() for v, f in vec.views.items()}
        return ScoreResponse(user_id=body.user_id, session_id=body.session_id, request_time=at, scores=scores,
                             views=views, degraded=rows is None, reason=reason, latency_ms=0.0)

    def predict(self, champions: dict[str, Champion], vectors: dict[str, Vector]) -> dict[str, ModelScore]:
        scores: dict[str, ModelScore] = {}
        for m, c in champions.items():
            t1 = time.perf_counter()
            value = c.score(vectors[c.contract.feature_service].values)
            self.metrics.model_seconds.labels(model=m).observe(time.perf_counter() - t1)
            scores[m] = ModelScore(score=value, registered_model=c.registered_model, version=c.version,
                                   feature_service=c.contract.feature_service)
        return scores

    @app.post("/v1/decide", response_model=DecisionResponse,
              responses={**PROBLEMS, 503: {"model": Problem, "description": "the decision store is unavailable"}})
    async def decide(self, body: DecideRequest, request: Request) -> DecisionResponse:
        """Decide for the user now (or at ``request_time``): features and scores as ``/v1/score`` reads them, then
        the policy (consent, caps, cool-downs, rules, the holdout, Thompson sampling). The decision is logged and
        kept for its outcome. A champion missing answers degraded (the policy's ``degraded`` mode), not 503."""
        t0 = time.perf_counter()
        self.authorize(request, "score")
        if body.trigger is not None and body.trigger not in self.policy.triggers:
            raise HTTPException(422, f"trigger: {body.trigger!r} is not a trigger of policy {self.policy.version} "
                                f"(one of {', '.join(sorted(self.policy.triggers))})")
        champions = {m: c for m in self.settings.serving.models if (c := self.champions.get(m)) is not None}
        at = body.request_time.astimezone(UTC) if body.request_time else datetime.now(UTC)
        services = tuple({c.contract.feature_service: c.service() for c in champions.values()}.values())
        rows, reason = await self.read(stored_views(services), _keys(body.user_id, body.session_id))
        vectors = self.vectors(services, rows, at, reason)
        scores = self.predict(champions, vectors)
        features: dict[str, Any] = {}
        for vec in vectors.values():
            features.update(vec.values)
        shadowed = sorted(set(body.flags) & (set(features) | set(self.policy.scores) | {"page", "device", "trigger"}))
        if shadowed:
            raise HTTPException(422, f"flags.{shadowed[0]}: a flag may not shadow a feature, a score or the request's "
                                "page, device or trigger")
        ages = {v: f for vec in vectors.values() for v, f in vec.views.items()}
        request_context: dict[str, Any] = {"page": body.page, "device": body.device, **body.flags}
        ctx = DecisionContext(
            user_id=body.user_id, now=at, trigger=body.trigger, consents=frozenset(body.consents),
            timezone=body.timezone, segments=frozenset(body.segments), features=features,
            scores={m: s.score for m, s in scores.items()}, model_versions={m: s.version for m, s in scores.items()},
            feature_ages={v: f.age_seconds for v, f in ages.items()}, request=request_context,
            degraded=rows is None, decision_id=uuid.uuid4().hex)
        logged = {"page": body.page, "device": body.device, "consents": body.consents, "timezone": body.timezone,
                  "segments": body.segments, "flags": body.flags, "degraded_reason": reason}
        try:
            d = await anyio.to_thread.run_sync(self.decide_and_record, ctx, body.session_id, logged,
                                               limiter=self.threads)
        except _Unfit as e:
            raise HTTPException(422, f"flags: the request's flags do not fit the policy's conditions ({e})") from None
        except Exception as e:  # the decision store is down: no decision (caps could not be honoured)
            log.warning("no decision for %s: the decision store failed (%s: %s)", body.user_id, type(e).__name__, e)
            raise HTTPException(503, f"the decision store ({self.store.backend}) is unavailable: "
                                f"{type(e).__name__}: {e}") from None
        self.decisions_made.labels(action=d.action, holdout=str(d.holdout).lower(),
                                   degraded=str(d.degraded).lower()).inc()
        return DecisionResponse(
            decision_id=d.decision_id, user_id=d.user_id, session_id=body.session_id, request_time=at, action=d.action,
            channel=d.channel, propensity=d.propensity, probabilities=dict(d.probabilities), scores=dict(d.scores),
            expected_values=dict(d.expected_values), reasons=DecisionReasons(**d.reasons.as_dict()),
            policy_version=d.policy_version, model_versions=dict(d.model_versions),
            feature_ages=dict(d.feature_ages), views={v: _age(f) for v, f in ages.items()}, bucket=d.bucket,
            holdout=d.holdout, degraded=d.degraded, reason=reason, explored=d.explored,
            attribution_window_seconds=self.window.total_seconds(),
            latency_ms=round((time.perf_counter() - t0) * 1000, 3))

    def decide_and_record(self, ctx: DecisionContext, session_id: str | None, logged: dict[str, Any]) -> Decision:
        """On a thread: the bucket's counts and the user's history, the pure decision, its record and log row."""
        scores = {s: ctx.scores.get(s, self.policy.degraded.score_defaults.get(s, 0.0)) for s in self.policy.scores}
        bucket = context_bucket(self.policy, ctx.trigger, scores)
        state, history = self.store.snapshot(ctx.user_id, bucket, ctx.now - self.horizon)
        try:
            d = decide(ctx, self.policy, state, history)
            if d.bucket != bucket:  # the policy bucketed otherwise than foreseen: decide on that bucket's counts
                d = decide(ctx, self.policy, self.store.state(d.bucket), history)
        except (TypeError, ValueError) as e:  # a flag's type does not fit a rule's condition (a str compared to 3)
            raise _Unfit(f"{type(e).__name__}: {e}") from e
        self.store.record(d)
        self.decision_log.append(decision_record(d, features=ctx.features, session_id=session_id, request=logged))
        return d

    @app.post("/v1/outcomes", response_model=OutcomeAccepted,
              responses={**PROBLEMS, 404: {"model": OutcomeRefused, "description": "no such decision is known"},
                         409: {"model": OutcomeRefused, "description": "the decision already has its outcome"},
                         410: {"model": OutcomeRefused, "description": "past the decision's attribution window"},
                         422: {"model": OutcomeRefused, "description": "before its decision, or invalid"}})
    async def outcomes(self, body: OutcomeRequest, request: Request) -> Any:
        """Join an outcome to its decision within ``serving.attribution_window``; the bandit learns from it."""
        self.authorize(request, "events:write")
        received = datetime.now(UTC)
        at = body.time or received
        if at > received + _CLOCK_SKEW:
            raise HTTPException(422, f"time: {at.isoformat()} is in the future (now {received.isoformat()})")
        join, counts = await anyio.to_thread.run_sync(self.join_outcome, body, at, received, limiter=self.threads)
        self.outcomes_received.labels(status=join.status).inc()
        p = join.decision
        if not join.joined or p is None:
            return JSONResponse(OutcomeRefused(detail=join.detail, status=join.status,
                                               decision_id=body.decision_id).model_dump(),
                                status_code=_OUTCOME_STATUS.get(join.status, 409))
        return OutcomeAccepted(decision_id=p.decision_id, outcome_type=body.outcome_type, reward=body.reward, time=at,
                               user_id=p.user_id, action=p.action, bucket=p.bucket, propensity=p.propensity,
                               policy_version=p.policy_version, decision_time=p.at,
                               seconds_after_decision=(at - p.at).total_seconds(),
                               bandit=list(counts.get(p.bucket, p.action)))

    def join_outcome(self, body: OutcomeRequest, at: datetime, received: datetime) -> tuple[Join, BanditState]:
        """On a thread: the atomic join (and bandit update), the outcome log's row, the counts after it."""
        join = self.store.join(body.decision_id, at, body.reward)
        p = join.decision
        self.outcome_log.append({
            "decision_id": body.decision_id, "outcome_type": body.outcome_type, "reward": body.reward, "time": at,
            "received_at": received, "status": join.status, "detail": join.detail,
            "user_id": p.user_id if p else None, "decision_at": p.at if p else None, "action": p.action if p else None,
            "bucket": p.bucket if p else None, "propensity": p.propensity if p else None,
            "policy_version": p.policy_version if p else None})
        counts = self.store.state(p.bucket) if join.joined and p is not None else BanditState()
        return join, counts

    @app.get("/v1/users/{user_id}/features", response_model=FeatureVector, responses=PROBLEMS)
    async def features(self, user_id: str, request: Request, service: str = "purchase_propensity_v1",
                       session_id: str | None = None) -> FeatureVector:
        """A feature service's vector for the user (and session) now, with each view's age."""
        self.authorize(request, "score")
        if not user_id.strip() or len(user_id) > 128:
            raise HTTPException(422, "user_id: must be 1 to 128 characters")
        if session_id is not None and (not session_id.strip() or len(session_id) > 128):
            raise HTTPException(422, "session_id: must be 1 to 128 characters")
        try:
            svc = REGISTRY.service(service)
        except KeyError:
            names = ", ".join(s.name for s in REGISTRY.services)
            raise HTTPException(422, f"service: {service!r} is not a feature service (one of {names})") from None
        at = datetime.now(UTC)
        rows, reason = await self.read(svc.stored_views, _keys(user_id, session_id))
        vec = self.vectors((svc,), rows, at, reason)[svc.name]
        return FeatureVector(user_id=user_id, session_id=session_id, service=svc.name, request_time=at,
                             values=vec.values, views={v: _age(f) for v, f in vec.views.items()},
                             degraded=vec.degraded, reason=vec.reason)

    @app.post("/v1/admin/reload", response_model=Reloaded, responses=PROBLEMS)
    async def reload(self, request: Request) -> Reloaded:
        """Look for moved champion aliases now (the service also looks every ``serving.reload_interval``)."""
        self.authorize(request, "admin")
        done = await anyio.to_thread.run_sync(self.champions.refresh)
        return Reloaded(loaded=done.loaded, unchanged=done.unchanged, missing=done.missing, errors=done.errors)


class _Unfit(Exception):
    """The request's context does not fit the policy (a flag of the wrong type for a rule's condition)."""


_CLOCK_SKEW = timedelta(minutes=5)  # an outcome time further ahead of the server's clock is refused


def _keys(user_id: str, session_id: str | None) -> dict[str, str]:
    return {"user_id": user_id, **({"session_id": session_id} if session_id else {})}
