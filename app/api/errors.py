"""Every error answer has one shape: ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``, the
same as FastAPI's validation errors, so a client always finds the field at fault in ``loc``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status: int, loc: list[str | int], msg: str, *, type: str = "invalid", headers: dict | None = None
    ) -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg, self.type, self.headers = status, loc, msg, type, headers


def error_body(loc: list, msg: str, type: str) -> dict:
    return {"detail": [{"loc": loc, "msg": msg, "type": type}]}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.loc, exc.msg, exc.type), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", [])), "msg": e.get("msg", "invalid"), "type": e.get("type", "invalid")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        loc = ["body"] if exc.status_code == 413 else ["path"] if exc.status_code in (404, 405) else []
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 413:
            msg = f"request body too large: {msg}"
        return JSONResponse(error_body(loc, msg, f"http_{exc.status_code}"), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body([], "internal error", "internal"), status_code=500)
