"""Where the photo network's float32 time goes, and what a compiled path buys (CPUs without native bf16):

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/bench_float32_paths.py
                        # oneDNN and PyTorch's own kernels as on a CPU without AVX-512
    python bench/bench_float32_paths.py --no-compile                # skip torch.compile (about a minute)
    pip install openvino && python bench/bench_float32_paths.py --openvino   # add OpenVINO's CPU runtime

Four measurements on the shipped ``photos`` network, float32, channels-last, the loader's phase
upsamplers, on the service's tiles of a 640x400 photo (6 tiles of 224x208 in one batch):

1. oneDNN's 3x3 convolution rate (GFLOP/s) at the widths and resolutions of the network, and at
   FFDNet's (96 channels at half resolution), each alone: is a narrow layer slower per FLOP? Beside it
   the rate NNPACK's Winograd convolutions reach on the same layer where this torch build has NNPACK
   (counted at the direct convolution's FLOPs, so above oneDNN's rate means faster).
2. A profile of the eager forward pass: each operator's share of the CPU time.
3. What fusing the element-wise work could buy at most: FFDNet's forward pass on the photo and the network
   as it is, without its GroupNorms (identities), without its SiLUs, and without both, taking turns. These
   variants compute nothing useful; they bound from below the time of any fused or compiled form of the
   same network (``--no-bounds`` skips them).
4. The eager pass against ``torch.compile`` (inductor, with ``freezing``: weights prepacked for oneDNN,
   the element-wise work around the convolutions fused), taking turns; the compile time; the largest
   difference between their outputs. Inductor compiles diffusers' own ``ResnetBlock2D`` (the loader's fused
   forward calls a oneDNN operator directly, which inductor cannot trace into one graph per block).
5. With ``--openvino``: the same network converted to OpenVINO (its GroupNorms as OpenVINO's
   ``GroupNormalization``, float32 inference precision, latency hint, torch's thread count) against the
   eager pass and FFDNet, taking turns, with the largest difference between the outputs and the share of
   OpenVINO's own per-node time by kind of node. OpenVINO is a bench-only probe here, not a dependency of
   the service; its CPU plugin crashed at the first inference with ``ONEDNN_MAX_CPU_ISA=AVX2`` set
   (OpenVINO 2026.4.1), so this part runs on the CPU's own instruction set.
6. With ``--int8``: what 8-bit convolutions would buy and cost. Each layer of part 1 as PyTorch's quantized
   convolution (its ``x86`` engine: per-channel int8 weights, uint8 activations) with the quantisation of
   its input and the dequantisation of its output, against the float32 one, taking turns; then the
   service's whole denoising path in float32 on held-out set 1 (σ given) with every convolution of the
   network computing on quantised values (weights per output channel, activations per tensor with each
   call's own range: a bound from above on what calibrated static quantisation keeps) against the same
   path unquantised, PSNR photo by photo. PyTorch's quantized tensors are deprecated; this is a probe,
   not a path of the service.
7. With ``--onnxruntime``: the network exported to ONNX (torch's exporter, dynamic batch and size) and run by
   ONNX Runtime's CPU provider (its graph optimisations on, torch's thread count), against the eager pass
   and FFDNet, taking turns, with the largest difference between the outputs. A bench-only probe
   (``pip install onnxruntime onnx``); its kernels (MLAS) choose their instruction set themselves, so the
   oneDNN variables above do not hold it to AVX2.
8. With ``--nnpack-pass``: NNPACK against oneDNN on every 3x3 convolution of the network (stride 1) at the
   shapes of one of the engine's float32 passes (2 tiles of 224x208, ``PASS``), not a whole photo's planes:
   oneDNN as served (channels-last) against NNPACK's inference path one row at a time with the layout
   changes it needs (to planar and back), taking turns, with the largest difference between the outputs.
   Part 1's single large planes favour Winograd more than these small ones do. (NNPACK must be initialised
   by ``torch.backends.nnpack.is_available()`` before its first convolution, which otherwise fails.)
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_denoise_speed import diffusers_modules, timed  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402
from eval_denoise import add_noise, run_ffdnet, run_ours, scores  # noqa: E402
from fetch_photos import load as load_photos  # noqa: E402

from app.engine.device import cpu_name  # noqa: E402
from app.engine.runner import Runner  # noqa: E402
from app.families.fused_resnet import FusedResnetBlock2D  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store.loader import load_model  # noqa: E402

TILES = (6, 208, 224)  # the service's plan for mate-LadyBird-x4: batch, height, width
PASS = (2, 208, 224)  # one of the engine's float32 passes of that plan (at most 131,072 pixels a pass)
CONVS = [  # (in, out, height, width): the network's levels, then FFDNet's body at half resolution
    (3, 16, 400, 640),
    (16, 16, 400, 640),
    (32, 16, 400, 640),
    (16, 32, 200, 320),
    (32, 32, 200, 320),
    (64, 64, 100, 160),
    (128, 128, 50, 80),
    (96, 96, 200, 320),
]


def seconds(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls after a warm-up (bench_denoise_speed's timing, one function)."""
    return timed(fn, repeats=repeats)[0][0]


def conv_rates(repeats: int) -> None:
    nnpack = torch.backends.nnpack.is_available()
    print(
        "\n| 3x3 convolution | pixels | ms | GFLOP/s | NNPACK (Winograd) ms | its rate at the direct FLOPs |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for cin, cout, h, w in CONVS:
        x = torch.randn(1, cin, h, w).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
        flops = 2 * cin * cout * 9 * h * w
        with torch.no_grad():
            s = seconds(lambda conv=conv, x=x: conv(x), repeats)
            row = f"| {cin} -> {cout} | {h}x{w} | {s * 1e3:.2f} | {flops / s / 1e9:.0f} |"
            if nnpack:
                planar, weight = x.contiguous(), conv.weight.contiguous()
                n = seconds(lambda: torch._nnpack_spatial_convolution(planar, weight, conv.bias, [1, 1]), repeats)
                row += f" {n * 1e3:.2f} | {flops / n / 1e9:.0f} |"
            else:
                row += " (no NNPACK) | |"
        print(row)


def nnpack_pass(unet: torch.nn.Module, turns: int) -> None:
    """Part 8: each 3x3 convolution of stride 1 at one engine pass's shapes, oneDNN against NNPACK per row."""
    if not torch.backends.nnpack.is_available():  # (this call also initialises NNPACK)
        print("\nNNPACK: not in this torch build")
        return
    diffusers_modules(unet, FusedResnetBlock2D, ResnetBlock2D)  # every convolution called as its module
    seen: dict[tuple, list] = {}  # (in, out, input shape) -> [the module, how many calls a pass]

    def record(module, inputs, _output):
        key = (module.in_channels, module.out_channels, tuple(inputs[0].shape))
        seen.setdefault(key, [module, 0])[1] += 1

    convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    hooks = [m.register_forward_hook(record) for m in convs if m.stride == (1, 1)]
    x = torch.randn(*PASS[:1], 3, *PASS[1:]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        unet(x, torch.full((PASS[0],), 50))
    for hook in hooks:
        hook.remove()
    print(
        f"\n| 3x3 convolution, one pass of {PASS[0]} tiles of {PASS[2]}x{PASS[1]} | input | calls a pass "
        "| oneDNN ms | NNPACK per row ms | NNPACK / oneDNN | largest difference |\n|---|---|---:|---:|---:|---:|---:|"
    )
    totals = [0.0, 0.0, 0.0]  # oneDNN, NNPACK, the faster of the two; per pass
    for (cin, cout, shape), (conv, calls) in seen.items():
        inp = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        weight, padding = conv.weight.detach().contiguous(), list(conv.padding)

        def by_rows(conv=conv, inp=inp, weight=weight, padding=padding):
            planar = inp.contiguous()
            rows = [
                torch._nnpack_spatial_convolution(planar[i : i + 1], weight, conv.bias, padding)
                for i in range(len(planar))
            ]
            return torch.cat(rows).contiguous(memory_format=torch.channels_last)

        with torch.inference_mode():
            (d, direct), (n, winograd) = timed(lambda conv=conv, inp=inp: conv(inp), by_rows, repeats=turns)
        difference = float((direct - winograd).abs().max())
        totals = [totals[0] + calls * d, totals[1] + calls * n, totals[2] + calls * min(d, n)]
        print(
            f"| {cin} -> {cout} | {'x'.join(map(str, shape))} | {calls} | {d * 1e3:.2f} | {n * 1e3:.2f} "
            f"| {n / d:.2f} | {difference:.1e} |"
        )
    print(
        f"\nper pass: oneDNN {totals[0] * 1e3:.1f} ms, NNPACK on every layer {totals[1] * 1e3:.1f} ms, "
        f"the faster of the two on each layer {totals[2] * 1e3:.1f} ms"
    )


def profile(unet, x, t, rows: int = 8) -> None:
    with torch.profiler.profile() as prof:
        for _ in range(3):
            unet(x, t)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("\n| operator | share of CPU time |\n|---|---:|")
    for event in events[:rows]:
        print(f"| {event.key} | {100 * event.self_cpu_time_total / total:.1f}% |")


def without(unet: torch.nn.Module, kinds: tuple[type, ...]) -> torch.nn.Module:
    """``unet`` with diffusers' own ResNet blocks (they call their SiLU module; the fused ones call
    ``F.silu``) and every module of the given kinds an identity: a lower bound on its time, not a network."""
    diffusers_modules(unet, FusedResnetBlock2D, ResnetBlock2D)
    for module in list(unet.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, kinds):
                setattr(module, name, torch.nn.Identity())
    return unet


def bounds(served: torch.nn.Module, network: Callable[[], torch.nn.Module], x, t, turns: int) -> None:
    clean = load_photos("heldout")["mate-LadyBird-x4"]
    noisy = add_noise(clean, 25, seed=0)
    variants = {
        "FFDNet (forward pass on the photo)": None,
        "ours, as served (fused ResNets)": served,
        "ours, diffusers' ResnetBlock2D": without(network(), ()),
    }
    for label, kinds in (
        ("no GroupNorm", (torch.nn.GroupNorm,)),
        ("no SiLU", (torch.nn.SiLU,)),
        ("neither", (torch.nn.GroupNorm, torch.nn.SiLU)),
    ):
        variants[f"ours, diffusers' ResnetBlock2D, {label}"] = without(network(), kinds)
    fns = [
        (lambda: run_ffdnet(noisy, 25)) if unet is None else (lambda unet=unet: unet(x, t))
        for unet in variants.values()
    ]
    results = timed(*fns, repeats=turns)
    ffdnet = results[0][0]
    print(f"\n| pass (in turns, median of {turns}) | seconds | x FFDNet's |\n|---|---:|---:|")
    for name, (s, _) in zip(variants, results):
        print(f"| {name} | {s:.3f} | {s / ffdnet:.2f} |")


class Sample(torch.nn.Module):
    """The network's output tensor alone (diffusers returns an output object), for the converters."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


def openvino_pass(network: torch.nn.Module, x, t, served: torch.nn.Module, turns: int) -> None:
    """Part 5: the network as OpenVINO's CPU plugin runs it, in turns with the eager pass and FFDNet."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.frontend.pytorch import ConversionExtension

    def group_norm(node):  # aten::group_norm(input, groups, weight, bias, eps, cudnn) as one OpenVINO node
        groups, eps = (node.get_values_from_const_input(i) for i in (1, 4))
        made = ops.group_normalization(node.get_input(0), node.get_input(2), node.get_input(3), int(groups), eps)
        return [made.output(0)]

    planar = x.contiguous()
    began = time.perf_counter()
    with torch.no_grad():
        converted = ov.convert_model(
            Sample(without(network, ())),
            example_input=(planar, t),
            extension=[ConversionExtension("aten::group_norm", group_norm)],
        )
    settings = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    core = ov.Core()
    request = core.compile_model(converted, "CPU", settings).create_infer_request()
    inputs = {0: planar.numpy(), 1: t.numpy()}
    convert_s = time.perf_counter() - began
    noisy = add_noise(load_photos("heldout")["mate-LadyBird-x4"], 25, seed=0)
    with torch.inference_mode():
        difference = float((torch.from_numpy(request.infer(inputs)[0]) - served(x, t).sample).abs().max())
        passes = (lambda: run_ffdnet(noisy, 25), lambda: served(x, t), lambda: request.infer(inputs))
        results = timed(*passes, repeats=turns)
    print(f"\nOpenVINO {ov.__version__}: converted and compiled in {convert_s:.0f} s")
    print(f"largest difference from the eager output: {difference:.1e}")
    print(f"\n| pass (in turns, median of {turns}) | seconds | x FFDNet's |\n|---|---:|---:|")
    names = ["FFDNet (forward pass on the photo)", "ours, eager, as served", "ours, OpenVINO"]
    for name, (s, _) in zip(names, results):
        print(f"| {name} | {s:.3f} | {s / results[0][0]:.2f} |")
    profiled = core.compile_model(converted, "CPU", {**settings, "PERF_COUNT": True}).create_infer_request()
    for _ in range(3):
        profiled.infer(inputs)
    kinds: collections.Counter = collections.Counter()
    for node in profiled.get_profiling_info():
        kinds[node.node_type] += node.real_time.total_seconds()
    total = sum(kinds.values())
    print("\n| OpenVINO node kind | share of its time |\n|---|---:|")
    for kind, spent in kinds.most_common(8):
        print(f"| {kind} | {100 * spent / total:.1f}% |")


def int8_rates(turns: int) -> None:
    """Part 6, speed: PyTorch's quantized 3x3 convolution, its input quantised and its output dequantised
    as a float32 network around it would need, against the float32 convolution, taking turns."""
    torch.backends.quantized.engine = "x86"
    print(
        f"\n| 3x3 convolution (in turns, median of {turns}) | pixels | float32 ms | int8 ms, with (de)quantisation "
        "| int8 / float32 |\n|---|---:|---:|---:|---:|"
    )
    for cin, cout, h, w in CONVS:
        x = torch.randn(1, cin, h, w).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
        quantized = torch.ao.nn.quantized.Conv2d(cin, cout, 3, padding=1)
        scales = conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127
        weight = torch.quantize_per_channel(
            conv.weight.detach(), scales, torch.zeros(cout, dtype=torch.long), 0, torch.qint8
        )
        quantized.set_weight_bias(weight, conv.bias.detach())
        quantized.scale, quantized.zero_point = 0.05, 128
        scale, zero = float(x.abs().max()) / 127, 128
        with torch.no_grad():
            (f, _), (q, _) = timed(
                lambda conv=conv, x=x: conv(x),
                lambda quantized=quantized, x=x, scale=scale: quantized(
                    torch.quantize_per_tensor(x, scale, zero, torch.quint8)
                ).dequantize(),
                repeats=turns,
            )
        print(f"| {cin} -> {cout} | {h}x{w} | {f * 1e3:.2f} | {q * 1e3:.2f} | {q / f:.2f} |")


def quantised_inputs(module: torch.nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: the convolution's input rounded to uint8 over its own range (zero exact)."""
    x = args[0]
    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = ((high - low) / 255).clamp(min=1e-12)
    zero = torch.round(-low / scale)
    return ((torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale, *args[1:])


def int8_quality(entry, sigma: float) -> None:
    """Part 6, quality: the service's float32 path on set 1 with the network's convolutions quantised."""
    settings = Settings(dtype="float32")
    runner = Runner(torch.device("cpu"), torch.float32)
    model = load_model(entry, torch.device("cpu"))
    photos = load_photos("heldout")
    noisy = {name: add_noise(clean, sigma, seed=int(sigma) * 100 + i) for i, (name, clean) in enumerate(photos.items())}

    def psnr() -> dict[str, float]:
        return {
            name: scores(clean, run_ours(model, runner, settings, noisy[name], sigma=sigma, mode="mmse", seed=0))[0]
            for name, clean in photos.items()
        }

    plain = psnr()
    # diffusers' own ResNet blocks, so every convolution goes through its module (and its hook)
    model.unet = without(model.unet, ())
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    with torch.no_grad():
        for conv in (m for m in model.unet.modules() if isinstance(m, kinds)):
            out_axis = 0 if isinstance(conv, torch.nn.Conv2d) else 1
            reduce = [d for d in range(conv.weight.dim()) if d != out_axis]
            scale = (conv.weight.abs().amax(dim=reduce, keepdim=True) / 127).clamp(min=1e-12)
            conv.weight.copy_(torch.clamp(torch.round(conv.weight / scale), -127, 127) * scale)
            conv.register_forward_pre_hook(quantised_inputs)
    quantised = psnr()
    print(f"\n| set 1, σ {sigma:g}, the service's float32 path | float32 dB | int8 convolutions dB | difference |")
    print("|---|---:|---:|---:|")
    for name in photos:
        print(f"| {name} | {plain[name]:.2f} | {quantised[name]:.2f} | {quantised[name] - plain[name]:+.3f} |")
    mean = sum(plain.values()) / len(plain), sum(quantised.values()) / len(quantised)
    print(f"| mean | {mean[0]:.4f} | {mean[1]:.4f} | {mean[1] - mean[0]:+.4f} |")


def onnxruntime_pass(network: torch.nn.Module, x, t, served: torch.nn.Module, turns: int) -> None:
    """Part 7: the network as ONNX Runtime's CPU provider runs it, in turns with the eager pass and FFDNet."""
    import tempfile

    import onnxruntime as ort

    planar = x.contiguous()
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = f"{folder}/unet.onnx"
        dims = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(
            Sample(without(network, ())),
            (planar, t),
            path,
            input_names=["x", "t"],
            output_names=["y"],
            dynamic_axes={"x": dims, "t": {0: "batch"}, "y": dims},
            dynamo=False,
        )
        sessions = {}
        for spinning in ("0", "1"):
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # with spinning (its default) its threads keep spinning after each run, taking the cores from
            # the passes in turn with it: both are measured
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
            sessions[spinning] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = {"x": planar.numpy(), "t": t.numpy()}
    noisy = add_noise(load_photos("heldout")["mate-LadyBird-x4"], 25, seed=0)
    print(f"\nONNX Runtime {ort.__version__}")
    for spinning, session in sessions.items():
        with torch.inference_mode():
            difference = float(abs(session.run(None, inputs)[0] - served(x, t).sample.numpy()).max())
            passes = (lambda: run_ffdnet(noisy, 25), lambda: served(x, t), lambda s=session: s.run(None, inputs))
            results = timed(*passes, repeats=turns)
        print(f"\nthreads spinning: {spinning == '1'}; largest difference from the eager output {difference:.1e}")
        print(f"\n| pass (in turns, median of {turns}) | seconds | x FFDNet's |\n|---|---:|---:|")
        names = ["FFDNet (forward pass on the photo)", "ours, eager, as served", "ours, ONNX Runtime"]
        for name, (seconds_, _) in zip(names, results):
            print(f"| {name} | {seconds_:.3f} | {seconds_ / results[0][0]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "model_store"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-bounds", action="store_true")
    parser.add_argument("--openvino", action="store_true", help="part 5 (needs `pip install openvino`)")
    parser.add_argument("--int8", action="store_true", help="part 6: int8 convolutions, speed and PSNR")
    parser.add_argument("--onnxruntime", action="store_true", help="part 7 (needs `pip install onnxruntime onnx`)")
    parser.add_argument("--nnpack-pass", action="store_true", help="part 8: NNPACK at one engine pass's shapes")
    parser.add_argument("--int8-sigma", type=float, default=15)
    args = parser.parse_args()

    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32, channels-last")
    conv_rates(args.repeats)
    entry = scan_store(Path(args.store))["photos"]

    def network() -> torch.nn.Module:
        """A fresh copy of the photo network as the service loads it (the variants below rewrite theirs)."""
        return load_model(entry, torch.device("cpu")).unet.eval()

    unet = network()
    x = torch.randn(TILES[0], 3, TILES[1], TILES[2]).contiguous(memory_format=torch.channels_last)
    t = torch.full((TILES[0],), 50)
    with torch.inference_mode():
        profile(unet, x, t)
        if not args.no_bounds:
            bounds(unet, network, x, t, 2 * args.repeats + 1)
    if args.openvino:
        openvino_pass(network(), x, t, unet, 2 * args.repeats + 1)
    if args.int8:
        int8_rates(2 * args.repeats + 1)
        int8_quality(entry, args.int8_sigma)
    if args.onnxruntime:
        onnxruntime_pass(network(), x, t, unet, 2 * args.repeats + 1)
    if args.nnpack_pass:
        nnpack_pass(network(), 2 * args.repeats + 1)
    if args.no_compile:
        return
    import torch._inductor.config as inductor

    inductor.freezing = True
    compiled = torch.compile(without(network(), ()))
    with torch.no_grad():
        began = time.perf_counter()
        compiled(x, t)
        compile_s = time.perf_counter() - began
        eager_s, compiled_s = [], []
        for _ in range(args.turns):
            eager_s.append(seconds(lambda: unet(x, t), args.repeats))
            compiled_s.append(seconds(lambda: compiled(x, t), args.repeats))
        difference = float((unet(x, t).sample - compiled(x, t).sample).abs().max())
    print(f"\ncompiling (first call): {compile_s:.0f} s; largest output difference {difference:.1e}")
    print("\n| turn | eager (s per pass) | compiled | compiled / eager |\n|---:|---:|---:|---:|")
    for turn, (e, c) in enumerate(zip(eager_s, compiled_s), 1):
        print(f"| {turn} | {e:.3f} | {c:.3f} | {c / e:.2f} |")


if __name__ == "__main__":
    main()
