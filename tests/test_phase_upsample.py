"""The phase rewrite of diffusers' Upsample2D computes the same function as the module it replaces."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.upsampling import Upsample2D

from app.families.phase_upsample import PhaseUpsample2D, phase_upsamplers, transposed_kernel
from tests.tiny_models import tiny_unet, tiny_vae


def _upsample(channels: int = 5, out_channels: int = 7, seed: int = 0, **options) -> Upsample2D:
    torch.manual_seed(seed)
    module = Upsample2D(channels, use_conv=True, out_channels=out_channels, **options).eval()
    with torch.no_grad():
        module.conv.bias.normal_()  # diffusers starts biases at zero: make them count
    return module


def _phase(original: Upsample2D) -> Upsample2D:
    phase = copy.deepcopy(original)
    assert phase_upsamplers(phase) == 1 and type(phase) is PhaseUpsample2D
    return phase


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (8, 6), (7, 16)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_phase_upsample_matches_upsample2d(size, channels_last):
    original = _upsample()
    x = torch.randn(3, 5, *size, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = original(x)
        got = _phase(original)(x)
    assert got.shape == expected.shape == (3, 7, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if size != (1, 1):  # the input's layout is kept (a 1x1 input is both layouts at once)
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert got.is_contiguous() == (not channels_last)


def test_the_transposed_kernel_puts_each_tap_where_nearest_upsampling_reads_it():
    # a kernel that reads only the upper-left neighbour (tap 0, 0) of the upsampled image: output 2i + a
    # then reads X[i - 1] for a = 0 (transposed tap 3) and X[i] for a = 1 (tap 2), along each axis
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 0, 0] = 1.0
    kernel = transposed_kernel(weight)[0, 0]
    expected = torch.zeros(4, 4)
    expected[2:, 2:] = 1.0
    torch.testing.assert_close(kernel, expected)
    # every phase keeps the taps' sum (output 2i + a uses the transposed taps of the other parity: u = 1, 3
    # for a = 0 and u = 0, 2 for a = 1): a flat image stays flat
    kernel = transposed_kernel(torch.ones(1, 1, 3, 3))[0, 0]
    assert [kernel[a::2][:, b::2].sum().item() for a in (0, 1) for b in (0, 1)] == [9.0] * 4


def test_explicit_output_size_other_than_twice_runs_diffusers_path(monkeypatch):
    original = _upsample()
    phase = _phase(original)
    x = torch.randn(2, 5, 3, 5)
    with torch.no_grad():
        expected = {size: original(x, size) for size in ((5, 9), (6, 10))}
        calls = []
        own = Upsample2D.forward
        monkeypatch.setattr(Upsample2D, "forward", lambda self, *a, **k: calls.append(a[1:]) or own(self, *a, **k))
        torch.testing.assert_close(phase(x, (6, 10)), expected[(6, 10)], rtol=1e-5, atol=1e-5)
        assert calls == []  # twice the size: the phases
        torch.testing.assert_close(phase(x, (5, 9)), expected[(5, 9)])
        assert calls == [((5, 9),)]  # nearest to another size: diffusers' own path


def test_the_state_dict_keeps_diffusers_names_and_weights():
    unet = tiny_unet(channels=3)
    before = unet.state_dict()
    phase_upsamplers(unet)
    after = unet.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_bf16_autocast_keeps_the_dtype_and_the_result():
    original = _upsample()
    x = torch.randn(2, 5, 6, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = original(x), _phase(original)(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.05, atol=0.05)


def test_only_nearest_conv_upsamplers_are_replaced():
    untouched = [
        Upsample2D(4, use_conv=False),
        Upsample2D(4, use_conv_transpose=True),
        Upsample2D(4, use_conv=True, kernel_size=5, padding=2),
        Upsample2D(4, use_conv=True, norm_type="ln_norm", eps=1e-5, elementwise_affine=True),
    ]
    model = torch.nn.Sequential(*untouched, _upsample(4, 4))
    assert phase_upsamplers(model) == 1
    assert [type(m) for m in model] == [Upsample2D] * 4 + [PhaseUpsample2D]


def test_unet_predicts_the_same_with_phase_upsamplers():
    unet = tiny_unet(channels=3).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output convs would hide a wrong upsampler
    fast = copy.deepcopy(unet)
    assert phase_upsamplers(fast) == 1  # two levels: one upsampler
    x = torch.randn(2, 3, 24, 40).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        torch.testing.assert_close(fast(x, t).sample, unet(x, t).sample, rtol=1e-4, atol=1e-5)


def test_vae_decodes_the_same_with_phase_upsamplers():
    vae = tiny_vae()
    fast = copy.deepcopy(vae)
    assert phase_upsamplers(fast) >= 1
    z = torch.randn(1, vae.config.latent_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast.decode(z).sample, vae.decode(z).sample, rtol=1e-4, atol=1e-5)
