"""The FastAPI application: routes, error handling, offline docs, and the queue opened in the lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, Depends, FastAPI

from app import background
from app.api import docs, errors

from app.api.auth import Gate, require
from app.api.deps import no_unknown_query
from app.api.uploads import json_body_first, upload_body_first
from app.api import metrics
from app.api.metrics import HttpMetrics
from app.api.request_id import RequestId
from app.api.semantics import Cors, HttpSemantics
from app.api.webhooks import Dispatcher
from app.api.limits import BodyLimit
from app.api.schemas import SEED_MAX
from app.api.routes import generate, health, images, jobs, models, page
from app.serving import Drain
from app.settings import Settings, get_settings
from app.queue.factory import open_queue
from app.queue.protocol import NoModels  # noqa: F401  (re-exported for tests)

log = logging.getLogger(__name__)

DESCRIPTION = """Generate and denoise images with diffusion models.

`/v1` is the canonical API. `POST /generate` and `POST /denoise` answer exactly as their `/v1` twins.
Requests are sync by default; send `Prefer: respond-async` for a job ID, then poll `/v1/jobs/{id}`,
stream `/v1/jobs/{id}/events`, or cancel with `DELETE /v1/jobs/{id}`.
"""


def exact_integer_bounds(node, exact: dict[float, int]) -> None:
    """FastAPI's OpenAPI models hold ``minimum``/``maximum`` as floats, so integer bounds come out as 0.0 and
    2**63 - 1 as 9.223372036854776e18 (= 2**63, which the API refuses): put integers back, exactly."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = exact.get(value, int(value))
        for child in node.values():
            exact_integer_bounds(child, exact)
    elif isinstance(node, list):
        for child in node:
            exact_integer_bounds(child, exact)


def declare_keys(document: dict) -> None:
    """The API keys in the document, so /docs has an Authorize button and clients know the header: every
    /v1 route takes a bearer key or X-API-Key (and none, when the service runs without keys)."""
    document.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key made by diffusion-keys"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    for path, operations in document.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}, {}]


def create_app(settings: Settings | None = None, *, queue=None, drain: Drain | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        backend = queue if queue is not None else await open_queue(settings)
        app.state.queue = backend
        dispatcher = Dispatcher(settings, backend.outbox)
        dispatcher.start()
        ignore_sighup = background.on_sighup(backend.reload_store)  # kill -HUP: read the model store again
        try:
            yield
        finally:
            await dispatcher.close()
            # A node must exit even if its queue's teardown hangs (it finishes held jobs within the grace).
            await background.within(
                backend.close(), settings.shutdown_grace_s + background.CLOSE_MARGIN_S, "closing the job queue"
            )
            ignore_sighup()

    app = FastAPI(
        title="Diffusion service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.drain = drain or Drain(settings.shutdown_grace_s)  # told by the server when a stop begins

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            exact_integer_bounds(document, {float(SEED_MAX): SEED_MAX})
            declare_keys(document)
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(HttpSemantics)  # innermost: HEAD as GET, list fields joined, encoded bodies refused
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.cors_origins:
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(
            Cors,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Accept",
                "Prefer",
                "Idempotency-Key",
                "X-Request-ID",
            ],
            expose_headers=["X-Request-ID", "Location", "Retry-After", "X-Seed", "X-Job-Id", "WWW-Authenticate"],
        )
    app.add_middleware(HttpMetrics)
    app.add_middleware(RequestId)  # outermost: every answer carries its request ID
    errors.install(app)
    docs.install(app)
    app.state.gate = Gate.from_settings(settings)  # API keys, scopes and quotas: one dependency per router
    # Uploads decoded at once: a 50 KB PNG may decode to 100 MB, so the threadpool's 40 threads would let a
    # few dozen small requests take gigabytes (app.api.uploads)
    app.state.decode_slots = anyio.CapacityLimiter(settings.decode_concurrency)
    v1 = "/v1"
    # Each router's key check, after what refuses a body before it could be read (not counted against the
    # key's requests per minute: FastAPI parses a JSON body before any dependency, the upload routes parse
    # theirs in uploads.upload_body_first).
    keyed = [
        (generate.router, [Depends(json_body_first)], "generate"),
        (images.router, [Depends(upload_body_first)], "denoise"),
        (images.noise_router, [Depends(upload_body_first)], "denoise"),
        (images.img2img_router, [Depends(upload_body_first)], "generate"),
        (jobs.router, [], None),
        (models.router, [], None),
    ]
    # Each route's key check, by the id of the route object routing puts in the scope: for the error
    # handlers of bodies refused before the check runs (app.api.errors.refusal).
    app.state.key_checks = {}
    app.state.route_templates = []  # each route's path template with its prefix, for app.api.metrics

    def include(router: APIRouter, first: list, scope: str | None, **options) -> None:
        key_check = require(scope)
        app.include_router(router, dependencies=[*first, Depends(key_check), Depends(no_unknown_query)], **options)
        metrics.remember_templates(app, router, options.get("prefix", ""))
        # routing puts the router's own route objects in the scope, under every prefix it is included at
        app.state.key_checks.update({id(route): key_check.admits for route in router.routes})

    for router, first, scope in keyed:
        include(router, first, scope, prefix=v1)
    app.include_router(health.router)
    app.include_router(page.router)  # the playground at /, open like /docs (it asks for a key when needed)
    for router in (health.router, page.router, metrics.router):
        metrics.remember_templates(app, router)
    app.mount("/ui", page.static_files(), name="ui")
    app.include_router(metrics.router, dependencies=[Depends(require(None))] if settings.metrics_require_key else [])
    # The names users know, answering exactly as their /v1 twins (documented once, under /v1).
    include(generate.router, [Depends(json_body_first)], "generate", include_in_schema=False)
    include(images.router, [Depends(upload_body_first)], "denoise", include_in_schema=False)
    return app
