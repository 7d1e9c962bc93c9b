"""What an adversarial newcomer found, each as a behaviour: capabilities checked before a job exists,
hostile uploads refused, bounded error echoes, idempotency conflicts, content negotiation, 405s, cost caps."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.main import create_app
from tests.api.helpers import decode, decode_b64, photo, png_bytes
from tests.helpers import make_settings
from tests.tiny_models import write_bare, write_conditional_bare, write_conditional_with_null, write_generator


@pytest.fixture(scope="module")
def conditional_client(tmp_path_factory):
    """'cond' is a class-conditional UNet2DModel with 4 classes, no null class and no card, as
    DDPMPipeline.save_pretrained writes it; 'cond-null' has a card naming a null class and both tasks."""
    root = tmp_path_factory.mktemp("store-conditional")
    write_conditional_bare(root / "cond")
    write_conditional_with_null(root / "cond-null")
    write_generator(root / "tiny-gen")
    write_bare(root / "tiny-rgb")
    with TestClient(create_app(make_settings(root))) as client:
        yield client


def upload(client, path="/v1/denoise", data=None, image=None, **kw):
    image = photo(32, 32) if image is None else image
    return client.post(path, files={"file": ("p.png", png_bytes(image), "image/png")}, data=data or {}, **kw)


# -- the bug: a class-conditional model without a null class cannot denoise --------------------------------
def test_models_list_only_the_tasks_a_model_really_serves(conditional_client):
    card = conditional_client.get("/v1/models/cond").json()["card"]
    assert card["tasks"] == ["generate"]
    assert "null class" in card["tasks_unavailable"]["denoise"]
    assert conditional_client.get("/v1/models/cond-null").json()["card"]["tasks"] == ["generate", "denoise"]


@pytest.mark.parametrize("path", ["/v1/denoise", "/denoise"])
@pytest.mark.parametrize("sigma", ["25", "auto"])
def test_denoise_on_a_conditional_model_without_null_class_is_422_naming_why(conditional_client, path, sigma):
    r = upload(conditional_client, path, data={"model": "cond", "sigma": sigma})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "model"] and "null class" in detail["msg"]


def test_denoise_json_body_on_a_conditional_model_without_null_class_is_422(conditional_client):
    import base64

    body = {"model": "cond", "sigma": 25, "image": base64.b64encode(png_bytes(photo(32, 32))).decode()}
    r = conditional_client.post("/v1/denoise", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "wrong_task"


def test_a_conditional_model_with_a_null_class_denoises_unconditionally(conditional_client):
    r = upload(conditional_client, data={"model": "cond-null", "sigma": "25"})
    assert r.status_code == 200, r.text
    assert decode_b64(r.json()["images"][0]["data"]).shape == (32, 32, 3)


def test_generate_without_class_label_samples_the_null_class(conditional_client):
    unconditional = conditional_client.post("/v1/generate", json={"model": "cond-null", "seed": 3})
    assert unconditional.status_code == 200, unconditional.text
    labelled = conditional_client.post("/v1/generate", json={"model": "cond-null", "seed": 3, "class_label": 0})
    a, b = (decode_b64(r.json()["images"][0]["data"]).astype(int) for r in (unconditional, labelled))
    assert np.abs(a - b).max() > 0  # the null label is really a different condition


def test_generate_without_class_label_and_no_null_class_stays_422(conditional_client):
    r = conditional_client.post("/v1/generate", json={"model": "cond", "seed": 3})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "class_label"]


MODELS = ["cond", "cond-null", "tiny-gen", "tiny-rgb"]
REQUESTS = [
    ("/v1/generate", {}),
    ("/v1/generate", {"class_label": 0, "guidance_scale": 1.0}),
    ("/v1/generate", {"class_label": "a", "sampler": "dpmpp_2m", "steps": 3}),
    ("/v1/denoise", {"sigma": "25"}),
    ("/v1/denoise", {"sigma": "auto", "mode": "sample", "steps": "2", "ensemble": "2"}),
    ("/v1/noise", {"timestep": "500"}),
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("path,fields", REQUESTS)
def test_no_request_on_any_stored_model_ends_as_a_failed_job_or_a_500(conditional_client, model, path, fields):
    if path == "/v1/generate":
        r = conditional_client.post(path, json={"model": model, "seed": 1, **fields})
    else:
        r = upload(conditional_client, path, data={"model": model, "seed": "1", **fields})
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code == 200:
        assert r.json()["status"] == "succeeded"
    else:
        assert r.json()["detail"][0]["msg"]


# -- hostile uploads ---------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_a_tiny_png_claiming_16_megapixels_is_refused_before_any_work(client):
    header = struct.pack(">IIBBBBB", 4000, 4000, 8, 0, 0, 0, 0)  # grey, 8 bit
    row = zlib.compress(b"\x00" + b"\x80" * 4000)  # one row of the 4000 the header claims
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")
    assert len(png) < 120
    r = client.post("/v1/denoise", files={"file": ("bomb.png", png, "image/png")}, data={"model": "tiny-rgb"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "image_undecodable" and "truncated" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path", ["/v1/denoise", "/v1/noise"])
def test_a_16_bit_grey_png_keeps_its_brightness(client, path):
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    data = {"model": "tiny-rgb", "sigma": "1", "seed": "0"}
    r = client.post(
        path, files={"file": ("g16.png", buffer.getvalue(), "image/png")}, data=data, headers={"Accept": "image/png"}
    )
    assert r.status_code == 200, r.text
    out = decode(r.content).astype(float)
    expected = ramp / 257.0
    assert abs(out.mean() - expected.mean()) < 20  # not all white (255)
    assert out[:, :4].mean() < 60 and out[:, -4:].mean() > 190


def test_an_animated_gif_says_its_other_frames_were_dropped(client):
    frames = [Image.fromarray(np.full((24, 24), v, dtype=np.uint8)) for v in (40, 120, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    r = client.post("/v1/noise", files={"file": ("a.gif", buffer.getvalue(), "image/gif")}, data={"sigma": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["info"]["frames_dropped"] == 2


def test_a_sideways_stored_photo_comes_back_as_it_is_shown_and_info_says_so(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 48), 90, dtype=np.uint8)).save(buffer, format="JPEG", exif=exif)
    files = {"file": ("phone.jpg", buffer.getvalue(), "image/jpeg")}
    r = client.post("/v1/noise", files=files, data={"sigma": "1"})
    assert r.status_code == 200, r.text
    (image,) = r.json()["images"]
    assert decode_b64(image["data"]).shape[:2] == (48, 16) and r.json()["info"]["exif_orientation"] == 6


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_an_uploads_colour_profile_comes_back_with_its_result_where_it_fits(client, fmt):
    from PIL import ImageCms

    rgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk_header = rgb_profile[:16] + b"CMYK" + rgb_profile[20:]  # a CMYK photo's profile: its pixels became RGB

    def profile_back(route, data, profile, mode="RGB"):
        buffer = io.BytesIO()
        Image.fromarray(photo(24, 24)).convert(mode).save(buffer, format="JPEG", icc_profile=profile)
        files = {"file": ("p.jpg", buffer.getvalue(), "image/jpeg")}
        r = client.post(route, files=files, data={**data, "output_format": fmt}, headers={"Accept": f"image/{fmt}"})
        assert r.status_code == 200, r.text
        return Image.open(io.BytesIO(r.content)).info.get("icc_profile")

    for route, data in (("/v1/denoise", {"model": "tiny-rgb", "sigma": "20"}), ("/v1/noise", {"sigma": "5"})):
        assert profile_back(route, data, rgb_profile) == rgb_profile, route
        assert profile_back(route, data, cmyk_header) is None, route  # it does not describe RGB pixels
        assert profile_back(route, data, None) is None, route


def test_routes_that_answer_in_one_type_refuse_an_accept_without_it(client):
    job = client.post("/v1/generate", json={"class_label": 0, "steps": 2}).json()["job_id"]
    for path, refused, taken in [
        ("/v1/models", "text/html", "application/json"),
        ("/v1/models/tiny-gen", "image/png", "*/*"),
        (f"/v1/jobs/{job}", "text/html", "application/*"),
        (f"/v1/jobs/{job}/events", "application/json", "text/event-stream"),
    ]:
        r = client.get(path, headers={"Accept": refused})
        assert r.status_code == 406 and r.json()["detail"][0]["loc"] == ["header", "accept"], path
        assert client.get(path, headers={"Accept": taken}).status_code == 200, path
    r = client.delete(f"/v1/jobs/{job}", headers={"Accept": "text/html"})
    assert r.status_code == 406  # before anything is done: the job was finished anyway


# -- what errors echo ----------------------------------------------------------------------------------------
def test_a_huge_class_label_is_not_echoed_whole(client):
    r = client.post("/v1/generate", json={"model": "tiny-gen", "class_label": "x" * 2_000_000})
    assert r.status_code == 422
    assert len(r.content) < 2000 and "2000002 characters" in r.text


def test_a_huge_unknown_field_name_is_not_echoed_whole(client):
    r = client.post("/v1/generate", json={"class_label": 0, "y" * 100_000: 1})
    assert r.status_code == 422 and len(r.content) < 2000


# -- Idempotency-Key ---------------------------------------------------------------------------------------
def test_an_idempotency_key_reused_with_another_body_is_422(client):
    headers = {"Idempotency-Key": "reuse-1", "Prefer": "respond-async"}
    first = client.post("/v1/generate", json={"class_label": 0, "seed": 1}, headers=headers)
    again = client.post("/v1/generate", json={"class_label": 0, "seed": 1}, headers=headers)
    other = client.post("/v1/generate", json={"class_label": 1, "seed": 1}, headers=headers)
    assert first.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_a_replay_that_spells_out_the_default_priority_is_the_same_request(client):
    headers = {"Idempotency-Key": "reuse-priority", "Prefer": "respond-async"}
    first = client.post("/v1/generate", json={"class_label": 0, "seed": 2}, headers=headers)
    spelled = client.post("/v1/generate", json={"class_label": 0, "seed": 2, "priority": "normal"}, headers=headers)
    assert first.status_code == 202 and spelled.json()["job_id"] == first.json()["job_id"]
    high = client.post("/v1/generate", json={"class_label": 0, "seed": 2, "priority": "high"}, headers=headers)
    assert high.status_code == 422  # another priority is another request


def test_a_key_replayed_with_an_accept_that_picks_another_format_is_another_request(client):
    key = {"Idempotency-Key": "reuse-accept"}
    body = {"class_label": 0, "steps": 2, "seed": 1}
    png = client.post("/v1/generate", json=body, headers={**key, "Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    as_json = client.post("/v1/generate", json=body, headers={**key, "Accept": "application/json"})
    assert as_json.json()["job_id"] == png.headers["x-job-id"]  # the same job, as JSON: the format agrees
    webp = client.post("/v1/generate", json=body, headers={**key, "Accept": "image/webp"})
    assert webp.status_code == 422 and webp.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_the_same_upload_with_the_same_key_is_the_same_job(client):
    headers = {"Idempotency-Key": "reuse-2", "Prefer": "respond-async"}
    data = {"model": "tiny-rgb", "sigma": "10", "seed": "4"}
    first, again = (upload(client, data=data, headers=headers) for _ in range(2))  # new multipart boundaries
    assert first.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    other = upload(client, data=data, image=photo(32, 32, seed=9), headers=headers)
    assert other.status_code == 422


def test_an_empty_idempotency_key_is_422_not_a_request_without_one(client):
    """Sent twice, an empty key had made two jobs: the client believed itself protected from duplicates."""
    r = client.post("/v1/generate", json={"class_label": 0}, headers={"Idempotency-Key": "", "Prefer": "respond-async"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


# -- content negotiation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("accept", ["text/html", "image/png;q=0", "image/png;q=0, application/json;q=0"])
def test_an_accept_nothing_produced_is_406(client, accept):
    r = client.post("/v1/generate", json={"class_label": 0}, headers={"Accept": accept})
    assert r.status_code == 406 and r.json()["detail"][0]["loc"] == ["header", "accept"]


def test_q_values_choose_between_json_and_image(client):
    raw = client.post("/v1/generate", json={"class_label": 0}, headers={"Accept": "application/json;q=0.5, image/webp"})
    assert raw.headers["content-type"] == "image/webp"
    as_json = client.post("/v1/generate", json={"class_label": 0}, headers={"Accept": "image/png;q=0, */*"})
    assert as_json.headers["content-type"] == "application/json"


def test_job_routes_negotiate_too(client):
    job = client.post("/v1/generate", json={"class_label": 0}).json()
    assert client.get(f"/v1/jobs/{job['job_id']}", headers={"Accept": "text/html"}).status_code == 406
    image_url = job["images"][0]["url"]
    assert client.get(image_url, headers={"Accept": "image/jpeg"}).status_code == 406
    assert client.get(image_url, headers={"Accept": "image/*"}).status_code == 200


# -- 405 ---------------------------------------------------------------------------------------------------
def test_405_allow_lists_every_method_of_the_path(client):
    r = client.post("/v1/jobs/" + "0" * 32)
    assert r.status_code == 405
    assert {"GET", "DELETE"} <= set(r.headers["allow"].split(", "))
    assert r.json()["detail"][0]["type"] == "http_405"


def test_a_malformed_multipart_body_is_400_with_the_error_shape(client):
    r = client.post(
        "/v1/denoise", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code in (400, 422)
    assert r.json()["detail"][0]["loc"][0] == "body"


def test_a_seed_near_two_to_the_63_is_accepted(client):
    r = client.post("/v1/generate", json={"class_label": 0, "seed": 2**63 - 1, "num_images": 2})
    assert r.status_code == 200, r.text
    assert [image["seed"] for image in r.json()["images"]] == [2**63 - 1, 0]


# -- cost caps ---------------------------------------------------------------------------------------------
def test_a_request_over_the_compute_cap_is_422_naming_the_cost(make_client):
    client = make_client(max_job_megapixel_steps=0.5)
    ok = client.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, "steps": 4})
    assert ok.status_code == 200  # 16 x 16 pixels x 4 steps = 0.001 megapixel-steps
    r = client.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, "steps": 1000, "num_images": 16})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_expensive"
    # 16 x 1000 x 256 pixels = 4.1 megapixel-steps; a cap under one is said as it is set, not rounded to 0
    assert (
        "costs 4.1 megapixel-steps" in r.json()["detail"][0]["msg"] and "limit of 0.5 " in r.json()["detail"][0]["msg"]
    )
    big = upload(
        client, data={"model": "tiny-rgb", "sigma": "10", "mode": "sample", "steps": "1000"}, image=photo(256, 256)
    )
    assert big.status_code == 422 and "megapixel-steps" in big.json()["detail"][0]["msg"]


def test_an_image_larger_than_the_queue_holds_is_413(make_client):
    client = make_client(queue_max_pixels=500)
    r = upload(client, data={"model": "tiny-rgb", "sigma": "10"})  # 32 x 32 = 1024 pixels
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "too_many_pixels"


# -- found in review ---------------------------------------------------------------------------------------
def test_an_image_too_wide_for_webp_is_422_before_any_work(client):
    wide = np.full((8, 16384), 100, dtype=np.uint8)
    r = client.post(
        "/v1/noise",
        files={"file": ("w.png", png_bytes(wide), "image/png")},
        data={"sigma": "5", "output_format": "webp"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_large_for_format"
    ok = client.post("/v1/noise", files={"file": ("w.png", png_bytes(wide), "image/png")}, data={"sigma": "5"})
    assert ok.status_code == 200


def test_a_format_accept_chose_that_cannot_hold_the_result_gives_way_or_is_406_naming_the_header(client):
    """It was a 422 naming the body's output_format, which the client never sent."""
    wide = {"file": ("w.png", png_bytes(np.full((8, 16384), 100, dtype=np.uint8)), "image/png")}
    r = client.post("/v1/noise", files=wide, data={"sigma": "5"}, headers={"Accept": "image/webp"})
    assert r.status_code == 406, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["header", "accept"] and "webp holds at most 16383" in detail["msg"]
    r = client.post("/v1/noise", files=wide, data={"sigma": "5"}, headers={"Accept": "image/webp, image/png;q=0.5"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (16384, 8)


@pytest.mark.parametrize("label", ["²", "9" * 5000, "٣٣٣٣٣٣٣٣٣٣"])
def test_class_labels_that_only_look_numeric_are_422(client, label):
    r = client.post("/v1/generate", json={"model": "tiny-gen", "class_label": label})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "class_label"]


def test_sampling_a_nearly_clean_photo_with_dpmpp_2m_stays_finite(client):
    image = photo(32, 32, seed=3)
    r = upload(
        client,
        data={"model": "tiny-rgb", "sigma": "0.5", "mode": "sample", "sampler": "dpmpp_2m", "steps": "4", "seed": "1"},
        image=image,
    )
    assert r.status_code == 200, r.text
    out = decode_b64(r.json()["images"][0]["data"]).astype(float)
    assert np.abs(out - image).mean() < 10  # close to the input, not a black (NaN) image


def test_a_large_json_upload_is_parsed_and_its_base64_decoded_off_the_event_loop(client, monkeypatch):
    """The upload routes parsed any JSON body and decoded its base64 on the event loop: 19.5 MB of JSON held
    every other request (the health probe included) for 3.3 s."""
    import asyncio
    import base64
    import json

    import app.api.errors as errors
    import app.api.uploads as uploads
    from app.api.errors import PARSE_ON_LOOP_BYTES

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    seen: dict[str, bool] = {}
    real_parse, real_base64 = errors.parse_json, uploads._base64

    def parse(raw):
        seen["parse"] = on_loop()
        return real_parse(raw)

    def decode64(text, field):
        seen["base64"] = on_loop()
        return real_base64(text, field)

    monkeypatch.setattr(errors, "parse_json", parse)
    monkeypatch.setattr(uploads, "_base64", decode64)
    encoded = base64.encodebytes(png_bytes(photo(64, 64))).decode()  # wrapped at 76 columns, as base64(1) writes
    body = json.dumps({"image": encoded + " " * PARSE_ON_LOOP_BYTES, "sigma": 25})
    r = client.post("/v1/denoise", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert decode_b64(r.json()["images"][0]["data"]).shape == (64, 64, 3)
    assert seen == {"parse": False, "base64": False}


def test_uploads_are_decoded_a_few_at_a_time(make_client, monkeypatch):
    """Decodes ran on the threadpool's 40 threads at once, and a 49 KB PNG decodes to about 96 MB: 8 such
    uploads at once took the API process 1.08 GB up (its pod is limited to 2 GiB), though each was refused."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import app.api.uploads as uploads

    client = make_client(decode_concurrency=2)
    lock, now, most = threading.Lock(), [0], [0]
    real = uploads._decode

    def decode(*args):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.2)  # long enough for the other requests to arrive meanwhile
            return real(*args)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(uploads, "_decode", decode)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda seed: upload(client, data={"sigma": "1", "seed": str(seed)}), range(6)))
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert most[0] == 2
