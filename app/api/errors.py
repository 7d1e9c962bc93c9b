"""Every error answer has one shape: ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``, the
same as FastAPI's validation errors, so a client always finds the field at fault in ``loc``."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from app.queue.protocol import QueueUnavailable

log = logging.getLogger(__name__)

# An error names what is wrong without echoing a hostile input back whole: each message and each part of
# ``loc`` is cut to these many characters, and at most MAX_ERRORS errors are listed.
MAX_ECHO = 80
MAX_MESSAGE = 1000
MAX_ERRORS = 20


def brief(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, cut to ``limit`` characters with the length said: for messages that name an input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _said(error: dict) -> str:
    """A validation error's message; a body that is missing says so (pydantic's "Field required" at ``body``
    does not tell an empty body from a missing field)."""
    if error.get("type") == "missing" and list(error.get("loc", [])) == ["body"]:
        return "the request body is empty: send a JSON object"
    return error.get("msg", "invalid")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ApiError(Exception):
    def __init__(
        self, status: int, loc: list[str | int], msg: str, *, type: str = "invalid", headers: dict | None = None
    ) -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg, self.type, self.headers = status, loc, msg, type, headers


# What parsing a JSON body raises: JSONDecodeError and UnicodeDecodeError (bad syntax or encoding) and the
# ValueError of an integer with more digits than Python converts are ValueErrors; deep nesting recurses.
JSON_FAILURES = (ValueError, RecursionError)


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, each name given once: Python's parser keeps the last of a repeated name, so
    ``{"model": "a", "model": "b"}`` would run model b without a word (a multipart field given twice is
    refused, as is a repeated header)."""
    members = dict(pairs)
    if len(members) < len(pairs):
        seen: set[str] = set()
        repeated = next(name for name, _ in pairs if name in seen or seen.add(name))
        times = sum(1 for name, _ in pairs if name == repeated)
        raise ValueError(f"the name {brief(repeated)} is given {times} times in one object: give it once")
    return members


# JSON up to this size is parsed or written on the event loop (a job request's is about 200 bytes); larger
# (a bogus request body, a job record with its images) in a thread, as it would hold the loop for seconds
PARSE_ON_LOOP_BYTES = 64 * 1024


def parse_json(data: bytes | str) -> Any:
    """A request's JSON document, each object's names given once (ValueError otherwise, as for bad syntax)."""
    return json.loads(data, object_pairs_hook=_once_each)


async def parse_json_aside(data: bytes) -> Any:
    """``parse_json``, in a thread for a body over PARSE_ON_LOOP_BYTES (a photo in base64, or a bogus body),
    which would hold the event loop for seconds."""
    return parse_json(data) if len(data) <= PARSE_ON_LOOP_BYTES else await run_in_threadpool(parse_json, data)


def invalid_json(exc: BaseException) -> ApiError:
    """422 for a JSON body that does not parse, with the parser's reason."""
    reason = "arrays or objects nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
    return ApiError(422, ["body"], f"invalid JSON: {reason}", type="json_invalid")


def single_header(request: Request, name: str) -> str | None:
    """The value of a field that may be given once (``name`` as people write it: "Content-Type"); given
    twice, which one was meant is not guessed (400)."""
    given = request.headers.getlist(name)
    if len(given) > 1:
        raise ApiError(
            400, ["header", name.lower()], f"{name} is given {len(given)} times; send it once", type="duplicate_header"
        )
    return given[0] if given else None


def error_item(loc: list, msg: str, type: str) -> dict:
    loc = [part if isinstance(part, int) else _cut(str(part), MAX_ECHO) for part in loc]
    return {"loc": loc, "msg": _cut(str(msg), MAX_MESSAGE), "type": type}


def error_body(loc: list, msg: str, type: str) -> dict:
    return {"detail": [error_item(loc, msg, type)]}


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def serves_head(path: str) -> bool:
    """HEAD is answered as GET (app.api.semantics) everywhere but on event streams."""
    return not path.endswith("/events")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 names only the first route's):
    each method is tried against the routes, through their public ``matches``; HEAD goes where GET does."""
    routes = request.app.router.routes

    def served(method: str) -> bool:
        if method == "HEAD" and serves_head(request.url.path):
            method = "GET"
        return any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)

    return [method for method in METHODS if served(method)]


def refusal(request: Request) -> ApiError | None:
    """The 401 or 403 the route's key check would answer: FastAPI refuses a body it cannot parse before any
    dependency runs, and every other request of a keyed route without a valid key gets that answer first.
    (The checks, by route, are the ``admits`` of ``app.api.auth.require``'s dependencies: app.api.main.)"""
    admits = getattr(request.app.state, "key_checks", {}).get(id(request.scope.get("route")))
    try:
        if admits is not None:
            admits(request)
    except ApiError as refused:
        return refused
    return None


def _unparsed_json(request: Request, error: dict, document: Any) -> ApiError:
    """The answer to a JSON body FastAPI could not parse: the key check's refusal first, else 422 with the
    parser's reason and where it stopped."""
    refused = refusal(request)
    if refused is not None:
        return refused
    loc = error.get("loc", ())
    position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
    reason = str((error.get("ctx") or {}).get("error") or error.get("msg") or "not JSON")
    return invalid_json(json.JSONDecodeError(reason, document if isinstance(document, str) else "", position))


class NoContent(Exception):
    """Answered 204 with no body: an event stream whose client has had the job's final event (an
    EventSource then stops reconnecting)."""


def install(app: FastAPI) -> None:
    @app.exception_handler(NoContent)
    async def _no_content(_: Request, exc: NoContent) -> Response:
        return Response(status_code=204)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.loc, exc.msg, exc.type), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        found = exc.errors()
        unparsed = next((e for e in found if e.get("type") == "json_invalid"), None)
        if unparsed is not None:  # FastAPI could not parse the JSON body, before any dependency ran
            return await _api_error(request, _unparsed_json(request, unparsed, exc.body))
        errors = [error_item(list(e.get("loc", [])), _said(e), e.get("type", "invalid")) for e in found[:MAX_ERRORS]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        json_body = request.headers.get("content-type", "").split(";")[0].strip().lower().endswith("json")
        if status == 400 and json_body and isinstance(exc.__cause__, JSON_FAILURES):  # FastAPI parsing it
            return await _api_error(request, refusal(request) or invalid_json(exc.__cause__))
        loc = ["body"] if status in (400, 413) else ["path"] if status in (404, 405) else []
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(exc.headers or {})
        if status == 413:
            msg = f"request body too large: {msg}"
        elif status == 400:
            msg = f"malformed request body: {msg}"
        elif status == 405:
            allowed = allowed_methods(request) or headers.get("Allow", "").split(", ")
            headers["Allow"] = ", ".join(allowed)
            msg = f"method {request.method} not allowed here; allowed: {headers['Allow']}"
        return JSONResponse(error_body(loc, msg, f"http_{status}"), status_code=status, headers=headers or None)

    @app.exception_handler(QueueUnavailable)
    async def _queue_down(request: Request, exc: QueueUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            error_body([], f"{exc.public}; retry shortly", exc.type),  # Redis's address and errno: the log only
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )


def internal_error(method: str, path: str) -> JSONResponse:
    """The answer to an error no handler took (a bug): logged with its traceback (call it while handling
    the exception). Sent by ``RequestId``, inside which the request's ID is still known, and which puts it on
    the answer; Starlette's own handler for ``Exception`` runs outside every middleware."""
    log.exception("unhandled error on %s %s", method, path)
    return JSONResponse(error_body([], "internal error", "internal"), status_code=500)
