"""POST /v1/generate and its /generate twin."""

from __future__ import annotations

import pytest

from tests.api.helpers import decode, decode_b64


def test_sync_generate_returns_images_with_their_seeds(client):
    r = client.post("/v1/generate", json={"class_label": "b", "num_images": 3, "seed": 10})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "succeeded" and body["model"] == "tiny-gen"
    assert [(i["index"], i["seed"]) for i in body["images"]] == [(0, 10), (1, 11), (2, 12)]
    assert all(i["media_type"] == "image/png" for i in body["images"])
    assert decode_b64(body["images"][0]["data"]).shape == (16, 16)
    assert {"queued_ms", "run_ms", "total_ms"} <= set(body["timings"])


def test_same_seed_gives_the_same_image(client):
    a = client.post("/v1/generate", json={"class_label": 0, "seed": 5}).json()
    b = client.post("/v1/generate", json={"class_label": 0, "seed": 5}).json()
    assert a["images"][0]["data"] == b["images"][0]["data"]


def test_a_random_seed_is_chosen_and_returned(client):
    body = client.post("/v1/generate", json={"class_label": 0}).json()
    assert isinstance(body["images"][0]["seed"], int)


def test_accept_image_png_returns_raw_bytes(client):
    r = client.post("/v1/generate", json={"class_label": 1, "seed": 3}, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-seed"] == "3"
    assert decode(r.content).shape == (16, 16)


@pytest.mark.parametrize("fmt,magic", [("jpeg", b"\xff\xd8"), ("webp", b"RIFF"), ("png", b"\x89PNG")])
def test_output_formats(client, fmt, magic):
    r = client.post("/v1/generate", json={"class_label": 1, "output_format": fmt}, headers={"Accept": f"image/{fmt}"})
    assert r.status_code == 200 and r.content.startswith(magic)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_every_sampler_and_guidance(client, sampler):
    eta = {"eta": 0.3} if sampler == "ddim" else {}
    r = client.post(
        "/v1/generate", json={"class_label": "c", "sampler": sampler, "steps": 6, "guidance_scale": 2.0, **eta}
    )
    assert r.status_code == 200 and r.json()["progress"] == {"step": 6, "total": 6}


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m", "euler", "euler_a"])
def test_an_eta_for_a_sampler_that_does_not_read_it_is_422_not_ignored(client, sampler):
    def generate(**fields):
        return client.post("/v1/generate", json={"class_label": 0, "steps": 4, **fields})

    r = generate(sampler=sampler, eta=0.5)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "eta"] and error["type"] == "conflict"
    assert f"sampler {sampler!r} does not read it" in error["msg"] and "'ddim'" in error["msg"]
    assert generate(sampler=sampler, eta=0).status_code == 422  # eta 0 too: the sampler reads no eta at all
    assert generate(sampler="ddim", eta=0.5).status_code == 200
    assert generate(sampler=sampler).status_code == 200


def test_unconditional_generation_on_a_model_without_classes(client):
    r = client.post("/v1/generate", json={"model": "tiny-rgb", "steps": 3})
    assert r.status_code == 200
    assert decode_b64(r.json()["images"][0]["data"]).shape == (16, 16, 3)


def test_prefer_respond_async_gives_202_and_a_location(client):
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 5}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    assert r.json()["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{r.json()['job_id']}"


def test_unprefixed_generate_answers_exactly_as_v1(client):
    a = client.post("/generate", json={"class_label": 2, "seed": 77})
    b = client.post("/v1/generate", json={"class_label": 2, "seed": 77})
    assert a.status_code == b.status_code == 200
    assert a.json()["images"] == [
        {**i, "url": i["url"].replace(b.json()["job_id"], a.json()["job_id"])} for i in b.json()["images"]
    ]


def test_idempotency_key_returns_the_same_job(client):
    headers = {"Prefer": "respond-async", "Idempotency-Key": "abc-123"}
    a = client.post("/v1/generate", json={"class_label": 0}, headers=headers).json()
    b = client.post("/v1/generate", json={"class_label": 0}, headers=headers).json()
    assert a["job_id"] == b["job_id"]
