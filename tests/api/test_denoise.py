"""POST /v1/denoise and /denoise, POST /v1/noise."""

from __future__ import annotations

import base64

import numpy as np

from tests.api.helpers import decode, decode_b64, photo, png_bytes
from tests.tiny_models import write_folded


def test_denoise_multipart_with_sigma(client):
    r = client.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo()), "image/png")},
        data={"sigma": "25", "model": "tiny-rgb"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"]["sigma"] == 25.0 and body["info"]["mode"] == "mmse"
    assert decode_b64(body["images"][0]["data"]).shape == (40, 48, 3)


def test_denoise_json_with_auto_sigma_returns_the_estimate(client):
    data = base64.b64encode(png_bytes(photo())).decode()
    r = client.post("/v1/denoise", json={"image": data, "model": "tiny-rgb", "sigma": "auto"})
    assert r.status_code == 200
    assert r.json()["info"]["sigma_estimated"] > 0


def test_denoise_sample_mode_walks_the_reverse_chain(client):
    r = client.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo()), "image/png")},
        data={"sigma": "50", "model": "tiny-rgb", "mode": "sample", "steps": "4", "sampler": "ddpm", "seed": "3"},
    )
    assert r.status_code == 200
    assert r.json()["progress"] == {"step": 4, "total": 4}
    assert r.json()["images"][0]["seed"] == 3


def test_sample_mode_refuses_samplers_that_cannot_walk_from_the_images_noise_or_draw_no_noise(client):
    # dpmpp_2m_karras ran as dpmpp_2m without a word, and samples 4 of a sampler that draws no noise were four
    # identical images, averaged and priced as four
    upload = {"file": ("p.png", png_bytes(photo()), "image/png")}
    base = {"sigma": "30", "model": "tiny-rgb", "mode": "sample", "steps": "4", "seed": "1"}

    def denoise(**fields):
        return client.post("/v1/denoise", files=upload, data={**base, **fields})

    r = denoise(sampler="dpmpp_2m_karras")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sampler"], r.text
    assert "use dpmpp_2m" in r.json()["detail"][0]["msg"]
    for fields in ({"sampler": "dpmpp_2m"}, {"sampler": "euler"}, {"sampler": "ddim", "eta": "0"}):
        r = denoise(samples="4", **fields)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "samples"], (fields, r.text)
        assert "same image" in r.json()["detail"][0]["msg"]
        assert denoise(**fields).status_code == 200  # one deterministic sample is fine
    r = denoise(samples="2", sampler="ddpm", steps="1")  # its one step lands on the clean image: no noise drawn
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "samples"], r.text
    for fields in ({"sampler": "ddpm"}, {"sampler": "euler_a"}, {"sampler": "ddim", "eta": "0.5"}):
        one, two = denoise(**fields), denoise(samples="2", **fields)
        assert one.status_code == two.status_code == 200, (fields, two.text)
        assert not np.array_equal(
            decode_b64(one.json()["images"][0]["data"]), decode_b64(two.json()["images"][0]["data"])
        )


def test_sample_mode_refuses_an_eta_its_sampler_does_not_read(client):
    upload = {"file": ("p.png", png_bytes(photo()), "image/png")}
    base = {"sigma": "30", "model": "tiny-rgb", "mode": "sample", "steps": "4", "eta": "0.5"}
    for sampler in ("ddpm", "euler", "euler_a", "dpmpp_2m"):
        r = client.post("/v1/denoise", files=upload, data={**base, "sampler": sampler})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "eta"], (sampler, r.text)
        assert f"sampler {sampler!r} does not read it" in r.json()["detail"][0]["msg"]
    assert client.post("/v1/denoise", files=upload, data={**base, "sampler": "ddim"}).status_code == 200
    assert client.post("/v1/denoise", files=upload, data=base).status_code == 200  # the card's default: ddim


def test_grey_input_stays_grey_and_alpha_is_dropped_and_said(client):
    grey = client.post(
        "/v1/denoise",
        files={"file": ("g.png", png_bytes(photo(channels=1)), "image/png")},
        data={"sigma": "15", "model": "tiny-rgb"},
    )
    assert grey.status_code == 200 and decode_b64(grey.json()["images"][0]["data"]).shape == (40, 48)
    rgba = np.dstack([photo(), np.full((40, 48), 128, np.uint8)])
    r = client.post(
        "/v1/denoise",
        files={"file": ("a.png", png_bytes(rgba), "image/png")},
        data={"sigma": "15", "model": "tiny-rgb"},
    )
    assert r.status_code == 200 and r.json()["info"]["alpha_dropped"] is True


def test_large_images_are_tiled(client):
    # tile 64, overlap 8 in the test settings: a 150x130 image takes several tiles
    r = client.post(
        "/v1/denoise",
        files={"file": ("big.png", png_bytes(photo(130, 150)), "image/png")},
        data={"sigma": "20", "model": "tiny-rgb"},
    )
    assert r.status_code == 200
    assert r.json()["info"]["tiles"] > 1
    assert decode_b64(r.json()["images"][0]["data"]).shape == (130, 150, 3)


def test_unprefixed_denoise_answers_as_v1(client):
    files = {"file": ("p.png", png_bytes(photo()), "image/png")}
    a = client.post("/denoise", files=files, data={"sigma": "10", "model": "tiny-rgb"}, headers={"Accept": "image/png"})
    b = client.post(
        "/v1/denoise", files=files, data={"sigma": "10", "model": "tiny-rgb"}, headers={"Accept": "image/png"}
    )
    assert a.status_code == b.status_code == 200
    assert a.content == b.content and a.headers["content-type"] == "image/png"


def test_noise_endpoint_is_seeded_and_has_the_requested_std(client):
    flat = np.full((64, 64), 128, np.uint8)
    files = {"file": ("f.png", png_bytes(flat), "image/png")}
    a = client.post("/v1/noise", files=files, data={"sigma": "20", "seed": "4"}, headers={"Accept": "image/png"})
    b = client.post("/v1/noise", files=files, data={"sigma": "20", "seed": "4"}, headers={"Accept": "image/png"})
    assert a.status_code == 200 and a.content == b.content
    noisy = decode(a.content).astype(float)
    assert abs(noisy.std() - 20) < 2 and abs(noisy.mean() - 128) < 2


def test_noise_at_a_timestep_uses_the_models_schedule(client):
    files = {"file": ("f.png", png_bytes(photo()), "image/png")}
    r = client.post("/v1/noise", files=files, data={"timestep": "500", "model": "tiny-gen"})
    assert r.status_code == 200
    assert 0 < r.json()["info"]["alpha_bar"] < 1


def test_denoise_defaults_to_a_model_that_serves_denoise(client):
    r = client.post("/v1/denoise", files={"file": ("p.png", png_bytes(photo()), "image/png")}, data={"sigma": "10"})
    assert r.status_code == 200 and r.json()["model"] == "tiny-rgb"


def test_a_space_to_depth_model_denoises_any_size_tiled_or_not_and_generates(make_client, tmp_path):
    write_folded(tmp_path / "folded")
    client = make_client(store=tmp_path)
    for height, width in ((37, 45), (130, 150)):  # odd sizes (padded to the fold x the UNet's factor), tiles
        r = client.post(
            "/v1/denoise",
            files={"file": ("p.png", png_bytes(photo(height, width)), "image/png")},
            data={"sigma": "20", "model": "folded"},
        )
        assert r.status_code == 200, r.text
        assert decode_b64(r.json()["images"][0]["data"]).shape == (height, width, 3)
    assert r.json()["info"]["tiles"] > 1
    sample = client.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo()), "image/png")},
        data={"sigma": "50", "model": "folded", "mode": "sample", "steps": "3", "seed": "1"},
    )
    assert sample.status_code == 200 and sample.json()["progress"] == {"step": 3, "total": 3}
    generated = client.post("/v1/generate", json={"model": "folded", "seed": 2})
    assert generated.status_code == 200, generated.text
    assert decode_b64(generated.json()["images"][0]["data"]).shape == (32, 32, 3)
