"""Stage what a lent GPU needs to train the photo denoiser (``scripts/device_train.sh``), and check that it fits.

    python scripts/device_stage.py                      # writes .device/ (.gitignore'd), prints what travels
    python scripts/device_stage.py --python-version 3.11 --out /tmp/dry/.device   # a dry run's, for this machine

The device tool copies the working tree to the GPU machine with the paths a call names in ``carry``, at most
64 MiB in all, and nothing there can be downloaded. Its image has torch, numpy, Pillow, safetensors,
huggingface_hub and tqdm, but neither diffusers nor pydantic. So ``.device/`` holds:

- ``photos/``: the training photos (``scripts/fetch_photos.py``'s train split), the colour ones as lossless
  WebP (31 MB instead of 42 MB of PNG; the same pixels, checked, and ``fetch_photos.load`` reads either), with
  the markers that tell ``fetch_photos`` nothing is left to fetch;
- ``site.tar.xz``: diffusers, pydantic and what they need that the image lacks, unpacked for the device's
  Python (3.12 there; 3.13 too, should the image move) and packed with xz: 4.4 MB, against 9.2 MB as wheels
  for one Python. The versions are this environment's.

Encoding the photos takes minutes (lossless WebP at its smallest); a second run reuses them.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from fetch_photos import DEFAULT_OUT, TRAIN_MARKERS, load  # noqa: E402

LIMIT = 64 * 2**20  # what one call may carry, the working tree included
# What the training imports that the device's image does not hold (its package list: the device tool's
# KINDS.md); huggingface_hub is there, at a version diffusers accepts.
PACKAGES = ("diffusers", "pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")


def stage_photos(out: Path, source: Path = ROOT / DEFAULT_OUT) -> int:
    """The train split under ``out/train``, colour photos as lossless WebP, checked to decode to the same
    pixels, grey ones as their PNG (WebP has no grey: it would decode them as RGB, and the training treats
    a grey photo as a grey upload); photos already there are kept. The markers beside. Returns the count."""
    photos = load("train", source)  # fetches what is missing
    folder = out / "train"
    folder.mkdir(parents=True, exist_ok=True)
    kept = set()
    for name, pixels in photos.items():
        if pixels.ndim == 2:
            kept.add(f"{name}.png")
            shutil.copy(source / "train" / f"{name}.png", folder / f"{name}.png")
            continue
        path = folder / f"{name}.webp"
        kept.add(path.name)
        if not path.exists():
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "WEBP", lossless=True, quality=100, method=6)
            path.write_bytes(buffer.getvalue())
        if not np.array_equal(np.asarray(Image.open(path)), pixels):
            raise SystemExit(f"{path} does not decode to the photo's pixels")
    for name in TRAIN_MARKERS:
        shutil.copy(source / name, out / name)
    for stale in folder.iterdir():
        if stale.name not in kept:
            stale.unlink()
    return len(photos)


def stage_site(out: Path, python_versions: list[str]) -> list[str]:
    """``out`` (a .tar.xz) holding PACKAGES installed for x86-64 Linux, for each of ``python_versions``: their
    pure-Python files are the same, and pydantic_core's compiled module is named by the Python it is for, so one
    archive serves all of them. Returns the packages as pinned."""
    pinned = [f"{name}=={version(name)}" for name in PACKAGES]
    platform = ["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
    pip = [sys.executable, "-m", "pip", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        for python in python_versions:
            wanted = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", *platform]
            wheels, installed = Path(tmp) / f"wheels-{python}", Path(tmp) / f"site-{python}"
            subprocess.run([*pip, "download", "--no-deps", *wanted, "-d", str(wheels), *pinned], check=True)
            install = [*pip, "install", "--no-deps", "--no-compile", *wanted, "--target", str(installed)]
            subprocess.run([*install, *sorted(str(p) for p in wheels.glob("*.whl"))], check=True)
            shutil.copytree(installed, site, dirs_exist_ok=True)
        with tarfile.open(out, "w:xz") as archive:
            for path in sorted(site.iterdir()):
                archive.add(path, arcname=path.name)
    return pinned


def travelling_bytes(root: Path, carried: Path) -> int:
    """What a device call carrying ``carried`` sends: tracked files, untracked ones git does not ignore, and it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    tree = sum((root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file())
    return tree + sum(p.stat().st_size for p in carried.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".device")
    parser.add_argument(
        "--python-version",
        nargs="+",
        default=["3.12", "3.13"],
        help="the Pythons the archive serves: the device image's (3.12 on 2026-11-17), and the next in case it moves",
    )
    args = parser.parse_args()
    count = stage_photos(args.out / "photos")
    pinned = stage_site(args.out / "site.tar.xz", args.python_version)
    summary = {"photos": count, "packages": pinned}
    if args.out.resolve().parent == ROOT.resolve():
        size = travelling_bytes(ROOT, args.out)
        summary["travels_mib"] = round(size / 2**20, 1)
        if size > LIMIT:
            raise SystemExit(f"{json.dumps(summary)}: over the device tool's {LIMIT / 2**20:.0f} MiB")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
