"""The service's one ASGI middleware: the body-size limit, latency metrics, and no 500 ever.

A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware`` (which wraps every request in
extra tasks and streams, a measurable share of a sub-millisecond answer). It

* answers 413 for a ``Content-Length`` over the limit, and for a body that grows past it
  without one, before the route reads it;
* observes each request's latency by route template and status (:mod:`serving.metrics`);
* turns an unexpected exception into a 503 naming its type (logged once, with the traceback),
  unless the answer had already started.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("kairos.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TooLarge(Exception):
    pass


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """See the module docstring. ``observe(route, status, seconds)`` records a request."""

    def __init__(self, app: ASGIApp, *, max_body: int, observe: Callable[[str, int, float], None]) -> None:
        self.app, self.max_body, self.observe = app, max_body, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0
        limit = self.max_body
        too_large = f"the body is over {limit:,} bytes (serving.max_request_bytes)"
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _answer(send, 413, too_large)
            self.observe("unmatched", 413, time.perf_counter() - t0)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except TooLarge:
            if status == 0:
                status = 413
                await _answer(send, 413, too_large)
        except Exception as exc:  # a bug, not the caller's: logged once, answered 503, never 500
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if status == 0:
                status = 503
                await _answer(send, 503, f"the service could not answer ({type(exc).__name__}); it logged the error")
        route = scope.get("route")
        self.observe(getattr(route, "path", "unmatched"), status, time.perf_counter() - t0)
