"""Where row groups pay: one forward pass spread over all the threads against the same rows split into one
group per thread, each on a thread of its own (``RowGroups`` in app/engine/runner.py), by row size and batch:

    python bench/bench_row_groups.py                     # the service's precision on this CPU
    DIFFUSION_DTYPE=float32 python bench/bench_row_groups.py

The shipped ``photos`` network on random rows of several sizes (the denoiser's tiles are 176x144 in bf16 and
224x208 in float32 for a 640x400 photo), and the ``digits`` network on its 28x28 rows (a guided row is two
of them). Every batch is split here, whatever the service's rule (``RowGroups.MIN_PIXELS`` and
``MIN_ROWS``) would do, so the table shows where that rule should draw its line. Each cell: the fastest of
the passes of ``--seconds`` seconds, the two ways taking turns ``--turns`` times; the ratio is grouped over
spread (below 1: groups are faster).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.engine.device import cpu_name, pick_dtype  # noqa: E402
from app.engine.runner import RowGroups  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import load_model  # noqa: E402


def fastest(fn, seconds: float) -> float:
    fn()
    times, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds or not times:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args()
    dtype = pick_dtype(Settings().dtype, torch.device("cpu"))
    threads = torch.get_num_threads()
    print(f"{cpu_name()}, torch {torch.__version__}, {threads} threads, {dtype or 'float32'}, channels-last")
    entries = scan_store(args.store)
    groups = RowGroups(threads)
    groups.MIN_PIXELS, groups.MIN_ROWS = 0, 1  # split every batch: the measurement the rule rests on
    cases = [("photos", side, side, batch) for side in (64, 128, 160) for batch in (2, 4, 6)]
    cases += [("photos", 144, 176, batch) for batch in (2, 6, 12)] + [("photos", 208, 224, batch) for batch in (2, 6)]
    cases += [("digits", 28, 28, batch) for batch in (2, 16, 64)]
    models = {name: load_model(entries[name], torch.device("cpu")) for name in {case[0] for case in cases}}
    print("\n| network | row (h x w) | rows | spread (ms) | groups (ms) | groups / spread |")
    print("|---|---|---:|---:|---:|---:|")
    for name, height, width, batch in cases:
        model = models[name]
        channels = model.entry.channels
        x = torch.randn(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
        t = torch.full((batch,), 50.0)
        conds = [None] * batch if name == "photos" else [i % 10 for i in range(batch)]

        @torch.no_grad()
        def forward(part: slice, x=x, t=t, conds=conds, model=model) -> torch.Tensor:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                return model.predict(x[part], t[part], conds[part])

        spread, grouped = [], []
        for _ in range(args.turns):
            spread.append(fastest(lambda: forward(slice(0, batch)), args.seconds))
            grouped.append(fastest(lambda: groups.run(forward, batch, height * width), args.seconds))
        a, b = min(spread), min(grouped)
        print(f"| {name} | {height} x {width} | {batch} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f} |", flush=True)
    groups.close()


if __name__ == "__main__":
    main()
