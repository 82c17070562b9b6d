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

Degraded, never a 500: an online read that fails, or does not answer within
``serving.feature_budget``, is answered from cold-start defaults, flagged ``degraded`` with
the reason; a missing champion is a 503 saying what to run; an unexpected error is logged
and answered 503 (:mod:`serving.middleware`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse

from conf.settings import Scope, load_settings
from features.registry import REGISTRY
from features.spec import FeatureService, FeatureView
from pipelines.ingest.eventlog import DeadLetterStore
from serving.api import (
    EventBatch,
    EventError,
    EventsAccepted,
    EventsRejected,
    FeatureVector,
    ModelScore,
    Problem,
    Reloaded,
    ScoreRequest,
    ScoreResponse,
    ViewAge,
)
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
        log.info("kairos service from %s: %d API keys, champions %s, online store %s, events to %s", __file__,
                 len(self.keys), {m: c.version for m, c in self.champions.all().items()},
                 SETTINGS.online_store.type, self.topic.name)

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
    async def score(self, body: ScoreRequest, request: Request) -> ScoreResponse:
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
        return out

    def score_rows(self, body: ScoreRequest, champions: dict[str, Champion], services: tuple[FeatureService, ...],
                   rows: dict[str, StoredRow] | None, reason: str | None, at: datetime) -> ScoreResponse:
        """The CPU part of a score, in place on the event loop (well under a millisecond): the vectors, the
        predictions (each booster on one thread) and the answer."""
        vectors = self.vectors(services, rows, at, reason)
        scores: dict[str, ModelScore] = {}
        for m, c in champions.items():
            t1 = time.perf_counter()
            value = c.score(vectors[c.contract.feature_service].values)
            self.metrics.model_seconds.labels(model=m).observe(time.perf_counter() - t1)
            scores[m] = ModelScore(score=value, registered_model=c.registered_model, version=c.version,
                                   feature_service=c.contract.feature_service)
        views = {v: _age(f) for vec in vectors.values() for v, f in vec.views.items()}
        return ScoreResponse(user_id=body.user_id, session_id=body.session_id, request_time=at, scores=scores,
                             views=views, degraded=rows is None, reason=reason, latency_ms=0.0)

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


def _keys(user_id: str, session_id: str | None) -> dict[str, str]:
    return {"user_id": user_id, **({"session_id": session_id} if session_id else {})}
