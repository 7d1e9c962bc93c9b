"""The training scripts' shared kit (precision, learning-rate curve), the denoiser's upload simulation, and a
tiny denoiser run that trains, saves a model the store accepts, and resumes into its upload phase."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train_denoiser  # noqa: E402
import trainkit  # noqa: E402
from app.diffusion.pixels import apply_transform  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_precision_on_the_cpu_follows_the_choice_and_the_hardware(monkeypatch, native):
    monkeypatch.setattr(trainkit, "cpu_prefers_bf16", lambda: native)
    assert trainkit.resolve_precision("fp32", CPU) == "fp32"
    assert trainkit.resolve_precision("cuda-bf16", CPU) == "fp32"
    assert trainkit.resolve_precision("bf16", CPU) == ("bf16" if native else "fp32")


def test_precision_on_cuda_is_bf16_unless_fp32_is_asked_for():
    cuda = torch.device("cuda")
    assert trainkit.resolve_precision("bf16", cuda) == "bf16"
    assert trainkit.resolve_precision("cuda-bf16", cuda) == "bf16"
    assert trainkit.resolve_precision("fp32", cuda) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        trainkit.resolve_precision("fp16", cuda)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_runs_convolutions_in_the_resolved_precision(precision, dtype):
    conv = torch.nn.Conv2d(3, 4, 3)
    with trainkit.autocast_for(CPU, precision):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == dtype


def test_learning_rate_warms_up_decays_to_a_tenth_and_stays_there():
    lr = [trainkit.lr_at(s, total=100, peak=1.0, warmup=10) for s in range(151)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    assert lr[100] == pytest.approx(0.1) and lr[150] == pytest.approx(0.1)


def test_an_upload_is_rounded_and_clipped_and_tweedie_recovers_x0_from_its_target():
    torch.manual_seed(0)
    x0 = torch.randint(0, 256, (4, 3, 16, 16)).float() / 127.5 - 1.0
    noise = torch.randn_like(x0)
    ab = torch.tensor([0.999, 0.99, 0.9, 0.5])
    x_t, target = train_denoiser.as_upload(x0, noise, ab)
    abc = ab.view(-1, 1, 1, 1)
    pixels = (x_t / abc.sqrt() + 1.0) * 127.5
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    assert (pixels.round() == 255).any() and (pixels.round() == 0).any()  # clipping really happens
    assert torch.allclose((x_t - (1 - abc).sqrt() * target) / abc.sqrt(), x0, atol=1e-5)
    assert not torch.allclose(target, noise, atol=1e-2)  # clipped pixels carry less noise than drawn


def test_the_uniform_share_of_sigma_draws_stays_in_its_range():
    schedule = train_denoiser.NoiseSchedule.from_config(dict(train_denoiser.build_scheduler().config))

    def sigmas(uniform: tuple[float, float]) -> np.ndarray:
        t, ab, by_sigma = train_denoiser.draw_timesteps(schedule, 4000, np.random.default_rng(0), uniform)
        return (127.5 * ((1 - ab) / ab).sqrt())[by_sigma].numpy()

    wide, narrow = sigmas((5.0, 100.0)), sigmas((5.0, 60.0))
    assert wide.min() >= 1.0 - 1e-3 and wide.max() <= 100.0 + 1e-2
    # Only the log-uniform half reaches above 60 in the narrow draw: about log(100/60)/log(100) of it.
    above = (narrow > 60.5).mean()
    assert 0.5 * np.log(100 / 60) / np.log(100) * 0.8 < above < 0.5 * np.log(100 / 60) / np.log(100) * 1.2
    assert (wide > 60.5).mean() > 2 * above
    assert (narrow <= 40).mean() > (wide <= 40).mean()


def _photos() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "colour": rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8),
        "grey": rng.integers(0, 256, size=(36, 36), dtype=np.uint8),
        "too-small": rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8),
    }


def _run(tmp_path: Path, *extra: str) -> dict:
    args = train_denoiser.parse_args(
        [
            "--out",
            str(tmp_path / "store" / "photos"),
            "--ckpt-dir",
            str(tmp_path / "ckpt"),
            "--channels",
            "8",
            "16",
            "--crop",
            "32",
            "--batch",
            "3",
            "--warmup",
            "1",
            "--precision",
            "fp32",
            *extra,
        ]
    )
    train_denoiser.train(args)
    entry = scan_store(tmp_path / "store")["photos"]
    return entry.card.training


def test_a_tiny_denoiser_trains_saves_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    first = _run(tmp_path, "--iters", "2", "--fresh")
    assert (first["iters"], first["precision"], first["channels"]) == (2, "fp32", [8, 16])
    assert (tmp_path / "ckpt" / "latest.pt").exists()
    state = torch.load(tmp_path / "ckpt" / "latest.pt", weights_only=True)
    assert state["step"] == 2

    resumed = _run(tmp_path, "--iters", "4", "--decay-iters", "2", "--upload-from", "2", "--upload-frac", "1")
    assert (resumed["iters"], resumed["decay_iters"], resumed["upload_from"]) == (4, 2, 2)
    assert torch.load(tmp_path / "ckpt" / "latest.pt", weights_only=True)["step"] == 4
    assert resumed["wall_clock_s"] >= round(state["elapsed_s"], 1)  # the time before the resume counts


def test_a_denoiser_run_can_start_from_a_released_model(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    _run(tmp_path, "--iters", "2", "--fresh")
    released = tmp_path / "released"
    (tmp_path / "store" / "photos").rename(released)
    before = UNet2DModel.from_pretrained(released / "unet").state_dict()

    captured = {}
    real_loop = train_denoiser.TrainLoop

    def loop_seeing_the_start(unet, args, device):  # the weights the optimiser starts from
        captured.update({k: v.clone() for k, v in unet.state_dict().items()})
        return real_loop(unet, args, device)

    monkeypatch.setattr(train_denoiser, "TrainLoop", loop_seeing_the_start)
    record = _run(tmp_path / "next", "--iters", "1", "--init-from", str(released), "--fresh")
    assert captured.keys() == before.keys()
    assert all(torch.equal(captured[k], before[k]) for k in before)
    assert record["init_from"]["iters"] == 2  # the released run's own record is kept
    assert record["iters"] == 1


def _random_unet(channels: tuple[int, ...], layers: int = 2) -> UNet2DModel:
    """A released network with every weight drawn away from diffusers' zero-initialised layers, so that every
    path counts in a comparison."""
    torch.manual_seed(0)
    unet = train_denoiser.build_unet(channels, layers)
    for p in unet.parameters():
        p.data.normal_(0, 0.1)
    return unet


@pytest.mark.parametrize(("before", "after"), [(1, 2), (1, 3), (2, 3)])
def test_a_deepened_denoiser_computes_exactly_what_the_released_one_did(before, after):
    released = _random_unet((8, 16, 16), before)
    grown = train_denoiser.build_unet((8, 16, 16), after)
    train_denoiser.deepen(released, grown)
    x, t = torch.randn(2, 3, 24, 32), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        want, got = released(x, t).sample, grown(x, t).sample
    assert want.abs().mean() > 0.05
    assert torch.equal(got, want)
    # and training can grow every added resnet: its last convolution gets a gradient at the start
    grown(x, t).sample.pow(2).mean().backward()
    assert grown.up_blocks[0].resnets[1].conv2.weight.grad.abs().sum() > 0
    assert grown.down_blocks[0].resnets[before].conv2.weight.grad.abs().sum() > 0


def test_deepening_refuses_fewer_resnets_or_other_channels():
    released = train_denoiser.build_unet((8, 16), 2)
    with pytest.raises(ValueError, match="cannot grow"):
        train_denoiser.deepen(released, train_denoiser.build_unet((8, 16), 1))
    with pytest.raises(ValueError, match="cannot grow"):
        train_denoiser.deepen(released, train_denoiser.build_unet((16, 16), 3))


def test_a_run_with_more_resnets_per_block_starts_from_the_grown_released_model(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    _run(tmp_path, "--iters", "2", "--layers-per-block", "1", "--fresh")
    released = tmp_path / "released"
    (tmp_path / "store" / "photos").rename(released)
    record = _run(tmp_path / "next", "--iters", "1", "--init-from", str(released), "--fresh")  # default: 2
    assert (record["layers_per_block"], record["init_from"]["layers_per_block"]) == (2, 1)
    grown = UNet2DModel.from_pretrained(tmp_path / "next" / "store" / "photos" / "unet")
    assert grown.config.layers_per_block == 2


def test_a_folded_network_starts_as_the_released_levels_below_the_first():
    released = _random_unet((8, 16, 32))
    folded = train_denoiser.build_unet((16, 32), 2, 12, released.time_embedding.linear_1.out_features)
    fresh = train_denoiser.fold_from(released, folded)
    resnet_in, resnet_out = "down_blocks.0.resnets.0.", "up_blocks.1.resnets.2."
    assert set(fresh) == {
        *(f"{m}.{p}" for m in ("conv_in", "conv_norm_out", "conv_out") for p in ("weight", "bias")),
        *(resnet_in + n for n in ("norm1.weight", "norm1.bias", "conv1.weight")),
        *(resnet_out + n for n in ("norm1.weight", "norm1.bias", "conv1.weight", "conv_shortcut.weight")),
    }
    t = torch.tensor([3.0, 700.5])
    with torch.no_grad():
        temb = released.time_embedding(released.time_proj(t))
        assert temb.abs().mean() > 0.05
        assert torch.allclose(folded.time_embedding(folded.time_proj(t)), temb, atol=1e-6)
        h = torch.randn(2, 16, 8, 8)
        assert torch.equal(folded.down_blocks[0].resnets[1](h, temb), released.down_blocks[1].resnets[1](h, temb))
        m = torch.randn(2, 32, 4, 4)
        assert torch.equal(folded.mid_block(m, temb), released.mid_block(m, temb))
        skips = (torch.randn(2, 16, 4, 4), torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4))
        assert torch.equal(folded.up_blocks[0](m, skips, temb), released.up_blocks[0](m, skips, temb))


def _fresh(prefix: str, module: torch.nn.Module) -> set[str]:
    return {f"{prefix}.{name}" for name in module.state_dict()}


def test_a_deeper_network_starts_as_the_released_levels_over_a_new_one():
    released = _random_unet((8, 16, 16))
    deeper = train_denoiser.build_unet((8, 16, 16, 16), 2)
    fresh = train_denoiser.carry_levels(released, deeper)
    assert set(fresh) == {
        *_fresh("down_blocks.2.downsamplers", deeper.down_blocks[2].downsamplers),  # the released deepest had none
        *_fresh("down_blocks.3", deeper.down_blocks[3]),
        *_fresh("up_blocks.0", deeper.up_blocks[0]),
    }
    t = torch.tensor([3.0, 700.5])
    with torch.no_grad():
        temb = released.time_embedding(released.time_proj(t))
        assert torch.equal(deeper.time_embedding(deeper.time_proj(t)), temb)
        x = torch.randn(2, 3, 16, 16)
        assert torch.equal(deeper.conv_in(x), released.conv_in(x))
        for k, shape in enumerate(((2, 8, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4))):
            h = torch.randn(shape)
            assert torch.equal(deeper.down_blocks[k].resnets[1](h, temb), released.down_blocks[k].resnets[1](h, temb))
        m = torch.randn(2, 16, 4, 4)
        assert torch.equal(deeper.mid_block(m, temb), released.mid_block(m, temb))
        skips = (torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4))
        # released up block k is the deeper network's k + 1: the same skips, the same upsampler
        assert torch.equal(deeper.up_blocks[1](m, skips, temb), released.up_blocks[0](m, skips, temb))
        assert torch.equal(deeper.conv_out(m[:, :8]), released.conv_out(m[:, :8]))


def test_a_folded_network_may_have_a_new_level_below_the_released_ones():
    released = _random_unet((8, 16, 32))
    width = released.time_embedding.linear_1.out_features
    folded = train_denoiser.build_unet((16, 32, 32), 2, 12, width)
    fresh = set(train_denoiser.fold_from(released, folded))
    assert _fresh("down_blocks.2", folded.down_blocks[2]) | _fresh("up_blocks.0", folded.up_blocks[0]) <= fresh
    assert "down_blocks.1.downsamplers.0.conv.weight" in fresh and "conv_in.weight" in fresh
    assert "mid_block.resnets.0.conv1.weight" not in fresh
    t = torch.tensor([3.0, 700.5])
    with torch.no_grad():
        temb = released.time_embedding(released.time_proj(t))
        m = torch.randn(2, 32, 4, 4)
        skips = (torch.randn(2, 16, 4, 4), torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4))
        assert torch.equal(folded.up_blocks[1](m, skips, temb), released.up_blocks[0](m, skips, temb))
    with pytest.raises(ValueError, match="needs channels"):
        train_denoiser.carry_levels(released, train_denoiser.build_unet((8, 32, 32), 2))


def test_a_run_with_an_added_level_records_it_and_the_store_serves_it(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    _run(tmp_path, "--iters", "1", "--fresh")
    released = tmp_path / "released"
    (tmp_path / "store" / "photos").rename(released)
    record = _run(tmp_path / "deeper", "--iters", "1", "--init-from", str(released), "--add-levels", "1", "--fresh")
    assert (record["channels"], record["add_levels"], record["init_from"]["channels"]) == ([8, 16, 16], 1, [8, 16])
    folded = _run(tmp_path / "s2d", "--iters", "1", "--init-from", str(released), "--space-to-depth", "2")
    assert (folded["channels"], folded["add_levels"]) == ([16], 0)
    entry = scan_store(tmp_path / "deeper" / "store")["photos"]
    assert entry.status == "ready" and entry.channels == 3
    assert UNet2DModel.from_pretrained(entry.path / "unet").config.block_out_channels == [8, 16, 16]


class _Clock:
    """time.time for trainkit: one second later at every reading."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        self.now += 1.0
        return self.now


def _loop(tmp_path: Path, *extra: str) -> tuple[trainkit.TrainLoop, torch.nn.Linear]:
    parser = argparse.ArgumentParser()
    trainkit.add_training_args(parser, name="probe", iters=1000, batch=1, lr=1.0, channels=[8])
    args = parser.parse_args(["--ckpt-dir", str(tmp_path / "ckpt"), "--warmup", "2", *extra])
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 1)
    return trainkit.TrainLoop(layer, args, CPU), layer


def test_a_run_stops_at_its_wall_time_checkpointed_with_the_decay_at_its_floor(tmp_path, monkeypatch):
    monkeypatch.setattr(trainkit, "time", _Clock())
    loop, layer = _loop(tmp_path, "--stop-after", "40")
    rates = []
    for step in loop.steps("probe"):
        rates.append(loop.optimizer.param_groups[0]["lr"])
        loop.update(step, layer(torch.ones(1, 2)).pow(2).sum())
    assert 2 < loop.done < 1000  # stopped by the clock, not by --iters
    assert rates[:2] == [0.5, 1.0]  # the warm-up counts iterations
    assert all(a >= b for a, b in zip(rates[2:], rates[3:])) and rates[-1] < 0.2  # the decay follows the clock
    assert torch.load(tmp_path / "ckpt" / "latest.pt", weights_only=True)["step"] == loop.done
    assert loop.record()["iters"] == loop.done and loop.record()["stop_after_s"] == 40
    assert "decay_iters" not in loop.record()  # the decay followed the clock
    again, _ = _loop(tmp_path, "--stop-after", "40")  # resumed: its time is already spent
    assert list(again.steps("probe")) == [] and again.done == loop.done


def test_folding_refuses_other_channels():
    released = train_denoiser.build_unet((8, 16, 32), 2)
    with pytest.raises(ValueError, match="needs channels"):
        train_denoiser.fold_from(released, train_denoiser.build_unet((16, 64), 2, 12, 32))
    with pytest.raises(ValueError, match="time embedding"):
        train_denoiser.fold_from(released, train_denoiser.build_unet((16, 32), 2, 12))  # its own, wider embedding


def test_a_space_to_depth_run_folds_a_released_model_and_continues_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    _run(tmp_path, "--iters", "1", "--channels", "8", "16", "32", "--fresh")
    released = tmp_path / "released"
    (tmp_path / "store" / "photos").rename(released)
    record = _run(tmp_path / "s2d", "--iters", "2", "--init-from", str(released), "--space-to-depth", "2", "--fresh")
    assert (record["channels"], record["space_to_depth"], record["init_from"]["channels"]) == ([16, 32], 2, [8, 16, 32])
    entry = scan_store(tmp_path / "s2d" / "store")["photos"]
    assert entry.status == "ready" and (entry.fold, entry.channels, entry.card.space_to_depth) == (2, 3, 2)
    (tmp_path / "s2d" / "store" / "photos").rename(tmp_path / "folded")
    again = _run(tmp_path / "on", "--iters", "1", "--init-from", str(tmp_path / "folded"), "--space-to-depth", "2")
    assert (again["channels"], again["space_to_depth"]) == ([16, 32], 2)
    with pytest.raises(SystemExit, match="cannot start from a model folded 2x2"):
        _run(tmp_path / "back", "--iters", "1", "--init-from", str(tmp_path / "folded"), "--fresh")


def test_a_run_may_start_a_relu_network_from_a_silu_model_and_later_runs_keep_its_activation(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    _run(tmp_path, "--iters", "1", "--fresh")
    released = tmp_path / "released"
    (tmp_path / "store" / "photos").rename(released)
    started = []  # each run's network as it starts, before training moves its weights
    real_start = train_denoiser.start_network

    def start_seen(args):
        unet, before = real_start(args)
        started.append(copy.deepcopy(unet))
        return unet, before

    monkeypatch.setattr(train_denoiser, "start_network", start_seen)
    record = _run(tmp_path / "relu", "--iters", "1", "--init-from", str(released), "--act-fn", "relu", "--fresh")
    silu, relu = UNet2DModel.from_pretrained(released / "unet"), started[-1]
    assert (silu.config.act_fn, relu.config.act_fn, record["act_fn"]) == ("silu", "relu", "relu")
    assert all(torch.equal(relu.state_dict()[k], v) for k, v in silu.state_dict().items())  # the released weights
    resnets = [m for m in relu.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert resnets and all(isinstance(m.nonlinearity, torch.nn.ReLU) for m in resnets)  # diffusers' act_fn: the resnets
    entry = scan_store(tmp_path / "relu" / "store")["photos"]
    assert entry.status == "ready" and UNet2DModel.from_pretrained(entry.path / "unet").config.act_fn == "relu"
    (tmp_path / "relu" / "store" / "photos").rename(tmp_path / "relu-released")
    again = _run(tmp_path / "on", "--iters", "1", "--init-from", str(tmp_path / "relu-released"), "--fresh")
    assert again["act_fn"] == "relu"  # a continuation keeps the released activation unless told otherwise
    assert _run(tmp_path / "new", "--iters", "1", "--fresh")["act_fn"] == "silu"


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_a_distilled_run_takes_the_teachers_prediction_as_its_target(tmp_path, monkeypatch, weight):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    _run(tmp_path, "--iters", "1", "--fresh")
    teacher = tmp_path / "teacher"
    (tmp_path / "store" / "photos").rename(teacher)
    losses = []
    real_update = trainkit.TrainLoop.update

    def update_seeing_the_loss(self, step, loss):
        losses.append(loss.item())
        return real_update(self, step, loss)

    monkeypatch.setattr(train_denoiser.TrainLoop, "update", update_seeing_the_loss)
    # the student starts as the teacher's copy: against the teacher's prediction it has nothing to learn
    args = ("--iters", "1", "--init-from", str(teacher), "--distill-from", str(teacher), "--fresh")
    record = _run(tmp_path / "student", *args, "--distill-weight", str(weight))
    assert (record["distill_weight"], record["distill_from"], record["init_from"]["iters"]) == (weight, "init_from", 1)
    assert losses[0] < 1e-9 if weight == 1.0 else losses[0] > 1e-3


class _PositionalTeacher:
    """A teacher that is not equivariant: it weighs each pixel by its position (and adds the timestep)."""

    def predict(self, x: torch.Tensor, t: torch.Tensor, conds: list) -> torch.Tensor:
        assert len(conds) == len(x) == len(t)
        h, w = x.shape[-2:]
        ramp = torch.arange(h * w, dtype=torch.float32).view(h, w) / (h * w)
        return x * ramp + t.view(-1, 1, 1, 1)


def test_one_view_of_the_teacher_is_its_own_prediction():
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 7.0])
    teacher = _PositionalTeacher()
    assert torch.equal(train_denoiser.taught(teacher, x, t, 1), teacher.predict(x, t, [None, None]))


def test_the_eight_view_teacher_is_equivariant_to_flips_and_rotations():
    """Whatever the teacher, its prediction averaged over the whole dihedral group commutes with the group:
    the target a distilled student learns is as symmetric as the photos' statistics."""
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 7.0])
    teacher = _PositionalTeacher()
    eight = train_denoiser.taught(teacher, x, t, 8)
    for transform in [(1, False), (2, True), (3, True)]:
        moved = train_denoiser.taught(teacher, apply_transform(x, transform), t, 8)
        assert torch.allclose(moved, apply_transform(eight, transform), atol=1e-6)
        one = train_denoiser.taught(teacher, apply_transform(x, transform), t, 1)
        assert not torch.allclose(one, apply_transform(teacher.predict(x, t, [None] * 2), transform))
    # each view's prediction is undone before the average: the timestep's constant passes through unchanged
    assert torch.allclose(train_denoiser.taught(teacher, torch.zeros_like(x), t, 8), t.view(-1, 1, 1, 1).expand_as(x))


def test_a_run_distilled_from_several_views_records_them(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    _run(tmp_path, "--iters", "1", "--fresh")
    teacher = tmp_path / "teacher"
    (tmp_path / "store" / "photos").rename(teacher)
    args = ("--iters", "1", "--init-from", str(teacher), "--distill-from", str(teacher), "--fresh")
    record = _run(tmp_path / "student", *args, "--distill-views", "8")
    assert (record["distill_views"], record["distill_weight"]) == (8, 1.0)
    with pytest.raises(SystemExit):
        train_denoiser.parse_args(["--distill-views", "9"])
