"""GET /: the playground page, and its static files under /ui (app/web: plain HTML, CSS and JavaScript,
nothing from a CDN). The page may talk to this server only: its Content-Security-Policy says so."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parents[2] / "web"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(WEB / "index.html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


class Revalidated(StaticFiles):
    """The page's script, styles and samples, revalidated at each load (their ETag makes that a 304), as
    the page itself is: after an upgrade a browser never runs an old script under the new page. Under the
    page's policy too: /ui/index.html is the page, and without it another site could frame it."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = CSP
        return response


def static_files() -> StaticFiles:
    return Revalidated(directory=WEB)
