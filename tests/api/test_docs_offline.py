"""/docs and /redoc load nothing from outside the app: every asset they reference is served by the app, the
served ReDoc bundle no longer fetches its logo from cdn.redoc.ly, and Swagger UI's online validator is off."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import docs

CDN_HOSTS = (
    "cdn.redoc.ly",
    "cdn.jsdelivr.net",
    "unpkg.com",
    "fonts.googleapis.com",
    "fonts.gstatic.com",
    "validator.swagger.io",
)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


class ResourceLinks(HTMLParser):
    """The URLs a browser loads for a page: script src, link href, img src (and any other src)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"href"} if tag == "link" else {"src", "spec-url"}
        self.urls += [value for name, value in attrs if name in wanted and value]


def resource_urls(html: str) -> list[str]:
    parser = ResourceLinks()
    parser.feed(html)
    return parser.urls + re.findall(r"\burl:\s*['\"]([^'\"]+)", html)


def mentions_cdn(text: str) -> list[str]:
    return [host for host in CDN_HOSTS if host in text]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI(title="docs test", docs_url=None, redoc_url=None)

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    docs.install(app)
    return TestClient(app)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_resource_of_the_page_is_served_by_the_app(client, page):
    response = client.get(page)
    assert response.status_code == 200
    urls = resource_urls(response.text)
    assert any(u.endswith(".js") for u in urls), urls
    assert not [u for u in urls if EXTERNAL.match(u)]
    assert not mentions_cdn(response.text)
    for url in urls:
        assert url.startswith("/"), url
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_stylesheets_load_nothing_external(client, page):
    for url in resource_urls(client.get(page).text):
        if url.endswith(".css"):
            css = client.get(url).text
            refs = re.findall(r"url\(\s*['\"]?([^'\")]+)", css) + re.findall(r"@import\s+['\"]([^'\"]+)", css)
            assert not [r for r in refs if EXTERNAL.match(r)], url


def test_the_served_redoc_bundle_points_its_logo_at_the_app(client):
    bundle = client.get(f"{docs.ASSETS_URL}/{docs.REDOC_BUNDLE}")
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert "cdn.redoc.ly" not in bundle.text
    assert not mentions_cdn(bundle.text)
    assert f'src:"{docs.REDOC_LOGO_URL}"' in bundle.text
    logo = client.get(docs.REDOC_LOGO_URL)
    assert logo.status_code == 200 and logo.headers["content-type"].startswith("image/svg+xml")
    assert logo.text.startswith("<svg") and not re.search(r"https?://(?!www\.w3\.org/2000/svg)", logo.text)


def test_the_redoc_bundle_revalidates_with_its_etag(client):
    url = f"{docs.ASSETS_URL}/{docs.REDOC_BUNDLE}"
    etag = client.get(url).headers["etag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


def test_the_package_bundle_did_load_the_logo_from_the_cdn():
    """The patch is needed: the installed file itself still carries the CDN URL that the app replaces."""
    assert docs.REDOC_LOGO_CDN_URL in (docs.ASSETS / docs.REDOC_BUNDLE).read_text(encoding="utf-8")


def test_a_bundle_without_the_expected_url_fails_loudly():
    with pytest.raises(docs.BundleChanged, match="no longer loads"):
        docs.offline_redoc_bundle('img({src:"https://cdn.redoc.ly/redoc/logo-v3.svg"})')


def test_a_bundle_with_another_cdn_url_left_fails_loudly():
    source = f'a="{docs.REDOC_LOGO_CDN_URL}";b="https://cdn.redoc.ly/fonts/x.woff2"'
    with pytest.raises(docs.BundleChanged, match="still references"):
        docs.offline_redoc_bundle(source)


def test_app_creation_fails_when_the_installed_bundle_changed(monkeypatch, tmp_path):
    (tmp_path / docs.REDOC_BUNDLE).write_text('src:"https://cdn.redoc.ly/redoc/new-logo.svg"', encoding="utf-8")
    monkeypatch.setattr(docs, "ASSETS", tmp_path)
    docs._redoc_bundle.cache_clear()
    try:
        with pytest.raises(docs.BundleChanged):
            docs.install(FastAPI(docs_url=None, redoc_url=None))
    finally:
        docs._redoc_bundle.cache_clear()


def test_swagger_ui_turns_the_online_validator_off(client):
    page = client.get("/docs").text
    assert re.search(r'"validatorUrl":\s*null', page)
    assert "validator.swagger.io" not in page


def test_swagger_ui_keeps_the_apps_own_parameters():
    app = FastAPI(docs_url=None, redoc_url=None, swagger_ui_parameters={"docExpansion": "none"})
    docs.install(app)
    page = TestClient(app).get("/docs").text
    assert '"docExpansion": "none"' in page and re.search(r'"validatorUrl":\s*null', page)
