"""A short request's latency while a huge denoise runs (a benchmark, not a test).

    python bench/bench_fairness.py                 # the shipped models: digits (generate) and photos (denoise)
    python bench/bench_fairness.py --side 2000     # a smaller denoise, for a quick look
    DIFFUSION_DTYPE=float32 python bench/bench_fairness.py --side 256 --mode sample --samples 2 --uploads 0
        # two 256x256 tiles that stay for a whole chain: the pixel cap of a pass, full for all its steps

1. solo: a 20-step digits generate (sync) on an idle server, five times; the median.
2. under load: a ``side`` x ``side`` RGB photo (16 Mpx at the default 4000) sent to /v1/denoise async, then,
   once it runs, the same 20-step generates one after another while it still runs (at most ``probes``);
   the first one's latency, their median, and how long the denoise took.
3. memory: ``uploads`` such photos sent async at once (how many the queue admits, how many get 503), then
   all cancelled; the server's resident memory before, at its peak (VmHWM) and after.
Prints the latencies, their ratio, and the memory figures.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import Server  # noqa: E402


def big_photo(side: int) -> bytes:
    """A real photo (the test fixture crop) scaled up to side x side, with sigma-25 noise, as JPEG."""
    crop = Image.open(ROOT / "tests" / "fixtures" / "chelsea_crop.png").convert("RGB")
    pixels = np.asarray(crop.resize((side, side), Image.BICUBIC), dtype=np.float32)
    noisy = np.clip(pixels + np.random.default_rng(0).normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def generate(http: httpx.Client, url: str, seed: int) -> float:
    began = time.perf_counter()
    r = http.post(
        url + "/v1/generate",
        json={"model": "digits", "class_label": seed % 10, "seed": seed, "steps": 20, "sampler": "dpmpp_2m"},
    )
    r.raise_for_status()
    return time.perf_counter() - began


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_phase(http: httpx.Client, server: Server, image: bytes, uploads: int) -> None:
    pid = server.proc.pid
    before = rss_mb(pid, "VmRSS")
    jobs, refused = [], 0
    for i in range(uploads):
        r = http.post(
            server.url + "/v1/denoise",
            files={"file": ("big.jpg", image, "image/jpeg")},
            data={"sigma": "25", "model": "photos", "seed": str(i)},
            headers={"Prefer": "respond-async"},
        )
        if r.status_code == 202:
            jobs.append(r.json()["job_id"])
        else:
            refused += 1
    time.sleep(2.0)
    for job in jobs:
        http.delete(f"{server.url}/v1/jobs/{job}")
    time.sleep(2.0)
    print(
        f"{uploads} uploads sent async: {len(jobs)} admitted, {refused} refused (503); then cancelled. "
        f"RSS before {before:.0f} MB, peak {rss_mb(pid, 'VmHWM'):.0f} MB, after {rss_mb(pid, 'VmRSS'):.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--uploads", type=int, default=8, help="big uploads sent at once in the memory phase")
    parser.add_argument(
        "--mode", default="mmse", help="the denoise's mode: sample keeps its tiles running for a whole chain"
    )
    parser.add_argument("--samples", type=int, default=1, help="the denoise's samples (mode sample)")
    args = parser.parse_args()
    image = big_photo(args.side)
    print(
        f"{args.side}x{args.side} JPEG, {len(image) / 1e6:.1f} MB; {platform.processor() or platform.machine()}",
        flush=True,
    )
    server = Server(args.store, 64, DIFFUSION_MAX_BODY_BYTES=str(64 * 1024 * 1024), DIFFUSION_SYNC_TIMEOUT_S="3600")
    try:
        with httpx.Client(timeout=3600) as http:
            generate(http, server.url, 999)  # warm-up
            solo = statistics.median(generate(http, server.url, i) for i in range(args.probes))
            print(f"solo 20-step generate: {solo:.3f} s", flush=True)
            began = time.perf_counter()
            r = http.post(
                server.url + "/v1/denoise",
                files={"file": ("big.jpg", image, "image/jpeg")},
                data={"sigma": "25", "model": "photos", "mode": args.mode, "samples": str(args.samples)},
                headers={"Prefer": "respond-async"},
            )
            r.raise_for_status()
            job = r.json()["job_id"]
            while http.get(f"{server.url}/v1/jobs/{job}").json()["status"] == "queued":
                time.sleep(0.05)
            loaded = []
            while len(loaded) < args.probes and http.get(f"{server.url}/v1/jobs/{job}").json()["status"] == "running":
                loaded.append(generate(http, server.url, 100 + len(loaded)))
                print(f"  generate during the denoise: {loaded[-1]:.3f} s", flush=True)
            while (status := http.get(f"{server.url}/v1/jobs/{job}").json())["status"] not in (
                "succeeded",
                "failed",
                "canceled",
            ):
                time.sleep(0.2)
            print(
                f"denoise {status['status']} after {time.perf_counter() - began:.1f} s "
                f"(tiles {status.get('info', {}).get('tiles')})"
            )
            under = statistics.median(loaded)
            print(
                f"20-step generate while the denoise runs ({len(loaded)} sent): first {loaded[0]:.3f} s, "
                f"median {under:.3f} s, max {max(loaded):.3f} s; median {under / solo:.1f}x solo"
            )
            if args.uploads:
                memory_phase(http, server, image, args.uploads)
    finally:
        server.close()


if __name__ == "__main__":
    main()
