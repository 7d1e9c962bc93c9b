"""Throughput and latency of the service, in one run on one model (a benchmark, not a test).

    python bench/bench_service.py                       # digits model from model_store/, else its architecture
    python bench/bench_service.py --quick               # fewer requests, for a smoke run

(a) the raw batched sampler: the engine's runner alone, rows/s per batch size, no HTTP;
(b) the real service over HTTP on loopback, C concurrent clients (1, 8, 32, 64) asking for one image each;
(c) the same load with batching disabled (DIFFUSION_MAX_BATCH=1: one row, so one request, at a time);
(d) a mixed load of 10-, 50- and 100-step requests: latency of the 10-step ones against their solo latency.
Prints a Markdown table of throughput (images/s and rows/s), p50/p99 latency and the ratios (b)/(a), (b)/(c).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app.engine.plans import plan_generate  # noqa: E402
from app.engine.runner import Runner  # noqa: E402
from app.jobs import GenerateSpec  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import load_model  # noqa: E402


def ensure_model(store: Path | None, name: str) -> tuple[Path, str]:
    if store is not None and (store / name).is_dir():
        return store, name
    from train_digits import build_scheduler, build_unet  # the shipped model's architecture, random weights

    from app.store.card import ModelCard
    from app.store.writer import save_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    card = ModelCard(
        tasks=["generate"], class_names=[str(i) for i in range(10)], null_class=10, image_size=(28, 28), channels=1
    )
    save_model(tmp / "digits-arch", unet=build_unet((32, 64, 64), 1), scheduler=build_scheduler(), card=card)
    return tmp, "digits-arch"


# -- (a) raw sampler ------------------------------------------------------------------------------------
def raw_sampler(store: Path, name: str, steps: int, batch_sizes: list[int], seconds: float) -> dict[int, float]:
    model = load_model(scan_store(store)[name], torch.device("cpu"))
    runner = Runner(torch.device("cpu"), None)
    results = {}
    for batch in batch_sizes:
        spec = GenerateSpec(
            model=name, steps=10**3 - 1, sampler="dpmpp_2m", seeds=list(range(batch)), class_label=3, guidance_scale=0.0
        )
        rows = plan_generate("bench", spec, model).rows
        for row in rows:
            row.begin(runner.device)
        runner.step(rows)  # warm-up
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            if rows[0].done:  # a fast machine walks the whole plan: start the rows over (the cost is per step)
                for row in rows:
                    row.index, row.prev_x0 = 0, None
            runner.step(rows)
            done += len(rows)
        results[batch] = done / (time.perf_counter() - began)
        print(f"  (a) batch {batch:4d}: {results[batch]:8.1f} rows/s", flush=True)
    return results


# -- the service over HTTP --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(role: str, store: Path, max_batch: int, port: int | None = None, **env: str) -> subprocess.Popen:
    """``python -m app.cli serve|worker`` with benchmark settings."""
    full_env = {
        **os.environ,
        "DIFFUSION_MAX_BATCH": str(max_batch),
        "DIFFUSION_QUEUE_LIMIT": "4096",
        "DIFFUSION_DEVICE": "cpu",
        **env,
    }
    args = [sys.executable, "-m", "app.cli", role, "--model-store", str(store), "--log-level", "warning"]
    if port is not None:
        args += ["--port", str(port)]
    return subprocess.Popen(args, cwd=ROOT, env=full_env)


class Server:
    def __init__(self, store: Path, max_batch: int, **env: str) -> None:
        self.port = free_port()
        self.proc = start_process("serve", store, max_batch, self.port, **env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def _client(http: httpx.AsyncClient, url: str, bodies: list[dict], latencies: list[tuple[int, float]]) -> None:
    for body in bodies:
        began = time.perf_counter()
        r = await http.post(url + "/v1/generate", json=body)
        r.raise_for_status()
        latencies.append((body["steps"], time.perf_counter() - began))


async def drive(url: str, clients: int, per_client: list[list[dict]]) -> tuple[float, list[tuple[int, float]]]:
    latencies: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(_client(http, url, bodies, latencies) for bodies in per_client))
        wall = time.perf_counter() - began
    return wall, latencies


def body(name: str, steps: int, seed: int) -> dict:
    return {
        "model": name,
        "steps": steps,
        "sampler": "dpmpp_2m",
        "class_label": seed % 10,
        "seed": seed,
        "guidance_scale": 0,
    }


def load_level(url: str, name: str, clients: int, per_client: int, steps: int) -> dict:
    plan = [[body(name, steps, c * 1000 + i) for i in range(per_client)] for c in range(clients)]
    asyncio.run(drive(url, clients, [[body(name, steps, 10**6 + c)] for c in range(clients)]))  # warm-up
    wall, lat = asyncio.run(drive(url, clients, plan))
    seconds = sorted(s for _, s in lat)
    images = len(seconds)
    return {
        "clients": clients,
        "images": images,
        "images_per_s": images / wall,
        "rows_per_s": images * steps / wall,
        "p50_s": statistics.median(seconds),
        "p99_s": seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))],
    }


def mixed(url: str, name: str, clients_per_kind: int, per_client: int) -> dict:
    solo_wall, solo = asyncio.run(drive(url, 1, [[body(name, 10, 7 + i) for i in range(10)]]))
    solo_p50 = statistics.median(s for _, s in solo)
    plan = [
        [body(name, steps, k * 100 + i) for i in range(per_client * (100 // steps))]
        for k, steps in enumerate([10, 50, 100] * clients_per_kind)
    ]
    _, lat = asyncio.run(drive(url, len(plan), plan))
    ten = sorted(s for steps, s in lat if steps == 10)
    return {
        "clients": len(plan),
        "solo_p50_s": solo_p50,
        "mix_p50_s": statistics.median(ten),
        "mix_p99_s": ten[min(len(ten) - 1, int(0.99 * len(ten)))],
        "ratio_p50": statistics.median(ten) / solo_p50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    store, name = ensure_model(args.store, args.model)
    print(
        f"model {name} in {store}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        flush=True,
    )
    levels = [1, 8, 32, 64]
    seconds = 2.0 if args.quick else 6.0
    report: dict = {"model": name, "steps": args.steps, "sampler": "dpmpp_2m"}

    report["raw"] = raw_sampler(store, name, args.steps, [1, 8, 16, 32, 64, 128, 256], seconds)
    best_batch = max(report["raw"], key=report["raw"].get)

    def per_client(c: int) -> int:
        return max(2, (16 if args.quick else 48) // c)

    for label, max_batch in (("batched", args.max_batch), ("unbatched", 1)):
        server = Server(store, max_batch)
        try:
            report[label] = []
            for c in levels:
                row = load_level(
                    server.url, name, c, per_client(c) if label == "batched" else max(1, per_client(c) // 2), args.steps
                )
                report[label].append(row)
                print(
                    f"  ({'b' if label == 'batched' else 'c'}) {c:3d} clients: {row['images_per_s']:6.2f} img/s "
                    f"{row['rows_per_s']:7.1f} rows/s  p50 {row['p50_s']:.3f}s  p99 {row['p99_s']:.3f}s",
                    flush=True,
                )
            if label == "batched":
                report["mixed_light"] = mixed(server.url, name, 1, 2 if args.quick else 4)
                report["mixed_heavy"] = mixed(server.url, name, 4, 1 if args.quick else 2)
                for key in ("mixed_light", "mixed_heavy"):
                    m = report[key]
                    print(
                        f"  (d) {key}: {m['clients']} clients, 10-step p50 {m['mix_p50_s']:.3f}s vs solo "
                        f"{m['solo_p50_s']:.3f}s = {m['ratio_p50']:.2f}x",
                        flush=True,
                    )
        finally:
            server.close()

    sat = report["batched"][-1]["rows_per_s"]
    at32 = {r["clients"]: r for r in report["batched"]}[32]["rows_per_s"]
    un32 = {r["clients"]: r for r in report["unbatched"]}[32]["rows_per_s"]
    report["ratio_b_over_a"] = sat / report["raw"][best_batch]
    report["ratio_b_over_c_at_32"] = at32 / un32
    print()
    print(f"| | rows/s | images/s ({args.steps} steps) | p50 s | p99 s |")
    print("|---|---:|---:|---:|---:|")
    for batch, value in report["raw"].items():
        print(f"| (a) raw sampler, batch {batch} | {value:.1f} | {value / args.steps:.2f} | | |")
    for label, tag in (("batched", "b"), ("unbatched", "c")):
        for r in report[label]:
            print(
                f"| ({tag}) HTTP, {r['clients']} clients{' (max batch 1)' if tag == 'c' else ''} "
                f"| {r['rows_per_s']:.1f} | {r['images_per_s']:.2f} | {r['p50_s']:.3f} | {r['p99_s']:.3f} |"
            )
    print()
    print(f"(b)/(a) at saturation (64 clients vs raw batch {best_batch}): {report['ratio_b_over_a']:.2f}")
    print(f"(b)/(c) at 32 clients: {report['ratio_b_over_c_at_32']:.2f}")
    for key in ("mixed_light", "mixed_heavy"):
        m = report[key]
        print(
            f"(d) {key} ({m['clients']} clients, 10/50/100 steps): 10-step p50 {m['mix_p50_s']:.3f}s, "
            f"solo {m['solo_p50_s']:.3f}s, ratio {m['ratio_p50']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
