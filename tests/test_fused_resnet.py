"""The fused float32 CPU forward of diffusers' ResnetBlock2D computes the same function as diffusers' own, and
is taken exactly where it applies."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D

from app.families import fused_resnet
from app.families.fused_resnet import FusedResnetBlock2D, fuse_resnets
from tests.tiny_models import tiny_unet, tiny_vae


def _jiggled(model: torch.nn.Module) -> torch.nn.Module:
    """diffusers starts some convolutions and biases at zero, which would hide a term left out."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _block(in_channels: int = 8, out_channels: int = 8, temb_channels: int | None = 12, **options) -> ResnetBlock2D:
    torch.manual_seed(0)
    block = ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, groups=4, **options
    )
    return _jiggled(block.eval())


def _fused(block: torch.nn.Module) -> torch.nn.Module:
    fast = copy.deepcopy(block)
    assert fuse_resnets(fast) == 1 and type(fast) is FusedResnetBlock2D
    return fast


@pytest.fixture
def conv_adds(monkeypatch):
    """How many times the fused convolution runs."""
    calls = []
    real = fused_resnet._CONV_ADD
    monkeypatch.setattr(fused_resnet, "_CONV_ADD", lambda *args: calls.append(1) or real(*args))
    return calls


@pytest.mark.parametrize("in_channels", [8, 4])  # the same channels: identity shortcut; else a 1x1 convolution
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("same_temb", [True, False])  # one embedding for the batch (a bias) or one per row
@pytest.mark.parametrize("act", ["silu", "relu"])
def test_the_fused_block_matches_diffusers(in_channels, channels_last, same_temb, act, conv_adds):
    block = _block(in_channels=in_channels, non_linearity=act)
    fast = _fused(block)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, in_channels, 10, 14, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    temb = torch.randn(1 if same_temb else 3, 12, generator=g).expand(3, 12)
    with torch.inference_mode():
        expected, got = block(x, temb), fast(x, temb)
    assert conv_adds == [1] and type(fast.nonlinearity) is type(block.nonlinearity)
    assert got.shape == expected.shape == (3, 8, 10, 14)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_block_without_time_embedding_matches_diffusers(conv_adds):
    block = _block(in_channels=4, temb_channels=None)  # as in a VAE
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(_fused(block)(x, None), block(x, None), rtol=1e-5, atol=1e-5)
    assert conv_adds == [1]


def test_autocast_gradients_and_training_take_diffusers_path(conv_adds):
    block = _block()
    fast = _fused(block)
    x, temb = torch.randn(2, 8, 6, 6), torch.randn(2, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x, temb), block(x, temb))
    x.requires_grad_(True)
    fast(x, temb).sum().backward()  # gradients flow: diffusers' forward, not the fused operator
    assert x.grad is not None and x.grad.abs().sum() > 0
    fast.train()
    with torch.no_grad():
        torch.manual_seed(5)
        a = fast(x, temb)
        torch.manual_seed(5)
        assert torch.equal(a, block.train()(x, temb))
    assert conv_adds == []


def test_only_blocks_computing_the_plain_function_are_replaced():
    untouched = [
        _block(up=True),
        _block(down=True),
        _block(time_embedding_norm="scale_shift"),
        _block(output_scale_factor=2.0),
        _block(non_linearity="mish"),
        _block(non_linearity="gelu"),
        type("Subclass", (ResnetBlock2D,), {})(in_channels=8, out_channels=8, temb_channels=12, groups=4),
    ]
    model = torch.nn.Sequential(*untouched, _block())
    assert fuse_resnets(model) == 1
    assert [type(m) for m in model][:-2] == [ResnetBlock2D] * (len(untouched) - 1)
    assert type(model[-2]).__name__ == "Subclass" and type(model[-1]) is FusedResnetBlock2D


def test_the_state_dict_keeps_diffusers_names_and_weights():
    unet = tiny_unet(channels=3)
    before = unet.state_dict()
    assert fuse_resnets(unet) == 8  # 1 per down level, 2 in the middle, 2 per up level
    after = unet.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("act_fn", ["silu", "relu"])
def test_unet_predicts_the_same_with_fused_blocks(conv_adds, act_fn):
    silu = tiny_unet(channels=3)
    unet = UNet2DModel.from_config({**silu.config, "act_fn": act_fn}).eval()
    unet.load_state_dict(silu.state_dict())
    unet = _jiggled(unet).to(memory_format=torch.channels_last)
    fast = copy.deepcopy(unet)
    count = fuse_resnets(fast)
    assert count == 8
    x = torch.randn(4, 3, 24, 40).contiguous(memory_format=torch.channels_last)
    for t in (torch.tensor([700.0] * 4), torch.tensor([10.0, 700.0, 700.0, 3.0])):
        with torch.inference_mode():
            torch.testing.assert_close(fast(x, t).sample, unet(x, t).sample, rtol=1e-4, atol=1e-5)
    assert len(conv_adds) == 2 * count


def test_vae_decodes_the_same_with_fused_blocks():
    vae = _jiggled(tiny_vae())
    fast = copy.deepcopy(vae)
    assert fuse_resnets(fast) >= 1
    z = torch.randn(1, vae.config.latent_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast.decode(z).sample, vae.decode(z).sample, rtol=1e-4, atol=1e-5)
