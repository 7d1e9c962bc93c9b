"""The training scripts' shared kit: precision choice, and a tiny denoiser run that trains, saves a model the
store accepts, and resumes from its checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train_denoiser  # noqa: E402
import trainkit  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_precision_on_the_cpu_follows_the_choice_and_the_hardware(monkeypatch, native):
    monkeypatch.setattr(trainkit, "cpu_has_bf16", lambda: native)
    assert trainkit.resolve_precision("fp32", CPU) == "fp32"
    assert trainkit.resolve_precision("cuda-bf16", CPU) == "fp32"
    assert trainkit.resolve_precision("bf16", CPU) == ("bf16" if native else "fp32")


def test_precision_on_cuda_is_bf16_unless_fp32_is_asked_for():
    cuda = torch.device("cuda")
    assert trainkit.resolve_precision("bf16", cuda) == "bf16"
    assert trainkit.resolve_precision("cuda-bf16", cuda) == "bf16"
    assert trainkit.resolve_precision("fp32", cuda) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        trainkit.resolve_precision("fp16", cuda)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_runs_convolutions_in_the_resolved_precision(precision, dtype):
    conv = torch.nn.Conv2d(3, 4, 3)
    with trainkit.autocast_for(CPU, precision):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == dtype


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    lr = [trainkit.lr_at(s, total=100, peak=1.0, warmup=10) for s in range(101)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    assert lr[100] == pytest.approx(0.1)


def _photos() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "colour": rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8),
        "grey": rng.integers(0, 256, size=(36, 36), dtype=np.uint8),
        "too-small": rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8),
    }


def _run(tmp_path: Path, *extra: str) -> dict:
    args = train_denoiser.parse_args([
        "--out", str(tmp_path / "store" / "photos"), "--ckpt-dir", str(tmp_path / "ckpt"),
        "--channels", "8", "16", "--crop", "32", "--batch", "3", "--warmup", "1", "--precision", "fp32", *extra,
    ])
    train_denoiser.train(args)
    entry = scan_store(tmp_path / "store")["photos"]
    return entry.card.training


def test_a_tiny_denoiser_trains_saves_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_denoiser, "load_photos", lambda split: _photos())
    first = _run(tmp_path, "--iters", "2", "--fresh")
    assert (first["iters"], first["precision"], first["channels"]) == (2, "fp32", [8, 16])
    assert (tmp_path / "ckpt" / "latest.pt").exists()
    state = torch.load(tmp_path / "ckpt" / "latest.pt", weights_only=True)
    assert state["step"] == 2

    resumed = _run(tmp_path, "--iters", "3")
    assert resumed["iters"] == 3
    assert torch.load(tmp_path / "ckpt" / "latest.pt", weights_only=True)["step"] == 3
    assert resumed["wall_clock_s"] >= first["wall_clock_s"]
