"""Weights in every layout save_pretrained writes (one file, sharded, a variant such as fp16) are served, held
in float32; what cannot be loaded as it is, is refused at scan with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMPipeline

from app.store.catalog import scan_store
from app.store.loader import load_model
from tests.tiny_models import float32_bytes_of, tiny_scheduler, tiny_unet

SHARD = "20KB"  # the tiny UNet's 0.17 MB in float32 becomes about ten files


def rounded_unet(dtype: torch.dtype):
    """A tiny UNet whose float32 weights are exactly representable in ``dtype``, so every layout holds them."""
    unet = tiny_unet(channels=3)
    return unet.to(dtype).float()


def save(folder, unet, *, dtype=torch.float32, **layout):
    DDPMPipeline(unet=unet.to(dtype), scheduler=tiny_scheduler()).save_pretrained(
        folder, safe_serialization=True, **layout
    )
    unet.float()
    return folder


LAYOUTS = {
    "plain": ({}, torch.float32, "diffusion_pytorch_model.safetensors"),
    "sharded": ({"max_shard_size": SHARD}, torch.float32, "diffusion_pytorch_model.safetensors.index.json"),
    "fp16": ({"variant": "fp16"}, torch.float16, "diffusion_pytorch_model.fp16.safetensors"),
    "fp16-sharded": (
        {"variant": "fp16", "max_shard_size": SHARD},
        torch.float16,
        "diffusion_pytorch_model.safetensors.index.fp16.json",
    ),
    "bf16": ({"variant": "bf16"}, torch.bfloat16, "diffusion_pytorch_model.bf16.safetensors"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_save_pretrained_writes_loads_the_same_weights_in_float32(tmp_path, layout):
    options, dtype, named = LAYOUTS[layout]
    reference = rounded_unet(torch.float16 if dtype == torch.float16 else torch.bfloat16)
    save(tmp_path / "plain", reference)
    save(tmp_path / "m", reference, dtype=dtype, **options)
    entries = scan_store(tmp_path)
    entry = entries["m"]
    assert entry.ready, entry.error
    weights = entry.weights["unet"]
    assert weights.name == named and weights.variant == options.get("variant")
    assert len(weights.files) > 1 if "max_shard_size" in options else len(weights.files) == 1
    shards = f", {len(weights.files)} shards" if len(weights.files) > 1 else ""
    assert entry.public()["weights"] == {"unet": f"{named}{shards}"}
    # the memory they take once loaded, whatever the files hold: the same for every layout
    assert entry.weights_bytes == entries["plain"].weights_bytes
    plain = tmp_path / "plain" / "unet" / "diffusion_pytorch_model.safetensors"
    assert entry.weights_bytes == float32_bytes_of(plain)
    loaded = load_model(entry, torch.device("cpu")).unet.state_dict()
    expected = reference.state_dict()
    assert all(v.dtype == torch.float32 for v in loaded.values())
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())  # bit for bit


def test_the_plain_files_are_loaded_where_a_variant_lies_beside_them(tmp_path):
    plain, other = rounded_unet(torch.float16), tiny_unet(channels=3, seed=9).half().float()
    save(tmp_path / "m", plain)
    save(tmp_path / "other", other, dtype=torch.float16, variant="fp16")
    variant = tmp_path / "other" / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    variant.rename(tmp_path / "m" / "unet" / variant.name)
    entry = scan_store(tmp_path)["m"]
    assert entry.ready and entry.weights["unet"].variant is None
    loaded = load_model(entry, torch.device("cpu")).unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in plain.state_dict().items())


def test_a_variant_is_chosen_by_precision_first_then_by_name(tmp_path):
    unet = rounded_unet(torch.bfloat16)
    for variant, dtype in (("ema", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        save(tmp_path / variant, unet, dtype=dtype, variant=variant)
    folder = tmp_path / "m"
    (folder / "unet").mkdir(parents=True)
    for variant in ("ema", "bf16", "fp16"):
        for path in (tmp_path / variant / "unet").iterdir():
            path.replace(folder / "unet" / path.name)
    (tmp_path / "fp16" / "scheduler").rename(folder / "scheduler")
    assert scan_store(tmp_path)["m"].weights["unet"].variant == "fp16"
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert scan_store(tmp_path)["m"].weights["unet"].variant == "bf16"
    (folder / "unet" / "diffusion_pytorch_model.bf16.safetensors").unlink()
    assert scan_store(tmp_path)["m"].weights["unet"].variant == "ema"


def _header(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw


def _index(folder):
    return folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"


def _edit_map(folder, change):
    index = json.loads(_index(folder).read_text())
    change(index["weight_map"])
    _index(folder).write_text(json.dumps(index))


def _first_shard(folder):
    return sorted((folder / "unet").glob("diffusion_pytorch_model-0*.safetensors"))[0]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (
            lambda f: (
                save(f.parent / "one", tiny_unet(channels=3))
                and (f.parent / "one" / "unet" / "diffusion_pytorch_model.safetensors").rename(
                    f / "unet" / "diffusion_pytorch_model.safetensors"
                )
            ),
            "holds both diffusion_pytorch_model.safetensors and the sharded "
            "diffusion_pytorch_model.safetensors.index.json: keep one",
        ),
        (lambda f: _first_shard(f).unlink(), "diffusion_pytorch_model-00001-of-"),
        (
            lambda f: _edit_map(f, lambda m: m.update({"conv_in.weight": "../../outside.safetensors"})),
            "names '../../outside.safetensors': shards must be .safetensors files beside the index",
        ),
        (
            lambda f: _edit_map(f, lambda m: m.update({"conv_in.weight": 7})),
            "every weight_map value must be a file name",
        ),
        (lambda f: _edit_map(f, lambda m: m.clear()), "has no weight_map of tensor names to files"),
        (lambda f: _index(f).write_text("{not json"), "unreadable unet/diffusion_pytorch_model.safetensors.index"),
        (
            lambda f: _first_shard(f).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!}"),
            "cannot be loaded by safetensors: Error while deserializing header: invalid JSON in header",
        ),
        (
            lambda f: _first_shard(f).write_bytes(b"\xff" * 16),
            "cannot be loaded by safetensors: Error while deserializing header: header too large",
        ),
        (  # cut short (a copy interrupted): refused at scan, where it had been listed and failed only to load
            lambda f: _first_shard(f).write_bytes(_first_shard(f).read_bytes()[:-8]),
            "cannot be loaded by safetensors: Error while deserializing header: incomplete metadata",
        ),
        (  # nested too deep for Python's parser: one such file must not stop the whole store's scan
            lambda f: _first_shard(f).write_bytes(len(b"[" * 100_000).to_bytes(8, "little") + b"[" * 100_000),
            "cannot be loaded by safetensors: Error while deserializing header: invalid JSON in header",
        ),
        (lambda f: _index(f).write_text("[" * 100_000), "unreadable unet/diffusion_pytorch_model.safetensors.index"),
        (
            lambda f: _first_shard(f).write_bytes(
                _header({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 0]}})
            ),
            "invalid value: integer `-1`, expected usize",
        ),
    ],
)
def test_weights_that_cannot_be_loaded_as_they_are_are_refused_at_scan_naming_why(tmp_path, spoil, reason):
    folder = save(tmp_path / "m", tiny_unet(channels=3), max_shard_size=SHARD)
    save(tmp_path / "other", tiny_unet(channels=3))
    spoil(folder)
    entries = scan_store(tmp_path)
    entry = entries["m"]
    assert not entry.ready and reason in entry.error, entry.error
    assert entries["other"].ready  # refused alone
    if reason.startswith("diffusion_pytorch_model-00001"):
        assert entry.error.endswith("which is missing")


def test_a_config_nested_too_deep_to_parse_refuses_its_model_alone(tmp_path):
    save(tmp_path / "other", tiny_unet(channels=3))
    folder = save(tmp_path / "m", tiny_unet(channels=3))
    (folder / "unet" / "config.json").write_text("[" * 100_000)
    entries = scan_store(tmp_path)
    assert not entries["m"].ready and "unreadable unet/config.json: RecursionError" in entries["m"].error
    assert entries["other"].ready


def test_a_component_without_weights_names_what_it_holds(tmp_path):
    folder = save(tmp_path / "m", tiny_unet(channels=3))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "unet" / "unet.safetensors")  # a name no loader reads
    entry = scan_store(tmp_path)["m"]
    assert not entry.ready
    assert entry.error == (
        "missing unet/ safetensors weights (diffusion_pytorch_model.safetensors, sharded or a variant): found "
        "unet.safetensors"
    )


@pytest.mark.parametrize(
    ("component", "rename", "reason"),
    [
        ("vae", ("diffusion_pytorch_model.safetensors", "model.safetensors"), "missing vae/ safetensors weights"),
        (
            "text_encoder",
            ("model.safetensors", "diffusion_pytorch_model.safetensors"),
            "missing text_encoder/ safetensors weights (model.safetensors",
        ),
        ("tokenizer", ("tokenizer.json", "vocab.json"), "tokenizer/vocab.json with merges.txt beside it"),
    ],
)
def test_files_under_a_name_their_library_does_not_load_are_refused_at_scan(tmp_path, component, rename, reason):
    """A VAE under transformers' file name, a text encoder under diffusers', a tokenizer's vocab without its
    merges: each was ready, and failed at its first load (a job's 500 where the model was not preloaded)."""
    from tests.tiny_models import write_stable_diffusion

    folder = write_stable_diffusion(tmp_path / "sd")
    assert scan_store(tmp_path)["sd"].ready
    (folder / component / rename[0]).rename(folder / component / rename[1])
    entry = scan_store(tmp_path)["sd"]
    assert not entry.ready and reason in entry.error, entry.error
