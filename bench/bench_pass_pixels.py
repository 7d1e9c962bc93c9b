"""How a forward pass's size affects throughput, per network (a benchmark, not a test): the evidence for
the default pixel cap per pass (``DEFAULT_MAX_BATCH_PIXELS`` in app/settings.py).

    python bench/bench_pass_pixels.py        # the shipped photos (256x256 tiles) and digits (28x28) networks
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import load_model  # noqa: E402


def rate(unet, shape, batch: int, seconds: float, labels: bool) -> tuple[float, float]:
    x, t = torch.randn(batch, *shape), torch.full((batch,), 100.0)
    y = torch.zeros(batch, dtype=torch.long) if labels else None
    unet(x, t, class_labels=y)  # warm-up
    passes, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        unet(x, t, class_labels=y)
        passes += 1
    elapsed = time.perf_counter() - began
    return passes * batch / elapsed, elapsed / passes * 1000


def main() -> None:
    entries = scan_store(ROOT / "model_store")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        for name, shape, batches in (
            ("photos", (3, 256, 256), (1, 2, 4, 8, 16, 64)),
            ("digits", (1, 28, 28), (1, 16, 64, 128)),
        ):
            model = load_model(entries[name], torch.device("cpu"))
            for batch in batches:
                rows_per_s, ms = rate(model.unet, shape, batch, 4.0, labels=bool(model.entry.num_classes))
                pixels = batch * shape[1] * shape[2]
                print(f"{name:7s} batch {batch:4d} ({pixels:8d} px): {rows_per_s:8.2f} rows/s, {ms:8.1f} ms per pass")


if __name__ == "__main__":
    main()
