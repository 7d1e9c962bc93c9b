"""Screenshots of the playground's three tabs with the shipped models, for docs/ and the README:

    python scripts/screenshots.py            # writes docs/playground-{generate,denoise,forward}.png

Starts the service on the model store (a free port), drives Debian's Chromium with Playwright (the ``test``
extra), clicks through each tab as the browser tests do, and saves a 1200-px-wide screenshot of each."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--dark", action="store_true", help="the dark colour scheme")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DIFFUSION_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "app.cli", "serve", "--model-store", str(args.store), "--port", str(port)]
    server = subprocess.Popen(cmd + ["--log-level", "warning"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        shoot(url, args)
    finally:
        server.terminate()
        server.wait(30)


def shoot(url: str, args) -> None:
    suffix = "-dark" if args.dark else ""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=QUIET)
        page = browser.new_page(viewport={"width": 1200, "height": 900}, color_scheme="dark" if args.dark else "light")
        page.goto(url + "/")
        tab = page.get_by_role("tabpanel", name="Generate")
        expect(tab.get_by_label("Model")).to_have_value("digits")
        tab.get_by_label("Seed", exact=True).fill("7")
        tab.get_by_label("Number of images").fill("8")
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_role("img", name="Generated image, seed 7")).to_be_visible(timeout=120_000)
        page.screenshot(path=args.out / f"playground-generate{suffix}.png", full_page=True)

        page.get_by_role("tab", name="Denoise").click()
        page.get_by_role("button", name="Sample: cat").click()
        page.get_by_role("button", name="Add noise", exact=True).click()
        expect(page.get_by_role("img", name="Noisy photo (σ 25)")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Denoise", exact=True).click()
        expect(page.locator("#dn-denoised-caption")).to_contain_text("PSNR", timeout=120_000)
        page.screenshot(path=args.out / f"playground-denoise{suffix}.png", full_page=True)

        page.get_by_role("tab", name="Forward process").click()
        page.get_by_role("button", name="Show forward process").click()
        expect(page.locator("#fw-strip img")).to_have_count(11, timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=args.out / f"playground-forward{suffix}.png", full_page=True)
        browser.close()
    print(f"wrote {args.out}/playground-{{generate,denoise,forward}}{suffix}.png")


if __name__ == "__main__":
    main()
