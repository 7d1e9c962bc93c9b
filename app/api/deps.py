"""Dependencies: the settings and the job queue, as annotated aliases routes can declare; the check that a
request's query string holds only what its route reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import ApiError, brief
from app.queue.protocol import JobQueue
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]


def _query_names(route) -> frozenset[str]:
    """The query parameters ``route`` declares, its dependencies' included (their aliases, as sent)."""
    names, pending = set(), [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is not None:
            names.update(param.alias for param in dependant.query_params)
            pending.extend(dependant.dependencies)
    return frozenset(names)


def no_unknown_query(request: Request) -> None:
    """Refuse a query parameter the route does not read (422, ``loc: ["query", name]``): the API's options
    go in the body or the headers, so ``POST /v1/denoise?sigma=50`` would otherwise run with the default
    sigma without a word, as a misspelt body field would not (the bodies forbid unknown fields)."""
    sent = list(dict.fromkeys(request.query_params.keys()))
    if not sent:
        return
    known = _query_names(request.scope.get("route"))
    unknown = [name for name in sent if name not in known]
    if not unknown:
        return
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    reads = f"reads only {', '.join(sorted(known))}" if known else "reads none: its options go in the body or headers"
    msg = f"unknown query parameter {brief(unknown[0])}{more}: this endpoint {reads}"
    raise ApiError(422, ["query", unknown[0]], msg, type="extra_forbidden")
