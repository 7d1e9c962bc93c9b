"""What kind of error a candidate photo denoiser makes where it falls behind the shipped one:

    git checkout 23c6ec0 -- checkpoints/photos-s2d      # the unserved checkpoint, from the history
    python bench/eval_denoise_errors.py --candidate checkpoints/photos-s2d            # set 1, sigma 15
    python bench/eval_denoise_errors.py --candidate checkpoints/photos-s2d --sigma 25

Both models run the service's own path (``mode: mmse``, sigma given, the worker's precision and tile plan:
``eval_denoise.run_ours``) on the same noisy held-out photos. Per photo it prints:

1. PSNR of each, and the candidate's PSNR on each of the four 2x2 pixel phases: a space-to-depth network
   (``space_to_depth: 2``) that left a blocking pattern would be worse on some phases than on others.
2. The error's energy (mean square, 0-255 scale) in three bands: below a Gaussian of sigma 2 pixels
   ("low"), between that and one of 0.7 ("mid"), and above ("high"): does the candidate lose fine detail,
   or everywhere?
3. A leave-one-out bound on what a linear full-resolution head on the candidate's output could buy: per
   RGB channel, a least-squares 3x3 filter of [candidate output, noisy photo] (6 channels, 54 taps and a
   bias) fitted on the other photos, applied to this one. A head gaining nothing here is not a cheap fix;
   a nonlinear head may still do better (this bounds only linear ones).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_denoise import add_noise, run_ours  # noqa: E402
from fetch_photos import load as load_photos  # noqa: E402

from app.engine.device import pick_dtype  # noqa: E402
from app.engine.runner import Runner  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store.catalog import scan_folder  # noqa: E402
from app.store.loader import load_model  # noqa: E402

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def psnr(clean: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((out.astype(np.float64) - clean.astype(np.float64)) ** 2)))


def bands(error: np.ndarray) -> tuple[float, float, float]:
    """Mean square of the error below sigma 2, between sigma 2 and 0.7, and above 0.7 (pixels), per channel."""
    channels = error if error.ndim == 3 else error[:, :, None]
    low = np.stack([gaussian_filter(channels[..., c], 2.0) for c in range(channels.shape[2])], -1)
    fine = np.stack([gaussian_filter(channels[..., c], 0.7) for c in range(channels.shape[2])], -1)
    return float(np.mean(low**2)), float(np.mean((fine - low) ** 2)), float(np.mean((channels - fine) ** 2))


def neighbourhoods(*images: np.ndarray) -> np.ndarray:
    """[H*W, 9*C + 1]: each pixel's 3x3 neighbourhood (reflected at the borders) of the images' channels, and 1."""
    x = np.concatenate([np.atleast_3d(i).astype(np.float32) for i in images], axis=2)
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    height, width = x.shape[:2]
    taps = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
    features = np.concatenate(taps, axis=2).reshape(height * width, -1)
    return np.concatenate([features, np.ones((height * width, 1), np.float32)], axis=1)


def linear_head(train: list[tuple[np.ndarray, np.ndarray, np.ndarray]], test: tuple) -> np.ndarray:
    """The least-squares head fitted on ``train`` ((clean, noisy, candidate) each) applied to ``test``'s."""
    a = np.concatenate([neighbourhoods(out, noisy) for _, noisy, out in train]).astype(np.float64)
    y = np.concatenate(
        [
            np.atleast_3d(clean.astype(np.float64) - out).reshape(-1, out.shape[2] if out.ndim == 3 else 1)
            for clean, _, out in train
        ]
    )
    weights = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ y)
    clean, noisy, out = test
    corrected = out + (neighbourhoods(out, noisy) @ weights).reshape(out.shape)
    return np.clip(np.rint(corrected), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", type=Path, required=True, help="a model folder (e.g. checkpoints/photos-s2d)")
    parser.add_argument("--shipped", type=Path, default=ROOT / "model_store" / "photos")
    parser.add_argument("--split", default="heldout", choices=["heldout", "heldout2"])
    parser.add_argument("--sigma", type=float, default=15)
    args = parser.parse_args()

    settings, device = Settings(), torch.device("cpu")
    runner = Runner(device, pick_dtype(settings.dtype, device))
    shipped, candidate = (load_model(scan_folder(folder), device) for folder in (args.shipped, args.candidate))
    print(f"autocast {runner.autocast_dtype or 'none (float32)'}; sigma {args.sigma:g}; {args.split}")
    runs = {}
    for i, (name, clean) in enumerate(load_photos(args.split).items()):
        noisy = add_noise(clean, args.sigma, seed=int(args.sigma) * 100 + i)  # eval_denoise.py's noise
        ours, theirs = (
            run_ours(m, runner, settings, noisy, sigma=args.sigma, mode="mmse", seed=i) for m in (shipped, candidate)
        )
        runs[name] = (clean, noisy, theirs)
        error = theirs.astype(np.float64) - clean
        phases = [psnr(clean[y::2, x::2], theirs[y::2, x::2]) for y, x in PHASES]
        print(
            f"{name}: shipped {psnr(clean, ours):.2f} dB, candidate {psnr(clean, theirs):.2f} "
            f"(phases {' / '.join(f'{p:.2f}' for p in phases)})"
        )
        print(
            "  error energy low / mid / high: shipped "
            + " / ".join(f"{b:.3f}" for b in bands(ours.astype(np.float64) - clean))
            + ", candidate "
            + " / ".join(f"{b:.3f}" for b in bands(error))
        )
    for name, held in runs.items():
        headed = linear_head([run for other, run in runs.items() if other != name], held)
        print(
            f"{name}: candidate {psnr(held[0], held[2]):.2f} dB, "
            f"with a linear head fitted on the others {psnr(held[0], headed):.2f}"
        )


if __name__ == "__main__":
    main()
