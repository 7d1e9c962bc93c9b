"""diffusers' ``Upsample2D`` (nearest x2, then a 3x3 convolution) rewritten as four 2x2 convolutions on the
input, one per output phase, computed as one transposed convolution: the same function for 4/9 of the
multiply-adds.

Derivation (the resize-convolution of Odena et al. 2016, "Deconvolution and Checkerboard Artifacts", is a
sub-pixel convolution, Shi et al. 2016). Let U = up(X), U[2i + a] = X[i] for a in {0, 1}, and
Y = conv3x3(U, k) with zero padding 1. Along one axis, output 2i + a reads U at 2i + a - 1, 2i + a, 2i + a + 1:

1. phase a = 0 reads X[i - 1], X[i], X[i]:      Y[2i]     = k0 X[i - 1] + (k1 + k2) X[i]
2. phase a = 1 reads X[i], X[i], X[i + 1]:      Y[2i + 1] = (k0 + k1) X[i] + k2 X[i + 1]
3. U's zero padding (U[-1], U[2W]) is X's zero padding (X[-1], X[W]), so the borders agree too.

In two dimensions each phase (a, b) is a 2x2 kernel, the 3x3 taps summed by rows as in 1-2 and by columns
likewise. The four phases, interleaved, are one transposed convolution of stride 2 and padding 1, which
oneDNN computes straight into the 2H x 2W output: output y takes input x through its kernel's tap
u = y - 2x + 1, so along one axis the 4-tap kernel is (k2, k1 + k2, k0 + k1, k0): u = 0 is phase 1's
X[i + 1], u = 1 phase 0's X[i], u = 2 phase 1's X[i], u = 3 phase 0's X[i - 1]. Floating-point sums run
in another order (differences ~1e-6).

In float32 on 2 CPU cores (AVX2) the photo network ran 6-13% faster in four of five paired runs, Stable
Diffusion's VAE decode 12% and its UNet 7%; in bf16 on a CPU with AVX512-BF16 no difference could be told
from the noise (bench/bench_denoise_speed.py, bench/bench_phase_upsample.py; docs/denoising.md). Those runs
computed the phases as one 4 x C_out-channel convolution and interleaved its four crops; the transposed
convolution takes about a quarter less time than that for the photo network's three upsamplers on 6 tiles
(44.2 against 32.7 ms in float32 with oneDNN limited to AVX2, 44.3 against 33.2 with AVX-512, 23.1 against
17.7 in bf16; 2026-12-05, an "AMD EPYC" VM with AVX512-BF16, 2 threads, a probe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import nn


# Along one axis, tap u of the transposed kernel sums the 3x3 kernel's taps k where _TAPS[u][k] (steps 1-2)
_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def transposed_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel [O, I, 3, 3] applied after nearest x2 -> the 4x4 kernel [I, O, 4, 4] of the transposed
    convolution (stride 2, padding 1) computing the same: rows summed as ``_TAPS`` says, columns likewise."""
    taps = torch.tensor(_TAPS, dtype=weight.dtype, device=weight.device)  # [u, k]
    return torch.einsum("uk,vl,oikl->iouv", taps, taps, weight)


class PhaseUpsample2D(Upsample2D):
    """An ``Upsample2D`` with nearest x2 and a 3x3 convolution of padding 1, computed by phases. It is the
    same module (``phase_upsamplers`` changes its class, not its attributes), so its weights and their
    names in the state dict stay diffusers' own. diffusers' path still runs for an explicit output size other
    than twice the input's, which UNet2DConditionModel asks for when a latent's sides do not halve evenly
    (nearest interpolation to such a size is not two phases)."""

    def kernel(self, dtype: torch.dtype) -> torch.Tensor:
        """The transposed kernel, made from the module's own weights at each call: no second copy of the
        weights in memory, for about 1 ms per pass of the photo network (three upsamplers, against about
        0.8 s) and 0.13 s per pass of Stable Diffusion 1.5's UNet (against about 16 s), both in float32 on 2
        AVX2 CPU cores."""
        return transposed_kernel(self.conv.weight).to(dtype)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs) -> torch.Tensor:
        h, w = x.shape[-2:]
        if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
            return super().forward(x, output_size, *args, **kwargs)  # nearest to another size: not phases
        bias = None if self.conv.bias is None else self.conv.bias.to(x.dtype)
        # oneDNN keeps the input's memory layout, so a model that is not channels-last does not become so
        return F.conv_transpose2d(x, self.kernel(x.dtype), bias, stride=2, padding=1)


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
