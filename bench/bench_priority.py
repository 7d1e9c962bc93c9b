"""What ``priority: high`` buys a short job under a saturating low-priority load (a benchmark, not a test).

    python bench/bench_priority.py

The shipped digits model; ``load`` clients send 50-step low-priority generates back to back (more rows
than one forward pass takes), and meanwhile 20-step probes are sent one after another, in turn low,
normal and high priority (low: what the load itself gets). Prints the probes' median latency per
priority and the solo latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import Server  # noqa: E402


async def main_async(url: str, load: int, probes: int) -> None:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=load + 8)) as http:

        async def probe(priority: str, seed: int) -> float:
            began = time.perf_counter()
            r = await http.post(
                url + "/v1/generate",
                json={
                    "model": "digits",
                    "class_label": 3,
                    "steps": 20,
                    "sampler": "dpmpp_2m",
                    "seed": seed,
                    "priority": priority,
                },
            )
            r.raise_for_status()
            return time.perf_counter() - began

        solo = statistics.median([await probe("normal", i) for i in range(3)])
        stop = asyncio.Event()

        async def loader(i: int) -> None:
            while not stop.is_set():
                await http.post(
                    url + "/v1/generate",
                    json={"model": "digits", "class_label": i % 10, "steps": 50, "sampler": "ddim", "priority": "low"},
                )

        tasks = [asyncio.create_task(loader(i)) for i in range(load)]
        await asyncio.sleep(5)  # the load fills the batch
        times: dict[str, list[float]] = {"low": [], "normal": [], "high": []}
        for i in range(probes):
            for priority in ("low", "normal", "high"):
                times[priority].append(await probe(priority, 100 + i))
        stop.set()
        await asyncio.gather(*tasks)
    print(f"solo 20-step generate: {solo:.3f} s")
    for priority, values in times.items():
        print(
            f"under {load} low-priority clients, priority {priority}: median {statistics.median(values):.3f} s "
            f"({len(values)} probes, max {max(values):.3f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=96)
    parser.add_argument("--probes", type=int, default=5)
    args = parser.parse_args()
    server = Server(ROOT / "model_store", 64)
    try:
        asyncio.run(main_async(server.url, args.load, args.probes))
    finally:
        server.close()


if __name__ == "__main__":
    main()
