"""/docs and /redoc served with the app's own assets (from the fastapi-offline package): no CDN, no
web fonts, so the pages work on a machine with no internet access.

Two things in those assets still reach out by default, and are switched off here:

- ReDoc's bundle shows a "Redocly" logo in its sidebar footer loaded from ``https://cdn.redoc.ly``, with no
  option to hide it. At app creation the bundle is read from the installed package once, the logo URL is
  pointed at a small SVG served by the app, and the patched bundle is served in place of the package's file.
  If the URL is missing (a package upgrade changed it) or any ``cdn.redoc.ly`` URL remains, app creation fails,
  so an upgrade cannot silently bring the CDN back.
- Swagger UI checks the spec with the online validator (validator.swagger.io) unless ``validatorUrl`` is null.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs-assets"
REDOC_BUNDLE = "redoc.standalone.js"
REDOC_LOGO_CDN_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_LOGO_URL = f"{ASSETS_URL}/redoc-logo.svg"
CDN_HOST = "cdn.redoc.ly"

# Shown 15 px wide next to "API docs by Redocly": a plain page glyph, drawn here, that needs nothing from outside.
REDOC_LOGO_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16" width="16" height="16">'
    '<path d="M3 1h7l3 3v11H3z" fill="none" stroke="currentColor" stroke-width="1.2"/>'
    '<path d="M5 7h6M5 9.5h6M5 12h4" stroke="currentColor" stroke-width="1.2"/></svg>'
)


class BundleChanged(RuntimeError):
    """The installed ReDoc bundle no longer looks as this module expects: check it before upgrading."""


def offline_redoc_bundle(source: str, logo_url: str = REDOC_LOGO_URL) -> str:
    """``source`` with the CDN logo replaced by ``logo_url``; raises BundleChanged unless that leaves no CDN URL."""
    quoted = f'"{REDOC_LOGO_CDN_URL}"'
    if quoted not in source:
        raise BundleChanged(f"{REDOC_BUNDLE} no longer loads {REDOC_LOGO_CDN_URL}: re-check it for CDN URLs")
    patched = source.replace(quoted, f'"{logo_url}"')
    if CDN_HOST in patched:
        raise BundleChanged(f"{REDOC_BUNDLE} still references {CDN_HOST} after the logo rewrite")
    return patched


@cache
def _redoc_bundle() -> tuple[bytes, str]:
    """The patched bundle and its ETag, built once per process from the installed package's file."""
    body = offline_redoc_bundle((ASSETS / REDOC_BUNDLE).read_text(encoding="utf-8")).encode("utf-8")
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def _cached(request: Request, body: bytes, etag: str, media_type: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _install_assets(app: FastAPI) -> None:
    """The patched ReDoc bundle and its logo, then the package's other files. The routes come before the mount
    so that they, not the package's unpatched file, answer at ``/docs-assets/redoc.standalone.js``."""
    bundle, bundle_etag = _redoc_bundle()
    logo = REDOC_LOGO_SVG.encode("utf-8")
    logo_etag = f'"{hashlib.sha256(logo).hexdigest()[:32]}"'

    @app.get(f"{ASSETS_URL}/{REDOC_BUNDLE}", include_in_schema=False)
    async def redoc_bundle(request: Request) -> Response:
        return _cached(request, bundle, bundle_etag, "text/javascript; charset=utf-8")

    @app.get(REDOC_LOGO_URL, include_in_schema=False)
    async def redoc_logo(request: Request) -> Response:
        return _cached(request, logo, logo_etag, "image/svg+xml")

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")


def install(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets; raises BundleChanged if ReDoc's bundle cannot be made offline."""
    _install_assets(app)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=f"{ASSETS_URL}/{REDOC_BUNDLE}",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
