"""Refuse request bodies over the configured size with a JSON 413, before they are read into memory, and
bodies that trickle in with a JSON 408.

A declared Content-Length over the limit is refused at once; a chunked body is counted as it streams
and refused as soon as it passes the limit. Each piece of a body must come within ``timeout_s``, and the
whole body within ``TOTAL_TIMEOUTS`` times that (so a client sending a byte now and then cannot hold a
connection for ever).
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body
from app.api.middleware import HttpMiddleware


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"more than {limit} bytes")


TOTAL_TIMEOUTS = 10


class BodyTooSlow(HTTPException):
    def __init__(self, timeout_s: float, *, whole: bool = False) -> None:
        what = f"took more than {timeout_s:g} s in all" if whole else f"did not arrive within {timeout_s:g} s"
        super().__init__(408, f"the request body {what}")


class BodyLimit(HttpMiddleware):
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        super().__init__(app)
        self.max_bytes, self.timeout_s = max_bytes, timeout_s

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            body = error_body(["body"], f"request body too large: more than {self.max_bytes} bytes", "http_413")
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        seen, complete = 0, False
        deadline = time.monotonic() + TOTAL_TIMEOUTS * self.timeout_s

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # after the body, receive() waits for the disconnect: no limit on that
                return await receive()
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(min(self.timeout_s, left), 0.001)):
                    message = await receive()
            except asyncio.TimeoutError:
                if left <= self.timeout_s:
                    raise BodyTooSlow(TOTAL_TIMEOUTS * self.timeout_s, whole=True) from None
                raise BodyTooSlow(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)
