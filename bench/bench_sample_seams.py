"""Grain across tile seams in ``mode: sample``: does a posterior draw keep its grain where tiles overlap?

    python bench/bench_sample_seams.py        # needs the fetched photos (scripts/fetch_photos.py)

A sampled image is the posterior mean plus grain (the detail a draw adds back). The service denoises a
large photo in overlapping tiles, one reverse chain per tile, and cross-fades the tiles where they
overlap. If two neighbouring chains drew independent noise, the cross-fade averages two independent
grains there and the seams come out smoother than the rest: bands of less grain along every seam. This
runs the service's path (plan the tiles, run the rows, blend, encode, decode) on the held-out photos in
``sample`` and ``mmse`` mode, takes the grain (sample minus mmse), and prints its standard deviation on
the pixels two or more tiles cover and on the pixels one tile covers, each against the same pixels' grain
when the whole photo is one tile (``DIFFUSION_DENOISE_TILE=1024``; so the photo's content, which sets how
much grain a region has, cancels). Equal ratios: no bands. Also the sample's PSNR, tiled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_denoise import add_noise, run_ours, scores  # noqa: E402
from fetch_photos import load as load_photos  # noqa: E402

from app.diffusion.layout import DenoiseLayout  # noqa: E402
from app.engine.device import cpu_name, pick_dtype  # noqa: E402
from app.engine.plans import denoise_tile  # noqa: E402
from app.engine.runner import Runner  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import load_model  # noqa: E402


def coverage(height: int, width: int, factor: int, tile: int, overlap: int) -> tuple[np.ndarray, int]:
    """How many tiles cover each pixel under the service's tile plan, and how many tiles there are."""
    layout = DenoiseLayout.of(
        height=height,
        width=width,
        image_channels=3,
        model_channels=3,
        factor=factor,
        tile=tile,
        overlap=overlap,
        samples=1,
        ensemble=1,
    )
    count = np.zeros((layout.height, layout.width), dtype=np.int32)
    for y, x, h, w in layout.boxes:
        count[y : y + h, x : x + w] += 1
    return count[:height, :width], len(layout.boxes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "model_store"))
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[25.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = Settings()
    device = torch.device("cpu")
    dtype = pick_dtype(settings.dtype, device)  # the service's own precision (auto)
    entry = scan_store(Path(args.store))["photos"]
    model = load_model(entry, device)
    runner = Runner(device, dtype)
    photos = load_photos(args.split)
    tile = denoise_tile(settings, runner)  # as the service's engine picks it
    print(f"{cpu_name()}, {dtype or 'float32'}, tile {tile}, overlap {settings.denoise_overlap}")
    whole = Settings(denoise_tile=1024)  # one tile for these photos: the reference grain
    print("\n| sigma | photo | tiles | grain, overlaps: tiled / one tile | elsewhere: tiled / one tile | PSNR |")
    print("|---:|---|---:|---:|---:|---:|")
    for sigma in args.sigmas:
        rows = []
        for i, (name, clean) in enumerate(photos.items()):
            noisy = add_noise(clean, sigma, seed=1000 + i)
            kw = dict(sigma=sigma, seed=args.seed)
            mean = run_ours(model, runner, settings, noisy, mode="mmse", **kw).astype(np.float64)
            tiled, one_tile = (run_ours(model, runner, s, noisy, mode="sample", **kw) for s in (settings, whole))
            grains = [(x.astype(np.float64) - mean).reshape(*clean.shape[:2], -1) for x in (tiled, one_tile)]
            cover, tiles = coverage(
                clean.shape[0], clean.shape[1], entry.downsample_factor, tile, settings.denoise_overlap
            )
            if tiles < 2:
                print(f"| {sigma:g} | {name} | 1 | (no seams) | | |")
                continue
            overlaps = float(grains[0][cover >= 2].std() / grains[1][cover >= 2].std())
            elsewhere = float(grains[0][cover == 1].std() / grains[1][cover == 1].std())
            psnr = scores(clean, tiled)[0]
            rows.append((overlaps, elsewhere, psnr))
            print(f"| {sigma:g} | {name} | {tiles} | {overlaps:.3f} | {elsewhere:.3f} | {psnr:.2f} |")
        means = np.mean(rows, axis=0)
        print(f"| {sigma:g} | **mean** | | **{means[0]:.3f}** | **{means[1]:.3f}** | **{means[2]:.2f}** |")


if __name__ == "__main__":
    main()
