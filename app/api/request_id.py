"""Request IDs: ``X-Request-ID`` is taken from the request (when it is a plain token of at most 128
characters) or made, echoed in the response, attached to the job the request creates, and added to every
log line written while the request is served (``app.logs``)."""

from __future__ import annotations

import re
import uuid

from starlette.types import Message, Receive, Scope, Send

from app.api.errors import internal_error
from app.api.middleware import HttpMiddleware
from app.logs import request_id as current

HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestId(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope.get("headers", [])).get(HEADER.encode(), b"").decode("latin-1")
        request_id = given if _VALID.fullmatch(given) else uuid.uuid4().hex
        token = current.set(request_id)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if started:  # the answer is under way: only the server can end it
                raise
            # a bug: answered here, where the log line and the answer still know the request's ID
            await internal_error(scope["method"], scope["path"])(scope, receive, send_with_id)
        finally:
            current.reset(token)
