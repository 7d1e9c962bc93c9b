"""Write the playground's sample photos (app/web/samples/): 256x256 crops of three of scikit-image's sample
photos, which ship inside its wheel (needs the ``train`` extra). Two of them are photos the shipped denoiser
never trained on (docs/denoising.md: held out), so the page's demo is a fair one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

OUT = Path(__file__).resolve().parents[1] / "app" / "web" / "samples"
# name -> (loader, top, left): a 256x256 window on the subject
SAMPLES = {"cat": (data.chelsea, 20, 70), "coffee": (data.coffee, 60, 170), "astronaut": (data.astronaut, 0, 130)}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (load, top, left) in SAMPLES.items():
        pixels = np.asarray(load())[top : top + 256, left : left + 256]
        assert pixels.shape == (256, 256, 3), (name, pixels.shape)
        Image.fromarray(pixels).save(OUT / f"{name}.png", optimize=True)
        print(f"wrote {OUT / name}.png")


if __name__ == "__main__":
    main()
