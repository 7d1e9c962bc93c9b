"""What ``priority: high`` buys a short job under a saturating low-priority load (a benchmark, not a test).

    python bench/bench_priority.py
    python bench/bench_priority.py --redis redis://127.0.0.1:6379/0 --worker-jobs 32

The shipped digits model; ``load`` clients send 50-step low-priority generates back to back (more rows
than one forward pass takes), and meanwhile 20-step probes are sent one after another, in turn low,
normal and high priority (low: what the load itself gets). Prints the probes' median latency per
priority and the solo latency. With ``--redis``, an API node and a separate worker process on that Redis
(its own key prefix, removed after); ``--worker-jobs`` below the load leaves a backlog in the streams.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import Server, start_process  # noqa: E402


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
    parser.add_argument("--redis", help="redis:// URL: an API node and a worker process on Redis")
    parser.add_argument("--worker-jobs", type=int, help="jobs the Redis worker holds at once")
    args = parser.parse_args()
    env, worker = {}, None
    if args.redis:
        prefix = f"bench-priority-{uuid.uuid4().hex[:8]}"
        env = {"DIFFUSION_QUEUE_URL": args.redis, "DIFFUSION_REDIS_PREFIX": prefix}
        if args.worker_jobs:
            env["DIFFUSION_WORKER_JOBS"] = str(args.worker_jobs)
        worker = start_process("worker", ROOT / "model_store", 64, **env)
    server = Server(ROOT / "model_store", 64, **env)
    try:
        asyncio.run(main_async(server.url, args.load, args.probes))
    finally:
        server.close()
        if worker is not None:
            worker.terminate()
            worker.wait(60)
            client = redis.Redis.from_url(args.redis)
            stale = list(client.scan_iter(match=f"{env['DIFFUSION_REDIS_PREFIX']}:*"))
            if stale:
                client.delete(*stale)


if __name__ == "__main__":
    main()
