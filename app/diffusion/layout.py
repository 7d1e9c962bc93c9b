"""How a denoise job is cut into rows: views x planes x tiles. Pure (no torch): the API prices a request
with it before the request becomes a job, and the engine builds the job's rows from the same layout.

- views: every (sample, flip/rotation) pair is denoised on its own and the results are averaged; the
  geometric self-ensemble (Lim et al. 2017, "EDSR", sec. 4.4) uses the 8 flips/rotations of the square.
- planes: the whole image (as is, or a grey image replicated for an RGB model), or, on a grey model, one
  grey plane per channel of an RGB image.
- tiles: overlapping boxes over the image padded to the network's downsampling factor.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.diffusion.tiling import Box, fit_tile, padded_size, tile_boxes

# (quarter turns, mirrored), in the order ensemble views are added: 2 = identity + mirror, 4 = + a quarter
# turn, 8 = the whole dihedral group.
ENSEMBLE_ORDER = [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True), (3, False), (3, True)]


def planes(image_channels: int, model_channels: int) -> list[slice | None]:
    """How an image's channels meet the model's: None = the whole image (as is, or grey replicated to RGB),
    or one grey plane per channel on a grey model."""
    if model_channels == image_channels or (model_channels == 3 and image_channels == 1):
        return [None]
    if model_channels == 1:
        return [slice(c, c + 1) for c in range(image_channels)]
    raise ValueError(f"a {model_channels}-channel model cannot denoise a {image_channels}-channel image")


@dataclass(frozen=True)
class DenoiseLayout:
    height: int  # padded to the downsampling factor
    width: int
    boxes: list[Box]
    planes: list[slice | None]
    views: list[tuple[int, bool]]

    @classmethod
    def of(
        cls,
        *,
        height: int,
        width: int,
        image_channels: int,
        model_channels: int,
        factor: int,
        tile: int,
        overlap: int,
        samples: int,
        ensemble: int,
    ) -> "DenoiseLayout":
        padded_h, padded_w = padded_size(height, width, factor)
        boxes = tile_boxes(padded_h, padded_w, tile=fit_tile(tile, factor), overlap=overlap, multiple=factor)
        views = [transform for _ in range(samples) for transform in ENSEMBLE_ORDER[:ensemble]]
        return cls(padded_h, padded_w, boxes, planes(image_channels, model_channels), views)

    @property
    def rows(self) -> int:
        return len(self.views) * len(self.planes) * len(self.boxes)

    def index(self, view: int, plane: int, box: int) -> int:
        """The row's position in the job (its seed offset): views, then planes, then tiles."""
        return (view * len(self.planes) + plane) * len(self.boxes) + box

    def megapixel_steps(self, steps: int) -> float:
        """Network evaluations x pixels per evaluation, in megapixels: the job's compute."""
        _, _, h, w = self.boxes[0]
        return self.rows * steps * h * w / 1e6
