"""Packed BNN inference against torch fp32 eager and ONNX Runtime fp32: one run, ratios, per-layer table, memory.

What is timed: ``f(x)`` on a batch of images in [-1, 1], for

* ``fp32``: the torchbop model in eval mode under ``torch.inference_mode()``, input and activations channels_last
  (its binary layers are float32 convolutions of +-1 values: what the network costs in float);
* ``ort``: ONNX Runtime (CPUExecutionProvider, fp32, intra-op spinning off: see :func:`onnx_session`) running the *float
  twin* (the same graph with ``nn.Conv2d`` / ``nn.Linear`` in place of the binary layers and no quantizers: what a
  deployer runs today), exported with ``torch.onnx.export`` (TorchScript exporter, dynamic batch); its outputs are
  checked against torch's float twin at every batch size timed;
* ``packed:PATH``: :func:`torchbop.deploy.pack_model` with that C path (``avx2``, ``avx512``: see
  :mod:`torchbop.deploy.engine_kernels`; the AVX2 path timed on an AVX-512 CPU is an indication for AVX2-only CPUs,
  not a measurement of one). Packed and fp32 predictions are checked equal before timing.

Method: per (threads, batch), one warm-up call of each, then ``--rounds`` rounds that time every engine once in
rotating order (so all see the same machine load), each timing ``calls`` calls chosen to last about 0.2 s; the
median round gives images/s, and ratios are against fp32 and ort *of the same run*. Weights are random +-1 with
batch-norm statistics from one train-mode pass (speed does not depend on the values). Then a per-layer table in
Larq Compute Engine's format (each binary convolution alone, packed bits in and out, against its fp32 convolution
on +-1 channels_last input), and the peak resident memory (``ru_maxrss`` of a fresh process that builds the model
and runs one batch of 64; ``VmHWM``) of each engine. Prints the CPU, its SIMD flags and the paths.

    python benchmarks/packed_inference.py [--models binarynet mnist_bnn] [--width 1.0] [--batches 1 64]
                                          [--threads 1 2] [--paths avx2 avx512] [--rounds 5] [--no-memory]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from torchbop.deploy import export, load_packed, pack_model
from torchbop.deploy.bit_engine import BinaryLayerOp, Bits
from torchbop.deploy.engine_kernels import available_paths, pack_signs_nhwc
from torchbop.models import create_model
from torchbop.nn import BinaryConv2d, BinaryLinear

SHAPES = {"mnist_bnn": (1, 28, 28)}
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512_bitalg", "avx512_vnni")


def build(name: str, width: float) -> nn.Module:
    torch.manual_seed(0)
    kwargs = (
        {} if name == "mnist_bnn" else {"width": width} if name == "binarynet" else {"stem": "cifar10", "width": width}
    )
    model = create_model(name, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(64, *SHAPES.get(name, (3, 32, 32))) * 2 - 1)
    return model.eval()


def float_twin(model: nn.Module) -> nn.Module:
    """The same network with ``nn.Conv2d`` / ``nn.Linear`` (same weights, as floats) in place of the binary layers,
    and no quantizers."""
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, BinaryConv2d):
                conv = nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                )
                conv.load_state_dict({k: v for k, v in child.state_dict().items() if k in ("weight", "bias")})
                setattr(parent, key, conv)
            elif isinstance(child, BinaryLinear):
                linear = nn.Linear(child.in_features, child.out_features, child.bias is not None)
                linear.load_state_dict({k: v for k, v in child.state_dict().items() if k in ("weight", "bias")})
                setattr(parent, key, linear)
    for module in twin.modules():  # ONNX has no memory formats (the layout conversion would export as aten::copy)
        if isinstance(getattr(module, "channels_last", None), bool):
            module.channels_last = False
    return twin.eval()


def onnx_session(twin: nn.Module, shape: tuple[int, ...], threads: int):
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(
        twin,
        (torch.zeros(1, *shape),),
        buffer,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # ORT's intra-op threads spin after each run by default, and in one process beside the other engines that takes a
    # core from the engine timed next (packed at 2 threads, batch 1: 330 against 560-650 images/s) while ORT ran no
    # slower without it (157-172 against 163-176): off, so that every engine gets the machine it is timed on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x.numpy()})[0]


def median_seconds(engines: dict, x: torch.Tensor, rounds: int) -> dict[str, float]:
    calls = {}
    for name, fn in engines.items():
        fn(x)
        start = time.perf_counter()
        fn(x)
        calls[name] = max(1, int(0.2 / max(time.perf_counter() - start, 1e-5)))
    times: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls[name]):
                engines[name](x)
            times[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_line() -> str:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}; SIMD flags: {' '.join(f for f in FLAGS if f in flags) or 'unknown'}"


def throughput(name: str, width: float, args) -> None:
    model = build(name, width)
    shape = SHAPES.get(name, (3, 32, 32))
    twin = float_twin(model)
    packed = {path: pack_model(model, backend=path) for path in args.paths}
    print(
        f"\n## {name}" + (f" width {width:g}" if name != "mnist_bnn" else "") + ": images/s (ratio = packed / "
        "engine, same run)"
    )
    cols = ["fp32", "ort"] + [f"packed:{p}" for p in args.paths]
    print(
        f"{'threads':>7} {'batch':>5} "
        + " ".join(f"{c:>14}" for c in cols)
        + "  "
        + " ".join(f"{p + '/fp32':>12} {p + '/ort':>11}" for p in args.paths)
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        session = onnx_session(twin, shape, threads)
        for batch in args.batches:
            x = (torch.rand(batch, *shape) * 2 - 1).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                expected = model(x)
                ref_twin = twin(x)
            got_ort = torch.from_numpy(session(x.contiguous()))
            torch.testing.assert_close(got_ort, ref_twin, rtol=1e-3, atol=1e-3)  # ORT runs the twin faithfully
            for path, p in packed.items():
                assert torch.equal(p(x).argmax(1), expected.argmax(1)), f"{path}: predictions differ"
            engines = {"fp32": torch.inference_mode()(model), "ort": lambda v: session(v.contiguous())}
            engines.update({f"packed:{path}": p for path, p in packed.items()})
            sec = median_seconds(engines, x, args.rounds)
            ratios = " ".join(
                f"{sec['fp32'] / sec['packed:' + p]:>11.1f}x {sec['ort'] / sec['packed:' + p]:>10.1f}x"
                for p in args.paths
            )
            print(
                f"{threads:>7} {batch:>5} " + " ".join(f"{batch / sec[c]:>14.1f}" for c in cols) + "  " + ratios,
                flush=True,
            )


def per_layer(name: str, width: float, args) -> None:
    """Each binary convolution with binary input alone (packed bits in, packed bits or integers out), against
    ``F.conv2d`` of its fp32 weight on +-1 channels_last input; one thread, batch 1 and 64."""
    model = build(name, width)
    shape = SHAPES.get(name, (3, 32, 32))
    torch.set_num_threads(1)
    inputs: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def hook(module, args, output) -> None:  # returns None: the output stays
            inputs.setdefault(key, args[0].detach())

        return hook

    hooks = [
        m.register_forward_hook(keep(key))
        for key, m in model.named_modules()
        if isinstance(m, BinaryConv2d) and m.input_quantizer is not None
    ]
    with torch.no_grad():
        model(torch.rand(1, *shape) * 2 - 1)
    for h in hooks:
        h.remove()
    print(f"\n## {name} per layer (one thread): binary convolution alone vs fp32 convolution, ms per batch")
    print(
        f"{'layer':<14} {'shape (HxWxC->O, k)':<24} {'batch':>5} {'fp32 ms':>9} "
        + " ".join(f"{p + ' ms':>10} {'x':>6}" for p in args.paths)
    )
    packed = {path: pack_model(model, backend=path) for path in args.paths}
    for key, feature in inputs.items():
        layer = model.get_submodule(key)
        node = key.replace(".", "_")
        _, c, h, w = feature.shape
        for batch in args.batches:
            signs = torch.where(torch.rand(batch, c, h, w) < 0.5, -1.0, 1.0).contiguous(
                memory_format=torch.channels_last
            )
            weight = layer.weight.detach().float()
            engines = {"fp32": lambda v: F.conv2d(v, weight, None, layer.stride, layer.padding)}
            for path in args.paths:
                op = packed[path].ops[node]
                assert isinstance(op, BinaryLayerOp)
                bits = Bits(pack_signs_nhwc(signs, path), c, tuple(signs.shape))
                engines[path] = lambda v, op=op, bits=bits: op(bits)
            with torch.inference_mode():
                sec = median_seconds(engines, signs, args.rounds)
            print(
                f"{key:<14} {f'{h}x{w}x{c}->{layer.out_channels}, {layer.kernel_size[0]}':<24} {batch:>5} "
                f"{sec['fp32'] * 1e3:>9.2f} "
                + " ".join(f"{sec[p] * 1e3:>10.2f} {sec['fp32'] / sec[p]:>5.1f}x" for p in args.paths),
                flush=True,
            )


def peak_memory(name: str, width: float, engine: str, folder: str) -> int:
    """Peak resident memory (KiB) of a fresh process that loads ``engine``'s form of the model (fp32: builds the
    torchbop model; ort: the float twin's ONNX file; a path: the packed file) and runs it on a batch of 64."""
    code = (
        f"import sys; sys.argv = ['x']; import benchmarks.packed_inference as b; b._rss_child({name!r}, "
        f"{width!r}, {engine!r}, {folder!r})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_kib"]


def _rss_child(name: str, width: float, engine: str, folder: str) -> None:
    torch.set_num_threads(1)
    shape = SHAPES.get(name, (3, 32, 32))
    x = (torch.rand(64, *shape) * 2 - 1).contiguous(memory_format=torch.channels_last)
    if engine == "fp32":
        fn = torch.inference_mode()(build(name, width))
    elif engine == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(f"{folder}/{name}.onnx", options, providers=["CPUExecutionProvider"])
        fn, x = (lambda v: session.run(None, {"x": v.numpy()})[0]), x.contiguous()
    else:
        fn = load_packed(f"{folder}/{name}.tbop", backend=engine)
    fn(x)
    # VmHWM (peak resident set of this program image): ru_maxrss would keep the forking parent's peak across exec
    with open("/proc/self/status") as status:
        peak = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)
    print(json.dumps({"maxrss_kib": peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def memory_table(args) -> None:
    print("\n## peak resident memory at batch 64, one thread (MiB, fresh process; includes torch itself)")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            model = build(name, args.width)
            export(model, f"{folder}/{name}.tbop")
            torch.onnx.export(
                float_twin(model),
                (torch.zeros(1, *SHAPES.get(name, (3, 32, 32))),),
                f"{folder}/{name}.onnx",
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                dynamo=False,
            )
            row = {e: peak_memory(name, args.width, e, folder) / 1024 for e in ["fp32", "ort", *args.paths]}
            print(f"{name:<12} " + "  ".join(f"{e} {v:.0f}" for e, v in row.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["binarynet", "mnist_bnn"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--paths", nargs="+", default=[p for p in ("avx2", "avx512") if p in available_paths()])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {cpu_line()}")
    print(f"engine paths this CPU runs: {', '.join(available_paths())}; timed: {', '.join(args.paths)}")
    for name in args.models if not args.no_throughput else []:
        throughput(name, args.width, args)
    if not args.no_layers:
        per_layer("binarynet", args.width, args)
    if not args.no_memory:
        memory_table(args)


if __name__ == "__main__":
    main()
