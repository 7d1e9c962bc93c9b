"""diffusers' ``ResnetBlock2D`` in float32 on the CPU with fewer passes over its activations, the same function.

The block computes ``x + conv2(act(norm2(conv1(act(norm1(x))) + temb)))``, ``act`` SiLU or ReLU (the shortcut a 1x1
convolution where the channels change), then divides by ``output_scale_factor``, 1 in every model served
here. On 2 CPU cores a float32 pass of the photo denoiser spends about a quarter of its time outside the
convolutions, in such element-wise passes over tensors of many MB (``bench/bench_float32_paths.py``). This
forward, used where the pass runs float32 on the CPU without autograd:

- adds the shortcut inside the second convolution (oneDNN's sum post-op, the operator that
  ``torch.compile`` fuses a convolution and an addition into: ``torch.ops.mkldnn._convolution_pointwise``),
  and skips the division by 1;
- adds the time embedding in place (not as the first convolution's bias where the batch shares one: that
  rounds otherwise, so a row's result would depend on the rest of its batch);
- computes the activation in place.

Anything else (bf16 autocast, CUDA, gradients, training mode) runs diffusers' own forward. Measured on the
photo network: docs/denoising.md, "Faster passes".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


def _conv_add_op():
    """oneDNN's convolution with a fused addition, or None where this torch build lacks it."""
    try:
        return torch.ops.mkldnn._convolution_pointwise.binary if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_CONV_ADD = _conv_add_op()

# diffusers' activation modules the fused forward computes in place, by the module's class
_IN_PLACE = {nn.SiLU: F.silu, nn.ReLU: F.relu}


def _plain_3x3(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.padding_mode == "zeros"
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
    )


class FusedResnetBlock2D(ResnetBlock2D):
    """A ``ResnetBlock2D`` whose float32 CPU inference takes the fused path; the same module (``fuse_resnets``
    changes its class, not its attributes), so its weights and state dict are diffusers'."""

    def _fused(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.conv2.weight.dtype == torch.float32
            and not self.training
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not self._fused(input_tensor):
            return super().forward(input_tensor, temb, *args, **kwargs)
        act = _IN_PLACE[type(self.nonlinearity)]
        h = self.conv1(act(self.norm1(input_tensor), inplace=True))
        if self.time_emb_proj is not None and temb is not None:
            h += self.time_emb_proj(temb if self.skip_time_act else self.nonlinearity(temb))[:, :, None, None]
        h = act(self.norm2(h), inplace=True)  # dropout: none outside training
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        conv2 = self.conv2
        return _CONV_ADD(
            h, shortcut, conv2.weight, conv2.bias, conv2.padding, conv2.stride, conv2.dilation, conv2.groups,
            "add", None, None, [], None,
        )  # fmt: skip


def _fits(module: nn.Module) -> bool:
    if type(module) is not ResnetBlock2D:  # diffusers' own class (a subclass may change what it computes)
        return False
    shortcut = module.conv_shortcut
    return (
        module.upsample is None
        and module.downsample is None
        and module.time_embedding_norm == "default"
        and module.output_scale_factor == 1.0
        and type(module.nonlinearity) in _IN_PLACE
        and isinstance(module.norm1, nn.GroupNorm)
        and isinstance(module.norm2, nn.GroupNorm)
        and _plain_3x3(module.conv1)
        and _plain_3x3(module.conv2)
        and (shortcut is None or (type(shortcut) is nn.Conv2d and shortcut.kernel_size == (1, 1)))
    )


def fuse_resnets(model: nn.Module) -> int:
    """Make every fitting ``ResnetBlock2D`` of ``model`` take the fused path in float32 on the CPU, in place;
    returns how many (0 where this torch build has no fused convolution)."""
    if _CONV_ADD is None:
        return 0
    fitting = [m for m in model.modules() if _fits(m)]
    for module in fitting:
        module.__class__ = FusedResnetBlock2D
    return len(fitting)
