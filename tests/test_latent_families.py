"""Stable Diffusion (epsilon and v_prediction) and DiT folders written by save_pretrained: served unchanged,
and through HTTP the same image as the matching diffusers pipeline for the same seed.

Guidance: diffusers' guidance_scale g is uncond + g (cond - uncond); ours, w, is (1 + w) cond - w uncond, so
g = w + 1. "Same image": at least 99.9% of pixels within one level of 255, none more than 4 apart.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)
from fastapi.testclient import TestClient
from PIL import Image

from app.api.main import create_app
from tests.helpers import make_settings
from app.store.catalog import scan_store
from app.store.loader import load_model
from tests.tiny_models import (
    write_bare,
    write_dit,
    write_generator,
    write_stable_diffusion,
    write_stable_diffusion_as,
)

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent-store")
    write_stable_diffusion(root / "tiny-sd")
    write_stable_diffusion(root / "tiny-sd2", prediction_type="v_prediction", spacing="trailing")
    write_dit(root / "tiny-dit")
    write_generator(root / "tiny-gen")
    write_bare(root / "tiny-rgb")
    write_stable_diffusion(root / "tiny-sd-inpaint", inpainting=True)
    write_stable_diffusion(root / "tiny-sd-unspaced", spacing=None)
    write_stable_diffusion(root / "tiny-sd-linspace", spacing="linspace")
    write_stable_diffusion(root / "tiny-sd-clipping", clip_sample=True)
    write_dit(root / "tiny-dit-clipping", clip_sample=True)
    write_stable_diffusion(root / "tiny-sd-deep", levels=4)
    write_stable_diffusion_as(root / "tiny-sd-fp16", dtype=torch.float16, variant="fp16", max_shard_size="20KB")
    return root


@pytest.fixture(scope="module")
def client(store):
    with TestClient(create_app(make_settings(store))) as c:
        yield c


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))).astype(int)


def assert_same_image(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 4, f"max diff {diff.max()}, {(diff > 1).mean():.4%} > 1"


def sd_pipeline(folder, cls=StableDiffusionPipeline):
    """A Stable Diffusion folder loaded by diffusers itself, without a safety checker, offline."""
    return cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False, local_files_only=True)


def diffusers_image(pipe, sampler: str, **call) -> np.ndarray:
    cls, extra = SCHEDULERS[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    image = pipe(**call, output_type="np").images[0]
    return (image * 255).round().astype(int)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "euler_a", "dpmpp_2m_karras"])
@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sd2"])
def test_stable_diffusion_gives_the_pipelines_image(client, store, model, sampler):
    body = {
        "model": model,
        "prompt": "a red cat",
        "negative_prompt": "blurry",
        "seed": 11,
        "steps": 5,
        "sampler": sampler,
        "guidance_scale": 4.0,
        "width": 24,
        "height": 16,
    }
    ours = png(client.post("/v1/generate", json=body, headers={"Accept": "image/png"}))
    pipe = sd_pipeline(store / model)
    theirs = diffusers_image(
        pipe,
        sampler,
        prompt="a red cat",
        negative_prompt="blurry",
        num_inference_steps=5,
        guidance_scale=5.0,
        width=24,
        height=16,
        generator=torch.Generator("cpu").manual_seed(11),
    )
    assert_same_image(ours, theirs)


def test_stable_diffusion_saved_as_fp16_shards_gives_the_pipelines_image_in_float32(client, store):
    """A Hugging Face snapshot downloaded with variant="fp16" holds only fp16 files, large components sharded:
    served as diffusers loads it with that variant in float32, every component held in float32."""
    body = {"model": "tiny-sd-fp16", "prompt": "a red cat", "seed": 3, "steps": 4, "sampler": "euler"}
    ours = png(client.post("/v1/generate", json={**body, "guidance_scale": 3.0}, headers={"Accept": "image/png"}))
    pipe = StableDiffusionPipeline.from_pretrained(
        store / "tiny-sd-fp16",
        variant="fp16",
        torch_dtype=torch.float32,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    theirs = diffusers_image(
        pipe,
        "euler",
        prompt="a red cat",
        num_inference_steps=4,
        guidance_scale=4.0,
        height=16,
        width=16,
        generator=torch.Generator("cpu").manual_seed(3),
    )
    assert_same_image(ours, theirs)
    weights = client.get("/v1/models/tiny-sd-fp16").json()["weights"]
    assert weights["unet"].startswith("diffusion_pytorch_model.safetensors.index.fp16.json, ")
    assert weights["text_encoder"].startswith("model.safetensors.index.fp16.json, ")
    loaded = load_model(scan_store(store)["tiny-sd-fp16"], torch.device("cpu"))
    for part in (loaded.unet, loaded.vae, loaded.text_encoder):
        assert {p.dtype for p in part.parameters()} == {torch.float32}


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
def test_a_config_without_a_timestep_spacing_takes_each_samplers_diffusers_default(client, store, sampler):
    # SD 1.x's configs predate the key: diffusers fills it with the scheduler class's own default (DDIM
    # leading; Euler, Euler ancestral and DPM-Solver linspace), also when a pipeline swaps its scheduler
    body = {"model": "tiny-sd-unspaced", "prompt": "a red cat", "seed": 3, "steps": 6, "sampler": sampler}
    ours = png(client.post("/v1/generate", json={**body, "guidance_scale": 2.0}, headers={"Accept": "image/png"}))
    pipe = sd_pipeline(store / "tiny-sd-unspaced")
    generator = torch.Generator("cpu").manual_seed(3)
    call = dict(prompt="a red cat", num_inference_steps=6, guidance_scale=3.0, generator=generator)
    assert_same_image(ours, diffusers_image(pipe, sampler, **call))


def test_a_clipping_ddim_config_gives_the_pipelines_image_on_latent_models(client, store):
    # StableDiffusionPipeline turns clip_sample off in its scheduler; DiTPipeline clips x_0 and steps with
    # use_clipped_model_output=False (pixel models here re-derive the noise from the clipped x_0: docs/digits.md)
    from diffusers import DiTPipeline

    assert json.loads((store / "tiny-sd-clipping" / "scheduler" / "scheduler_config.json").read_text())["clip_sample"]
    body = {"model": "tiny-sd-clipping", "prompt": "a red cat", "seed": 4, "steps": 5, "sampler": "ddim"}
    ours = png(client.post("/v1/generate", json={**body, "guidance_scale": 2.0}, headers={"Accept": "image/png"}))
    pipe = sd_pipeline(store / "tiny-sd-clipping")
    generator = torch.Generator("cpu").manual_seed(4)
    call = dict(prompt="a red cat", num_inference_steps=5, guidance_scale=3.0, generator=generator)
    assert_same_image(ours, diffusers_image(pipe, "ddim", **call))

    body = {
        "model": "tiny-dit-clipping",
        "class_label": 3,
        "seed": 2,
        "steps": 5,
        "sampler": "ddim",
        "guidance_scale": 3,
    }
    ours = png(client.post("/v1/generate", json=body, headers={"Accept": "image/png"}))
    pipe = DiTPipeline.from_pretrained(store / "tiny-dit-clipping", local_files_only=True)
    assert pipe.scheduler.config.clip_sample
    generator = torch.Generator("cpu").manual_seed(2)
    call = dict(class_labels=[3], num_inference_steps=5, guidance_scale=4.0, generator=generator)
    assert_same_image(ours, diffusers_image(pipe, "ddim", **call))


def test_stable_diffusion_takes_any_size_its_pipeline_takes_not_only_multiples_of_the_unets_factor(client, store):
    # 4 UNet levels halve the latents 3 times (factor 8 with the VAE's 2: 16); 40x24 makes 20x12 latents,
    # which the UNet upsamples back to its skips' odd sizes, as diffusers runs it
    assert client.get("/v1/models/tiny-sd-deep").json()["card"]["size_multiple"] == 2
    body = {"model": "tiny-sd-deep", "prompt": "a red cat", "seed": 6, "steps": 4, "sampler": "ddim"}
    body.update(width=24, height=40, guidance_scale=2.0)
    ours = png(client.post("/v1/generate", json=body, headers={"Accept": "image/png"}))
    pipe = sd_pipeline(store / "tiny-sd-deep")
    generator = torch.Generator("cpu").manual_seed(6)
    call = dict(prompt="a red cat", num_inference_steps=4, guidance_scale=3.0, width=24, height=40)
    assert_same_image(ours, diffusers_image(pipe, "ddim", generator=generator, **call))
    odd = client.post("/v1/generate", json={**body, "width": 25})
    assert odd.status_code == 422 and "multiple of 2" in odd.json()["detail"][0]["msg"]
    image, mask = a_photo(40, 24), np.zeros((40, 24), dtype=np.uint8)
    mask[8:30, 4:20] = 255
    files = {"file": ("p.png", upload_png(image), "image/png"), "mask": ("m.png", upload_png(mask), "image/png")}
    data = {"model": "tiny-sd-deep", "prompt": "a door", "seed": "2", "steps": "4", "strength": "0.5"}
    assert png(client.post("/v1/img2img", files=files, data=data, headers={"Accept": "image/png"})).shape == (40, 24, 3)


def test_stable_diffusion_without_a_prompt_is_the_empty_prompt(client, store):
    ours = png(
        client.post(
            "/v1/generate",
            json={"model": "tiny-sd", "seed": 2, "steps": 3, "guidance_scale": 0},
            headers={"Accept": "image/png"},
        )
    )
    pipe = sd_pipeline(store / "tiny-sd")
    theirs = diffusers_image(
        pipe,
        "ddim",
        prompt="",
        num_inference_steps=3,
        guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(2),
    )
    assert_same_image(ours, theirs)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_dit_gives_the_pipelines_image(client, store, sampler):
    body = {"model": "tiny-dit", "class_label": 207, "seed": 4, "steps": 5, "sampler": sampler, "guidance_scale": 3.0}
    ours = png(client.post("/v1/generate", json=body, headers={"Accept": "image/png"}))
    pipe = DiTPipeline.from_pretrained(store / "tiny-dit", local_files_only=True)
    # DiTPipeline steps without a generator (only deterministic samplers compare) and guides when g > 1.
    theirs = diffusers_image(
        pipe,
        sampler,
        class_labels=[207],
        num_inference_steps=5,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(4),
    )
    assert_same_image(ours, theirs)


@pytest.mark.parametrize("steps", [4, 12])
def test_a_pixel_model_gives_the_ddpm_pipelines_image(client, store, steps):
    from diffusers import DDPMPipeline

    body = {"model": "tiny-rgb", "seed": 6, "steps": steps, "sampler": "ddpm"}
    ours = png(client.post("/v1/generate", json=body, headers={"Accept": "image/png"}))
    pipe = DDPMPipeline.from_pretrained(store / "tiny-rgb", local_files_only=True)
    image = pipe(num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(6), output_type="np").images[0]
    assert_same_image(ours, (image * 255).round().astype(int))


def test_models_describe_family_conditioning_and_parameters(client):
    cards = {m["name"]: m["card"] for m in client.get("/v1/models").json()["models"]}
    sd, dit = cards["tiny-sd"], cards["tiny-dit"]
    assert (sd["family"], sd["conditioning"], sd["image_size"], sd["tasks"]) == (
        "stable-diffusion",
        "text",
        [16, 16],
        ["generate"],
    )
    assert {"prompt", "negative_prompt", "width", "height"} <= set(sd["parameters"])
    assert (dit["family"], dit["conditioning"]) == ("dit", "class") and "prompt" not in dit["parameters"]
    # what a page needs to offer a model: the labels a DiT without names takes, its null class, inpainting
    assert (dit["class_names"], dit["class_count"], dit["null_class"]) == (None, 1000, 1000)
    assert "class_count" not in sd and not sd["inpainting"] and not dit["inpainting"]
    assert cards["tiny-sd-inpaint"]["inpainting"] and cards["tiny-gen"]["class_count"] == 3


@pytest.mark.parametrize(
    "body,field",
    [
        ({"model": "tiny-sd", "class_label": 1}, "class_label"),
        ({"model": "tiny-dit", "prompt": "a dog", "class_label": 1}, "prompt"),
        ({"model": "tiny-gen", "prompt": "a dog", "class_label": 1}, "prompt"),
        ({"model": "tiny-gen", "class_label": 1, "width": 32}, "width"),
        ({"model": "tiny-sd", "width": 17}, "width"),  # not a multiple of the VAE's factor, 2
        ({"model": "tiny-sd", "height": 4000, "width": 8000}, "width"),
    ],
)
def test_fields_a_model_does_not_take_are_422_naming_field_and_model(client, body, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", field]


def test_latent_models_do_not_denoise_photos(client):
    image = np.full((16, 16, 3), 120, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    r = client.post(
        "/v1/denoise",
        files={"file": ("p.png", buffer.getvalue(), "image/png")},
        data={"model": "tiny-sd", "sigma": "10"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "wrong_task"


def test_families_and_step_counts_batch_together_without_changing_an_image(client):
    jobs = [
        {"model": "tiny-sd", "prompt": "a house", "seed": 1, "steps": 6, "sampler": "euler_a"},
        {"model": "tiny-sd2", "prompt": "a tree", "seed": 2, "steps": 3, "sampler": "ddim"},
        {"model": "tiny-dit", "class_label": 5, "seed": 3, "steps": 4, "sampler": "ddim"},
        {"model": "tiny-gen", "class_label": 1, "seed": 4, "steps": 5, "sampler": "dpmpp_2m"},
    ]
    alone = [png(client.post("/v1/generate", json=job, headers={"Accept": "image/png"})) for job in jobs]
    ids = [client.post("/v1/generate", json=job, headers={"Prefer": "respond-async"}).json()["job_id"] for job in jobs]
    together = []
    for job_id in ids:
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert [line for line in stream.iter_lines() if line.startswith("event: ")][-1] == "event: succeeded"
        together.append(png(client.get(f"/v1/jobs/{job_id}/images/0")))
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)


def upload_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def a_photo(height: int = 16, width: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx * 9) % 256, (yy * 13) % 256, ((xx + yy) * 5) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m_karras"])
def test_img2img_gives_the_img2img_pipelines_image(client, store, sampler):
    from diffusers import StableDiffusionImg2ImgPipeline

    image = a_photo()
    data = {
        "model": "tiny-sd",
        "prompt": "a blue house",
        "seed": "8",
        "steps": "6",
        "strength": "0.5",
        "sampler": sampler,
        "guidance_scale": "2.0",
    }
    r = client.post(
        "/v1/img2img",
        files={"file": ("p.png", upload_png(image), "image/png")},
        data=data,
        headers={"Accept": "image/png"},
    )
    ours = png(r)
    pipe = sd_pipeline(store / "tiny-sd", StableDiffusionImg2ImgPipeline)
    theirs = diffusers_image(
        pipe,
        sampler,
        prompt="a blue house",
        image=Image.fromarray(image),
        strength=0.5,
        num_inference_steps=6,
        guidance_scale=3.0,
        generator=torch.Generator("cpu").manual_seed(8),
    )
    assert_same_image(ours, theirs)
    assert r.headers["x-seed"] == "8"


def test_img2img_on_a_pixel_model_stays_near_the_image_at_low_strength(client):
    image = np.full((16, 16), 90, dtype=np.uint8)
    image[4:12, 4:12] = 200
    data = {"model": "tiny-gen", "class_label": "a", "seed": "1", "steps": "20", "sampler": "ddim"}
    low = png(
        client.post(
            "/v1/img2img",
            files={"file": ("p.png", upload_png(image), "image/png")},
            data={**data, "strength": "0.05"},
            headers={"Accept": "image/png"},
        )
    )
    high = png(
        client.post(
            "/v1/img2img",
            files={"file": ("p.png", upload_png(image), "image/png")},
            data={**data, "strength": "1.0"},
            headers={"Accept": "image/png"},
        )
    )
    assert np.abs(low - image).mean() < np.abs(high - image).mean()
    assert np.abs(low - image).mean() < 25


def test_img2img_on_a_model_with_alpha_keeps_the_colours_and_starts_opaque(make_client, tmp_path):
    # an RGB upload to an RGBA model was averaged to one grey channel that broadcast over all four: the red
    # came back grey and a third transparent; a grey upload to a grey-and-alpha model lost its alpha the same way
    from tests.tiny_models import write_bare

    write_bare(tmp_path / "rgba", channels=4)
    write_bare(tmp_path / "la", channels=2)
    client = make_client(store=tmp_path)
    red = np.tile(np.array([230, 20, 20], dtype=np.uint8), (16, 16, 1))
    data = {"strength": "0.02", "steps": "50", "sampler": "ddim", "seed": "1"}
    for model, upload, expected in (("rgba", red, [230, 20, 20, 255]), ("la", red[..., 0], [230, 255])):
        r = client.post(
            "/v1/img2img",
            files={"file": ("p.png", upload_png(upload), "image/png")},
            data={**data, "model": model},
            headers={"Accept": "image/png"},
        )
        assert r.status_code == 200, r.text
        means = png(r).reshape(16 * 16, -1).mean(axis=0)
        assert np.abs(means - expected).max() < 6, (model, means)


def test_img2img_reports_what_it_changed_in_the_upload_and_the_steps_it_ran(client):
    """As a denoise does: an upload's alpha dropped is said in ``info``, with the int(steps x strength) steps run."""
    rgba = np.dstack([a_photo(16, 24), np.full((16, 24), 128, dtype=np.uint8)])
    data = {"model": "tiny-sd", "prompt": "a", "seed": "1", "steps": "10", "strength": "0.5"}
    r = client.post("/v1/img2img", files={"file": ("p.png", upload_png(rgba), "image/png")}, data=data)
    assert r.status_code == 200, r.text
    assert r.json()["info"] == {"alpha_dropped": True, "steps_run": 5}
    r = client.post("/v1/generate", json={"model": "tiny-sd", "prompt": "a", "steps": 2})
    assert r.status_code == 200 and r.json()["info"] == {}  # nothing uploaded, nothing to say


def test_img2img_refuses_what_it_cannot_do(client):
    files = {"file": ("p.png", upload_png(a_photo(17, 24)), "image/png")}  # 17: not a multiple of 2
    r = client.post("/v1/img2img", files=files, data={"model": "tiny-sd", "prompt": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "not_multiple"
    files = {"file": ("p.png", upload_png(a_photo()), "image/png")}
    r = client.post("/v1/img2img", files=files, data={"model": "tiny-sd", "steps": "4", "strength": "0.1"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "strength"]
    r = client.post("/v1/img2img", files=files, data={"model": "tiny-sd", "width": "24"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "width"]
    # DiT puts its patches back together as a square: any other shape had failed inside it (a 500)
    for height, width in ((16, 24), (24, 16)):
        files = {"file": ("p.png", upload_png(a_photo(height, width)), "image/png")}
        for extra in ({}, {"mask": ("m.png", upload_png(a_photo(height, width)), "image/png")}):  # and inpainting
            r = client.post("/v1/img2img", files={**files, **extra}, data={"model": "tiny-dit", "class_label": "3"})
            error = r.json()["detail"][0]
            assert r.status_code == 422 and error["type"] == "not_square" and f"{width}x{height}" in error["msg"], (
                r.text
            )
    square = {"file": ("p.png", upload_png(a_photo(16, 16)), "image/png")}
    r = client.post("/v1/img2img", files=square, data={"model": "tiny-dit", "class_label": "3", "steps": "2"})
    assert r.status_code == 200, r.text


def test_an_image_whose_attention_costs_past_the_limit_is_422_before_any_work(store, tmp_path):
    """Attention's cost grows with the square of its positions, which megapixel-steps do not price: a 2048x2048
    img2img on a model attending at 1/4 of its pixels (the shipped digits) had held the engine for minutes a
    step. Each family's finest attention layer, from its configs: here 64 positions allowed."""
    write_bare(tmp_path / "plain", attention=False)
    with TestClient(create_app(make_settings(store, max_attention_positions=64))) as c:
        ok = c.post("/v1/generate", json={"model": "tiny-sd", "prompt": "a", "width": 16, "height": 16, "steps": 1})
        assert ok.status_code == 200, ok.text  # 8 x 8 positions in its first level (VAE factor 2)
        r = c.post("/v1/generate", json={"model": "tiny-sd", "prompt": "a", "width": 18, "height": 16, "steps": 1})
        error = r.json()["detail"][0]
        assert r.status_code == 422 and error["type"] == "too_expensive" and error["loc"] == ["body", "width"]
        assert "72 positions in down block 0" in error["msg"] and "DIFFUSION_MAX_ATTENTION_POSITIONS" in error["msg"]
        assert "at most 256 pixels, e.g. 16x16" in error["msg"]
        files = {"file": ("p.png", upload_png(a_photo(32, 32)), "image/png")}
        r = c.post("/v1/img2img", files=files, data={"model": "tiny-gen", "class_label": "0"})  # its middle block
        error = r.json()["detail"][0]
        assert r.status_code == 422 and error["loc"] == ["body", "file"] and "in its middle block" in error["msg"]
        r = c.post("/v1/img2img", files=files, data={"model": "tiny-dit", "class_label": "0"})
        assert r.status_code == 422 and "its VAE's middle block" in r.json()["detail"][0]["msg"]
    with TestClient(create_app(make_settings(store, max_attention_positions=32))) as c:  # under its own size
        r = c.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, "steps": 1})
        error = r.json()["detail"][0]
        assert r.status_code == 422 and error["loc"] == ["body", "model"] and "at its native size" in error["msg"]
    with TestClient(create_app(make_settings(tmp_path, max_attention_positions=64))) as c:
        files = {"file": ("p.png", upload_png(a_photo(32, 32)), "image/png")}
        r = c.post("/v1/img2img", files=files, data={"model": "plain", "steps": "2"})
        assert r.status_code == 200, r.text  # it attends nowhere: only megapixel-steps price it


def test_img2img_is_priced_and_previewed_on_the_steps_it_runs(store):
    """img2img runs int(steps x strength) of its steps: it was priced and its previews counted on all of them,
    so 100 steps at strength 0.1 (10 evaluations) was refused where 10 at strength 1 passed."""
    photo = {"file": ("p.png", upload_png(a_photo(16, 24)), "image/png")}  # latents 8 x 12, guided: 192 a step
    base = {"model": "tiny-sd", "prompt": "a", "seed": "1", "guidance_scale": "2"}
    with TestClient(create_app(make_settings(store, max_job_megapixel_steps=0.002))) as c:
        for steps, strength in (("10", "1"), ("100", "0.1")):  # 10 evaluations each: 0.00192 megapixel-steps
            r = c.post("/v1/img2img", files=photo, data={**base, "steps": steps, "strength": strength})
            assert r.status_code == 200, (steps, strength, r.text)
        r = c.post("/v1/img2img", files=photo, data={**base, "steps": "100", "strength": "0.2"})  # 20 of them
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_expensive", r.text
    with TestClient(create_app(make_settings(store))) as c:
        r = c.post("/v1/img2img", files=photo, data={**base, "steps": "200", "strength": "0.25", "preview_every": "1"})
        assert r.status_code == 200, r.text  # 50 steps run: 50 previews, the most a job may ask for
        r = c.post("/v1/img2img", files=photo, data={**base, "steps": "200", "strength": "0.3", "preview_every": "1"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_many_previews", r.text
        assert r.json()["detail"][0]["msg"].startswith("60 steps with a preview every 1")


def test_the_finest_attention_is_read_as_diffusers_builds_the_network(store):
    """Block types a config leaves out are diffusers' defaults (UNet2DModel attends from its second level);
    a VAE's own attention blocks count where they are finer than its middle block."""
    entries = scan_store(store)
    gen, sd = entries["tiny-gen"], entries["tiny-sd"]
    assert gen.attention_stride == (2, "its middle block") and sd.attention_stride == (2, "down block 0")
    gen.denoiser_config = {k: v for k, v in gen.denoiser_config.items() if not k.endswith("block_types")}
    assert gen.attention_stride == (2, "down block 1")
    sd.configs["vae"] = {**sd.configs["vae"], "down_block_types": ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]}
    assert sd.attention_stride == (1, "its VAE's encoder block 0")


def test_inpainting_keeps_the_unmasked_part_of_a_pixel_image_exactly(client):
    image = np.full((16, 16), 60, dtype=np.uint8)
    image[:, 8:] = 220
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255  # repaint the middle
    files = {"file": ("p.png", upload_png(image), "image/png"), "mask": ("m.png", upload_png(mask), "image/png")}
    data = {"model": "tiny-gen", "class_label": "b", "seed": "3", "steps": "10", "strength": "1.0"}
    out = png(client.post("/v1/img2img", files=files, data=data, headers={"Accept": "image/png"}))
    kept = mask == 0
    assert np.abs(out[kept] - image[kept]).max() <= 1  # the last step puts the image itself back
    assert np.abs(out[~kept] - image[~kept]).mean() > 5  # the middle was drawn anew


def test_inpainting_works_on_latent_models_and_checks_the_mask(client):
    image, mask = a_photo(), np.zeros((16, 24), dtype=np.uint8)
    mask[:, 12:] = 255
    files = {"file": ("p.png", upload_png(image), "image/png"), "mask": ("m.png", upload_png(mask), "image/png")}
    data = {"model": "tiny-sd", "prompt": "a door", "seed": "5", "steps": "4", "strength": "1.0"}
    masked = png(client.post("/v1/img2img", files=files, data=data, headers={"Accept": "image/png"}))
    plain = png(client.post("/v1/img2img", files={"file": files["file"]}, data=data, headers={"Accept": "image/png"}))
    assert masked.shape == plain.shape and np.abs(masked - plain).max() > 0
    wrong = {"file": files["file"], "mask": ("m.png", upload_png(mask[:8]), "image/png")}
    r = client.post("/v1/img2img", files=wrong, data=data)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "mask"]
    r = client.post("/v1/denoise", files=files, data={"sigma": "5"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "mask"]  # only img2img takes one


@pytest.mark.parametrize(
    "model,sampler,strength,steps",
    [
        ("tiny-sd", "ddim", 1.0, 5),
        ("tiny-sd", "euler", 1.0, 5),
        ("tiny-sd", "ddim", 0.6, 5),
        ("tiny-sd-linspace", "ddim", 0.5, 6),  # the kept region is noised to the next timestep's level, not t - T//N
        ("tiny-sd2", "ddim", 0.5, 5),
        ("tiny-sd-unspaced", "dpmpp_2m", 0.5, 5),
        ("tiny-sd-inpaint", "ddim", 1.0, 5),
        ("tiny-sd-inpaint", "euler_a", 1.0, 5),
        ("tiny-sd-inpaint", "dpmpp_2m_karras", 0.7, 5),
    ],
)
def test_inpainting_gives_the_inpaint_pipelines_image(client, store, model, sampler, strength, steps):
    from diffusers import StableDiffusionInpaintPipeline

    image, mask = a_photo(), np.zeros((16, 24), dtype=np.uint8)
    mask[2:14, 6:18] = 255
    files = {"file": ("p.png", upload_png(image), "image/png"), "mask": ("m.png", upload_png(mask), "image/png")}
    data = {
        "model": model,
        "prompt": "a green door",
        "seed": "9",
        "steps": str(steps),
        "strength": str(strength),
        "sampler": sampler,
        "guidance_scale": "3.0",
    }
    ours = png(client.post("/v1/img2img", files=files, data=data, headers={"Accept": "image/png"}))
    pipe = sd_pipeline(store / model, StableDiffusionInpaintPipeline)
    theirs = diffusers_image(
        pipe,
        sampler,
        prompt="a green door",
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=4.0,
        width=24,
        height=16,
        generator=torch.Generator("cpu").manual_seed(9),
    )
    assert_same_image(ours, theirs)


def test_an_inpainting_model_needs_an_image_and_a_mask(client):
    r = client.post("/v1/generate", json={"model": "tiny-sd-inpaint", "prompt": "x"})
    assert r.status_code == 422 and "mask" in r.json()["detail"][0]["msg"]
    assert r.json()["detail"][0]["loc"] == ["body", "model"] and "/v1/img2img" in r.json()["detail"][0]["msg"]
    # on /v1/img2img with the image but no mask: the mask is what is missing, not the route
    files = {"file": ("p.png", upload_png(a_photo(16, 24)), "image/png")}
    r = client.post("/v1/img2img", files=files, data={"model": "tiny-sd-inpaint", "prompt": "x"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "mask"] and r.json()["detail"][0]["type"] == "missing"
    assert "/v1/img2img" not in r.json()["detail"][0]["msg"]


def test_a_latent_job_can_be_cancelled_and_a_failing_one_fails_alone(client):
    import time

    job = client.post(
        "/v1/generate",
        json={"model": "tiny-sd", "prompt": "long", "steps": 900, "sampler": "ddim"},
        headers={"Prefer": "respond-async"},
    ).json()["job_id"]
    while client.get(f"/v1/jobs/{job}").json()["status"] == "queued":
        time.sleep(0.01)
    assert client.delete(f"/v1/jobs/{job}").json()["status"] == "canceled"

    model = client.app.state.queue.engine.models["tiny-sd"]
    original = model.predict
    poisoned = model.encode_prompts(["boom"])[0]

    def predict(x, t, conds):
        if any(c is not None and torch.equal(c, poisoned) for c in conds):
            raise RuntimeError("this prompt breaks the network (simulated)")
        return original(x, t, conds)

    model.predict = predict
    try:
        bad = client.post(
            "/v1/generate", json={"model": "tiny-sd", "prompt": "boom", "steps": 3}, headers={"Prefer": "respond-async"}
        ).json()["job_id"]
        good = client.post("/v1/generate", json={"model": "tiny-sd", "prompt": "fine", "steps": 3})
        assert good.status_code == 200 and good.json()["status"] == "succeeded"
        while client.get(f"/v1/jobs/{bad}").json()["status"] in ("queued", "running"):
            time.sleep(0.01)
        assert "simulated" in client.get(f"/v1/jobs/{bad}").json()["error"]
    finally:
        model.predict = original


def test_steps_past_the_schedules_end_are_422_not_a_failed_job(client):
    # Stable Diffusion's configs: leading spacing with steps_offset 1, so 1000 steps would reach timestep 1000
    r = client.post("/v1/generate", json={"model": "tiny-sd", "steps": 1000, "sampler": "ddim"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "steps"]
    assert "at most 999" in r.json()["detail"][0]["msg"]
    ok = client.post(
        "/v1/generate",
        json={"model": "tiny-sd", "steps": 1000, "sampler": "dpmpp_2m_karras"},
        headers={"Prefer": "respond-async"},
    )
    assert ok.status_code == 202
    client.delete(f"/v1/jobs/{ok.json()['job_id']}")


def test_a_dpm_grid_that_collapses_is_422_not_an_image_of_noise(client):
    """DPM-Solver's leading spacing at T steps puts every timestep at 0 (diffusers' rule: T // (T + 1) = 0): the
    job had run one step from pure noise and answered a noise image as succeeded."""
    r = client.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, "steps": 1000, "sampler": "dpmpp_2m"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "steps"]
    assert "dpmpp_2m takes at most 999 steps" in r.json()["detail"][0]["msg"]
    ok = client.post(
        "/v1/generate",
        json={"model": "tiny-gen", "class_label": 0, "steps": 999, "sampler": "dpmpp_2m"},
        headers={"Prefer": "respond-async"},
    )
    assert ok.status_code == 202
    client.delete(f"/v1/jobs/{ok.json()['job_id']}")


@pytest.mark.parametrize("offset", [0, None])
def test_a_stable_diffusion_config_with_steps_offset_0_or_none_steps_as_its_pipeline_sets_it(tmp_path, offset):
    """Stable Diffusion's pipelines set steps_offset to 1 whatever the config says (an "outdated" config): with
    leading spacing the service had stepped from timestep 800 where the pipeline steps from 801."""
    from diffusers import StableDiffusionPipeline

    from app.diffusion.samplers import spaced_timesteps
    from app.diffusion.schedule import NoiseSchedule
    from app.store.catalog import scan_store

    folder = write_stable_diffusion(tmp_path / "old-config")
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.pop("steps_offset") if offset is None else config.update(steps_offset=offset)
    path.write_text(json.dumps(config))
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler.set_timesteps(5)
    entry = scan_store(tmp_path)["old-config"]
    schedule = NoiseSchedule.from_config(entry.scheduler_config)
    ours = spaced_timesteps(schedule.num_train_timesteps, 5, schedule.spacing, steps_offset=schedule.steps_offset)
    assert ours == pipe.scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_trailing_spacing_at_a_count_whose_grid_reaches_timestep_minus_1_is_422(client, sampler):
    """np.arange's rounding gives trailing spacing one point too many at 61, 103, 121 ... of 1,000 steps, the last
    at timestep -1 (in diffusers too), which reads the schedule's far end: the job had answered a broken image."""
    r = client.post("/v1/generate", json={"model": "tiny-sd2", "prompt": "a", "steps": 61, "sampler": sampler})
    error = r.json()["detail"][0]
    assert r.status_code == 422 and error["loc"] == ["body", "steps"]
    assert f"{sampler} cannot take 61 steps" in error["msg"] and "60 or 62 can" in error["msg"]
    ok = client.post("/v1/generate", json={"model": "tiny-sd2", "prompt": "a", "steps": 60, "sampler": sampler})
    assert ok.status_code == 200, ok.text


def test_img2img_with_a_merged_dpm_grid_still_runs(client):
    # linspace spacing at T steps rounds two timesteps to one: 999 steps run (a collapsed grid is refused above)
    image = np.full((16, 16, 3), 120, dtype=np.uint8)
    data = {"model": "tiny-sd-linspace", "prompt": "a", "steps": "1000", "sampler": "dpmpp_2m", "strength": "0.5"}
    r = client.post(
        "/v1/img2img", files={"file": ("p.png", upload_png(image), "image/png")}, data={**data, "seed": "2"}
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded"


def test_malformed_folders_are_refused_with_a_reason_not_fatal(tmp_path):
    import json as _json

    from app.store.catalog import scan_store

    write_stable_diffusion(tmp_path / "nulls")
    index = _json.loads((tmp_path / "nulls" / "model_index.json").read_text())
    index["safety_checker"] = None  # as some hub folders have it
    (tmp_path / "nulls" / "model_index.json").write_text(_json.dumps(index))
    write_dit(tmp_path / "labels")
    index = _json.loads((tmp_path / "labels" / "model_index.json").read_text())
    index["id2label"] = {"cat": "tabby"}
    (tmp_path / "labels" / "model_index.json").write_text(_json.dumps(index))
    entries = scan_store(tmp_path)
    assert entries["nulls"].ready
    assert not entries["labels"].ready and "id2label" in entries["labels"].error


@pytest.mark.parametrize("component,tensor", [("unet", "conv_in.weight"), ("text_encoder", None), ("vae", None)])
def test_weights_that_lack_a_tensor_are_refused_at_load_not_served_as_black_images(tmp_path, component, tensor):
    from safetensors.torch import load_file, save_file

    from app.store.catalog import ModelRefused, scan_store
    from app.store.loader import load_model

    folder = write_stable_diffusion(tmp_path / "holes")
    (weights,) = (folder / component).glob("*.safetensors")
    state = load_file(weights)
    dropped = tensor or sorted(state)[0]
    del state[dropped]
    save_file(state, weights)
    entry = scan_store(tmp_path)["holes"]
    with pytest.raises(ModelRefused, match="lack or misshape") as refused:
        load_model(entry, torch.device("cpu"))
    assert dropped in str(refused.value) and component in str(refused.value)


@pytest.mark.parametrize(
    "component,file,change,reason",
    [
        ("text_encoder", "config.json", {"hidden_size": 24}, "cross_attention_dim"),
        ("vae", "config.json", {"latent_channels": 8}, "in_channels is 4"),
        ("text_encoder", "config.json", {"max_position_embeddings": 8}, "model_max_length"),
        ("tokenizer", "tokenizer_config.json", {"model_max_length": 1e30}, "model_max_length"),
        ("unet", "config.json", {"class_embed_type": "timestep"}, "class_embed_type"),
        ("unet", "config.json", {"out_channels": 8}, "out_channels is 8"),
        ("unet", "config.json", {"cross_attention_dim": None}, "cross_attention_dim is 1280"),  # the default
    ],
)
def test_components_that_do_not_fit_together_are_refused_at_scan_not_failed_at_every_request(
    tmp_path, component, file, change, reason
):
    import json as _json

    from app.store.catalog import scan_store

    folder = write_stable_diffusion(tmp_path / "misfit")
    path = folder / component / file
    config = {**_json.loads(path.read_text()), **change}
    path.write_text(_json.dumps({key: value for key, value in config.items() if value is not None}))
    entry = scan_store(tmp_path)["misfit"]
    assert not entry.ready and reason in entry.error, entry.error


def test_a_dit_config_without_num_embeds_ada_norm_has_the_classes_default_of_1000(tmp_path):
    import json as _json

    from app.store.catalog import scan_store

    folder = write_dit(tmp_path / "terse")
    path = folder / "transformer" / "config.json"
    config = _json.loads(path.read_text())
    assert config.pop("num_embeds_ada_norm") == 1000
    path.write_text(_json.dumps(config))
    entry = scan_store(tmp_path)["terse"]
    assert entry.ready and entry.num_classes == 1001 and entry.null_class == 1000


@pytest.mark.parametrize(
    "scheduler,option,value",
    [
        ("DPMSolverMultistepScheduler", "algorithm_type", "sde-dpmsolver++"),
        ("DPMSolverMultistepScheduler", "solver_order", 3),
        ("DPMSolverMultistepScheduler", "use_lu_lambdas", True),
        ("DPMSolverMultistepScheduler", "lambda_min_clipped", -5.1),  # its grid starts lower: 995, not 999
        ("EulerDiscreteScheduler", "interpolation_type", "log_linear"),
        ("EulerDiscreteScheduler", "use_karras_sigmas", True),
    ],
)
def test_a_scheduler_option_no_sampler_implements_refuses_the_model_naming_it(tmp_path, scheduler, option, value):
    import json as _json

    from app.store.catalog import scan_store

    folder = write_stable_diffusion(tmp_path / "options")
    path = folder / "scheduler" / "scheduler_config.json"
    config = {**_json.loads(path.read_text()), "_class_name": scheduler}
    path.write_text(_json.dumps(config))
    assert scan_store(tmp_path)["options"].ready  # its options at their defaults: served
    path.write_text(_json.dumps({**config, option: value}))
    entry = scan_store(tmp_path)["options"]
    assert not entry.ready and f"{option} {value!r}" in entry.error and scheduler in entry.error
    card = {"tasks": ["generate"], "defaults": {"sampler": "ddim", "steps": 20, "guidance_scale": 6.5}}
    (folder / "model_card.json").write_text(_json.dumps(card))
    served = scan_store(tmp_path)["options"]  # a card names its default sampler: nothing silently differs
    assert served.ready, served.error
    assert served.defaults.sampler == "ddim"


def test_dit_class_names_take_each_synonym_as_dit_pipeline_does(tmp_path):
    from diffusers import DiTPipeline

    from app.api.resolve import class_index
    from app.store.catalog import scan_store

    folder = write_dit(tmp_path / "named")
    index = json.loads((folder / "model_index.json").read_text())
    names = {str(i): f"class {i}" for i in range(1000)}
    names.update({"0": "tench, Tinca tinca", "1": "crane", "2": "crane, derrick"})
    (folder / "model_index.json").write_text(json.dumps({**index, "id2label": names}))
    entry = scan_store(tmp_path)["named"]
    pipe = DiTPipeline.from_pretrained(folder, local_files_only=True)
    for label in ("tench", "Tinca tinca", "derrick", "crane", "class 7"):  # "crane": the later class's, 2
        assert [class_index(entry, label)] == pipe.get_label_ids([label]), label
    assert class_index(entry, "tench, Tinca tinca") == 0  # the whole name too


def test_a_card_whose_channels_are_not_the_vaes_is_refused_at_scan(tmp_path):
    """Before, the card's channels were shown and img2img failed inside the VAE with a 500."""
    from app.store.catalog import scan_store

    folder = write_stable_diffusion(tmp_path / "grey")
    (folder / "model_card.json").write_text(json.dumps({"channels": 1, "tasks": ["generate"]}))
    entry = scan_store(tmp_path)["grey"]
    assert not entry.ready and "the vae makes 3-channel images" in entry.error, entry.error
    (folder / "model_card.json").write_text(json.dumps({"channels": 3, "tasks": ["generate"]}))
    assert scan_store(tmp_path)["grey"].ready
