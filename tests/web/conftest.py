"""The playground in a real browser: Debian's Chromium driven by Playwright (nothing downloaded), against the
service running as a process on tiny models. Without Chromium the tests skip, unless
DIFFUSION_BROWSER_TESTS=required (as .ci/run sets it, after installing Chromium): then they fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.redis.helpers import free_port
from tests.tiny_models import write_bare, write_dit, write_generator, write_stable_diffusion

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own traffic off: the only requests a test run makes go to the server under test.
QUIET = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
]


def _require_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = "Debian's chromium (apt-get install chromium)"
    if missing:
        if os.environ.get("DIFFUSION_BROWSER_TESTS") == "required":
            pytest.fail(f"browser tests required but {missing} is missing")
        pytest.skip(f"{missing} is not installed")


class Server:
    def __init__(self, store: Path, **env) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "app.cli", "serve", "--model-store", str(store), "--port", str(self.port)]
        full_env = {**os.environ, "DIFFUSION_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", **env}
        self.proc = subprocess.Popen(args + ["--log-level", "warning"], cwd=ROOT, env=full_env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the server did not become ready")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def web_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("web-store")
    write_generator(root / "tiny-gen", steps=30)
    write_bare(root / "tiny-rgb")
    return root


@pytest.fixture(scope="module")
def browser():
    """Chromium, for one test module: Playwright's sync API keeps an asyncio loop running on the main thread
    while it is open, and every later test that calls asyncio.run would fail under it (they did wherever a
    browser test ran before them, as with pytest-xdist's --dist loadfile)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(web_store):
    server = Server(web_store)
    yield server
    server.close()


@pytest.fixture(scope="module")
def latent_server(tmp_path_factory):
    """A DiT saved as DiTPipeline saves it (no names for its 1000 classes) and a Stable Diffusion inpainting
    model, beside tiny-gen."""
    root = tmp_path_factory.mktemp("web-latent-store")
    write_generator(root / "tiny-gen", steps=30)
    write_dit(root / "tiny-dit")
    write_stable_diffusion(root / "tiny-sd-inpaint", inpainting=True)
    server = Server(root)
    yield server
    server.close()


@pytest.fixture(scope="module")
def impatient_server(web_store):
    """A server whose sync requests answer 202 with the job at once: the page must follow the job."""
    server = Server(web_store, DIFFUSION_SYNC_TIMEOUT_S="0.001")
    yield server
    server.close()


@pytest.fixture(scope="module")
def keyed_server(web_store, tmp_path_factory):
    from app.api.auth import digest

    keys = tmp_path_factory.mktemp("web-keys") / "keys.json"
    entries = [
        {"name": "web", "sha256": digest("web-secret-key"), "scopes": ["generate", "denoise"]},
        {"name": "slow", "sha256": digest("slow-key"), "scopes": ["generate"], "requests_per_minute": 4},
        # the README's example key: at most 4 jobs at once
        {"name": "four", "sha256": digest("four-key"), "scopes": ["generate", "denoise"], "max_concurrent_jobs": 4},
        {"name": "one", "sha256": digest("one-key"), "scopes": ["generate", "denoise"], "max_concurrent_jobs": 1},
        {"name": "rare", "sha256": digest("rare-key"), "scopes": ["generate", "denoise"], "requests_per_minute": 2},
    ]
    keys.write_text(json.dumps(entries))
    server = Server(web_store, DIFFUSION_API_KEYS_FILE=str(keys))
    yield server
    server.close()


class Watched:
    """A page whose console errors and requests are recorded, to check it stays clean and on its server."""

    def __init__(self, page, origin: str) -> None:
        self.page, self.origin = page, origin
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))

    def outside(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.origin + "/", "data:", "blob:"))]


@pytest.fixture
def open_page(browser):
    contexts = []

    def open_(server: Server, **context_options) -> Watched:
        context = browser.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page, server.url)
        page.goto(server.url + "/")
        return watched

    yield open_
    for context in contexts:
        context.close()
