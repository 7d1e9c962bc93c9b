"""Evaluate the digits model: classifier accuracy and FID per sampler, steps and guidance, against the
held-out real digits, in two independent feature spaces (the classifier's penultimate layer, and the
latent of an autoencoder trained without labels on other data: bench/digits_autoencoder.py), each with
its real-vs-real floor at the same sample size and the same count per class as the samples (the mean of a
few draws of training digits). Judge by the worse of the two ratios to the floor.

    python bench/eval_digits.py                                   # the table in docs/digits.md
    python bench/eval_digits.py --configs dpmpp_2m:20:1 --per-class 20
    python bench/eval_digits.py --grid docs/digits_grid.png       # also the 10 x 10 sample grid
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "bench"))

from app.diffusion.pixels import to_uint8  # noqa: E402
from app.diffusion.samplers import cfg_combine, sample_loop  # noqa: E402
from app.diffusion.schedule import generation_plan  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import LoadedModel, load_model  # noqa: E402
from digits_autoencoder import encode, load_autoencoder  # noqa: E402
from digits_classifier import classify, frechet_distance, load_classifier  # noqa: E402
from fetch_mnist import load as load_mnist  # noqa: E402

DEFAULT_CONFIGS = [
    "dpmpp_2m:20:0",
    "dpmpp_2m:20:0.5",
    "dpmpp_2m:20:1",
    "dpmpp_2m:20:2",
    "dpmpp_2m:20:3",
    "dpmpp_2m:10:1",
    "ddim:25:1",
    "ddim:50:1",
]


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` digits of each class, drawn at random."""
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])


def load(store: Path, name: str) -> LoadedModel:
    return load_model(scan_store(store)[name], torch.device("cpu"))


@torch.no_grad()
def generate(
    model: LoadedModel, labels: np.ndarray, *, sampler: str, steps: int, guidance: float, seed: int, chunk: int = 125
) -> np.ndarray:
    """uint8 [N, 28, 28] samples for ``labels``, in chunks; each chunk seeded from ``seed``."""
    plan = generation_plan(model.schedule, sampler, steps)
    null = model.entry.card.null_class
    out = []
    for start in range(0, len(labels), chunk):
        y = torch.from_numpy(labels[start : start + chunk])
        gen = torch.Generator().manual_seed(seed + start)
        x = torch.randn((len(y), 1, 28, 28), generator=gen)

        def denoiser(x, t, y=y):
            if guidance == 0:
                return model.unet(x, t, class_labels=y).sample
            both = model.unet(
                torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([y, torch.full_like(y, null)])
            ).sample
            cond, uncond = both.chunk(2)
            return cfg_combine(cond, uncond, torch.full((len(y),), guidance))

        x = sample_loop(
            denoiser,
            x,
            plan,
            sampler=sampler,
            schedule=model.schedule,
            noise=lambda shape, g=gen: torch.randn(shape, generator=g),
        )
        out.append(to_uint8(x)[:, 0].numpy())
    return np.concatenate(out)


def grid(images: np.ndarray, rows: int, cols: int) -> Image.Image:
    canvas = np.zeros((rows * 30, cols * 30), dtype=np.uint8)
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        canvas[r * 30 + 1 : r * 30 + 29, c * 30 + 1 : c * 30 + 29] = img
    return Image.fromarray(canvas).resize((cols * 60, rows * 60), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, help="sampler:steps:guidance")
    parser.add_argument("--ddpm-per-class", type=int, default=0, help="also ddpm 1000 steps with this many per class")
    parser.add_argument("--grid", type=Path, help="write a 10 classes x 10 seeds grid at the card's defaults")
    parser.add_argument("--floor-draws", type=int, default=5, help="draws of training digits the floor averages")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load(args.store, args.model)
    net = load_classifier()
    autoencoder = load_autoencoder()
    data = load_mnist()
    _, real = classify(net, data["heldout_x"])
    real_ae = encode(autoencoder, data["heldout_x"])
    n = 10 * args.per_class
    rng = np.random.default_rng(0)

    def floors(per_class: int) -> tuple[float, float, float, float]:
        """The real-vs-real floor in both spaces at ``per_class`` training digits of each class (as the samples
        are drawn: the same count per class), the mean of ``--floor-draws`` draws, and their spreads."""
        fids, fids_ae = [], []
        for _ in range(args.floor_draws):
            pick = data["train_x"][stratified(data["train_y"], per_class, rng)]
            fids.append(frechet_distance(classify(net, pick)[1], real))
            fids_ae.append(frechet_distance(encode(autoencoder, pick), real_ae))
        return float(np.mean(fids)), float(np.mean(fids_ae)), float(np.std(fids)), float(np.std(fids_ae))

    floor, floor_ae, floor_sd, floor_ae_sd = floors(args.per_class)
    print(
        f"real-vs-real floor (n={n}, {args.per_class} per class, mean of {args.floor_draws} draws): "
        f"FID {floor:.3f} ± {floor_sd:.3f} (classifier), {floor_ae:.3f} ± {floor_ae_sd:.3f} (autoencoder)",
        flush=True,
    )
    rows = []
    configs = [c.split(":") for c in args.configs]
    if args.ddpm_per_class:
        configs.append(["ddpm", "1000", configs[0][2] if configs else "1", str(args.ddpm_per_class)])
    for config in configs:
        sampler, steps, guidance = config[0], int(config[1]), float(config[2])
        per_class = int(config[3]) if len(config) > 3 else args.per_class
        labels = np.repeat(np.arange(10), per_class)
        began = time.time()
        images = generate(model, labels, sampler=sampler, steps=steps, guidance=guidance, seed=1)
        pred, feats = classify(net, images)
        row = {
            "sampler": sampler,
            "steps": steps,
            "guidance": guidance,
            "samples": len(labels),
            "accuracy": float((pred == labels).mean()),
            "fid": frechet_distance(feats, real),
            "fid_ae": frechet_distance(encode(autoencoder, images), real_ae),
            "seconds": round(time.time() - began, 1),
        }
        if len(labels) != n:
            row["floor_same_n"], row["floor_ae_same_n"], *_ = floors(per_class)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(
        f"| sampler | steps | guidance | samples | accuracy | FID, classifier | / floor ({floor:.2f}) "
        f"| FID, autoencoder | / floor ({floor_ae:.2f}) | worse ratio | seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["fid"] / r.get("floor_same_n", floor)
        ratio_ae = r["fid_ae"] / r.get("floor_ae_same_n", floor_ae)
        r["worse_ratio"] = max(ratio, ratio_ae)
        print(
            f"| {r['sampler']} | {r['steps']} | {r['guidance']} | {r['samples']} | {r['accuracy']:.3f} "
            f"| {r['fid']:.2f} | {ratio:.2f} | {r['fid_ae']:.2f} | {ratio_ae:.2f} | **{r['worse_ratio']:.2f}** "
            f"| {r['seconds']} |"
        )
    if args.grid:
        d = model.entry.card.defaults
        labels = np.repeat(np.arange(10), 10)
        images = generate(model, labels, sampler=d.sampler, steps=d.steps, guidance=d.guidance_scale, seed=7, chunk=100)
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        grid(images, 10, 10).save(args.grid)
        print(f"wrote {args.grid}")
    if args.json:
        spread = {"floor_sd": floor_sd, "floor_ae_sd": floor_ae_sd, "floor_draws": args.floor_draws}
        record = {"floor": floor, "floor_ae": floor_ae, "n": n, **spread, "rows": rows}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
