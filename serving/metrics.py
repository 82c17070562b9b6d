"""The service's Prometheus metrics, one registry across its worker processes.

``bentoml serve`` runs each worker with ``PROMETHEUS_MULTIPROC_DIR`` in its environment (set by
the supervisor before the process starts), and its ``/metrics`` endpoint merges every worker's
files there (``prometheus_client.multiprocess``). Metrics made with ``prometheus_client`` in the
worker therefore land in that merge, provided ``prometheus_client`` is first imported with the
variable set (it picks its value class at import). That is the case in a worker; the import
here is inside :func:`service_metrics`, called by the service's constructor, so that importing
this module elsewhere (tests, the bench) decides nothing. BentoML 1.4 deprecates its own
``bentoml.metrics`` wrapper for exactly this use of ``prometheus_client``.

:func:`service_metrics` makes them once per process (a second call returns the same ones: a
collector registers a name once). ``tests/integration/test_service_workers.py`` checks that two
workers' counts add up on ``/metrics``.

Metrics (all ``kairos_``):

======================================  =====================  ===================================
``request_seconds``                     endpoint, status       request latency (histogram)
``feature_read_seconds``                outcome                one online read of every view
``model_seconds``                       model                  one prediction
``fallbacks_total``                     reason                 degraded answers (timeout, error)
``stale_views_total``                   view                   stale rows answered by ``on_stale``
``events_total``                        outcome                accepted, rejected, no_consent
``champion_version``                    model (and pid)        the version each worker serves
======================================  =====================  ===================================
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ServiceMetrics:
    request_seconds: Any
    feature_read_seconds: Any
    model_seconds: Any
    fallbacks: Any
    stale_views: Any
    events: Any
    champion_version: Any
    multiprocess: bool  # whether the values go to PROMETHEUS_MULTIPROC_DIR (so /metrics merges the workers)


_lock = threading.Lock()
_made: ServiceMetrics | None = None


def service_metrics() -> ServiceMetrics:
    """The service's metrics (see the module docstring), made on the first call."""
    global _made
    with _lock:
        if _made is None:
            import prometheus_client
            from prometheus_client import values

            multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
            if multiprocess and values.ValueClass is values.MutexValue:
                raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: this "
                                   "worker's metrics would be missing from /metrics")
            _made = ServiceMetrics(
                request_seconds=prometheus_client.Histogram(
                    "kairos_request_seconds", "request latency", ["endpoint", "status"], buckets=BUCKETS),
                feature_read_seconds=prometheus_client.Histogram(
                    "kairos_feature_read_seconds", "one online read of every view a request needs", ["outcome"],
                    buckets=BUCKETS),
                model_seconds=prometheus_client.Histogram(
                    "kairos_model_seconds", "one model's prediction", ["model"], buckets=BUCKETS),
                fallbacks=prometheus_client.Counter(
                    "kairos_fallbacks_total", "answers from cold-start defaults (degraded) by reason", ["reason"]),
                stale_views=prometheus_client.Counter(
                    "kairos_stale_views_total", "stale stored rows answered by the view's on_stale policy", ["view"]),
                events=prometheus_client.Counter(
                    "kairos_events_total", "events received: accepted, rejected (dead-lettered), no_consent",
                    ["outcome"]),
                champion_version=prometheus_client.Gauge(
                    "kairos_champion_version", "the model version a worker serves (its pid a label)", ["model"],
                    multiprocess_mode="all"),
                multiprocess=multiprocess)
        return _made
