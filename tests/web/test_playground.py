"""Clicking through the playground as a person would, by roles and accessible names, in Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

ORDER = """() => {
  window.order = [];
  for (const id of ["gen-preview", "gen-results"]) {
    new MutationObserver(() => window.order.push(id)).observe(document.getElementById(id), {childList: true});
  }
}"""


def clean(watched) -> None:
    assert watched.errors == [], watched.errors
    assert watched.outside() == [], watched.outside()


def held_by(page, held: list, count: int = 1, seconds: float = 30.0) -> None:
    """Wait until the route appending to ``held`` holds ``count`` requests: the page sends a request after
    the click that asks for it, and the route sees it only then (the page's own wait lets events run)."""
    for _ in range(int(seconds / 0.02)):
        if len(held) >= count:
            return
        page.wait_for_timeout(20)
    assert len(held) >= count, f"{len(held)} of {count} requests reached the route"


def first_answered(seen: list, abort: str | None = None, **answer):
    """A route handler that answers the first request it sees with ``answer`` (Route.fulfill's arguments), or
    fails it as the network would (``abort``: Route.abort's error code), and lets the others through, listing
    each request's URL in ``seen``."""

    def handle(route):
        seen.append(route.request.url)
        if len(seen) > 1:
            route.continue_()
        elif abort is not None:
            route.abort(abort)
        else:
            route.fulfill(**answer)

    return handle


def slow_cat_sample(page) -> list:
    """The Denoise tab, its "Sample: cat" clicked, the sample's request held (a slow network): the list
    that will hold its route."""
    page.get_by_role("tab", name="Denoise").click()
    held = []
    page.route("**/ui/samples/cat.png", lambda route: held.append(route))
    page.get_by_role("button", name="Sample: cat").click()
    return held


def fill_generate(page, *, class_name: str, seed: int, steps: int):
    """The Generate tab, its fields filled for tiny-gen."""
    tab = page.get_by_role("tabpanel", name="Generate")
    expect(tab.get_by_label("Model")).to_have_value("tiny-gen")
    tab.get_by_label("Class").select_option(label=class_name)
    tab.get_by_label("Seed", exact=True).fill(str(seed))
    tab.get_by_label("Steps").fill(str(steps))
    return tab


def generated(page, *, class_name: str, seed: int, steps: int) -> None:
    """Generate on tiny-gen, and wait for the image of that seed."""
    fill_generate(page, class_name=class_name, seed=seed, steps=steps)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("img", name=f"Generated image, seed {seed}").first).to_be_visible(timeout=60_000)


def copied_curl(page) -> tuple[str, dict]:
    """ "Copy as curl": the command shown, and the JSON body it sends."""
    page.get_by_role("button", name="Copy as curl").click()
    command = page.locator("#gen-curl").inner_text()
    return command, json.loads(command.split("-d '", 1)[1].rstrip("'"))


def noise_then_denoise_the_cat(page) -> None:
    page.get_by_role("tab", name="Denoise").click()
    page.get_by_role("button", name="Sample: cat").click()
    expect(page.get_by_role("img", name="Original photo (sample: cat)")).to_be_visible()
    page.get_by_label("Noise σ (1–255)").fill("30")
    page.get_by_role("button", name="Add noise", exact=True).click()
    expect(page.get_by_role("img", name="Noisy photo (σ 30)")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Denoise", exact=True).click()
    expect(page.get_by_role("img", name="Denoised photo")).to_be_visible(timeout=60_000)


def test_generate_shows_previews_then_the_images_with_the_seeds_asked_for(server, open_page):
    watched = open_page(server)
    page = watched.page
    tab = fill_generate(page, class_name="b", seed=42, steps=40)
    tab.get_by_label("Number of images").fill("2")
    page.evaluate(ORDER)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("img", name="Generated image, seed 42")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("img", name="Generated image, seed 43")).to_be_visible()
    expect(page.get_by_text("seed 42", exact=True)).to_be_visible()
    order = page.evaluate("window.order")
    assert "gen-preview" in order and order.index("gen-preview") < order.index("gen-results")
    expect(page.get_by_role("link", name="Download (seed 42)")).to_have_attribute("download", re.compile(r"seed-42"))
    assert (
        float(
            page.get_by_label("Progress").get_attribute("value")
            or page.evaluate("document.getElementById('gen-progress').value")
        )
        == 1.0
    )

    # "Copy as curl" reproduces the request: the same image comes back
    command, body = copied_curl(page)
    assert command.startswith(f"curl -s {server.url}/v1/generate")
    assert body["seed"] == 42 and body["class_label"] == 1 and body["num_images"] == 2
    again = httpx.post(server.url + "/v1/generate", json=body, timeout=60).json()
    shown = page.get_by_role("img", name="Generated image, seed 42").get_attribute("src")
    assert shown.split("base64,")[1] == again["images"][0]["data"]
    clean(watched)


def test_any_class_generates_without_guidance(server, open_page):
    watched = open_page(server)
    page = watched.page
    generated(page, class_name="any (unconditional)", seed=7, steps=4)
    _, body = copied_curl(page)
    assert "class_label" not in body and "guidance_scale" not in body
    expect(page.get_by_label("Guidance")).to_be_disabled()  # nothing to steer towards, and nothing sent
    page.get_by_role("tabpanel", name="Generate").get_by_label("Class").select_option(label="b")
    expect(page.get_by_label("Guidance")).to_be_enabled()
    clean(watched)


def test_a_dit_without_class_names_takes_numbered_classes_and_an_inpainting_model_is_not_offered(
    latent_server, open_page
):
    """A DiT folder as DiTPipeline saves it names no class: the Class field was hidden, the default guidance was
    sent without a class (a 422 at every click), and no class could be asked for. An inpainting model, which
    needs an image and a mask, was offered for Generate, where the API refuses it for every value."""
    watched = open_page(latent_server)
    page = watched.page
    tab = page.get_by_role("tabpanel", name="Generate")
    models = tab.get_by_label("Model")
    expect(models.locator("option")).to_have_text(["tiny-dit", "tiny-gen"])  # not tiny-sd-inpaint
    models.select_option("tiny-dit")
    classes = tab.get_by_label("Class")
    expect(classes.locator("option")).to_have_count(1001)  # any (its null class), then 0 .. 999
    expect(classes.locator("option").first).to_have_text("any (unconditional)")
    classes.select_option(label="3")
    tab.get_by_label("Seed", exact=True).fill("5")
    tab.get_by_label("Steps").fill("2")
    _, body = copied_curl(page)
    assert body["model"] == "tiny-dit" and body["class_label"] == 3 and body["guidance_scale"] > 0
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("img", name="Generated image, seed 5").first).to_be_visible(timeout=60_000)
    clean(watched)


def test_a_63_bit_seed_is_shown_and_named_exactly(server, open_page):
    """JavaScript numbers round a seed this large (to ...726000): the page keeps its digits."""
    watched = open_page(server)
    page = watched.page
    tab = fill_generate(page, class_name="a", seed=4563673470114726834, steps=2)
    tab.get_by_label("Number of images").fill("2")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("img", name="Generated image, seed 4563673470114726834")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("img", name="Generated image, seed 4563673470114726835")).to_be_visible()
    link = page.get_by_role("link", name="Download (seed 4563673470114726835)")
    expect(link).to_have_attribute("download", re.compile(r"seed-4563673470114726835\."))
    clean(watched)


def test_cancel_stops_the_job_on_the_server(server, open_page):
    watched = open_page(server)
    page = watched.page
    fill_generate(page, class_name="a", seed=1, steps=1000)
    page.get_by_label("Number of images").fill("16")
    with page.expect_response(lambda r: r.url.endswith("/v1/generate")) as accepted:
        page.get_by_role("button", name="Generate", exact=True).click()
    job = accepted.value.json()["job_id"]
    expect(page.locator("#gen-status")).to_contain_text("step", timeout=30_000)
    with page.expect_request(lambda r: r.method == "DELETE") as deleted:
        page.get_by_role("button", name="Cancel").click()
    assert deleted.value.url.endswith(f"/v1/jobs/{job}")
    expect(page.locator("#gen-status")).to_have_text("canceled")
    expect(page.get_by_role("alert")).to_have_count(0)  # a cancel is not an error
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_focused()
    assert final_status(server, job) == "canceled"


def final_status(server, job: str, seconds: float = 30.0) -> str:
    """The job's status once it has left queued and running (the page's DELETE is sent with keepalive and
    may reach the server after the page has moved on), or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    status = httpx.get(f"{server.url}/v1/jobs/{job}").json()["status"]
    while status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        status = httpx.get(f"{server.url}/v1/jobs/{job}").json()["status"]
    return status


def test_cancel_before_the_server_has_answered_cancels_the_job_it_makes(server, open_page):
    """The request that makes the job is not dropped on Cancel (the server may have taken it, and only its
    answer names the job): the job it names is canceled as soon as the answer comes."""
    watched = open_page(server)
    page = watched.page
    held = []
    page.route("**/v1/generate", lambda route: held.append(route))  # the request waits, as on a slow network
    fill_generate(page, class_name="a", seed=1, steps=1000)
    page.get_by_label("Number of images").fill("16")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#gen-status")).to_have_text("sending…")
    page.get_by_role("button", name="Cancel").click()
    held_by(page, held)
    assert len(held) == 1
    with page.expect_response(lambda r: r.url.endswith("/v1/generate")) as accepted:
        with page.expect_request(lambda r: r.method == "DELETE") as deleted:
            held[0].continue_()
    job = accepted.value.json()["job_id"]
    assert deleted.value.url.endswith(f"/v1/jobs/{job}")
    expect(page.locator("#gen-status")).to_have_text("canceled")
    expect(page.get_by_role("alert")).to_have_count(0)
    assert final_status(server, job) == "canceled"


def test_seeds_are_sent_as_json_numbers_and_curl_copies_quote_a_prompts_apostrophe(server, open_page):
    watched = open_page(server)
    page = watched.page
    fill_generate(page, class_name="a", seed=7, steps=2)
    page.get_by_role("tabpanel", name="Generate").get_by_label("Seed", exact=True).fill("007")
    with page.expect_request(lambda r: r.url.endswith("/v1/generate")) as sent:
        page.get_by_role("button", name="Generate", exact=True).click()
    assert json.loads(sent.value.post_data)["seed"] == 7  # "007" is not JSON
    expect(page.get_by_role("img", name="Generated image, seed 7").first).to_be_visible(timeout=60_000)
    body = {"model": "tiny-gen", "prompt": "a cat's toy", "seed": 7}
    command = page.evaluate("body => curlFor(body)", body)
    words = shlex.split(command)  # as a POSIX shell reads it
    assert words[0] == "curl" and json.loads(words[words.index("-d") + 1]) == body
    clean(watched)


def test_a_refused_request_keeps_the_last_results_says_it_failed_and_its_message_goes_with_the_tab(server, open_page):
    watched = open_page(server)
    page = watched.page
    generated(page, class_name="a", seed=3, steps=2)
    page.get_by_role("tabpanel", name="Generate").get_by_label("Steps").fill("0")
    page.get_by_role("button", name="Generate", exact=True).click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("422")
    expect(page.locator("#gen-status")).to_contain_text("failed")
    expect(page.get_by_role("img", name="Generated image, seed 3")).to_be_visible()  # not wiped by the refusal
    page.get_by_role("tab", name="Denoise").click()
    expect(page.get_by_role("alert")).to_have_count(0)


def test_the_page_follows_a_job_the_server_answered_202_for(impatient_server, open_page):
    watched = open_page(impatient_server)
    noise_then_denoise_the_cat(watched.page)
    clean(watched)


def test_denoise_shows_original_noisy_and_denoised_side_by_side(server, open_page):
    watched = open_page(server)
    page = watched.page
    noise_then_denoise_the_cat(page)
    images = page.locator("#dn-results img")
    assert images.count() == 3 and all(images.nth(i).is_visible() for i in range(3))
    expect(page.locator("#dn-denoised-caption")).to_contain_text("PSNR", timeout=10_000)
    expect(page.locator("#dn-noisy-caption")).to_contain_text("SSIM")
    slider = page.get_by_label("Before/after")
    slider.fill("20")
    assert "inset(0px 80%" in page.locator("#dn-compare-after").evaluate("e => getComputedStyle(e).clipPath")
    clean(watched)


PIXELS = """img => { const canvas = document.createElement("canvas"); canvas.width = img.naturalWidth;
canvas.height = img.naturalHeight; const context = canvas.getContext("2d"); context.drawImage(img, 0, 0);
return [img.naturalWidth, img.naturalHeight, Array.from(context.getImageData(0, 0, img.naturalWidth,
img.naturalHeight).data)]; }"""


def reference_scores(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """PSNR over RGB, and mean SSIM on luma over every 7x7 window inside the image (uniform weights, sample
    covariance: scikit-image's default), computed window by window."""
    from numpy.lib.stride_tricks import sliding_window_view

    mse = ((a[..., :3] - b[..., :3]) ** 2).mean()
    psnr = 10 * np.log10(255**2 / mse)
    x, y = (im[..., :3] @ np.array([0.299, 0.587, 0.114]) for im in (a, b))
    wx, wy = sliding_window_view(x, (7, 7)), sliding_window_view(y, (7, 7))
    mx, my = wx.mean(axis=(2, 3)), wy.mean(axis=(2, 3))
    vx, vy = wx.var(axis=(2, 3), ddof=1), wy.var(axis=(2, 3), ddof=1)
    cov = ((wx - mx[..., None, None]) * (wy - my[..., None, None])).sum(axis=(2, 3)) / 48
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(psnr), float(ssim.mean())


def test_the_scores_under_the_photos_are_psnr_and_ssim_as_scikit_image_computes_them(server, open_page):
    watched = open_page(server)
    page = watched.page
    noise_then_denoise_the_cat(page)
    expect(page.locator("#dn-denoised-caption")).to_contain_text("SSIM", timeout=10_000)

    def pixels(image_id):
        width, height, data = page.locator(f"#{image_id}").evaluate(PIXELS)
        return np.array(data, dtype=float).reshape(height, width, 4)

    original = pixels("dn-original")
    for image_id in ("dn-noisy", "dn-denoised"):
        shown = page.locator(f"#{image_id}-caption").inner_text()
        psnr, ssim = (float(v) for v in re.search(r"PSNR ([\d.]+) dB, SSIM ([\d.-]+)", shown).groups())
        want_psnr, want_ssim = reference_scores(original, pixels(image_id))
        assert abs(psnr - want_psnr) <= 0.005 and abs(ssim - want_ssim) <= 0.0005, (shown, want_psnr, want_ssim)
    clean(watched)


def test_a_text_file_upload_shows_a_readable_error(server, open_page):
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Denoise").click()
    page.get_by_role("tabpanel", name="Denoise").get_by_label("Upload a photo").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image at all"}]
    )
    page.get_by_role("button", name="Add noise", exact=True).click()
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("file")
    expect(alert).to_contain_text("422")  # the server's own refusal, in words
    assert watched.outside() == []


def test_an_upload_the_browser_cannot_show_is_noised_and_denoised_without_scores(server, open_page):
    """The server reads TIFF; the browser does not show it, so there is nothing to score against, which
    is not a failure."""
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Denoise").click()
    tiff = io.BytesIO()
    Image.open(io.BytesIO(httpx.get(server.url + "/ui/samples/cat.png").content)).save(tiff, format="TIFF")
    page.get_by_role("tabpanel", name="Denoise").get_by_label("Upload a photo").set_input_files(
        files=[{"name": "cat.tiff", "mimeType": "image/tiff", "buffer": tiff.getvalue()}]
    )
    page.get_by_label("Noise σ (1–255)").fill("30")
    page.get_by_role("button", name="Add noise", exact=True).click()
    expect(page.locator("#dn-status")).to_have_text("noise added: now denoise it", timeout=30_000)
    page.get_by_role("button", name="Denoise", exact=True).click()
    expect(page.get_by_role("img", name="Denoised photo")).to_be_visible(timeout=60_000)
    expect(page.locator("#dn-status")).to_contain_text("done in")
    expect(page.locator("#dn-denoised-caption")).not_to_contain_text("PSNR")
    expect(page.get_by_role("alert")).to_have_count(0)  # no failure said


def test_a_new_photo_cancels_the_denoise_of_the_last_and_one_photo_action_runs_at_a_time(server, open_page):
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Denoise").click()
    page.get_by_role("button", name="Sample: cat").click()
    page.get_by_label("Noise σ (1–255)").fill("30")
    page.get_by_role("button", name="Add noise", exact=True).click()
    expect(page.get_by_role("img", name="Noisy photo (σ 30)")).to_be_visible(timeout=30_000)
    held = []
    page.route("**/v1/denoise", lambda route: held.append(route))
    page.get_by_role("button", name="Denoise", exact=True).click()
    expect(page.get_by_role("button", name="Add noise", exact=True)).to_be_disabled()  # they share one Cancel
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()
    page.get_by_role("button", name="Sample: coffee").click()
    expect(page.get_by_role("img", name="Original photo (sample: coffee)")).to_be_visible()
    expect(page.get_by_role("button", name="Add noise", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator("#dn-status")).to_contain_text("sample: coffee loaded")  # not "canceled"
    held_by(page, held)
    assert len(held) == 1
    held[0].abort()  # the browser dropped it already; let the route go
    expect(page.get_by_role("img", name="Denoised photo")).to_be_hidden()
    expect(page.get_by_role("alert")).to_have_count(0)


def test_add_noise_waits_for_a_sample_photo_still_on_its_way(server, open_page):
    """Clicked before the sample is here, Add noise would have nothing to act on (its error then wiped by
    the photo's arrival): it and Denoise stay disabled until the photo is loaded."""
    watched = open_page(server)
    page = watched.page
    held = slow_cat_sample(page)
    expect(page.get_by_role("button", name="Add noise", exact=True)).to_be_disabled()
    expect(page.get_by_role("button", name="Denoise", exact=True)).to_be_disabled()
    held_by(page, held)
    assert len(held) == 1
    held[0].continue_()
    expect(page.get_by_role("img", name="Original photo (sample: cat)")).to_be_visible()
    expect(page.get_by_role("button", name="Add noise", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Denoise", exact=True)).to_be_enabled()
    page.get_by_label("Noise σ (1–255)").fill("30")
    page.get_by_role("button", name="Add noise", exact=True).click()
    expect(page.get_by_role("img", name="Noisy photo (σ 30)")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("alert")).to_have_count(0)
    assert watched.outside() == []


def test_a_sample_that_arrives_after_an_upload_does_not_replace_it(server, open_page):
    """The photo picked last is the one shown, whichever arrives last."""
    watched = open_page(server)
    page = watched.page
    held = slow_cat_sample(page)
    held_by(page, held)
    mine = httpx.get(server.url + "/ui/samples/coffee.png").content
    page.get_by_role("tabpanel", name="Denoise").get_by_label("Upload a photo").set_input_files(
        files=[{"name": "mine.png", "mimeType": "image/png", "buffer": mine}]
    )
    expect(page.get_by_role("img", name="Original photo (mine.png)")).to_be_visible()
    held[0].continue_()
    expect(page.get_by_role("button", name="Sample: cat")).to_be_enabled()  # its load has ended
    expect(page.get_by_role("button", name="Add noise", exact=True)).to_be_enabled()
    expect(page.get_by_role("img", name="Original photo (mine.png)")).to_be_visible()
    expect(page.locator("#dn-status")).to_contain_text("mine.png loaded")
    clean(watched)


def test_generate_and_the_forward_process_wait_for_the_model_list(server, open_page):
    """Clicked before the models are read, they would say "pick a model" while the list fills in."""
    watched = open_page(server)
    page = watched.page
    held = []
    page.route("**/v1/models", lambda route: held.append(route))
    page.reload()
    held_by(page, held)
    buttons = ("#gen-submit", "#gen-curl-copy", "#fw-submit")  # Generate, Copy as curl; the forward tab's
    for button in buttons:
        expect(page.locator(button)).to_be_disabled()
    held[0].continue_()
    for button in buttons:
        expect(page.locator(button)).to_be_enabled()
    expect(page.get_by_role("tabpanel", name="Generate").get_by_label("Model")).to_have_value("tiny-gen")
    expect(page.get_by_role("alert")).to_have_count(0)


def test_a_failed_image_of_the_forward_process_drops_the_others_requests(server, open_page):
    """Its other requests would go on (a 429 among them sent again and again, saying so on the status line)
    holding the key's places in its quota, with nothing to show them."""
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Forward process").click()
    page.get_by_role("tabpanel", name="Forward process").get_by_label("Schedule of model").select_option("tiny-gen")
    held = []
    page.route("**/v1/noise", lambda route: held.append(route))
    page.get_by_role("button", name="Show forward process").click()
    held_by(page, held, 3)  # three at a time
    held[0].fulfill(
        status=503,
        json={"detail": [{"loc": [], "msg": "the server is stopping", "type": "shutting_down"}]},
        headers={"Retry-After": "1"},
    )
    expect(page.locator("#fw-status")).to_have_text("failed: see the message above")
    expect(page.get_by_role("alert")).to_contain_text("503")
    for route in held[1:]:  # dropped by the page, not left to run
        for _ in range(500):
            if route.request.failure is not None:
                break
            page.wait_for_timeout(20)
        assert route.request.failure is not None
    assert len(held) == 3  # and no more sent
    expect(page.get_by_role("button", name="Show forward process")).to_be_enabled()
    expect(page.locator("#fw-status")).to_have_text("failed: see the message above")


def test_what_is_chosen_while_noise_is_added_stays_chosen(server, open_page):
    """Add noise sets the denoise fields for the noise it adds when it starts, not over a later choice."""
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Denoise").click()
    page.get_by_role("button", name="Sample: cat").click()
    expect(page.get_by_role("img", name="Original photo (sample: cat)")).to_be_visible()
    page.get_by_label("Noise σ (1–255)").fill("30")
    held = []
    page.route("**/v1/noise", lambda route: held.append(route))
    page.get_by_role("button", name="Add noise", exact=True).click()
    held_by(page, held)
    page.get_by_label("My photo is already noisy").check()
    page.get_by_label("σ for denoising").select_option("auto")
    held[0].continue_()
    expect(page.get_by_role("img", name="Noisy photo (σ 30)")).to_be_visible(timeout=30_000)
    expect(page.locator("#dn-status")).to_contain_text("noise added")
    expect(page.get_by_label("My photo is already noisy")).to_be_checked()
    expect(page.get_by_label("σ for denoising")).to_have_value("auto")


def test_cancel_while_the_forward_process_fetches_its_sample_keeps_the_last_strip(server, open_page):
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Forward process").click()
    page.get_by_role("tabpanel", name="Forward process").get_by_label("Schedule of model").select_option("tiny-gen")
    page.get_by_role("button", name="Show forward process").click()
    strip = page.locator("#fw-strip img")
    expect(page.locator("#fw-status")).to_have_text("11 of 11 images", timeout=60_000)
    shown = strip.nth(0).get_attribute("src")
    held = []
    page.route("**/ui/samples/*.png", lambda route: held.append(route))  # a slow network
    page.get_by_role("button", name="Show forward process").click()
    held_by(page, held)
    page.get_by_role("button", name="Cancel").click()
    held[0].continue_()
    expect(page.locator("#fw-status")).to_have_text("canceled")
    expect(strip).to_have_count(11)
    assert strip.nth(0).get_attribute("src") == shown
    expect(page.get_by_role("alert")).to_have_count(0)


def test_a_failure_on_a_tab_left_waits_on_its_status_line_not_over_the_tab_shown(server, open_page):
    watched = open_page(server)
    page = watched.page
    fill_generate(page, class_name="a", seed=1, steps=4)
    held = []
    page.route("**/v1/generate", lambda route: held.append(route))
    page.get_by_role("button", name="Generate", exact=True).click()
    held_by(page, held)
    page.get_by_role("tab", name="Denoise").click()
    held[0].fulfill(
        status=503,
        json={"detail": [{"loc": [], "msg": "the server is stopping", "type": "shutting_down"}]},
        headers={"Retry-After": "1"},
    )
    status = page.locator("#gen-status")
    expect(status).to_contain_text("failed: ")
    expect(status).to_contain_text("503")
    expect(page.get_by_role("alert")).to_have_count(0)  # the Denoise tab shows nothing about it
    page.get_by_role("tab", name="Generate").click()
    expect(status).to_be_visible()
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()


LOADS = "(img, url) => new Promise((done) => { const probe = new Image(); probe.onload = () => done('loads'); \
probe.onerror = () => done('revoked'); probe.src = url; })"


def test_a_photo_replaced_frees_the_memory_its_blob_url_held(server, open_page):
    """The page shows photos through blob: URLs, which hold the photo until revoked: one visit may load many."""
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Denoise").click()
    page.get_by_role("button", name="Sample: cat").click()
    original = page.get_by_role("img", name="Original photo (sample: cat)")
    expect(original).to_be_visible()
    first = original.get_attribute("src")
    assert first.startswith("blob:") and original.evaluate(LOADS, first) == "loads"
    page.get_by_role("button", name="Sample: coffee").click()
    replaced = page.get_by_role("img", name="Original photo (sample: coffee)")
    expect(replaced).to_be_visible()
    second = replaced.get_attribute("src")
    assert second != first and replaced.evaluate(LOADS, second) == "loads"
    expect(replaced).to_have_js_property("complete", True)
    assert replaced.evaluate("img => img.naturalWidth") > 0  # what is shown stays shown
    clean(watched)
    assert replaced.evaluate(LOADS, first) == "revoked"
    expect(page.get_by_role("alert")).to_have_count(0)


def test_cancel_ends_the_wait_a_429_asked_for(keyed_server, open_page):
    watched = open_page(keyed_server)
    page = watched.page
    page.get_by_role("textbox", name="API key").fill("rare-key")  # 2 requests a minute
    page.get_by_role("button", name="Save key").click()
    page.get_by_role("tab", name="Forward process").click()
    page.get_by_role("tabpanel", name="Forward process").get_by_label("Schedule of model").select_option("tiny-gen")
    # the wait is read from the refusal itself: the status line also counts the images other requests bring
    with page.expect_response(lambda r: r.url.endswith("/v1/noise") and r.status == 429, timeout=30_000) as refused:
        page.get_by_role("button", name="Show forward process").click()
    wait = int(refused.value.headers["retry-after"])
    assert wait >= 30  # the window is a minute: the wait is long, so the end below is the Cancel's doing
    status = page.locator("#fw-status")
    expect(status).to_contain_text("asks to wait", timeout=30_000)
    page.get_by_role("button", name="Cancel").click()
    expect(status).to_have_text("canceled", timeout=10_000)
    expect(page.get_by_role("button", name="Show forward process")).to_be_enabled()


@pytest.mark.parametrize("key", [None, "four-key", "one-key"])
def test_the_forward_strip_has_eleven_images(server, keyed_server, open_page, key):
    """Eleven /v1/noise requests, a few at a time: a key that may hold 4 jobs at once gets no 429, and one
    that may hold only 1 gets its 429s retried after the server's Retry-After."""
    watched = open_page(keyed_server if key else server)
    page = watched.page
    if key:
        page.get_by_role("textbox", name="API key").fill(key)
        page.get_by_role("button", name="Save key").click()
    page.get_by_role("tab", name="Forward process").click()
    page.get_by_role("tabpanel", name="Forward process").get_by_label("Schedule of model").select_option("tiny-gen")
    page.get_by_role("button", name="Show forward process").click()
    strip = page.locator("#fw-strip img")
    expect(strip).to_have_count(11, timeout=60_000)
    expect(page.locator("#fw-status")).to_have_text("11 of 11 images")
    captions = page.locator("#fw-strip span").all_inner_texts()
    assert captions[0].startswith("t = 0") and captions[5] == "t = 500" and captions[-1] == "t = 999 (T − 1)"
    for i in range(11):  # every image decoded (the page's CSP forbids wait_for_function's eval)
        expect(strip.nth(i)).to_have_js_property("complete", True)
        assert strip.nth(i).evaluate("img => img.naturalWidth") > 0
    expect(page.get_by_role("alert")).to_have_count(0)
    if key is None:  # (with keys, the first request before the key was saved logged its 401)
        first = strip.nth(0).get_attribute("src")
        page.get_by_role("button", name="Show forward process").click()  # again: the last strip's x_0 is freed
        expect(strip.nth(0)).not_to_have_attribute("src", first, timeout=60_000)
        expect(strip).to_have_count(11, timeout=60_000)
        expect(page.locator("#fw-status")).to_have_text("11 of 11 images", timeout=60_000)
        clean(watched)
        assert strip.nth(0).evaluate(LOADS, first) == "revoked"  # (the probe's failed load is logged: after clean)
    assert watched.outside() == []


def test_tabs_work_from_the_keyboard_and_every_control_has_a_label(server, open_page):
    watched = open_page(server)
    page = watched.page
    page.get_by_role("tab", name="Generate").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Denoise")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tabpanel", name="Denoise")).to_be_visible()
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="Forward process")).to_be_focused()
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
                 .filter(e => !e.labels || e.labels.length === 0).map(e => e.id)"""
    )
    assert unlabelled == []
    clean(watched)


def test_phone_width_and_dark_mode(server, open_page):
    watched = open_page(server, viewport={"width": 390, "height": 844}, color_scheme="dark")
    page = watched.page
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_visible()
    for tab in ("Generate", "Denoise", "Forward process"):
        page.get_by_role("tab", name=tab).click()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, tab
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
    assert red + green + blue < 150  # dark
    clean(watched)


def test_a_server_with_keys_asks_for_one_and_shows_429_with_its_wait(keyed_server, open_page):
    watched = open_page(keyed_server)
    page = watched.page
    expect(page.get_by_role("region", name="API key")).to_be_visible()
    page.get_by_role("textbox", name="API key").fill("web-secret-key")
    page.get_by_role("button", name="Save key").click()
    tab = page.get_by_role("tabpanel", name="Generate")
    expect(tab.get_by_label("Model")).to_have_value("tiny-gen")
    assert page.evaluate("localStorage.getItem('diffusion-api-key')") == "web-secret-key"
    tab.get_by_label("Seed", exact=True).fill("5")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("img", name="Generated image, seed 5").first).to_be_visible(timeout=60_000)

    page.get_by_role("button", name="API key").click()
    page.get_by_role("textbox", name="API key").fill("slow-key")  # 4 requests a minute
    with page.expect_response(lambda r: r.url.endswith("/v1/models")):  # the models, read with the new key
        page.get_by_role("button", name="Save key").click()
    expect(tab.get_by_label("Model")).to_have_value("tiny-gen")
    for _ in range(3):
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled(timeout=60_000)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("429")
    expect(alert).to_contain_text(re.compile(r"try again in \d+ s"))
    assert watched.outside() == []


def test_a_saved_key_can_be_changed_after_a_reload_and_forgetting_it_says_so(keyed_server, open_page):
    watched = open_page(keyed_server)
    page = watched.page
    page.get_by_role("textbox", name="API key").fill("web-secret-key")
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("tabpanel", name="Generate").get_by_label("Model")).to_have_value("tiny-gen")
    page.reload()
    expect(page.get_by_role("tabpanel", name="Generate").get_by_label("Model")).to_have_value("tiny-gen")
    page.get_by_role("button", name="API key").click()
    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#key-status")).to_have_text(re.compile("Key forgotten"))
    assert page.evaluate("localStorage.getItem('diffusion-api-key')") is None


def test_the_page_is_served_with_a_policy_that_keeps_it_on_this_server(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    sample = httpx.get(server.url + "/ui/samples/cat.png")
    assert sample.headers["content-type"] == "image/png" and base64.b64encode(sample.content)
    # revalidated at each load, as the page is: a new page never runs an old script after an upgrade
    script = httpx.get(server.url + "/ui/app.js")
    assert r.headers["cache-control"] == script.headers["cache-control"] == "no-cache"
    again = httpx.get(server.url + "/ui/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    # the page under /ui too: without the policy (frame-ancestors 'none') another site could frame it
    assert (
        httpx.get(server.url + "/ui/index.html").headers["content-security-policy"]
        == r.headers["content-security-policy"]
    )


@pytest.mark.parametrize("how", ["broken", "ended"])
def test_a_lost_event_stream_is_asked_for_again_and_the_job_is_not_canceled(server, open_page, how):
    """The job's first event stream breaks (the network) or ends before the final event (an API node stopped by
    a rolling deploy): the page had called it a lost connection and canceled the job, which ran on fine."""
    watched = open_page(server)
    page = watched.page
    streams, deletes = [], []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)

    def first_breaks(route):
        streams.append(route.request.url)
        if len(streams) > 1:
            route.continue_()
        elif how == "broken":
            route.abort("failed")
        else:  # one event, as a queued job's first, then the end: the server went away
            job = route.request.url.split("/")[-2]
            queued = {"job_id": job, "status": "queued", "progress": {"step": 0, "total": 30}}
            body = f"event: progress\ndata: {json.dumps(queued)}\n\n"
            route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route("**/v1/jobs/*/events", first_breaks)
    fill_generate(page, class_name="a", seed=3, steps=30)
    page.get_by_role("button", name="Generate", exact=True).click()
    if how == "ended":  # a queued job says so (not "step 0 of 30") until its stream is asked for again
        expect(page.locator("#gen-status")).to_have_text("queued")
    expect(page.get_by_role("img", name="Generated image, seed 3")).to_be_visible(timeout=60_000)
    expect(page.locator("#gen-status")).to_contain_text("done in")
    expect(page.get_by_role("alert")).to_have_count(0)
    assert len(streams) == 2 and len(set(streams)) == 1 and deletes == []


def test_a_page_opened_before_any_model_is_served_asks_again_until_one_is(server, open_page):
    """API nodes up before any worker has said what it serves list no model: the page said none generates
    images and never asked again, so Generate stayed unusable until a reload."""
    watched = open_page(server)
    page = watched.page
    asked = []
    page.route("**/v1/models", first_answered(asked, status=200, json={"models": []}))
    page.reload()
    expect(page.get_by_role("alert")).to_contain_text("No model is served yet")
    expect(page.locator("#gen-submit")).to_be_disabled()
    expect(page.locator("#gen-submit")).to_be_enabled(timeout=15_000)  # asked again 5 s later
    expect(page.get_by_role("tabpanel", name="Generate").get_by_label("Model")).to_have_value("tiny-gen")
    expect(page.get_by_role("alert")).to_have_count(0)
    assert len(asked) == 2


@pytest.mark.parametrize("refused", ["events", "record"])
def test_a_quota_refusal_of_a_jobs_progress_or_record_is_waited_out_and_the_job_kept(server, open_page, refused):
    """Every /v1 request counts against a key's requests per minute, the reads of a job too: a 429 on its event
    stream or its record had the page report a job that succeeded as failed, and cancel it."""
    watched = open_page(server)
    page = watched.page
    deletes, seen = [], []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    detail = {"detail": [{"loc": ["header", "authorization"], "msg": "over its requests", "type": "rate_limited"}]}

    page.route(
        "**/v1/jobs/*/events" if refused == "events" else re.compile(r".*/v1/jobs/[0-9a-f]+$"),
        first_answered(seen, status=429, json=detail, headers={"Retry-After": "1"}),
    )
    fill_generate(page, class_name="b", seed=5, steps=10)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("img", name="Generated image, seed 5")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("alert")).to_have_count(0)
    assert len(seen) == 2 and deletes == []


@pytest.mark.parametrize("what", ["model list busy", "API document not reached"])
def test_a_model_list_or_api_document_not_had_at_load_is_asked_for_again(server, open_page, what):
    """A 503 (Redis away a moment) or 429 from /v1/models when the page opened, or a network error on the
    /openapi.json it reads the samplers from, left Generate disabled until a reload."""
    watched = open_page(server)
    page = watched.page
    asked = []
    if what == "model list busy":
        detail = {"detail": [{"loc": [], "msg": "the job queue is unreachable", "type": "queue_unavailable"}]}
        page.route("**/v1/models", first_answered(asked, status=503, json=detail, headers={"Retry-After": "1"}))
    else:
        page.route("**/openapi.json", first_answered(asked, abort="failed"))
    page.reload()
    expect(page.get_by_role("tabpanel", name="Generate").get_by_label("Model")).to_have_value(
        "tiny-gen", timeout=15_000
    )
    expect(page.locator("#gen-submit")).to_be_enabled()
    expect(page.get_by_role("alert")).to_have_count(0)
    assert len(asked) == 2


def test_the_forward_strip_follows_the_schedules_length_and_a_refused_run_keeps_the_last_strip(server, open_page):
    """The strip's timesteps were fixed for T = 1000: a schedule of 100 steps showed t = 100 ... 1000 all
    clamped to 99. And a refused run (a bad seed, a 422) wiped the strip it was to replace."""
    watched = open_page(server)
    page = watched.page

    def short_schedule(route):  # tiny-gen's card, as a model whose schedule has 100 timesteps
        listed = route.fetch().json()
        for model in listed["models"]:
            if model["card"]:
                model["card"]["train_timesteps"] = 100
        route.fulfill(json=listed)

    page.route("**/v1/models", short_schedule)
    page.reload()
    page.get_by_role("tab", name="Forward process").click()
    panel = page.get_by_role("tabpanel", name="Forward process")
    panel.get_by_label("Schedule of model").select_option("tiny-gen")
    page.get_by_role("button", name="Show forward process").click()
    strip = page.locator("#fw-strip img")
    expect(page.locator("#fw-status")).to_have_text("11 of 11 images", timeout=60_000)
    captions = page.locator("#fw-strip span").all_inner_texts()
    assert captions == ["t = 0 (x₀)", *[f"t = {t}" for t in range(10, 100, 10)], "t = 99 (T − 1)"]
    shown = strip.nth(5).get_attribute("src")
    panel.get_by_label("Seed").fill("-1")
    page.get_by_role("button", name="Show forward process").click()
    expect(page.get_by_role("alert")).to_contain_text("The seed must be a whole number")
    panel.get_by_label("Seed").fill("4")
    detail = {"detail": [{"loc": ["body", "timestep"], "msg": "refused", "type": "out_of_range"}]}
    page.route("**/v1/noise", lambda route: route.fulfill(status=422, json=detail))
    page.get_by_role("button", name="Show forward process").click()
    expect(page.get_by_role("alert")).to_contain_text("422")
    expect(strip).to_have_count(11)
    assert strip.nth(5).get_attribute("src") == shown


def test_no_scores_are_given_against_an_original_with_transparent_pixels(server, open_page, tmp_path):
    """The server drops alpha keeping each pixel's colour; the browser's canvas loses the colour where a pixel
    is transparent: the page scored different pixels (PSNR 5.48 dB for noise of σ 25)."""
    watched = open_page(server)
    page = watched.page
    rgba = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    page.get_by_role("tab", name="Denoise").click()
    page.locator("#dn-file").set_input_files(str(path))
    page.get_by_label("Noise σ (1–255)").fill("25")
    page.get_by_role("button", name="Add noise", exact=True).click()
    expect(page.locator("#dn-noisy-caption")).to_have_text(
        "Noisy (σ 25) (no PSNR or SSIM: the original has transparent pixels)", timeout=30_000
    )


def test_an_empty_steps_field_takes_the_models_default(server, open_page):
    """An empty Steps field sent steps 0, which the API refuses, instead of leaving the model's default."""
    watched = open_page(server)
    page = watched.page
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/generate") else None)
    tab = fill_generate(page, class_name="a", seed=9, steps=5)
    tab.get_by_label("Steps").fill("")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("img", name="Generated image, seed 9")).to_be_visible(timeout=60_000)
    assert "steps" not in sent[0] and sent[0]["preview_every"] == 3  # a tenth of tiny-gen's 30 default steps


def test_a_key_no_http_header_can_carry_is_refused_when_saved(keyed_server, open_page):
    """Saved, it made every request throw in the browser (a character above U+00FF, as the euro sign), which the
    page reported as a lost connection."""
    watched = open_page(keyed_server)
    page = watched.page
    page.get_by_role("textbox", name="API key").fill("key-€")
    page.get_by_role("button", name="Save key").click()
    expect(page.locator("#key-status")).to_contain_text("printable ASCII")
    assert page.evaluate("localStorage.getItem('diffusion-api-key')") is None
