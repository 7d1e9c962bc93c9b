"""The loaders' rewrites of diffusers modules, in place, into classes that compute the same function faster."""

from __future__ import annotations

from torch import nn

from app.families.fused_resnet import fuse_resnets
from app.families.phase_upsample import phase_upsamplers


def faster_modules(model: nn.Module) -> None:
    """Rewrite every fitting module of ``model``:

    - ``Upsample2D`` by phases: 4/9 of the upsamplers' multiply-adds (app/families/phase_upsample.py);
    - ``ResnetBlock2D`` with the shortcut fused into its last convolution in float32 on the CPU
      (app/families/fused_resnet.py).
    """
    phase_upsamplers(model)
    fuse_resnets(model)
