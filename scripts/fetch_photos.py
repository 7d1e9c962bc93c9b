"""Gather the photographs the denoiser trains and is evaluated on, all from package registries.

Sources (nothing from a model or data hub):
- scikit-image's sample photos whose files ship inside its wheel (``skimage/data/*.png|jpg``)
- scikit-learn's ``load_sample_images()`` (china.jpg, flower.jpg)
- the Debian package ``mate-backgrounds``: ``usr/share/backgrounds/mate/nature/*.jpg``, fetched with
  ``apt-get download`` and unpacked with ``dpkg -x`` into the cache (nothing is installed)
- since issue 15, the photographs among the Debian packages ``lomiri-wallpapers-16.04`` and
  ``lomiri-wallpapers-20.04`` (Ubuntu community photos, CC-BY / CC-BY-SA 4.0; the abstract art, the
  film-grain texture and the astrophotograph left out), training only (``fetch_lomiri``)
- since 2026-12-05, the photographs among the sample images of the Debian package ``opencv-doc``
  (``examples/data``: OpenCV's own samples, Apache-2.0 and BSD-3-Clause by the package's copyright file, which
  excludes the non-free ones; the synthetic images, charts, chessboards, logos, text and webcam frames left
  out), training only (``fetch_opencv``)

The large wallpapers (1280-2560 px JPEGs) are downscaled by 2 and by 4 (area filter), which also
averages away most of their JPEG artefacts; the Lomiri photos (1365-6028 px camera photos) by the
factors (at least 2) that bring their long side near 1,000 and 500 px; OpenCV's (most of them 0.2-0.5 Mpx)
stay at their own size. Grey photos stay one-channel; the trainer replicates them.
A fixed set of photos (``HELDOUT``) is kept apart for evaluation and never trained on.

A second held-out set, ``heldout2``, comes from a source nothing else here uses: the photographs among
the Debian package ``plasma-workspace-wallpapers`` (KDE Plasma 5's wallpapers; the illustrations are left
out), at the largest size shipped, downscaled to 640 px wide (area filter). It is for final checks only:
no recipe or setting is chosen on it.

    python scripts/fetch_photos.py        # writes .cache/data/photos/{train,heldout,heldout2}/*.png + manifest.json

``PHOTOS_DIR`` names another folder (the training script reads the photos from there too: on a lent GPU, the
staged copy, ``scripts/device_train.sh``).

Needs the ``train`` extra: ``pip install -e '.[train]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_OUT = Path(os.environ.get("PHOTOS_DIR", ".cache/data/photos"))
MANIFEST = "manifest.json"
ADDED = ("lomiri", "opencv")  # sources added to the train split after the first fetch, each with a marker file
# The files that say the train split is complete: with them in a folder, nothing is fetched (device_stage copies them)
TRAIN_MARKERS = (MANIFEST, *(f"{source}.done" for source in ADDED))
DEB_PACKAGE = "mate-backgrounds"
MATE_NATURE = "usr/share/backgrounds/mate/nature"

# Photos from skimage's wheel (no download): natural images only, not the synthetic or binary ones.
SKIMAGE_PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
]

PLASMA_PACKAGE = "plasma-workspace-wallpapers"
PLASMA_WALLPAPERS = "usr/share/wallpapers"
# the photographs among Plasma 5.27's wallpapers (looked at one by one; the others are digital art)
PLASMA_PHOTOS = [
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
]
LOMIRI_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
LOMIRI_FOLDER = "usr/share/backgrounds"
# the camera photographs among them (looked at one by one): not umang, Fossa or Painting-Colors (digital art),
# analogpattern (a film-grain texture, noise-like itself) or Infinite-Sea (a high-ISO night sky)
LOMIRI_PHOTOS = [
    "Bridge_by_Sander_Klootwijk",
    "Dragonfly_by_Bolly",
    "Picture_0B_by_freespace",
    "Picture_1A_by_freespace",
    "Wine_by_Jakkub_Mede",
    "aitzgorri_by_Aitzol_Berasategi",
    "free_by_Peter_Nerlich",
    "friends_by_Aitzol_Berasategi",
    "greentock_by_Peter_Nerlich",
    "life_by_Aitzol_Berasategi",
    "picosdeeuropa_by_Aitzol_Berasategi",
    "seeding_by_Clements_Engelhardt",
    "sunset_by_Aitzol_Berasategi",
    "Kleiber_by_Lukas_Baubkus",
]
OPENCV_PACKAGE = "opencv-doc"
OPENCV_FOLDER = "usr/share/doc/opencv-doc/examples/data"
# the photographs among them (looked at one by one; of a stereo or video pair only one frame): not the charts,
# chessboards, logos, text, shapes, renders, the grey video frames or the webcam shots
OPENCV_PHOTOS = [
    "aero1.jpg",
    "aero3.jpg",
    "aloeL.jpg",
    "apple.jpg",
    "baboon.jpg",
    "board.jpg",
    "box_in_scene.png",
    "building.jpg",
    "butterfly.jpg",
    "chicky_512.png",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "home.jpg",
    "leuvenA.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "smarties.png",
    "squirrel_cls.jpg",
]
# Held out for evaluation, never trained on: two from skimage, one from scikit-learn, two wallpapers
# (used at 1/4 scale only).
HELDOUT = ["skimage-chelsea", "skimage-coffee", "sklearn-china", "mate-LadyBird-x4", "mate-Storm-x4"]


def _skimage_photos() -> dict[str, Image.Image]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return {f"skimage-{Path(name).stem}": Image.open(folder / name) for name in SKIMAGE_PHOTOS}


def _sklearn_photos() -> dict[str, Image.Image]:
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    return {
        f"sklearn-{Path(name).stem}": Image.fromarray(pixels) for name, pixels in zip(bunch.filenames, bunch.images)
    }


def _unpack_deb(package: str, workdir: Path) -> Path:
    """A Debian package's files, downloaded and unpacked under ``workdir`` (nothing installed)."""
    subprocess.run(["apt-get", "download", package], cwd=workdir, check=True, capture_output=True)
    (deb,) = workdir.glob(f"{package}_*.deb")
    subprocess.run(["dpkg", "-x", str(deb), str(workdir / package)], check=True)
    return workdir / package


def _mate_photos(workdir: Path) -> dict[str, Image.Image]:
    photos = {}
    for path in sorted((_unpack_deb(DEB_PACKAGE, workdir) / MATE_NATURE).glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        for factor in (2, 4):
            size = (image.width // factor, image.height // factor)
            photos[f"mate-{path.stem}-x{factor}"] = image.resize(size, Image.Resampling.BOX)
    return photos


def _plasma_photos(workdir: Path) -> dict[str, Image.Image]:
    root = _unpack_deb(PLASMA_PACKAGE, workdir)
    photos = {}
    for name in PLASMA_PHOTOS:
        sizes = sorted((root / PLASMA_WALLPAPERS / name / "contents" / "images").glob("*"))
        largest = max(sizes, key=lambda p: Image.open(p).width)
        image = Image.open(largest).convert("RGB")
        factor = max(1, image.width // 640)
        photos[f"plasma-{name}"] = image.resize((image.width // factor, image.height // factor), Image.Resampling.BOX)
    return photos


def _lomiri_photos(workdir: Path) -> dict[str, Image.Image]:
    photos = {}
    for package in LOMIRI_PACKAGES:
        root = _unpack_deb(package, workdir) / LOMIRI_FOLDER
        for path in sorted(root.glob("*.jpg")):
            if path.stem not in LOMIRI_PHOTOS:
                continue
            image = Image.open(path).convert("RGB")
            first = max(2, round(max(image.size) / 1000))  # at least 2: averages away JPEG artefacts
            for factor in (first, 2 * first):
                size = (image.width // factor, image.height // factor)
                photos[f"lomiri-{path.stem.split('_by_')[0]}-x{factor}"] = image.resize(size, Image.Resampling.BOX)
    return photos


def _opencv_photos(workdir: Path) -> dict[str, Image.Image]:
    """At their own size (most are 0.2-0.5 Mpx), or halved where the long side reaches 1,200 px (aloeL)."""
    root = _unpack_deb(OPENCV_PACKAGE, workdir) / OPENCV_FOLDER
    photos = {}
    for name in OPENCV_PHOTOS:
        image = _normalise(Image.open(root / name))
        factor = max(1, round(max(image.size) / 800))
        size = (image.width // factor, image.height // factor)
        photos[f"opencv-{Path(name).stem}-x{factor}"] = image.resize(size, Image.Resampling.BOX)
    return photos


def _add_to_training(out: Path, source: str, photos: Callable[[Path], dict[str, Image.Image]]) -> Path:
    """Photos of one more source, added to the training split; a marker file says they are there."""
    folder = out / "train"
    marker = out / f"{source}.done"
    if marker.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for name, image in sorted(photos(Path(tmp)).items()):
            image.save(folder / f"{name}.png")
            names.append(name)
    marker.write_text("\n".join(names) + "\n")
    return out


def fetch_lomiri(out: Path = DEFAULT_OUT) -> Path:
    """The Lomiri photos (issue 15)."""
    return _add_to_training(out, ADDED[0], _lomiri_photos)


def fetch_opencv(out: Path = DEFAULT_OUT) -> Path:
    """OpenCV's sample photos (2026-12-05)."""
    return _add_to_training(out, ADDED[1], _opencv_photos)


def fetch_heldout2(out: Path = DEFAULT_OUT) -> Path:
    folder = out / "heldout2"
    if (folder / "done").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in _plasma_photos(Path(tmp)).items():
            image.save(folder / f"{name}.png")
    (folder / "done").write_text("\n".join(PLASMA_PHOTOS) + "\n")
    return out


def _normalise(image: Image.Image) -> Image.Image:
    """8-bit grey stays grey (L); everything else becomes RGB."""
    if image.mode in ("L", "I;16", "I", "F"):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (array.astype(np.float64) / max(1, array.max()) * 255).round().astype(np.uint8)
        return Image.fromarray(array, mode="L")
    return image.convert("RGB")


def fetch(out: Path = DEFAULT_OUT) -> Path:
    manifest = out / MANIFEST
    if manifest.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        photos = {**_skimage_photos(), **_sklearn_photos(), **_mate_photos(Path(tmp))}
        entries = []
        for name, image in sorted(photos.items()):
            stem = name.rsplit("-x", 1)[0]
            split = "heldout" if name in HELDOUT else ("skip" if f"{stem}-x4" in HELDOUT else "train")
            if split == "skip":  # the other scale of a held-out wallpaper: neither trained on nor evaluated
                continue
            image = _normalise(image)
            path = out / split / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            entries.append({"name": name, "split": split, "size": list(image.size), "mode": image.mode})
    manifest.write_text(json.dumps({"heldout": HELDOUT, "photos": entries}, indent=2) + "\n")
    return out


def load(split: str, out: Path = DEFAULT_OUT) -> dict[str, np.ndarray]:
    """uint8 arrays [H, W] (grey) or [H, W, 3] (colour) of one split (train, heldout, heldout2), by name: the
    PNG files this script writes, or lossless WebP ones in their place (the smaller copy that travels to a lent
    GPU, ``scripts/device_stage.py``)."""
    if split == "train":
        fetch_opencv(fetch_lomiri(fetch(out)))
    folder = (fetch_heldout2(out) if split == "heldout2" else fetch(out)) / split
    paths = sorted([*folder.glob("*.png"), *folder.glob("*.webp")], key=lambda path: path.stem)
    return {path.stem: np.asarray(Image.open(path)) for path in paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for split in ("train", "heldout2", "heldout"):  # load fetches what a split needs, once
        photos = load(split, args.out)
        pixels = sum(a.shape[0] * a.shape[1] for a in photos.values())
        print(f"{split}: {len(photos)} photos, {pixels / 1e6:.1f} Mpx: " + ", ".join(photos))


if __name__ == "__main__":
    main()
