"""The model store: diffusers' own layout loads, bad folders are refused with their reason."""

from __future__ import annotations

import json

import numpy as np
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, UNet2DModel
from safetensors.torch import load_file, save_file

from app.store.catalog import ModelRefused, safe_model_path, scan_store
from app.store.loader import load_model
from tests.tiny_models import (
    float32_bytes_of,
    tiny_scheduler,
    tiny_unet,
    write_bare,
    write_dit,
    write_folded,
    write_generator,
)


def test_what_ddpm_pipeline_save_pretrained_writes_loads_unchanged(tmp_path):
    unet = tiny_unet(channels=3)
    DDPMPipeline(unet=unet, scheduler=tiny_scheduler()).save_pretrained(tmp_path / "plain")
    entry = scan_store(tmp_path)["plain"]
    assert entry.status == "ready", entry.error
    assert entry.card.tasks == ["generate", "denoise"] and entry.card.null_class is None
    assert entry.channels == 3 and entry.image_size == (16, 16)
    loaded = load_model(entry, torch.device("cpu"))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    ours = loaded.unet.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in unet.state_dict().items())  # the weights, bit for bit
    # the same function (the loader makes the network channels-last and rewrites its upsamplers and ResNets,
    # app/families/rewrites.py: another summation order, same maths)
    assert {"PhaseUpsample2D", "FusedResnetBlock2D"} <= {type(m).__name__ for m in loaded.unet.modules()}
    with torch.inference_mode():
        assert torch.allclose(loaded.unet(x, t).sample, unet(x, t).sample, atol=1e-5)


def test_a_space_to_depth_model_serves_images_of_its_cards_channels_and_folds_around_its_network(tmp_path):
    write_folded(tmp_path / "folded")
    entry = scan_store(tmp_path)["folded"]
    assert entry.status == "ready", entry.error
    # 3 image channels (not the network's 12); sizes a multiple of the fold times the UNet's own 2
    assert (entry.channels, entry.fold, entry.downsample_factor, entry.size_multiple) == (3, 2, 4, 4)
    assert entry.image_size == (32, 32) and entry.tasks == ["generate", "denoise"]
    loaded = load_model(entry, torch.device("cpu"))
    x, t = torch.randn(2, 3, 20, 24), torch.tensor([10, 500])
    unfolded = F.pixel_shuffle(loaded.unet(F.pixel_unshuffle(x, 2), t).sample, 2)
    assert torch.equal(loaded.predict(x, t, [None, None]), unfolded)


@pytest.mark.parametrize(("fold", "reason"), [(1, "in_channels is 12, but 3-channel images need 3"), (3, "need 27")])
def test_a_network_whose_channels_do_not_fit_the_cards_fold_is_refused(tmp_path, fold, reason):
    folder = write_folded(tmp_path / "folded")
    card = json.loads((folder / "model_card.json").read_text())
    (folder / "model_card.json").write_text(json.dumps({**card, "space_to_depth": fold}))
    entry = scan_store(tmp_path)["folded"]
    assert entry.status == "error" and reason in entry.error


def test_space_to_depth_on_a_latent_model_is_refused(tmp_path):
    folder = write_dit(tmp_path / "dit")
    (folder / "model_card.json").write_text(json.dumps({"tasks": ["generate"], "space_to_depth": 2}))
    entry = scan_store(tmp_path)["dit"]
    assert entry.status == "error" and "space_to_depth is for pixel models" in entry.error


def test_a_dit_whose_card_gives_a_native_size_that_is_not_square_is_refused(tmp_path):
    """It was ready, and every request failed inside diffusers' unpatchify (a 500): a DiT puts its patches back
    together as a square, and generate runs at the native size."""
    folder = write_dit(tmp_path / "dit")
    (folder / "model_card.json").write_text(json.dumps({"tasks": ["generate"], "image_size": [16, 32]}))
    entry = scan_store(tmp_path)["dit"]
    assert entry.status == "error" and "square images only" in entry.error and "32x16" in entry.error
    (folder / "model_card.json").write_text(json.dumps({"tasks": ["generate"], "image_size": [32, 32]}))
    assert scan_store(tmp_path)["dit"].ready


def test_default_steps_beyond_a_short_schedule_are_refused_on_a_card_and_capped_without_one(tmp_path):
    """A schedule of 10 timesteps with the default 50 steps: every request that left steps out was a 422."""
    for name, write in (("carded", write_generator), ("bare", write_bare)):
        folder = write(tmp_path / name)
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "num_train_timesteps": 10}))
    card = json.loads((tmp_path / "carded" / "model_card.json").read_text())
    (tmp_path / "carded" / "model_card.json").write_text(json.dumps({**card, "defaults": {"steps": 50}}))
    entries = scan_store(tmp_path)
    assert entries["carded"].status == "error" and "default steps are 50" in entries["carded"].error
    assert entries["bare"].ready and entries["bare"].defaults.steps == 10


def test_pickle_weights_behind_a_linked_component_folder_are_refused_too(tmp_path):
    folder = write_bare(tmp_path / "store" / "m")
    (folder / "unet").rename(tmp_path / "unet-elsewhere")
    (folder / "unet").symlink_to(tmp_path / "unet-elsewhere", target_is_directory=True)
    assert scan_store(tmp_path / "store")["m"].ready
    (tmp_path / "unet-elsewhere" / "diffusion_pytorch_model.bin").write_bytes(b"pickled")
    entry = scan_store(tmp_path / "store")["m"]
    assert not entry.ready and "unet/diffusion_pytorch_model.bin" in entry.error


def test_pickle_weights_are_refused(tmp_path):
    folder = write_bare(tmp_path / "pickled")
    torch.save({"w": torch.zeros(1)}, folder / "unet" / "diffusion_pytorch_model.bin")
    entry = scan_store(tmp_path)["pickled"]
    assert entry.status == "error" and "pickle" in entry.error


def test_missing_safetensors_is_refused(tmp_path):
    folder = write_bare(tmp_path / "noweights")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    entry = scan_store(tmp_path)["noweights"]
    assert entry.status == "error" and "safetensors" in entry.error


def test_wrong_sha256_is_refused(tmp_path):
    folder = write_generator(tmp_path / "tampered")
    card = json.loads((folder / "model_card.json").read_text())
    card["sha256"]["unet/diffusion_pytorch_model.safetensors"] = "0" * 64
    (folder / "model_card.json").write_text(json.dumps(card))
    entry = scan_store(tmp_path)["tampered"]
    assert entry.status == "error" and "sha256" in entry.error


def test_bad_config_is_refused_and_other_models_still_load(tmp_path):
    write_generator(tmp_path / "good")
    folder = write_bare(tmp_path / "broken")
    (folder / "unet" / "config.json").write_text("{not json")
    entries = scan_store(tmp_path)
    assert entries["broken"].status == "error" and "config.json" in entries["broken"].error
    assert entries["good"].status == "ready"


def test_a_pixel_model_saved_with_the_old_attention_weight_names_loads_as_diffusers_loads_it(tmp_path):
    """Weights saved before diffusers 0.12 name attention's projections query, key, value and proj_attn;
    from_pretrained renames them (_fix_state_dict_keys_on_load), and so does the service's loader."""
    folder = write_bare(tmp_path / "old", attention=True)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in state.items():
        for new, old in old_names.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[key] = value
    assert any(".query." in key for key in renamed) and renamed.keys() != state.keys()
    save_file(renamed, path)
    entry = scan_store(tmp_path)["old"]
    loaded = load_model(entry, torch.device("cpu"))
    reference = UNet2DModel.from_pretrained(folder / "unet").eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.inference_mode():
        assert torch.allclose(loaded.unet(x, t).sample, reference(x, t).sample, atol=1e-5)


def test_a_pixel_model_without_a_card_is_served_whatever_its_schedulers_options(tmp_path):
    """Its default sampler is the card's (DDIM, 50 steps), not its scheduler's: an SDE DPM-Solver config (which
    refuses a latent model without a card, whose default comes from it) had refused it too."""
    folder = write_bare(tmp_path / "sde")
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(_class_name="DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++")
    path.write_text(json.dumps(config))
    entry = scan_store(tmp_path)["sde"]
    assert entry.ready, entry.error
    assert (entry.defaults.sampler, entry.defaults.steps) == ("ddim", 50)


@pytest.mark.parametrize(
    ("value", "raised"), [("1e999", "OverflowError"), ("Infinity", "OverflowError"), ("NaN", "ValueError")]
)
def test_a_config_number_that_is_not_finite_refuses_its_model_alone(tmp_path, value, raised):
    """Python's JSON reads 1e999 and Infinity as inf, which int() refuses with OverflowError: the scan (at start
    and at every reload) had raised it and stopped the whole service."""
    write_generator(tmp_path / "good")
    folder = write_bare(tmp_path / "broken")
    config = (folder / "unet" / "config.json").read_text()
    (folder / "unet" / "config.json").write_text(config.replace('"in_channels": 3', f'"in_channels": {value}'))
    entries = scan_store(tmp_path)
    assert entries["broken"].status == "error" and raised in entries["broken"].error, entries["broken"].error
    assert entries["good"].status == "ready"


def test_a_refused_model_with_a_card_is_listed_with_its_card_as_written(tmp_path):
    """A config value of the wrong shape refuses the folder at scan; the listing (GET /v1/models) then shows the
    reason and the card as written, where computing the card's sizes from that config had raised (a 500 for
    the whole list)."""
    folder = write_generator(tmp_path / "typo")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = 16  # a number where diffusers wants a list
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    write_bare(tmp_path / "good")
    entries = scan_store(tmp_path)
    listed = json.loads(json.dumps(entries["typo"].public()))
    assert listed["status"] == "error" and "malformed model folder: TypeError" in listed["error"]
    assert listed["card"]["class_names"] == ["a", "b", "c"] and "size_multiple" not in listed["card"]
    assert entries["good"].public()["card"]["size_multiple"] == 2  # a ready model's card is complete


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    folder = write_bare(tmp_path / "mismatch")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = [16, 32]
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    entry = scan_store(tmp_path)["mismatch"]
    with pytest.raises(ModelRefused):
        load_model(entry, torch.device("cpu"))


@pytest.mark.parametrize("name", ["../etc", "..", "a/b", "UPPER", ".hidden", "", "x" * 65, "a\x00b"])
def test_names_that_could_escape_the_store_are_refused(tmp_path, name):
    with pytest.raises(ModelRefused):
        safe_model_path(tmp_path, name)


def test_a_folder_linked_from_elsewhere_is_served_and_its_card_may_name_linked_files(tmp_path):
    """README: "copy or link it into the store". A Hugging Face cache snapshot links each file to a blob
    outside the snapshot folder; the card's sha256 paths read through such links."""
    from app.store.hashing import sha256_file

    outside = write_generator(tmp_path / "cache" / "snapshot")
    weights = outside / "unet" / "diffusion_pytorch_model.safetensors"
    blob = tmp_path / "cache" / "blobs" / "abc123"
    blob.parent.mkdir(parents=True)
    weights.rename(blob)
    os.symlink(blob, weights)
    card = json.loads((outside / "model_card.json").read_text())
    card["sha256"] = {"unet/diffusion_pytorch_model.safetensors": sha256_file(blob)}
    (outside / "model_card.json").write_text(json.dumps(card))
    store = tmp_path / "store"
    store.mkdir()
    os.symlink(outside, store / "linked")
    entry = scan_store(store)["linked"]
    assert entry.ready, entry.error
    assert entry.weights_bytes == float32_bytes_of(blob)


@pytest.mark.parametrize("rel", ["../outside.safetensors", "/etc/passwd", "unet/../../x", ""])
def test_card_paths_that_leave_the_model_folder_are_refused(tmp_path, rel):
    folder = write_generator(tmp_path / "m")
    card = json.loads((folder / "model_card.json").read_text())
    card["sha256"] = {rel: "0" * 64}
    (folder / "model_card.json").write_text(json.dumps(card))
    entry = scan_store(tmp_path)["m"]
    assert not entry.ready and "leaves the model folder" in entry.error


def test_a_folder_the_service_cannot_read_is_refused_alone(tmp_path, monkeypatch):
    """Tests run as root, whom file modes do not stop: the refusal a locked folder gives is simulated."""
    from app.store import catalog

    write_generator(tmp_path / "locked")
    write_generator(tmp_path / "open")
    family = catalog._family

    def refuse(folder):
        if folder.name == "locked":
            raise PermissionError(13, "Permission denied", str(folder / "model_index.json"))
        return family(folder)

    monkeypatch.setattr(catalog, "_family", refuse)
    entries = scan_store(tmp_path)
    assert entries["open"].ready
    assert not entries["locked"].ready and "Permission denied" in entries["locked"].error


def test_a_folder_name_that_is_not_utf8_is_listed_escaped_and_refused(tmp_path):
    write_generator(tmp_path / "fine")
    os.symlink(tmp_path / "fine", os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    entries = scan_store(tmp_path)
    (odd,) = [e for name, e in entries.items() if name != "fine"]
    assert odd.name == "caf\\xe9" and not odd.ready and "invalid model name" in odd.error
    json.dumps([e.public() for e in entries.values()])  # what GET /v1/models writes: no 500


@pytest.mark.parametrize(
    ("where", "change", "reason"),
    [
        ("unet", {"sample_size": None}, "sample_size is None"),  # UNet2DModel's own default
        ("unet", {"sample_size": [16]}, "sample_size is [16]"),
        ("card", {"image_size": [17, 17]}, "not in multiples of"),
        ("card", {"image_size": [0, 16]}, "image_size"),
        ("scheduler", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ("scheduler", {"rescale_betas_zero_snr": True, "trained_betas": [0.001] * 10}, "rescale_betas_zero_snr"),
        ("scheduler", {"thresholding": True}, "thresholding"),
        ("scheduler", {"variance_type": "learned_range"}, "learned_range"),
        ("scheduler", {"steps_offset": 1000}, "steps_offset"),  # the schedule has 1,000 steps: 0 to 999
        ("scheduler", {"num_train_timesteps": 10**9}, "num_train_timesteps"),
        ("scheduler", {"beta_schedule": "sigmoid"}, "beta_schedule"),
        ("scheduler", {"beta_end": float("inf")}, "beta_end must be a number greater than 0"),  # NaN alphas
        ("scheduler", {"beta_start": 0}, "beta_start must be a number greater than 0"),  # sigma 0 at t = 0
        ("scheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.0}, "beta_start must be"),
        ("scheduler", {"trained_betas": [0.0] + [0.001] * 9}, "trained_betas must be numbers greater than 0"),
        ("scheduler", {"beta_start": float("nan")}, "beta_start must be a number"),
        ("scheduler", {"beta_end": "0.02"}, "beta_end must be a number"),
        ("scheduler", {"trained_betas": [0.001] * 9 + [float("inf")]}, "trained_betas must be numbers"),
        # the schedule came from the list, the API's bounds from num_train_timesteps: 500s and other images
        ("scheduler", {"trained_betas": [0.001] * 10, "num_train_timesteps": 1000}, "trained_betas has 10 numbers"),
        ("scheduler", {"trained_betas": [0.001] * 1200}, "but num_train_timesteps is 1000"),
    ],
)
def test_sizes_and_schedules_the_model_cannot_serve_are_refused_at_scan_not_at_its_first_job(
    tmp_path, where, change, reason
):
    # the network's sample_size counts where no card gives the size
    folder = (write_bare if where == "unet" else write_generator)(tmp_path / "m")
    path = {
        "unet": folder / "unet" / "config.json",
        "card": folder / "model_card.json",
        "scheduler": folder / "scheduler" / "scheduler_config.json",
    }[where]
    config = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps({key: value for key, value in config.items() if value is not None or where == "unet"}))
    entry = scan_store(tmp_path)["m"]
    assert not entry.ready and reason in entry.error, entry.error
    json.dumps(entry.public())
    if where == "unet":  # with a card that names no size, the refused folder's card is still shown
        (folder / "model_card.json").write_text(json.dumps({"tasks": ["generate"]}))
        entry = scan_store(tmp_path)["m"]
        assert not entry.ready and reason in entry.error and entry.public()["card"]["image_size"] == [0, 0]


@pytest.mark.parametrize("embed", ["timestep", "identity"])
def test_a_pixel_unet_that_embeds_float_labels_is_refused_at_scan(tmp_path, embed):
    # it was listed ready and unconditional, and every job failed inside diffusers asking for class labels
    folder = write_bare(tmp_path / "m")
    path = folder / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "class_embed_type": embed}))
    entry = scan_store(tmp_path)["m"]
    assert not entry.ready and f"class_embed_type {embed!r}" in entry.error, entry.error


def test_trained_betas_as_many_as_the_train_timesteps_are_served_on_their_schedule(tmp_path):
    folder = write_generator(tmp_path / "m")
    path = folder / "scheduler" / "scheduler_config.json"
    betas = [float(b) for b in np.linspace(0.0002, 0.03, 1000)]
    path.write_text(json.dumps({**json.loads(path.read_text()), "trained_betas": betas}))
    entry = scan_store(tmp_path)["m"]
    assert entry.ready and entry.train_timesteps == 1000, entry.error


def test_weights_are_counted_as_the_files_that_are_loaded(tmp_path):
    folder = write_generator(tmp_path / "m")
    loaded = float32_bytes_of(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert scan_store(tmp_path)["m"].weights_bytes == loaded
    extra = (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(extra)  # a variant, not loaded
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "model.safetensors").write_bytes(extra)  # ignored by the service
    (folder / "v1-5-pruned.safetensors").write_bytes(extra)  # a single-file checkpoint beside the folder's
    entry = scan_store(tmp_path)["m"]
    assert entry.ready and entry.weights_bytes == loaded


def test_card_with_null_class_beyond_the_embeddings_is_refused(tmp_path):
    folder = write_generator(tmp_path / "badcard")
    card = json.loads((folder / "model_card.json").read_text())
    card["null_class"] = 99
    (folder / "model_card.json").write_text(json.dumps(card))
    assert scan_store(tmp_path)["badcard"].status == "error"
