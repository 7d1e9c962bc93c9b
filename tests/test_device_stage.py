"""What a lent GPU's call carries (scripts/device_stage.py): the training photos, smaller, with the same pixels,
and the count of what travels against the device tool's limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import device_stage  # noqa: E402
import fetch_photos  # noqa: E402


def _fetched(folder: Path) -> dict[str, np.ndarray]:
    """A photo folder as scripts/fetch_photos.py leaves it: nothing left to fetch."""
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 48 * 40 * 3).reshape(40, 48, 3)
    photos = {
        "colour": (smooth + rng.normal(0, 20, smooth.shape)).clip(0, 255).astype(np.uint8),
        "grey": rng.integers(0, 256, size=(36, 36), dtype=np.uint8),
    }
    (folder / "train").mkdir(parents=True)
    for name, pixels in photos.items():
        Image.fromarray(pixels).save(folder / "train" / f"{name}.png")
    for marker in fetch_photos.TRAIN_MARKERS:
        (folder / marker).write_text("{}\n")
    return photos


def test_staged_photos_are_the_same_pixels_colour_as_webp_and_grey_as_png(tmp_path):
    photos = _fetched(tmp_path / "fetched")
    staged = tmp_path / "staged"
    (staged / "train").mkdir(parents=True)
    (staged / "train" / "gone.webp").write_bytes(b"a photo no longer in the split")
    assert device_stage.stage_photos(staged, tmp_path / "fetched") == 2
    assert sorted(p.name for p in (staged / "train").iterdir()) == ["colour.webp", "grey.png"]
    assert all((staged / marker).exists() for marker in fetch_photos.TRAIN_MARKERS)
    loaded = fetch_photos.load("train", staged)
    assert loaded.keys() == photos.keys()
    for name, pixels in photos.items():
        assert loaded[name].shape == pixels.shape and np.array_equal(loaded[name], pixels)
    # a second staging keeps what is there (encoding is slow), and checks it again
    Image.fromarray(255 - photos["colour"]).save(staged / "train" / "colour.webp", "WEBP", lossless=True)
    with pytest.raises(SystemExit, match="does not decode to the photo's pixels"):
        device_stage.stage_photos(staged, tmp_path / "fetched")


def test_what_travels_is_the_tree_git_sees_and_the_carried_folder(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/ignored/\n/carried/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 100)
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], cwd=tmp_path, check=True)
    (tmp_path / "untracked.txt").write_bytes(b"y" * 30)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big").write_bytes(b"z" * 5000)
    (tmp_path / "carried" / "deep").mkdir(parents=True)
    (tmp_path / "carried" / "deep" / "photo").write_bytes(b"w" * 700)
    gitignore = len("/ignored/\n/carried/\n")
    assert device_stage.travelling_bytes(tmp_path, tmp_path / "carried") == gitignore + 100 + 30 + 700
