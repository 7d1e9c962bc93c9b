"""``GET /metrics`` (Prometheus text format) and the middleware that counts HTTP requests by route template
(not by raw path, so job IDs do not explode the label set)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Message, Receive, Scope, Send

from app.api.errors import METHODS
from app.api.middleware import HttpMiddleware
from app.api.deps import QueueDep
from app.queue.protocol import QueueUnavailable
from app.metrics import HTTP_REQUESTS, HTTP_SECONDS, QUEUE_DEPTH

router = APIRouter(tags=["health"])


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    if scope["path"].startswith("/v1/") and not path.startswith("/v1"):
        return "/v1" + path  # a route of a router included under /v1
    return path


def method_label(scope: Scope) -> str:
    """The request's method, or ``other``: HTTP lets a client send any token as a method (the server answers it
    405 or 501), and a label taken from the client as it is would grow without bound."""
    return scope["method"] if scope["method"] in METHODS else "other"


class HttpMetrics(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        began, status = time.perf_counter(), 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route, method = route_label(scope), method_label(scope)
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_SECONDS.labels(route, method).observe(time.perf_counter() - began)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request, queue: QueueDep) -> Response:
    """Prometheus metrics of this process (a Redis worker serves its engine's on its own port)."""
    try:
        QUEUE_DEPTH.set(await queue.depth())
    except QueueUnavailable:  # Redis away: the other series are still worth serving
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
