"""HTTP's own rules, applied once for every route (RFC 9110):

- ``HEAD`` is answered wherever ``GET`` is, with the same status and headers and no body (FastAPI's routes
  declare GET only). Not on event streams: a HEAD there would start a stream nobody reads.
- A list-valued field given on several lines (``Accept``, ``Prefer``) is one list, its lines joined by
  commas, as section 5.3 allows; the routes read one value.
- A body in a content coding (``Content-Encoding: gzip``) is refused with 415 and ``Accept-Encoding:
  identity`` (RFC 7694): the service reads bodies as they are sent, so an encoded one would fail later with
  a message about its bytes, and an unknown coding would pass as if it were none.
- CORS preflight refusals carry the service's JSON error body instead of Starlette's plain text.
"""

from __future__ import annotations

from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from app.api.middleware import HttpMiddleware
from app.api.errors import brief, error_body, serves_head

LIST_FIELDS = (b"accept", b"prefer")


class HttpSemantics(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        codings = [
            c.strip()
            for name, value in scope["headers"]
            if name == b"content-encoding"
            for c in value.decode("latin-1").split(",")
        ]
        foreign = [c for c in codings if c and c.lower() != "identity"]
        if foreign and _has_body(scope["headers"]):
            msg = f"unsupported content coding {brief(', '.join(foreign))}: send the body unencoded"
            body = error_body(["header", "content-encoding"], msg, "unsupported_content_encoding")
            await JSONResponse(body, status_code=415, headers={"Accept-Encoding": "identity"})(scope, receive, send)
            return
        scope["headers"] = _joined(scope["headers"])  # in place: outer layers read what routing adds to it
        if scope["method"] == "HEAD" and serves_head(scope["path"]):
            # a copy, since the server reads the method from its own scope to send no body after the headers
            inner = {**scope, "method": "GET"}
            try:
                await self.app(inner, receive, _bodiless(send))
            finally:
                scope.update({k: v for k, v in inner.items() if k not in ("method", "headers")})
            return
        await self.app(scope, receive, send)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """A body follows: a Content-Length above 0, or a chunked one (Transfer-Encoding)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


def _joined(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The header lines, each list-valued field's lines joined into one, in place of its first."""
    lines: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name in LIST_FIELDS:
            lines.setdefault(name, []).append(value)
    if all(len(values) == 1 for values in lines.values()):
        return headers
    out = []
    for name, value in headers:
        if name not in lines:
            out.append((name, value))
        elif lines[name]:
            out.append((name, b", ".join(lines[name])))
            lines[name] = []
    return out


def _bodiless(send: Send) -> Send:
    """``send`` for a HEAD answered as GET: the status and headers (Content-Length included), no body."""
    ended = False

    async def head(message: Message) -> None:
        nonlocal ended
        if message["type"] != "http.response.body":
            await send(message)
        elif not ended:
            ended = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return head


class Cors(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflights answer in the service's error shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode()  # "Disallowed CORS origin, method"
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        refused = reason.removeprefix("Disallowed CORS ").split(", ")[0]  # the first header at fault
        field = "origin" if refused == "origin" else f"access-control-request-{refused}"  # method, headers, ...
        body = error_body(["header", field], f"CORS preflight refused: {reason}", "cors_refused")
        return JSONResponse(body, status_code=400, headers=headers)
