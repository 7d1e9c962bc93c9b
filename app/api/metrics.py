"""``GET /metrics`` (Prometheus text format) and the middleware that counts HTTP requests by route template
(not by raw path, so job IDs do not explode the label set)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Match, Mount, Route, compile_path
from starlette.types import Message, Receive, Scope, Send

from app.api.errors import METHODS
from app.api.middleware import HttpMiddleware
from app.api.deps import QueueDep
from app.queue.protocol import QueueUnavailable
from app.metrics import HTTP_REQUESTS, HTTP_SECONDS, QUEUE_DEPTH

router = APIRouter(tags=["health"])


def route_label(scope: Scope, asked: Scope | None = None) -> str:
    """The template of the route that served the request. Only FastAPI's own routes put themselves in the
    scope; for the others (``/openapi.json``, the ``/ui`` files) and for an answer given before routing (a 413
    or 415 of the middlewares) the template is that of the route whose path matches the request as it was
    ``asked`` (before a mount rewrote its scope). ``unmatched``: no route has the path (a 404)."""
    path = getattr(scope.get("route"), "path", None)
    if path is None and asked is not None:
        path = _matching_template(asked)
    if path is None:
        return "unmatched"
    if scope["path"].startswith("/v1/") and not path.startswith("/v1"):
        return "/v1" + path  # a route of a router included under /v1
    return path


def remember_templates(app: Any, router: APIRouter, prefix: str = "") -> None:
    """Keep the path templates of a router included at ``prefix``, to label the requests answered before routing
    (FastAPI's included routers match a path, but do not say through which route)."""
    paths = [prefix + route.path for route in router.routes]
    app.state.route_templates += [(compile_path(path)[0], path) for path in paths]


def _matching_template(scope: Scope) -> str | None:
    app = scope.get("app")
    routes = [r for r in getattr(getattr(app, "router", None), "routes", []) if isinstance(r, (Route, Mount))]
    for route in routes:  # the app's own routes and mounts (/openapi.json, /ui)
        if route.matches(scope)[0] != Match.NONE:  # PARTIAL: the path, not the method (a 405)
            return route.path + "/{path}" if isinstance(route, Mount) else route.path
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    templates = getattr(getattr(app, "state", None), "route_templates", [])
    return next((template for regex, template in templates if regex.match(path)), None)


def method_label(scope: Scope) -> str:
    """The request's method, or ``other``: HTTP lets a client send any token as a method (the server answers it
    405 or 501), and a label taken from the client as it is would grow without bound."""
    return scope["method"] if scope["method"] in METHODS else "other"


class HttpMetrics(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        began, status, asked = time.perf_counter(), 500, dict(scope)

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route, method = route_label(scope, asked), method_label(scope)
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
