"""Logging for every process: the request ID of the request being served on each line (``-`` elsewhere),
as text or, with ``DIFFUSION_LOG_FORMAT=json``, one JSON object per line."""

from __future__ import annotations

import contextvars
import json
import logging
from urllib.parse import urlsplit

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``DIFFUSION_LOG_FORMAT=json``)."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


TRACE = 5


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    logging.addLevelName(TRACE, "TRACE")  # uvicorn's level below DEBUG (--log-level trace)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def url_for_log(url: str) -> str:
    """A URL as logs and messages show it: its user and password (either may be a token) as ``***``, its query
    (which may hold one) as ``?…``; an IPv6 host in brackets."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: left out
        port = None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    secret = "***@" if parts.username is not None or parts.password is not None else ""
    netloc = secret + host + (f":{port}" if port else "")
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")
