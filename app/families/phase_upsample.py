"""diffusers' ``Upsample2D`` (nearest x2, then a 3x3 convolution) rewritten as four 2x2 convolutions on the
input, one per output phase: the same function for 4/9 of the multiply-adds.

Derivation (the resize-convolution of Odena et al. 2016, "Deconvolution and Checkerboard Artifacts", is a
sub-pixel convolution, Shi et al. 2016). Let U = up(X), U[2i + a] = X[i] for a in {0, 1}, and
Y = conv3x3(U, k) with zero padding 1. Along one axis, output 2i + a reads U at 2i + a - 1, 2i + a, 2i + a + 1:

1. phase a = 0 reads X[i - 1], X[i], X[i]:      Y[2i]     = k0 X[i - 1] + (k1 + k2) X[i]
2. phase a = 1 reads X[i], X[i], X[i + 1]:      Y[2i + 1] = (k0 + k1) X[i] + k2 X[i + 1]
3. U's zero padding (U[-1], U[2W]) is X's zero padding (X[-1], X[W]), so the borders agree too.

In two dimensions each phase (a, b) is a 2x2 kernel, the 3x3 taps summed by rows as in 1-2 and by columns
likewise. One convolution with 4 x C_out channels over X padded by 1 gives every phase on an (H+1)x(W+1)
grid; phase a's row i sits at i + a (its window starts one row later), so each phase is a shifted crop,
interleaved into the 2H x 2W output. Floating-point sums run in another order (differences ~1e-6).

In float32 on 2 CPU cores (AVX2) the photo network ran 6-13% faster in four of five paired runs, Stable
Diffusion's VAE decode 12% and its UNet 7%; in bf16 on a CPU with AVX512-BF16 no difference could be told
from the noise (bench/bench_denoise_speed.py, bench/bench_phase_upsample.py; docs/denoising.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import nn


# Steps 1 and 2 as matrices: row r of phase a's 2x2 kernel sums the 3x3 kernel's rows k where _SUMS[a][r][k]
_SUMS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel [O, I, 3, 3] applied after nearest x2 -> the four phases' 2x2 kernels, [(a, b, O), I, 2, 2]:
    rows summed as in steps 1-2, columns likewise (one einsum: 56 ms for 1280 x 1280 channels on 2 CPU cores)."""
    sums = torch.tensor(_SUMS, dtype=weight.dtype, device=weight.device)  # [a, r, k]
    out, inputs = weight.shape[:2]
    return torch.einsum("ark,bcl,oikl->aboirc", sums, sums, weight).reshape(4 * out, inputs, 2, 2)


class PhaseUpsample2D(Upsample2D):
    """An ``Upsample2D`` with nearest x2 and a 3x3 convolution of padding 1, computed by phases. It is the
    same module (``phase_upsamplers`` changes its class, not its attributes), so its weights and their
    names in the state dict stay diffusers' own. diffusers' path still runs for an explicit output size other
    than twice the input's, which UNet2DConditionModel asks for when a latent's sides do not halve evenly
    (nearest interpolation to such a size is not two phases)."""

    def kernels(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The phases' kernels and biases, made from the module's own weights at each call: no second copy of
        the weights in memory, for about 1 ms per pass of the photo network (three upsamplers, against
        about 0.8 s) and 0.13 s per pass of Stable Diffusion 1.5's UNet (against about 16 s), both in float32 on
        2 AVX2 CPU cores."""
        bias = None if self.conv.bias is None else self.conv.bias.repeat(4).to(dtype)
        return phase_kernels(self.conv.weight).to(dtype), bias

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs) -> torch.Tensor:
        n, _, h, w = x.shape
        if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
            return super().forward(x, output_size, *args, **kwargs)  # nearest to another size: not phases
        channels = self.out_channels
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), *self.kernels(x.dtype))  # channels (a, b, O), on (h + 1, w + 1)
        y = y.unflatten(1, (2, 2, channels))  # [n, a, b, O, h + 1, w + 1]: a view in either memory layout
        # the output keeps the input's memory layout, so a model that is not channels-last does not become so
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = y.new_empty(n, h, 2, w, 2, channels).permute(0, 5, 1, 2, 3, 4)
        else:
            out = y.new_empty(n, channels, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                out[:, :, :, a, :, b] = y[:, a, b, :, a : a + h, b : b + w]  # phase a's row i sits at i + a
        return out.view(n, channels, 2 * h, 2 * w)


def _fits(module: nn.Module) -> bool:
    if type(module) is not Upsample2D:  # diffusers' own class (a subclass may change what it computes)
        return False
    conv = getattr(module, "conv", None)
    return (
        module.interpolate
        and module.use_conv
        and not module.use_conv_transpose
        and module.norm is None
        and isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def phase_upsamplers(model: nn.Module) -> int:
    """Make every fitting ``Upsample2D`` of ``model`` (``model`` itself included) compute by phases, in
    place; returns how many."""
    fitting = [m for m in model.modules() if _fits(m)]
    for module in fitting:
        module.__class__ = PhaseUpsample2D
    return len(fitting)
