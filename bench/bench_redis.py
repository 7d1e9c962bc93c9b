"""The Redis backend's cost: per-job overhead against the in-process queue, and throughput with one and
two worker processes (a benchmark, not a test).

    python bench/bench_redis.py [--redis redis://127.0.0.1:6379/0]

Overhead: sequential 1-step requests (the network's share is the same in both), p50/p99 latency,
in-process vs Redis (API node + one worker process). Throughput: 32 concurrent clients asking for one
20-step image each, with one and then two worker processes behind one API node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import Server, body, drive, ensure_model, load_level, start_process  # noqa: E402


def sequential(url: str, name: str, count: int) -> dict:
    asyncio.run(drive(url, 1, [[body(name, 1, i) for i in range(5)]]))  # warm-up
    _, lat = asyncio.run(drive(url, 1, [[body(name, 1, 100 + i) for i in range(count)]]))
    ms = sorted(s * 1000 for _, s in lat)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    store, name = ensure_model(args.store, args.model)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {"DIFFUSION_QUEUE_URL": args.redis, "DIFFUSION_REDIS_PREFIX": prefix}
    report: dict = {}
    try:
        server = Server(store, 64)
        try:
            report["memory"] = sequential(server.url, name, args.requests)
            report["memory_32_clients"] = load_level(server.url, name, 32, 3, 20)
        finally:
            server.close()
        workers = [start_process("worker", store, 64, **env)]
        server = Server(store, 64, **env)
        try:
            report["redis"] = sequential(server.url, name, args.requests)
            report["redis_1_worker_32_clients"] = load_level(server.url, name, 32, 3, 20)
            workers.append(start_process("worker", store, 64, **env))
            time.sleep(15)  # the second worker loads its models and registers
            report["redis_2_workers_32_clients"] = load_level(server.url, name, 32, 3, 20)
        finally:
            server.close()
            for worker in workers:
                worker.terminate()
                worker.wait(60)
    finally:
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    m, r = report["memory"], report["redis"]
    print("| backend | 1-step request p50 ms | p99 ms |\n|---|---:|---:|")
    print(
        f"| in-process | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} |\n"
        f"| Redis, 1 worker process | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
    )
    print(f"Redis overhead per job: p50 {r['p50_ms'] - m['p50_ms']:+.1f} ms, p99 {r['p99_ms'] - m['p99_ms']:+.1f} ms\n")
    print("| 32 clients, 20 steps | images/s | p50 s | p99 s |\n|---|---:|---:|---:|")
    for key in ("memory_32_clients", "redis_1_worker_32_clients", "redis_2_workers_32_clients"):
        row = report[key]
        print(f"| {key} | {row['images_per_s']:.2f} | {row['p50_s']:.2f} | {row['p99_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
